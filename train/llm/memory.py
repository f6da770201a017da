"""An LLM run's Krylov basis against the memory where it will live, checked before anything is trained.

The paper's nano preset (K = 1000 over the last block of 1,770,240 parameters, 3 starts, growing up to
hspec's default 12,000 steps) would allocate 3 x 12,000 x 1,770,240 float32 values, 254.9 GB, at its
first spectrum: after training to step 0's checkpoint, and with a raw out-of-memory traceback. `check`
refuses such a run at once, in one line that names the memory it needs and the overrides that fit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import hspec
from hspec import memory as hmem
from train.llm.presets import LLMConfig, LLMConfigError

__all__ = ["lanczos_budget", "krylov_memory", "check", "check_params", "fitting_overrides"]


def lanczos_budget(cfg: LLMConfig, n: int) -> tuple[int, int, int]:
    """(K, initial steps, rows allocated per start) of a measurement of n parameters, as train.llm.spectrum resolves
    them (K and the steps capped by n, hspec's rules where the config leaves them open) and hspec.lanczos
    allocates them (a growing run allocates its max_steps)."""
    k = min(cfg.k, n)
    steps = min(cfg.lanczos_steps, n) if cfg.lanczos_steps is not None else hspec.default_num_steps(k, n)
    limit = min(cfg.max_lanczos_steps, n) if cfg.max_lanczos_steps is not None else hspec.default_max_steps(steps, n)
    return k, steps, min(n, max(steps, limit))


def krylov_memory(cfg: LLMConfig, n: int, dtype: Any, *, available: int | None = None) -> hmem.KrylovMemory:
    """The Krylov basis the run's spectra allocate, against the memory where it lives (host on CPU, else device)."""
    _, _, rows = lanczos_budget(cfg, n)
    return hmem.krylov_memory(num_starts=cfg.num_starts, num_steps=rows, dim=n, dtype=dtype, available=available)


def _gb(x: int) -> str:
    return f"{x / 1e9:.1f} GB"


def _nice(steps: int) -> int:
    """A step count rounded down to a multiple of 100 (above 1000), for a readable override."""
    return steps // 100 * 100 if steps >= 1000 else steps


def _steps_override(rows: int, steps: int) -> str:
    """--set max_lanczos_steps=rows, and lanczos_steps too when the initial steps exceed it."""
    return f"--set max_lanczos_steps={rows}" + (f" --set lanczos_steps={rows}" if rows < steps else "")


def fitting_overrides(cfg: LLMConfig, mem: hmem.KrylovMemory, k: int, steps: int) -> list[str]:
    """The overrides that make the basis fit, each a `--set` string (or the host basis, where that fits).

    Fewer steps than hspec's rule for K (max(3K, K + 100), what converges K) are not offered.
    """
    options, least = [], hspec.default_num_steps(k, mem.dim)
    rows = _nice(mem.steps_that_fit(cfg.num_starts))
    if rows >= least:
        options.append(_steps_override(rows, steps))
    if cfg.num_starts > 1:
        starts = mem.starts_that_fit()
        one = _nice(mem.steps_that_fit(1))
        if 1 <= starts < cfg.num_starts:
            options.append(f"--set num_starts={starts}")
        elif starts < 1 and one >= least:
            options.append(f"--set num_starts=1 {_steps_override(one, steps)}")
    if mem.where == "device":  # the host basis has no end copy: its rows are handed back as they are
        host = hmem.host_available_bytes()
        if host is not None and mem.needed <= hmem.FIT_FRACTION * host:
            options.append(f"the host basis (hspec.lanczos basis='host': {_gb(mem.needed)} of host memory, "
                           f"{_gb(host)} available)")
    return options


def _fewer_eigenvalues(cfg: LLMConfig, mem: hmem.KrylovMemory) -> str:
    """"what fits: <the largest K whose steps (hspec's rule, max(3K, K + 100)) one start can hold>; or " (or
    nothing when not even K = 1 fits)."""
    rows = _nice(mem.steps_that_fit(1))
    k = rows // 3 if rows >= 300 else rows - 100
    if k < 1:
        return ""
    starts = "--set num_starts=1 " if cfg.num_starts > 1 else ""
    first = f" --set lanczos_steps={rows}" if cfg.lanczos_steps is not None and cfg.lanczos_steps > rows else ""
    return f"what fits: {starts}--set k={k} --set max_lanczos_steps={rows}{first}; or "


def check_params(cfg: LLMConfig, params: Any, pattern: str | None) -> hmem.KrylovMemory:
    """`check` for the subset `pattern` selects of `params` (its size and dtype), the memory measured now."""
    selected, _, _ = hspec.select_parameters(params, pattern)
    n = int(sum(np.size(x) for x in selected))
    return check(cfg, n, np.result_type(*[x.dtype for x in selected]))


def check(cfg: LLMConfig, n: int, dtype: Any, *, available: int | None = None) -> hmem.KrylovMemory:
    """Refuse a run whose Krylov basis does not fit where it lives, in one line with the overrides that fit.

    Args:
        cfg: the run's configuration.
        n: the parameters of the measured subset. dtype: their dtype.
        available: bytes available there (None: measured; tests pass a number).

    Returns:
        The KrylovMemory (it fits).

    Raises:
        LLMConfigError: it does not fit (the CLI's exit status 2).
    """
    mem = krylov_memory(cfg, n, dtype, available=available)
    if mem.fits:
        return mem
    k, steps, _ = lanczos_budget(cfg, n)
    options = fitting_overrides(cfg, mem, k, steps)
    least = hspec.default_num_steps(k, n)
    cure = ("what fits: " + "; or ".join(options)) if options else (
        f"no number of starts or steps fits K={k} (one start of {least:,} steps, hspec's rule for K, needs "
        f"{_gb(mem.copies * hmem.krylov_bytes(num_starts=1, num_steps=least, dim=n, dtype=dtype))}): "
        f"{_fewer_eigenvalues(cfg, mem)}a smaller subset (--set subset=...)")
    copy = ", twice that with the copy of the rows used at the end" if mem.copies == 2 else ""
    raise LLMConfigError(
        f"the Krylov basis of the spectra needs {_gb(mem.needed)} of {mem.where} memory ({mem.num_starts} starts x "
        f"{mem.num_steps:,} Lanczos steps x {n:,} parameters x {mem.itemsize} bytes{copy}) and "
        f"{_gb(mem.available)} is available ({_gb(mem.usable)} usable); {cure}")
