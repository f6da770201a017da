import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hspec
from hspec.krylov import KrylovStore
from tests.hspec.conftest import mlp_loss, mlp_params, prescribed_matrix


def matrix_operator(a):
    a = jnp.asarray(a)
    return lambda v: v @ a  # symmetric: (A vᵀ)ᵀ = v A


@pytest.mark.parametrize("loop", ["python", "fori"])
def test_full_depth_equals_eigvalsh(x64, loop):
    a = prescribed_matrix(np.random.default_rng(3).standard_normal(60))
    res = hspec.lanczos(matrix_operator(a), 60, key=jax.random.key(0), dim=60, dtype=jnp.float64, loop=loop, num_starts=3)
    expected = np.linalg.eigvalsh(a)[::-1]
    for s in range(3):
        np.testing.assert_allclose(res.ritz_values[s], expected, atol=1e-12)
    assert res.ritz_values.shape == (3, 60) and res.loop == loop


def test_tridiagonal_is_basis_projection(x64):
    a = prescribed_matrix(np.linspace(-1, 5, 30))
    res = hspec.lanczos(matrix_operator(a), 12, key=jax.random.key(1), dim=30, dtype=jnp.float64, return_vectors=True)
    # Ritz vectors are orthonormal and satisfy the Rayleigh-Ritz identity yᵀAy = θ.
    y = res.ritz_vectors[0]
    np.testing.assert_allclose(y @ y.T, np.eye(12), atol=1e-10)
    np.testing.assert_allclose(np.einsum("in,nm,im->i", y, a, y), res.ritz_values[0], atol=1e-10)
    # Residual bounds are true bounds: ||A y - θ y|| equals |β_m y_m|.
    true_res = np.linalg.norm(y @ a - res.ritz_values[0][:, None] * y, axis=1)
    np.testing.assert_allclose(true_res, res.residuals[0], atol=1e-9)


def test_power_law_spectrum_top_k(x64):
    lam = 1.0 / np.arange(1, 401) ** 1.2
    a = prescribed_matrix(lam, seed=4)
    res = hspec.lanczos(matrix_operator(a), 150, key=jax.random.key(2), dim=400, dtype=jnp.float64)
    converged = res.residuals[0] <= 1e-8 * lam[0]
    assert converged[:10].all()
    np.testing.assert_allclose(res.ritz_values[0][converged], lam[: converged.sum()], rtol=1e-7)


def test_rank_deficient_operator_breakdown(x64):
    """Rank 5 < m = 20: Lanczos breaks down, restarts, and still gives exact eigenvalues."""
    lam = np.concatenate([[5.0, 4.0, 3.0, 2.0, 1.0], np.zeros(45)])
    a = np.diag(lam)  # exactly rank 5, so that the breakdown is exact too
    runs = []
    for loop, basis in [("python", "device"), ("fori", "device"), ("python", "host")]:
        res = hspec.lanczos(matrix_operator(a), 20, key=jax.random.key(3), dim=50, dtype=jnp.float64, loop=loop,
                            basis=basis)
        runs.append(res)
        assert np.all(np.isfinite(res.ritz_values)) and np.all(np.isfinite(res.residuals))
        np.testing.assert_allclose(res.ritz_values[0][:5], lam[:5], atol=1e-10)
        np.testing.assert_allclose(res.ritz_values[0][5:], 0.0, atol=1e-10)
        # v0 has a null-space component, so the Krylov space has dimension 6: breakdown at step 6 is
        # recorded as an exact zero, which decouples T.
        assert res.betas[0, 5] == 0.0 and np.all(res.betas[0, :5] > 0)
    for res in runs[1:]:
        np.testing.assert_allclose(res.betas, runs[0].betas, atol=1e-12)


