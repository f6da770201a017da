import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hspec
from hspec.krylov import start_vectors
from tests.hspec.conftest import mlp_loss, prescribed_matrix


def quadratic_of(a):
    a = jnp.asarray(a)
    return lambda p: 0.5 * p["x"] @ a @ p["x"]


def test_hutchinson_exact_on_diagonal(x64):
    """Rademacher probes give zᵀDz = Tr(D) exactly for a diagonal D: zero variance."""
    d = np.linspace(-1, 3, 25)
    est = hspec.hutchinson_trace(quadratic_of(np.diag(d)), {"x": jnp.zeros(25)}, key=jax.random.key(0), num_samples=8)
    assert est.trace == pytest.approx(d.sum(), abs=1e-12) and est.stderr == pytest.approx(0.0, abs=1e-12)


def test_hutchinson_unbiased_on_network(tiny_problem):
    params, batch, dense, _ = tiny_problem
    est = hspec.hutchinson_trace(lambda p: mlp_loss(p, batch), params, key=jax.random.key(1), num_samples=400, chunk=50)
    assert abs(est.trace - np.trace(dense)) < 4 * est.stderr
    np.testing.assert_allclose(est.stderr, est.samples.std(ddof=1) / 20)


def test_power_iteration_matches_dense(tiny_problem):
    params, batch, dense, _ = tiny_problem
    ev = np.linalg.eigvalsh(dense)
    lam_max = ev[np.argmax(np.abs(ev))]
    res = hspec.power_iteration(lambda p: mlp_loss(p, batch), params, key=jax.random.key(2), num_iters=2000, tol=1e-12)
    assert res.converged and res.eigenvalue == pytest.approx(lam_max, rel=1e-8)


def test_slq_quadrature_is_exact_for_moments(x64):
    """Full-depth SLQ reproduces each probe's zᵀAz and zᵀA²z; the linear density integrates to 1."""
    lam = np.linspace(0.5, 4.0, 40)
    a = prescribed_matrix(lam, seed=1)
    params = {"x": jnp.zeros(40)}
    res = hspec.lanczos(hspec.hessian_operator(quadratic_of(a), params), 40, key=jax.random.key(3), num_starts=4)
    z = np.asarray(start_vectors(jax.random.split(jax.random.key(3))[0], 4, 40, jnp.float64))
    for power in (1, 2):
        quad = np.sum(res.weights * res.ritz_values**power, axis=1)
        exact = np.einsum("sn,nm,sm->s", z, np.linalg.matrix_power(a, power), z)
        np.testing.assert_allclose(quad, exact, rtol=1e-10)
    dens = hspec.density_from_lanczos(res, num_points=4000)
    assert np.trapezoid(dens.density, dens.grid) == pytest.approx(1.0, abs=1e-3)
    log = hspec.density_from_lanczos(res, scale="log", num_points=4000)
    assert np.trapezoid(log.density, np.log10(log.grid)) == pytest.approx(1.0, abs=1e-3)


def test_spectral_density_driver_mean(tiny_problem):
    """The density's mean equals Tr(H)/n in expectation; with many probes it is close."""
    params, batch, dense, _ = tiny_problem
    n = dense.shape[0]
    dens = hspec.spectral_density(lambda p: mlp_loss(p, batch), params, key=jax.random.key(4), num_steps=n, num_probes=64)
    mean = np.sum(dens.weights * dens.nodes) / dens.nodes.shape[0]
    per_probe = np.sum(dens.weights * dens.nodes, axis=1)
    assert abs(mean - np.trace(dense) / n) < 4 * per_probe.std(ddof=1) / 8


def test_nonfinite_loss_is_reported(tiny_problem):
    params, batch, _, _ = tiny_problem
    bad = jax.tree.map(lambda x: x * jnp.nan, params)
    for call in (
        lambda: hspec.top_eigenvalues(lambda p: mlp_loss(p, batch), bad, 3, key=jax.random.key(0)),
        lambda: hspec.hutchinson_trace(lambda p: mlp_loss(p, batch), bad, key=jax.random.key(0)),
        lambda: hspec.spectral_density(lambda p: mlp_loss(p, batch), bad, key=jax.random.key(0)),
        lambda: hspec.power_iteration(lambda p: mlp_loss(p, batch), bad, key=jax.random.key(0)),
    ):
        with pytest.raises(hspec.NonFiniteError, match="the loss is nan"):
            call()


