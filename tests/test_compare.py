"""`lp.compare` / `tf-lowprec compare` on the user's own model and data.

The TFDS sets are prepared here, in a temporary data_dir, with
`tfds.dataset_builders.store_as_tfds_dataset` (nothing is downloaded).
"""

import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec import comparison
from tf_lowprec import datasets

IMAGE_SHAPE = (8, 8, 1)


def _store(tfds, data_dir, name, features, make_example, sizes=(48, 16)):
    rng = np.random.default_rng(0)

    def split(n):
        examples = [make_example(rng, i) for i in range(n)]
        return tf.data.Dataset.from_generator(
            lambda: iter(examples),
            output_signature={k: tf.TensorSpec(np.shape(v) if k != "tokens" else (None,),
                                               tf.as_dtype(np.asarray(v).dtype))
                              for k, v in examples[0].items()})

    tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version="1.0.0", features=tfds.features.FeaturesDict(features),
        split_datasets={"train": split(sizes[0]), "test": split(sizes[1])}, data_dir=data_dir)


def _digit(rng, i):
    label = i % 3
    image = rng.integers(0, 60, IMAGE_SHAPE).astype(np.uint8)
    image[label * 2:label * 2 + 3] += 180  # a learnable band per class
    return {"image": image, "label": np.int64(label)}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A data_dir with three TFDS sets: image/label, token sequences, two label features."""
    import tensorflow_datasets as tfds

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TFDS' own deprecation notices
        _store(tfds, data_dir, "tiny_digits",
               {"image": tfds.features.Image(shape=IMAGE_SHAPE),
                "label": tfds.features.ClassLabel(num_classes=3)}, _digit)
        _store(tfds, data_dir, "tiny_tokens",
               {"tokens": tfds.features.Tensor(shape=(None,), dtype=np.int64),
                "label": tfds.features.ClassLabel(num_classes=2)},
               lambda rng, i: {"tokens": rng.integers(1, 20, 3 + i % 5).astype(np.int64),
                               "label": np.int64(i % 2)})
        _store(tfds, data_dir, "tiny_two_labels",
               {"image": tfds.features.Image(shape=IMAGE_SHAPE),
                "label": tfds.features.ClassLabel(num_classes=3),
                "coarse": tfds.features.ClassLabel(num_classes=2)},
               lambda rng, i: {**_digit(rng, i), "coarse": np.int64(i % 2)})
    return data_dir


def test_tfds_set_with_image_and_label_features_and_no_supervised_keys(tfds_dir):
    data = datasets.load("tiny_digits", data_dir=tfds_dir)
    assert data.kind == "images" and data.num_classes == 3
    assert data.x_train.shape == (48,) + IMAGE_SHAPE and data.x_test.shape == (16,) + IMAGE_SHAPE
    assert data.x_train.dtype == np.float32 and 0.0 <= data.x_train.min() <= 1.0
    np.testing.assert_array_equal(np.sort(np.unique(data.y_train)), [0, 1, 2])


def test_tfds_token_sequences_are_padded_to_one_length(tfds_dir):
    data = datasets.load("tiny_tokens", data_dir=tfds_dir)
    assert data.kind == "sequences" and data.x_train.dtype == np.int32
    assert data.x_train.shape[1] == data.x_test.shape[1] == 7  # longest: 3 + 4 tokens
    assert data.vocabulary_size <= 20 and (data.x_train[:, 3:] == 0).any()


def test_tfds_errors_say_what_is_wrong(tfds_dir):
    with pytest.raises(datasets.DataError, match="TFDS knows no such name"):
        datasets.load("no_such_set_here", data_dir=tfds_dir)
    with pytest.raises(datasets.DataError, match="'mnist' is not prepared.*download_and_prepare"):
        datasets.load("mnist", data_dir=tfds_dir)
    with pytest.raises(datasets.DataError, match="no supervised keys") as error:
        datasets.load("tiny_two_labels", data_dir=tfds_dir)
    for part in ("image (Image", "coarse (ClassLabel", "label (ClassLabel",
                 "--features=INPUT,LABEL"):
        assert part in str(error.value)
    data = datasets.load("tiny_two_labels", data_dir=tfds_dir, features=("image", "coarse"))
    assert data.num_classes == 2
    with pytest.raises(datasets.DataError,
                       match="no feature 'img'; its features: .*image \\(Image"):
        datasets.load("tiny_two_labels", data_dir=tfds_dir, features=("img", "label"))
    with pytest.raises(datasets.DataError, match="no split 'validation'.*--splits=TRAIN,TEST"):
        datasets.load("tiny_digits", data_dir=tfds_dir, splits=("train", "validation"))


def test_npz_data_and_its_errors(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=rng.normal(size=(20, 5)).astype(np.float32),
             y_train=rng.integers(0, 4, 20), x_test=rng.normal(size=(6, 5)).astype(np.float32),
             y_test=rng.integers(0, 4, 6))
    data = datasets.load(str(path))
    assert data.kind == "features" and data.x_train.shape == (20, 5)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((2, 3)), y_train=np.zeros(2, np.int64))
    with pytest.raises(datasets.DataError, match="lacks x_test, y_test.*it has: x_train, y_train"):
        datasets.load(str(bad))
    with pytest.raises(datasets.DataError, match="no such file"):
        datasets.load(str(tmp_path / "missing.npz"))
    with pytest.raises(datasets.DataError, match="integer class labels"):
        datasets.from_arrays(np.zeros((2, 3)), [0.5, 1.0], np.zeros((1, 3)), [0])


def _main(args):
    """The exit status of `tf-lowprec ARGS`, run in this process (absl.app exits)."""
    from tf_lowprec.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code or 0


def test_command_runs_a_saved_keras_file_on_a_tfds_set(tfds_dir, tmp_path, capsys):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input(IMAGE_SHAPE), keras.layers.Conv2D(4, 3, name="conv"),
                              keras.layers.Flatten(), keras.layers.Dense(3, name="out")])
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["sparse_categorical_accuracy"])
    model.save(tmp_path / "mine.keras")
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing it chose itself warns
        status = _main(["compare", f"--model={tmp_path / 'mine.keras'}",
                        "--dataset=tiny_digits", f"--data_dir={tfds_dir}",
                        "--policies=fp32,fp8", "--epochs=1", "--batch_size=16",
                        "--monitor_every=1", f"--out={out}"])
    assert status == 0, capsys.readouterr().err[-2000:]
    table = capsys.readouterr().out
    assert "test sparse_categ" in table and "adaptive (automatic)" in table
    report = json.loads((out / "compare.json").read_text())
    fp8 = report["runs"]["fp8"][0]
    assert fp8["metric"] == "sparse_categorical_accuracy"
    assert fp8["loss_scaling"] == "adaptive (automatic)"
    assert report["runs"]["fp32"][0]["loss_scaling"] == "none"
    # The same initial weights (the file's) under both policies, the policy applied:
    # fp8 rounds the layers' operands, so something underflows, and fp32 sees nothing.
    assert report["runs"]["fp32"][0]["layers"] == {}
    assert set(fp8["layers"]) >= {"conv/activations", "out/weights"}
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_runs_module_function_on_an_npz(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_models.py").write_text(
        "import keras\n"
        "def build(input_shape, num_classes):\n"
        "    return keras.Sequential([keras.Input(input_shape),\n"
        "                             keras.layers.Dense(num_classes)])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.normal(size=(32, 5)).astype(np.float32),
             y_train=rng.integers(0, 3, 32), x_test=rng.normal(size=(8, 5)).astype(np.float32),
             y_test=rng.integers(0, 3, 8))
    args = ["compare", "--model=my_models:build", f"--dataset={tmp_path / 'd.npz'}",
            "--policies=fp32,bf16", "--epochs=1", "--batch_size=16",
            f"--out={tmp_path / 'out'}"]
    # The model function leaves the loss open: the error says which flag gives it.
    assert _main(args) == 1
    assert "give the loss (--loss=" in capsys.readouterr().err
    assert _main(args + ["--loss=sparse_categorical_crossentropy"]) == 0
    report = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert report["settings"]["model"] == "my_models:build"
    assert [len(r) for r in report["runs"].values()] == [1, 1]
    assert report["runs"]["bf16"][0]["metric"] == "accuracy"


def test_bad_model_and_data_get_messages_that_name_the_problem(tmp_path, capsys):
    not_a_model = tmp_path / "notes.keras"
    not_a_model.write_text("not a zip file")
    for args, message in (
            (["--model=no_such_module_xyz:build"], "cannot import module 'no_such_module_xyz'"),
            (["--model=json:no_such_function"], "module 'json' has no function"),
            ([f"--model={tmp_path / 'missing.keras'}"], "no such file"),
            ([f"--model={not_a_model}"], "Keras cannot load it"),
            (["--model=resnet"], "model must be a built-in"),
            (["--model=lstm"], "--model=lstm reads integer token sequences"),
            ([f"--dataset={tmp_path / 'none.npz'}"], "no such file")):
        assert _main(["compare", "--epochs=1", *args]) == 1, args
        assert message in capsys.readouterr().err, args
    for args in (["--policies=fp64"], ["--policies=bf16+xx"], ["--policies=bf16:up"],
                 ["--epochs=0"], ["--seeds=0"]):
        assert _main(["compare", *args]) == 1, args
        assert "FATAL Flags parsing error" in capsys.readouterr().err, args


def test_python_api_with_a_builder_and_arrays_and_seeds(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)

    def build():
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])

    result = lp.compare(build, ((x[:32], y[:32]), (x[32:], y[32:])), policies=["fp32", "fp16"],
                        epochs=1, batch_size=16, seeds=2,
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                        out_dir=str(tmp_path), verbose=0)
    assert result.entries == ["fp32", "fp16"]
    assert [r["seed"] for r in result.runs["fp16"]] == [0, 1]
    curves = result.curves()
    assert np.shape(curves["fp16"]["val_accuracy"]) == (2, 1)  # seeds x epochs
    assert "precision/dense/errors/underflow" in curves["fp16"]
    assert result.summary()["fp16"]["loss_scaling"] == "adaptive (automatic)"
    assert "fp16" in result.table() and "means over 2 seeds" in result.table()
    assert "dense/errors" in result.layer_stats()["fp16"]
    assert (tmp_path / "compare.png").exists() and (tmp_path / "compare.json").exists()
    with pytest.raises(comparison.CompareError, match="appears twice"):
        lp.compare(build, ((x, y), (x, y)), policies=["fp32", "fp32"])


def test_entry_suffix_chooses_the_loss_scaling():
    assert comparison.parse_entry("fp8:stochastic+none") == ("fp8", "stochastic", "none")
    data = datasets.from_arrays(np.zeros((8, 3), np.float32), np.arange(8) % 2,
                                np.zeros((4, 3), np.float32), np.arange(4) % 2)
    source = comparison._ModelSource("mlp", data)
    for suffix, optimizer_type in (("+none", keras.optimizers.Adam),
                                   ("+ls", keras.optimizers.LossScaleOptimizer),
                                   ("+als", lp.AdaptiveLossScaleOptimizer),
                                   ("", lp.AdaptiveLossScaleOptimizer)):
        name, rounding, scaling = comparison.parse_entry("fp16" + suffix)
        model = source.build(lp.Policy(name), seed=0)
        comparison._compile(model, source, comparison.CompileSettings(), scaling)
        assert type(model.optimizer) is optimizer_type, suffix