def test_breakdown_restart_is_the_same_on_every_path(x64):
    """Three distinct eigenvalues: every Krylov space breaks down after 3 steps. The restart vectors
    (normal(fold_in(key, j)) orthogonal to the basis) set the coefficients that follow, and all three
    paths, device step, fori loop and host step, produce the same ones."""
    lam = np.repeat([5.0, 3.0, 1.0], [10, 10, 30])
    a = prescribed_matrix(lam, seed=12)
    runs = [
        hspec.lanczos(matrix_operator(a), 12, key=jax.random.key(5), dim=50, dtype=jnp.float64, loop=loop,
                      basis=basis, num_starts=2)
        for loop, basis in [("python", "device"), ("fori", "device"), ("python", "host")]
    ]
    for res in runs:
        np.testing.assert_allclose(res.betas[:, 2::3], 0.0, atol=1e-12)  # breakdown every third step
        np.testing.assert_allclose(res.ritz_values, np.tile(np.repeat([5.0, 3.0, 1.0], 4), (2, 1)), atol=1e-10)
        np.testing.assert_allclose(res.alphas, runs[0].alphas, atol=1e-12)
        np.testing.assert_allclose(res.betas, runs[0].betas, atol=1e-12)
    assert np.ptp(runs[0].alphas[0, 3::3]) > 1e-3  # the restarts differ from each other: the test can fail


def test_host_basis_matches_device_basis(x64):
    a = prescribed_matrix(np.random.default_rng(6).standard_normal(40))
    kw = dict(key=jax.random.key(4), dim=40, dtype=jnp.float64, num_starts=2, loop="python")
    dev = hspec.lanczos(matrix_operator(a), 25, basis="device", **kw)
    host = hspec.lanczos(matrix_operator(a), 25, basis="host", **kw)
    np.testing.assert_allclose(host.ritz_values, dev.ritz_values, atol=1e-11)


def test_execution_options_as_one_value_or_as_keywords(x64, tmp_path):
    """LanczosExecution carries the same options as the keywords (bit for bit); a keyword given overrides it."""
    a = prescribed_matrix(np.random.default_rng(6).standard_normal(40))
    kw = dict(key=jax.random.key(4), dim=40, dtype=jnp.float64, num_starts=2)
    by_keywords = hspec.lanczos(matrix_operator(a), 25, loop="python", basis="device", check_every=5, **kw)
    execution = hspec.LanczosExecution(loop="python", basis="device", check_every=5)
    by_value = hspec.lanczos(matrix_operator(a), 25, execution=execution, **kw)
    np.testing.assert_array_equal(by_value.alphas, by_keywords.alphas)
    np.testing.assert_array_equal(by_value.betas, by_keywords.betas)
    assert by_value.loop == "python"
    overridden = hspec.lanczos(matrix_operator(a), 25, execution=execution, loop="fori", **kw)
    assert overridden.loop == "fori"
    with pytest.raises(ValueError, match="checkpoint_dir needs basis='host'"):
        hspec.lanczos(matrix_operator(a), 25, execution=execution, checkpoint_dir=tmp_path / "k", **kw)


def test_top20_of_real_network_against_dense(x64):
    """Top 20 of a 5-16-16-3 MLP (n=419) within 1e-8 relative of its dense eigenvalues."""
    key = jax.random.key(7)
    kx, ky, kp = jax.random.split(key, 3)
    x = jax.random.normal(kx, (64, 5), jnp.float64)
    y = jax.random.randint(ky, (64,), 0, 3)
    params = mlp_params(kp, [5, 16, 16, 3], jnp.float64)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    dense = np.linalg.eigvalsh(np.asarray(jax.hessian(lambda f: mlp_loss(unravel(f), (x, y)))(flat)))[::-1]
    top = hspec.top_eigenvalues(lambda p: mlp_loss(p, (x, y)), params, 20, key=jax.random.key(8), num_steps=150, tol=1e-10)
    assert top.num_converged == 20
    np.testing.assert_allclose(top.eigenvalues, dense[:20], rtol=1e-8)
    assert np.all(np.diff(top.eigenvalues) <= 0)


