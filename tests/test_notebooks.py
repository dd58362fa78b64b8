"""The colab/ notebooks run top to bottom (small setting), so they cannot rot.

Each notebook is executed in a fresh python3 kernel with
TF_LOWPREC_NOTEBOOK_SMALL=1 (a few hundred images, tiny GEMMs); any cell that
raises fails the test with the cell's traceback.
"""

import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

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
