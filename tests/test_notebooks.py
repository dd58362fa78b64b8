"""The colab/ notebooks run top to bottom (small setting), so they cannot rot.

Each notebook is executed in a fresh python3 kernel with
TF_LOWPREC_NOTEBOOK_SMALL=1 (a few hundred images, tiny GEMMs); any cell that
raises fails the test with the cell's traceback.  The notebooks' install cell
does nothing outside Colab, and their data helper falls back to the bundled
MNIST sample when tensorflow_datasets is missing or cannot download.
"""

import os
import pathlib
import sys
import types

import nbclient  # requirements.txt: nbformat, nbclient, ipykernel (the python3 kernel)
import nbformat
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "colab").glob("*.ipynb"))
CELL_TIMEOUT_S = 180


def test_the_four_notebooks_exist():
    names = {path.stem for path in NOTEBOOKS}
    assert names >= {"quickstart", "loss_scaling", "dfp16_gemm_speed", "export_tf_serving"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch, tmp_path):
    monkeypatch.setenv("TF_LOWPREC_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    # The kernel imports tf_lowprec from this checkout even when it is not installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "Traceback" not in text
    if path.stem == "export_tf_serving":
        assert "custom ops in the SavedModel: []" in text
        assert "bit-identical to model.predict: True" in text


def test_load_mnist_falls_back_to_the_bundled_sample_without_tfds(monkeypatch):
    from tf_lowprec.cli import datasets  # noqa: PLC0415

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    (x, y), (x_test, _), source = datasets.load_mnist(return_source=True)
    assert source == "bundled mnist_5k"
    assert x.shape == (4000, 28, 28) and x_test.shape == (1000, 28, 28)


def test_load_mnist_uses_tfds_when_it_is_prepared_and_downloads_only_when_asked(monkeypatch):
    from tf_lowprec.cli import datasets  # noqa: PLC0415

    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28, 1)
    labels = np.array([3, 7], np.int64)
    calls = []

    class Builder:
        prepared = True

        def __init__(self, name, data_dir=None):
            calls.append(("builder", name, data_dir))

        def is_prepared(self):
            return Builder.prepared

        def download_and_prepare(self):
            calls.append("download")
            Builder.prepared = True

        def as_dataset(self, split, batch_size, as_supervised):
            calls.append((tuple(split), batch_size, as_supervised))
            return [(images, labels), (images[:1], labels[:1])]

    fake = types.SimpleNamespace(builder=Builder, as_numpy=lambda tree: tree)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    (x, y), (x_test, y_test), source = datasets.load_mnist(return_source=True)
    assert calls == [("builder", "mnist", None), (("train", "test"), -1, True)]
    assert source == "tensorflow_datasets"
    assert x.shape == (2, 28, 28) and x.dtype == np.float32 and x_test.shape == (1, 28, 28)
    np.testing.assert_array_equal(x * 255.0, images[..., 0].astype(np.float32))
    np.testing.assert_array_equal(y, labels)

    # Not prepared: nothing is downloaded unless asked for.
    Builder.prepared, calls[:] = False, []
    assert datasets.load_mnist(return_source=True)[2] == "bundled mnist_5k"
    assert "download" not in calls
    assert datasets.load_mnist(return_source=True, download=True)[2] == "tensorflow_datasets"
    assert "download" in calls