def test_top_eigenvalues_largest_algebraic_not_magnitude(x64):
    """A spectrum whose largest |λ| is negative: 'top' is the algebraic order."""
    lam = np.array([-10.0, 3.0, 2.0, 1.0, 0.5, -0.5])
    a = jnp.asarray(prescribed_matrix(lam, seed=8))

    def quadratic(p):
        return 0.5 * p["x"] @ a @ p["x"]

    top = hspec.top_eigenvalues(quadratic, {"x": jnp.zeros(6)}, 3, key=jax.random.key(0), num_steps=6)
    np.testing.assert_allclose(top.eigenvalues, [3.0, 2.0, 1.0], atol=1e-12)


def test_combine_pool_and_mean(x64):
    lam = np.linspace(1, 10, 30)
    a = jnp.asarray(prescribed_matrix(lam, seed=9))
    params = {"x": jnp.zeros(30)}

    def quadratic(p):
        return 0.5 * p["x"] @ a @ p["x"]

    pool = hspec.top_eigenvalues(quadratic, params, 4, key=jax.random.key(0), num_steps=30, num_starts=3)
    np.testing.assert_allclose(pool.eigenvalues, [10, 10, 10, lam[-2]], atol=1e-10)  # duplicates across starts
    mean = hspec.top_eigenvalues(quadratic, params, 4, key=jax.random.key(0), num_steps=30, num_starts=3, combine="mean")
    np.testing.assert_allclose(mean.eigenvalues, lam[::-1][:4], atol=1e-10)
    np.testing.assert_allclose(mean.std, 0.0, atol=1e-10)
    assert pool.num_distinct == 2 and mean.num_distinct is None
    distinct = hspec.top_eigenvalues(quadratic, params, 4, key=jax.random.key(0), num_steps=30, num_starts=3,
                                     combine="distinct")
    np.testing.assert_allclose(distinct.eigenvalues, lam[::-1][:4], atol=1e-10)
    assert distinct.num_distinct == 4 and distinct.to_dict()["num_distinct"] == 4


def test_distinct_keeps_close_eigenvalues_and_drops_refound_ones(x64):
    """Eigenvalues 1e-10 apart stay two; each converged eigenvalue found by three starts counts once."""
    lam = np.concatenate([[5.0, 1.0 + 1e-10, 1.0], np.linspace(0.1, 0.5, 27)])
    a = prescribed_matrix(lam, seed=11)
    res = hspec.lanczos(matrix_operator(a), 30, key=jax.random.key(3), dim=30, dtype=jnp.float64, num_starts=3)
    order = hspec.distinct_order(res.ritz_values, res.residuals, 1e-8)
    np.testing.assert_allclose(res.ritz_values.ravel()[order], np.sort(lam)[::-1], rtol=0, atol=1e-12)


def test_distinct_top_k_of_a_power_law_equals_dense(x64):
    """Three short starts on a power-law spectrum: the distinct top k are the true top k, each once."""
    lam = 1.0 / np.arange(1, 401) ** 1.2
    a = jnp.asarray(prescribed_matrix(lam, seed=12))

    def quadratic(p):
        return 0.5 * p["x"] @ a @ p["x"]

    params = {"x": jnp.zeros(400)}
    kw = dict(key=jax.random.key(5), num_steps=60, num_starts=3, tol=1e-8)
    distinct = hspec.top_eigenvalues(quadratic, params, 15, combine="distinct", **kw)
    assert distinct.num_converged == 15
    np.testing.assert_allclose(distinct.eigenvalues, lam[:15], rtol=1e-8)
    pool = hspec.top_eigenvalues(quadratic, params, 15, **kw)
    # Pooled, the converged top values come three times each: 15 values hold only 5 distinct eigenvalues.
    assert pool.num_distinct == 5
    np.testing.assert_allclose(np.unique(np.round(pool.eigenvalues, 12))[::-1], lam[:5], rtol=1e-8)


