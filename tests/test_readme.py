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
