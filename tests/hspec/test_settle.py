"""The settle rule of top_eigenvalues: the residual rule passes on a dense tail with ranks still wrong; requiring
that the top k stop moving finds them. Checked against dense eigvalsh of the matrix and of the tridiagonals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hspec
from hspec.eigenvalues import top_k_movement

# Two outliers over a dense cluster of 200: the top 30 are 10, 5 and 28 values in [0.99, 1].
EIGS = np.concatenate([[10.0, 5.0], np.linspace(1.0, 0.99, 200)])


def _matrix(eigs):
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((eigs.size, eigs.size)))
    return jnp.asarray((q * eigs) @ q.T, jnp.float64)


def _quadratic_operator(eigs):
    """The Hessian of 0.5 θᵀAθ, which is A."""
    a = _matrix(eigs)
    return hspec.hessian_operator(lambda theta: 0.5 * theta @ a @ theta, jnp.zeros(eigs.size, jnp.float64))


def _tridiagonal_top(alphas, betas, m, k):
    t = np.diag(alphas[:m]) + np.diag(betas[:m - 1], 1) + np.diag(betas[:m - 1], -1)
    return np.sort(np.linalg.eigvalsh(t))[::-1][:k]


def test_movement_is_the_largest_relative_change_of_the_top_k_over_the_last_steps(x64):
    a = _matrix(EIGS)
    run = hspec.lanczos(lambda v: v @ a, 80, key=jax.random.key(1), dim=EIGS.size, dtype=jnp.float64)
    now, before = (_tridiagonal_top(run.alphas[0], run.betas[0], m, 30) for m in (80, 60))
    assert top_k_movement(run.alphas, run.betas, 20, k=30) == pytest.approx(np.max(np.abs(now - before) / now),
                                                                              rel=1e-8)
    assert top_k_movement(run.alphas, run.betas, 60, k=30) is None  # 20 steps give fewer than 30 values


def test_the_residual_rule_stops_with_ranks_wrong_the_settle_rule_goes_on_until_they_are_right(x64):
    exact = np.sort(EIGS)[::-1][:30]
    common = dict(k=30, key=jax.random.key(1), num_steps=40, max_steps=202, tol=1e-3)
    op = _quadratic_operator(EIGS)
    loose = hspec.top_eigenvalues(op, **common)
    assert loose.num_steps == 40 and loose.num_converged == 30 and loose.settle is None
    assert np.max(np.abs(loose.eigenvalues - exact) / exact) > 1e-3
    assert loose.moved == pytest.approx(top_k_movement(loose.lanczos.alphas, loose.lanczos.betas, 10, k=30))
    settled = hspec.top_eigenvalues(op, settle=1e-5, **common)
    assert settled.num_steps > 40 and settled.moved <= 1e-5 and settled.settle == 1e-5
    assert settled.eigenvalues == pytest.approx(exact, rel=1e-4)
    assert settled.to_dict()["moved"] == settled.moved and settled.to_dict()["settle_steps"] == 10


def test_unsettled_at_the_step_limit_is_an_error_when_strict_and_a_warning_otherwise(x64):
    op = _quadratic_operator(EIGS)
    common = dict(k=30, key=jax.random.key(1), num_steps=40, max_steps=50, tol=1e-3, settle=1e-12)
    with pytest.raises(hspec.NotConvergedError, match="not settled: they still moved by up to"):
        hspec.top_eigenvalues(op, strict=True, **common)
    with pytest.warns(hspec.NotConvergedWarning, match="Increase max_steps"):
        hspec.top_eigenvalues(op, **common)