def test_convergence_warning_and_strict(x64):
    lam = 1.0 / np.arange(1, 201)
    a = jnp.asarray(prescribed_matrix(lam, seed=10))

    def quadratic(p):
        return 0.5 * p["x"] @ a @ p["x"]

    params = {"x": jnp.zeros(200)}
    with pytest.warns(hspec.NotConvergedWarning, match="of the top 30 Ritz values converged"):
        hspec.top_eigenvalues(quadratic, params, 30, key=jax.random.key(0), num_steps=32, tol=1e-10)
    with pytest.raises(hspec.NotConvergedError, match="Increase num_steps"):
        hspec.top_eigenvalues(quadratic, params, 30, key=jax.random.key(0), num_steps=32, tol=1e-10, strict=True)


def test_strict_failure_keeps_the_krylov_state_and_says_where(x64, tmp_path):
    lam = 1.0 / np.arange(1, 201)
    a = jnp.asarray(prescribed_matrix(lam, seed=10))
    params, store = {"x": jnp.zeros(200)}, tmp_path / "krylov"
    kw = dict(key=jax.random.key(0), num_steps=32, tol=1e-10, basis="host", checkpoint_dir=store)
    with pytest.raises(hspec.NotConvergedError, match=f"kept in {store}: a run with a larger max_steps"):
        hspec.top_eigenvalues(lambda p: 0.5 * p["x"] @ a @ p["x"], params, 30, max_steps=40, strict=True, **kw)
    assert KrylovStore.saved_steps(store) == 40
    top = hspec.top_eigenvalues(lambda p: 0.5 * p["x"] @ a @ p["x"], params, 30, max_steps=200, strict=True, **kw)
    np.testing.assert_allclose(top.eigenvalues, lam[:30], rtol=1e-9)
    assert not store.exists()


def test_growing_run_stops_when_top_k_converged(x64):
    """max_steps grows the Krylov space until the top k converge; the result equals a fixed run of that length."""
    lam = 1.0 / np.arange(1, 201)
    a = jnp.asarray(prescribed_matrix(lam, seed=10))

    def quadratic(p):
        return 0.5 * p["x"] @ a @ p["x"]

    params = {"x": jnp.zeros(200)}
    grown = hspec.top_eigenvalues(quadratic, params, 30, key=jax.random.key(0), num_steps=32, max_steps=200, tol=1e-10)
    assert grown.num_converged == 30 and 32 < grown.num_steps < 200
    fixed = hspec.top_eigenvalues(quadratic, params, 30, key=jax.random.key(0), num_steps=grown.num_steps, tol=1e-10)
    np.testing.assert_allclose(grown.eigenvalues, fixed.eigenvalues, atol=1e-13)
    np.testing.assert_allclose(grown.eigenvalues, lam[:30], rtol=1e-9)


def test_distinct_in_float32_matches_starts_through_rounding():
    """float32 products: two starts' values of one eigenvalue differ by more than their T-based bounds."""
    lam = 1.0 / np.arange(1, 301) ** 1.1
    a = jnp.asarray(prescribed_matrix(lam, seed=13), jnp.float32)

    def quadratic(p):
        return 0.5 * p["x"] @ a @ p["x"]

    top = hspec.top_eigenvalues(quadratic, {"x": jnp.zeros(300, jnp.float32)}, 10, key=jax.random.key(6),
                                num_steps=50, num_starts=3, combine="distinct")
    assert top.num_converged == 10 and top.num_distinct == 10
    np.testing.assert_allclose(top.eigenvalues, lam[:10], rtol=1e-4)


