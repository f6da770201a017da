"""Every notebook's code cells run top to bottom (QUICK settings) and their checks hold."""

import json
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, data_dir, monkeypatch):
    monkeypatch.setenv("HSPEC_DATA_DIR", str(data_dir))
    cells = json.loads(path.read_text())["cells"]
    scope: dict = {}
    for i, cell in enumerate(c for c in cells if c["cell_type"] == "code"):
        exec(compile("".join(cell["source"]), f"{path.name}[{i}]", "exec"), scope)
    if "top" in scope and "final" in scope:
        # The notebook's own recomputation agrees with what the run wrote.
        import numpy as np

        np.testing.assert_allclose(scope["top"].eigenvalues, scope["final"]["spectrum"]["eigenvalues"], rtol=1e-3)
