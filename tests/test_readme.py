"""The README's API example runs and its verdict is the one hspec computes another way."""

import re
from pathlib import Path

import numpy as np

import hspec

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(capsys):
    text = README.read_text()
    section = text.split("## Use it on any loss", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    top, verdict = scope["top"], scope["verdict"]
    assert top.num_converged == 50
    # The same verdict from the fit function directly, and the printed line says it.
    fit = hspec.fit_power_law(top.eigenvalues)
    assert verdict.is_power_law == fit.is_power_law and np.isclose(verdict.fit.d_ks, fit.d_ks)
    assert verdict.verdict in capsys.readouterr().out


def test_readme_operator_example_gives_the_loss_function_numbers():
    section = README.read_text().split("## Use it on any loss", 1)[1]
    first, second = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    scope: dict = {}
    exec(compile(first, "README.md", "exec"), scope)
    exec(compile(second, "README.md", "exec"), scope)
    np.testing.assert_allclose(scope["top"].eigenvalues, hspec.top_eigenvalues(
        scope["loss"], scope["params"], k=50, key=scope["jax"].random.key(3)).eigenvalues, rtol=1e-5)
    assert np.isfinite(scope["trace"].trace) and scope["trace"].num_samples == 50