@pytest.mark.parametrize("where", ["host", "device"])
def test_orthogonalize_repeats_the_pass_only_where_cancellation_needs_it(x64, where):
    """Start 0 lies in the span of the basis up to 1e-9: one Gram-Schmidt pass leaves it far from
    orthogonal (rounding of the removed part), the second pass makes it orthogonal at working
    precision. Start 1 is a random vector: one pass already suffices and the answer is its exact
    perpendicular part."""
    from hspec import lanczos_steps

    rng = np.random.default_rng(11)
    n, r = 300, 60
    q = np.linalg.qr(rng.standard_normal((n, r + 2)))[0]
    basis, u, g = q[:, :r].T, q[:, r], rng.standard_normal(n)
    w = np.stack([basis.T @ rng.standard_normal(r) + 1e-9 * u, g])
    perp = np.stack([1e-9 * u, g - basis.T @ (basis @ g)])  # the exact answers, from the orthonormal q
    stacked = np.stack([basis, basis])
    if where == "host":
        out = lanczos_steps._host_orthogonalize(stacked, w)
    else:
        out = np.asarray(lanczos_steps._orthogonalize(jnp.asarray(stacked), jnp.asarray(w)))

    def tilt(x):  # how far from orthogonal to the basis, relative to the vector's length
        return np.linalg.norm(stacked @ x[..., None], axis=(1, 2)) / np.linalg.norm(x, axis=1)

    one_pass = w - np.einsum("srn,sr->sn", stacked, np.einsum("srn,sn->sr", stacked, w))
    assert tilt(one_pass)[0] > 1e-10  # one pass is not enough for start 0: the test can fail
    assert np.all(tilt(out) < 1e-13)
    np.testing.assert_allclose(out[1], perp[1], atol=1e-13)
    np.testing.assert_allclose(out[0], perp[0], atol=1e-15)


class _Killed(Exception):
    pass


def _counting(a, fail_at=None):
    """A matrix operator that counts its products and raises at product number ``fail_at`` (a kill)."""
    calls = [0]

    def matvec(v):
        calls[0] += 1
        if fail_at is not None and calls[0] == fail_at:
            raise _Killed
        return v @ jnp.asarray(a)

    return matvec, calls


def test_killed_lanczos_resumes_from_its_checkpoint_to_the_same_result(x64, tmp_path):
    """Growing run (checked at 30, 40, 50, ... steps): killed at product 45, started again with the same
    arguments, it resumes from the last save and ends bit-identical to an uninterrupted run; its files are gone."""
    a = prescribed_matrix(1.0 / np.arange(1, 201) ** 1.5, seed=21)
    stop = lambda alphas, betas: alphas.shape[1] >= 55  # noqa: E731  (first true at the check point 60)
    kw = dict(key=jax.random.key(8), dim=200, dtype=jnp.float64, num_starts=2, max_steps=150, stop=stop,
              check_every=10, basis="host")
    plain = hspec.lanczos(_counting(a)[0], 30, **kw)
    assert plain.num_steps == 60
    store = tmp_path / "krylov"
    killed, _ = _counting(a, fail_at=45)
    with pytest.raises(_Killed):
        hspec.lanczos(killed, 30, checkpoint_dir=store, checkpoint_every_s=0, **kw)
    assert (store / "state.npz").is_file()
    again, calls = _counting(a)
    resumed = hspec.lanczos(again, 30, checkpoint_dir=store, checkpoint_every_s=0, **kw)
    assert calls[0] < 60 - 30  # resumed past step 30: one product to check α_0, then the remaining steps
    np.testing.assert_array_equal(resumed.alphas, plain.alphas)
    np.testing.assert_array_equal(resumed.betas, plain.betas)
    np.testing.assert_array_equal(resumed.ritz_values, plain.ritz_values)
    assert not store.exists()


def test_a_resumed_run_counts_the_seconds_its_saved_steps_took(x64, tmp_path):
    """Every product sleeps 20 ms, so the 44 steps saved before a kill at product 45 took at least 0.88 s, and at
    most the killed call's wall time: the resumed run reports them (resumed_s), and its own steps only from 44 on;
    a run without a saved state reports none."""
    a = prescribed_matrix(1.0 / np.arange(1, 101) ** 1.5, seed=23)
    stop = lambda alphas, betas: alphas.shape[1] >= 55  # noqa: E731
    kw = dict(key=jax.random.key(11), dim=100, dtype=jnp.float64, max_steps=150, stop=stop, check_every=10,
              basis="host", checkpoint_every_s=0)
    counted, _ = _counting(a, fail_at=45)

    def slow(v):
        time.sleep(0.02)
        return counted(v)

    store = tmp_path / "krylov"
    t0 = time.perf_counter()
    with pytest.raises(_Killed):
        hspec.lanczos(slow, 30, checkpoint_dir=store, **kw)
    killed_wall = time.perf_counter() - t0
    saved = KrylovStore.saved_steps(store)
    assert saved == 44
    resumed = hspec.lanczos(_counting(a)[0], 30, checkpoint_dir=store, **kw)
    assert resumed.resumed_steps == saved and resumed.num_steps == 60
    assert 0.02 * saved <= resumed.resumed_s <= killed_wall
    fresh = hspec.lanczos(_counting(a)[0], 30, checkpoint_dir=tmp_path / "other", **kw)
    assert (fresh.resumed_steps, fresh.resumed_s) == (0, 0.0)