def test_a_nan_in_one_of_several_batches_names_that_batch(x64):
    """Issue 27, case 10: of batches=[b0, b1, b2], a NaN in b1's data is named, by every driver and by an operator
    built with those batches; one batch, or params that are NaN everywhere, keep the plain message."""
    rng = np.random.default_rng(0)
    batches = [(jnp.asarray(rng.standard_normal((5, 3))), jnp.asarray(rng.standard_normal(5))) for _ in range(3)]
    batches[1] = (batches[1][0].at[2, 1].set(jnp.nan), batches[1][1])

    def loss(p, batch):
        x, y = batch
        return jnp.mean((x @ p["w"] - y) ** 2)

    params, key = {"w": jnp.ones(3)}, jax.random.key(0)
    op = hspec.hessian_operator(loss, params, batches=batches)
    for call in (
        lambda: hspec.top_eigenvalues(loss, params, 2, batches=batches, key=key),
        lambda: hspec.hutchinson_trace(loss, params, batches=batches, key=key),
        lambda: hspec.spectral_density(loss, params, batches=batches, key=key),
        lambda: hspec.power_iteration(loss, params, batches=batches, key=key),
        lambda: hspec.top_eigenvalues(op, k=2, key=key),
    ):
        with pytest.raises(hspec.NonFiniteError) as err:
            call()
        assert "the loss is nan" in str(err.value)
        assert "It is not finite on batches[1] (loss nan), of 3 batches, and finite on the others" in str(err.value)
    with pytest.raises(hspec.NonFiniteError) as err:
        hspec.top_eigenvalues(loss, params, 2, batches=batches[1:2], key=key)
    assert "batches[" not in str(err.value)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the NaN being reported
def test_nonfinite_hvp_is_reported(x64):
    """Finite loss, infinite curvature: sqrt(|x|) at 0 has an infinite second derivative."""

    def loss(p):
        return jnp.sum(jnp.sqrt(jnp.abs(p["x"])))

    with pytest.raises(hspec.NonFiniteError, match="Lanczos step 0"):
        hspec.top_eigenvalues(loss, {"x": jnp.zeros(4)}, 2, key=jax.random.key(0), num_steps=3)


def test_k_and_steps_validation(tiny_problem):
    params, batch, dense, _ = tiny_problem
    n = dense.shape[0]
    loss = lambda p: mlp_loss(p, batch)  # noqa: E731
    # K above the parameter count: the real limit, n, comes first, whatever num_steps says.
    for num_steps in (None, 5, n + 50):
        with pytest.raises(ValueError, match=rf"^k={n + 1} is larger than the number of parameters n={n}: "):
            hspec.top_eigenvalues(loss, params, n + 1, key=jax.random.key(0), num_steps=num_steps)
    with pytest.raises(ValueError, match=r"^k=28 is larger than the number of parameters n=27"):
        hspec.top_eigenvalues(loss, params, 28, key=jax.random.key(0), wrt=r"^1/")  # the last layer: 27
    with pytest.raises(ValueError, match="k=0: ask for at least one eigenvalue"):
        hspec.top_eigenvalues(loss, params, 0, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"the Ritz values available \(num_steps=5 x num_starts=1\); raise"):
        hspec.top_eigenvalues(loss, params, 10, key=jax.random.key(0), num_steps=5)
    with pytest.warns(UserWarning, match=f"exceeds the dimension n={n} of the operator; using num_steps={n}"):
        res = hspec.top_eigenvalues(loss, params, 5, key=jax.random.key(0), num_steps=n + 50)
    assert res.num_steps == n
    np.testing.assert_allclose(res.eigenvalues, np.linalg.eigvalsh(dense)[::-1][:5], atol=1e-10)


def test_mismatched_init_pytree(tiny_problem):
    params, batch, _, _ = tiny_problem
    with pytest.raises(ValueError, match="init"):
        hspec.power_iteration(lambda p: mlp_loss(p, batch), params, key=jax.random.key(0), init=[jnp.zeros(3)])


def test_default_num_steps_rule():
    assert hspec.default_num_steps(1000, 61706) == 3000
    assert hspec.default_num_steps(10, 61706) == 110
    assert hspec.default_num_steps(100, 150) == 150
    assert hspec.default_num_steps(1000, None) == hspec.default_num_steps(1000) == 3000  # n not known yet
    assert hspec.default_num_steps(10**7) == 3 * 10**7


def test_default_max_steps_rule():
    assert hspec.default_max_steps(300, 61706) == 1200
    assert hspec.default_max_steps(300, 1000) == 1000
    assert hspec.default_max_steps(300, None) == hspec.default_max_steps(300) == 1200


def test_default_growth_is_default_max_steps(x64):
    """With num_steps unset, a run that cannot converge (tol=0) grows to default_max_steps, 4 x 105 < n."""
    a = jnp.asarray(prescribed_matrix(np.linspace(1.0, 2.0, 500), seed=3))
    with pytest.warns(hspec.NotConvergedWarning):
        top = hspec.top_eigenvalues(lambda p: 0.5 * p @ a @ p, jnp.zeros(500), 5, key=jax.random.key(0), tol=0.0)
    assert top.num_steps == hspec.default_max_steps(hspec.default_num_steps(5, 500), 500) == 420
