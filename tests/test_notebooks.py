"""Every notebook runs top to bottom in a real Jupyter kernel (nbclient), at its small setting, and prints facts
that are recomputed here from the files it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy import stats

from tests.conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _execute(path: Path) -> str:
    """Run a notebook in a fresh python3 kernel from its own folder; return its printed text."""
    import nbformat
    from nbclient import NotebookClient

    book = nbformat.read(path, as_version=4)
    client = NotebookClient(book, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    return "\n".join(out.get("text", "") for cell in book.cells if cell.cell_type == "code"
                     for out in cell.outputs if out.output_type == "stream")


def _check_quick_start(out: Path, text: str) -> None:
    import hspec
    from train import record

    final = record.load(out / "run" / "results.json")
    expected = hspec.power_law_verdict(final.eigenvalues, final.fit["k"]).verdict
    assert f"verdict: {expected}" in text
    assert "same eigenvalues as the run wrote: True" in text
    assert f"{final.fit['k']}/{final.fit['k']} converged" in text
    # The two Tr(H) differ by their probes (issue 27, case 13): the notebook says so and prints both counts.
    sh = final.sharpness
    assert (f"the run's record: Tr(H) = {sh['trace']:.4g} +- {sh['trace_stderr']:.2g} from {sh['trace_samples']} "
            "probes (fewer probes") in text
    assert " from 20 probes; positive spectral mass" in text and sh["trace_samples"] == 4


def _check_optimizers(out: Path, text: str) -> None:
    from train import record

    names = ("sgd", "vanilla_sgd", "adam", "radam")
    results = [record.load(out / n / "results.json") for n in names]
    s = [r.fit["s"] for r in results]
    err = [1 - r.metrics["test_acc"] for r in results]
    assert f"Kendall tau(s, test error) = {stats.kendalltau(s, err).statistic:+.3f}" in text
    assert f"sgd          s = {s[0]:.3f}" in text
    smallest = min(s[2:])  # Adam and RAdam are of the Adam family, vanilla SGD is not
    assert ("-> agree: s(SGD)" if s[0] < smallest else "-> disagree: s(SGD)") in text


def _check_batch_size(out: Path, text: str) -> None:
    import hspec
    from train import record

    flags = []
    for b in (8, 32, 128, 512):
        r = record.load(out / f"batch{b}" / "results.json")
        assert r.setting["batch_size"] == b
        assert f"batch {b:>6}: {hspec.power_law_verdict(r.eigenvalues, r.fit['k']).verdict}" in text
        flags.append(r.is_power_law)
    steps = sum(a != c for a, c in zip(flags, flags[1:]))
    status = "agree" if steps == 1 and flags[0] else "disagree"
    assert f"as the batch grows: {status} (" in text


CHECKS = {"spectrum_walkthrough.ipynb": _check_quick_start, "optimizers_exponent.ipynb": _check_optimizers,
          "batch_size_transition.ipynb": _check_batch_size}


def test_every_notebook_is_checked_and_committed_without_outputs():
    assert sorted(CHECKS) == [p.name for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        book = json.loads(path.read_text())
        code = [c for c in book["cells"] if c["cell_type"] == "code"]
        assert all(c["outputs"] == [] and c["execution_count"] is None for c in code), path.name
        assert any("FULL = False" in "".join(c["source"]) for c in code), path.name  # one switch to the full setting


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HSPEC_DATA_DIR", str(data_dir))
    monkeypatch.setenv("HSPEC_NOTEBOOK_OUT", str(tmp_path / "out"))
    # No committed results here: the optimizer notebook computes its small stand-in.
    monkeypatch.setenv("HSPEC_RESULTS_DIR", str(tmp_path / "results"))
    text = _execute(path)
    CHECKS[path.name](tmp_path / "out", text)