def test_a_run_out_of_budget_keeps_its_state_and_a_larger_budget_continues_it(x64, tmp_path):
    """stop first true at the check point 60: under max_steps=40 the run ends unconverged and keeps its files;
    a smaller budget (35) resumes them truncated, and a larger one (150) continues from there to exactly
    the uninterrupted 60-step run, with one product to check α_0 and the missing steps only."""
    a = prescribed_matrix(1.0 / np.arange(1, 201) ** 1.5, seed=22)
    stop = lambda alphas, betas: alphas.shape[1] >= 55  # noqa: E731
    kw = dict(key=jax.random.key(10), dim=200, dtype=jnp.float64, num_starts=2, stop=stop, check_every=10,
              basis="host")
    plain = hspec.lanczos(_counting(a)[0], 30, max_steps=150, **kw)
    plain35 = hspec.lanczos(_counting(a)[0], 30, max_steps=35, **kw)
    assert (plain.num_steps, plain35.num_steps) == (60, 35)
    store = tmp_path / "krylov"
    ran_out = hspec.lanczos(_counting(a)[0], 30, max_steps=40, checkpoint_dir=store, checkpoint_every_s=0, **kw)
    assert ran_out.num_steps == 40 and KrylovStore.saved_steps(store) == 40
    again, calls = _counting(a)
    smaller = hspec.lanczos(again, 30, max_steps=35, checkpoint_dir=store, checkpoint_every_s=0, **kw)
    assert calls[0] == 1  # only the α_0 check: the 35 steps are on disk
    np.testing.assert_array_equal(smaller.alphas, plain35.alphas)
    np.testing.assert_array_equal(smaller.betas, plain35.betas)
    assert KrylovStore.saved_steps(store) == 35
    again, calls = _counting(a)
    larger = hspec.lanczos(again, 30, max_steps=150, checkpoint_dir=store, checkpoint_every_s=0, **kw)
    assert calls[0] == 1 + 60 - 35
    np.testing.assert_array_equal(larger.alphas, plain.alphas)
    np.testing.assert_array_equal(larger.betas, plain.betas)
    np.testing.assert_array_equal(larger.ritz_values, plain.ritz_values)
    assert not store.exists()


def test_a_saved_krylov_state_of_another_operator_is_not_continued(x64, tmp_path):
    a = prescribed_matrix(np.linspace(1, 2, 80), seed=1)
    b = prescribed_matrix(np.linspace(1, 3, 80), seed=1)
    kw = dict(key=jax.random.key(9), dim=80, dtype=jnp.float64, basis="host", checkpoint_dir=tmp_path / "s",
              checkpoint_every_s=0)
    with pytest.raises(_Killed):
        hspec.lanczos(_counting(a, fail_at=20)[0], 40, **kw)
    other = hspec.lanczos(_counting(b)[0], 40, **kw)
    fresh = hspec.lanczos(matrix_operator(b), 40, key=jax.random.key(9), dim=80, dtype=jnp.float64, basis="host")
    np.testing.assert_array_equal(other.alphas, fresh.alphas)
    with pytest.raises(ValueError, match="checkpoint_dir needs basis='host'"):
        hspec.lanczos(matrix_operator(b), 10, key=jax.random.key(9), dim=80, dtype=jnp.float64, basis="device",
                      checkpoint_dir=tmp_path / "d")
