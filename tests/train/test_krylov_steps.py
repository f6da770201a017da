"""train.krylov_steps: the top K of one Krylov run at growing m, checked against dense linear algebra."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hspec
from train import record
from tests.hspec.conftest import x64  # noqa: F401 (fixture)
from train.krylov_steps import steps_table


def _lanczos_of(eigs: np.ndarray, m: int):
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((eigs.size, eigs.size)))
    a = jnp.asarray((q * eigs) @ q.T, jnp.float64)
    run = hspec.lanczos(lambda v: v @ a, m, key=jax.random.key(1), dim=eigs.size, dtype=jnp.float64)
    return run.alphas[0], run.betas[0]


def test_rows_are_the_top_k_of_each_truncated_run_as_dense_eigvalsh_gives_them(x64):
    """Each row's d_KS and λ_K are those of the top K eigenvalues of the dense m×m tridiagonal T_m; at the full
    dimension T_n has the operator's own eigenvalues."""
    eigs = np.sort(1.0 / np.arange(1, 121) ** 1.3)[::-1]
    alphas, betas = _lanczos_of(eigs, 120)
    k, steps = 40, [50, 80, 120]
    rows = steps_table(alphas, betas, steps, k, tol=1e-6)
    for row, m in zip(rows, steps):
        t = np.diag(alphas[:m]) + np.diag(betas[:m - 1], 1) + np.diag(betas[:m - 1], -1)
        top = np.sort(np.linalg.eigvalsh(t))[::-1][:k]
        assert row["m"] == m and row["lambda_k"] == pytest.approx(top[-1], rel=1e-9)
        assert row["d_ks"] == pytest.approx(record.refit(top, k)["fit"]["d_ks"], rel=1e-9)
    assert rows[-1]["lambda_k"] == pytest.approx(eigs[k - 1], rel=1e-8)
    assert rows[-1]["max_relative_change_to_last"] == 0.0 and rows[-1]["num_converged"] == k


def test_an_eigenvalue_the_short_run_has_not_found_shows_as_a_change_of_the_ranks_below_it(x64):
    """A short run meets the residual rule for its top values yet misses eigenvalues of a dense tail: the change to
    the longest run is counted over the ranks."""
    eigs = np.concatenate([[10.0, 5.0], np.linspace(1.0, 0.99, 200)])
    alphas, betas = _lanczos_of(eigs, 202)
    rows = steps_table(alphas, betas, [40, 202], 30, tol=1e-3)
    exact = np.sort(eigs)[::-1][:30]
    t = np.diag(alphas[:40]) + np.diag(betas[:39], 1) + np.diag(betas[:39], -1)
    short = np.sort(np.linalg.eigvalsh(t))[::-1][:30]
    assert rows[0]["num_converged"] == 30  # every value meets the rule (residual <= 1e-3 λ_1)
    assert rows[0]["ranks_changed_over_1e-3"] == int(np.sum(np.abs(short - exact) / exact > 1e-3)) > 0


def test_a_step_beyond_the_run_is_refused(x64):
    alphas, betas = _lanczos_of(np.linspace(2.0, 1.0, 30), 30)
    with pytest.raises(ValueError, match="fewer than m = 31"):
        steps_table(alphas, betas, [10, 31], 5, tol=1e-6)
    with pytest.raises(ValueError, match="fewer than K = 5"):
        steps_table(alphas, betas, [4, 30], 5, tol=1e-6)


def test_rule_stops_the_residual_rule_fires_first_the_settled_rule_when_no_rank_moves(x64):
    """On a dense tail the residual rule stops at the first check with ranks still wrong; "settled ε" stops at the
    first check whose top K moved by at most ε over the last `every` steps (also at the first check, whose earlier
    run is the one truncated `every` steps before it), each checked with dense eigvalsh."""
    from train.krylov_steps import rule_stops

    eigs = np.concatenate([[10.0, 5.0], np.linspace(1.0, 0.99, 200)])
    alphas, betas = _lanczos_of(eigs, 202)
    k = 30

    def top(m):
        t = np.diag(alphas[:m]) + np.diag(betas[:m - 1], 1) + np.diag(betas[:m - 1], -1)
        return np.sort(np.linalg.eigvalsh(t))[::-1][:k]

    residual, settled = rule_stops(alphas, betas, k, 1e-3, first=40, every=20, settle=(1e-4,))
    assert residual["m"] == 40 and residual["max_relative_change_to_last"] > 1e-3
    checks = range(40, 203, 20)
    moved = {m: np.max(np.abs(top(m) - top(m - 20)) / top(m)) for m in checks if m - 20 >= k}
    expected = min(m for m, d in moved.items() if d <= 1e-4)
    assert settled["m"] == expected and settled["lambda_k"] == pytest.approx(top(expected)[-1], rel=1e-9)
    assert settled["max_relative_change_to_last"] == pytest.approx(np.max(np.abs(top(expected) - top(202)) / top(202)),
                                                                   rel=1e-6, abs=1e-12)


def test_an_extension_keeps_its_krylov_state_for_the_study_to_continue(x64, tmp_path):
    """hspec clears a finished run's state; the extension passes a stop that never fires, so the state stays (the
    Hessian-sample study's piece then continues from it instead of computing its steps again)."""
    from hspec.krylov import KrylovStore
    from train.krylov_steps import _never

    a = jnp.asarray(np.diag(np.linspace(2.0, 1.0, 30)), jnp.float64)
    kept, cleared = tmp_path / "kept", tmp_path / "cleared"
    hspec.lanczos(lambda v: v @ a, 12, key=jax.random.key(1), dim=30, dtype=jnp.float64, checkpoint_dir=kept,
                  stop=_never, basis="host", loop="python")
    hspec.lanczos(lambda v: v @ a, 12, key=jax.random.key(1), dim=30, dtype=jnp.float64, checkpoint_dir=cleared,
                  basis="host", loop="python")
    assert KrylovStore.saved_steps(kept) == 12 and KrylovStore.saved_steps(cleared) is None


@pytest.mark.parametrize("settle", [None, 1e-5])
def test_the_replay_stops_where_hspec_s_own_growing_run_stops(x64, settle):
    """rule_stops applies hspec's rule, not a copy: replayed on the coefficients of a growing hspec.top_eigenvalues
    run from `first` steps (checked every max(10, first/10) steps), the rule fires first at the step where that run
    stopped."""
    from train.krylov_steps import rule_stops

    eigs = np.concatenate([[10.0, 5.0], np.linspace(1.0, 0.99, 200)])
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((eigs.size, eigs.size)))
    a = jnp.asarray((q * eigs) @ q.T, jnp.float64)
    op = hspec.hessian_operator(lambda theta: 0.5 * theta @ a @ theta, jnp.zeros(eigs.size, jnp.float64))
    k, first, tol = 12, 40, 1e-3
    grown = hspec.top_eigenvalues(op, k=k, key=jax.random.key(1), num_steps=first, max_steps=202, tol=tol,
                                  settle=settle, strict=False)
    assert grown.num_steps > first or settle is None  # the settled run grew: its earlier checks did not fire
    alphas, betas = grown.lanczos.alphas[0], grown.lanczos.betas[0]
    stops = rule_stops(alphas, betas, k, tol, first=first, every=max(10, first // 10),
                       settle=() if settle is None else (settle,))
    assert stops[-1]["m"] == grown.num_steps
    assert stops[-1]["lambda_k"] == pytest.approx(grown.eigenvalues[-1], rel=1e-9)
