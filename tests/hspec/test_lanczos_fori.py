"""The compiled Lanczos step reads only the basis rows filled so far, and computes what the whole-buffer step did."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hspec
from hspec import krylov, lanczos_steps
from tests.hspec.conftest import prescribed_matrix


def matrix_operator(a):
    a = jnp.asarray(a)
    return lambda v: v @ a  # symmetric: (A vᵀ)ᵀ = v A


def _whole_buffer_step(V, alphas, betas, v, w, j, key):
    """The step as it was before: every step orthogonalised against all m rows of the buffer."""
    V, alphas, w = lanczos_steps._three_term(V, alphas, betas, v, w, j)
    w = lanczos_steps._orthogonalize(V, w)
    scale = lanczos_steps._scale(alphas, betas, jnp)
    beta, v_next = lanczos_steps._next_vector(lanczos_steps._DEVICE, V, w, scale, key, j)
    return V, alphas, jax.lax.dynamic_update_slice_in_dim(betas, beta[:, None], j, axis=1), v_next


def _whole_buffer_lanczos(a, m, key, num_starts):
    """Lanczos as lanczos(..., loop="fori") ran before, step by step (the same keys and start vectors)."""
    n = a.shape[0]
    k_start, k_restart = jax.random.split(key)
    v = krylov.start_vectors(k_start, num_starts, n, jnp.float64)
    V, alphas, betas = jnp.zeros((num_starts, m, n)), jnp.zeros((num_starts, m)), jnp.zeros((num_starts, m))
    step = jax.jit(_whole_buffer_step)
    for j in range(m):
        V, alphas, betas, v = step(V, alphas, betas, v, v @ jnp.asarray(a), j, k_restart)
    return np.asarray(alphas), np.asarray(betas)


@pytest.mark.parametrize("filled", [1, 15, 16, 17, 90, 100])
def test_orthogonalize_filled_reads_only_the_filled_rows(x64, filled):
    """Rows at and beyond `filled` hold garbage: the result is that of the filled prefix alone, through the
    block loop's every case (one block, a block boundary, the last block overlapping the one before)."""
    rng = np.random.default_rng(filled)
    m, n = 100, 300  # blocks of 16 rows: 7 blocks, the last one starting at row 84
    assert lanczos_steps._block_rows(m) == 16
    prefix = np.linalg.qr(rng.standard_normal((n, filled)))[0].T
    V = np.stack([np.concatenate([prefix, 1e3 * rng.standard_normal((m - filled, n))])] * 2)
    w = rng.standard_normal((2, n))
    got = np.asarray(lanczos_steps._orthogonalize_filled(jnp.asarray(V), jnp.asarray(w), jnp.int32(filled)))
    expected = np.asarray(lanczos_steps._orthogonalize(jnp.asarray(V[:, :filled]), jnp.asarray(w)))
    np.testing.assert_allclose(got, expected, atol=1e-12)
    np.testing.assert_allclose(np.einsum("srn,sn->sr", V[:, :filled], got), 0.0, atol=1e-12)


def test_fori_equals_python_loop_host_basis_and_eigvalsh(x64):
    """Full depth (m = n = 150: ten blocks of 16, the last overlapping), three starts."""
    a = prescribed_matrix(np.random.default_rng(21).standard_normal(150), seed=21)
    kw = dict(key=jax.random.key(8), dim=150, dtype=jnp.float64, num_starts=3)
    fori = hspec.lanczos(matrix_operator(a), 150, loop="fori", **kw)
    python = hspec.lanczos(matrix_operator(a), 150, loop="python", basis="device", **kw)
    host = hspec.lanczos(matrix_operator(a), 150, loop="python", basis="host", **kw)
    assert fori.loop == "fori" and python.loop == "python"
    for other in (python, host):
        np.testing.assert_allclose(other.alphas, fori.alphas, atol=1e-12)
        np.testing.assert_allclose(other.betas, fori.betas, atol=1e-12)
    expected = np.linalg.eigvalsh(a)[::-1]
    for s in range(3):
        np.testing.assert_allclose(fori.ritz_values[s], expected, atol=1e-11)


def test_fori_gives_the_coefficients_of_the_whole_buffer_step(x64):
    """The same coefficients as the step that orthogonalised against all m rows (the loop before this one)."""
    lam = 1.0 / np.arange(1, 201) ** 1.1
    a = prescribed_matrix(lam, seed=22)
    key = jax.random.key(9)
    alphas, betas = _whole_buffer_lanczos(a, 80, key, 2)
    fori = hspec.lanczos(matrix_operator(a), 80, key=key, dim=200, dtype=jnp.float64, loop="fori", num_starts=2)
    np.testing.assert_allclose(fori.alphas, alphas, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fori.betas, betas, rtol=1e-12, atol=1e-14)


def test_fori_run_in_chunks_equals_one_program(x64):
    """Chunks of steps across block boundaries (what the progress bar and the growing run do) give the
    bits of one run: the same compiled program with other loop bounds."""
    a = jnp.asarray(prescribed_matrix(np.linspace(-1.0, 3.0, 120), seed=23))
    op = hspec.MatvecOperator(lambda v: v @ a, 120, jnp.float64)
    k_start, key = jax.random.split(jax.random.key(10))
    v0 = krylov.start_vectors(k_start, 2, 120, jnp.float64)
    run = partial(lanczos_steps._run_steps, op.pure_matvec, op.args)

    def fresh():
        return jnp.zeros((2, 90, 120)), jnp.zeros((2, 90)), jnp.zeros((2, 90)), v0

    whole = run(*fresh(), key, 0, 90)
    state = fresh()
    for j0, j1 in [(0, 7), (7, 16), (16, 17), (17, 50), (50, 90)]:
        state = run(*state, key, j0, j1)
    for x, y in zip(whole, state):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_fori_float32_top_values_against_dense():
    """The default precision: float32, a growing fori run; the top values agree with the dense ones."""
    lam = 1.0 / np.arange(1, 301) ** 1.1
    a = jnp.asarray(prescribed_matrix(lam, seed=24), jnp.float32)
    top = hspec.top_eigenvalues(lambda p: 0.5 * p["x"] @ a @ p["x"], {"x": jnp.zeros(300, jnp.float32)}, 10,
                                key=jax.random.key(11), num_steps=40, max_steps=200, loop="fori", basis="device")
    assert top.num_converged == 10
    np.testing.assert_allclose(top.eigenvalues, lam[:10], rtol=1e-4)
