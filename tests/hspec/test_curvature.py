"""Per-example Gauss-Newton traces against dense Jacobians and the dense Hessian of a linear model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import hspec.curvature as curvature


def _ce(f, y):
    return jax.nn.logsumexp(f) - f[y]


def _mlp_problem(n=13, d=4, h=5, c=3, seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(k[0], (n, d), jnp.float64)
    y = jax.random.randint(k[1], (n,), 0, c)
    params = {"w": jax.random.normal(k[2], (d, h), jnp.float64), "u": jax.random.normal(k[3], (h, c), jnp.float64)}
    return params, x, y


def _mlp(p, x):
    return jnp.tanh(x @ p["w"]) @ p["u"]


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def test_traces_equal_dense_jacobian_and_softmax_curvature():
    params, x, y = _mlp_problem()
    flat, unravel = ravel_pytree(params)
    expected = []
    for xi, yi in zip(x, y):
        J = jax.jacobian(lambda z: _mlp(unravel(z), xi[None])[0])(flat)  # [C, n]
        p = jax.nn.softmax(_mlp(params, xi[None])[0])
        A = jnp.diag(p) - jnp.outer(p, p)
        expected.append(float(jnp.trace(J.T @ A @ J)))
    t = curvature.gauss_newton_traces(_mlp, _ce, params, (x, y), batch_size=4)
    np.testing.assert_allclose(t, expected, rtol=1e-10, atol=1e-14)


def test_linear_model_mean_trace_is_the_hessian_trace():
    # Outputs linear in the parameters: the residual part vanishes, so (1/N) Σ t_i = tr(H) exactly.
    params, x, y = _mlp_problem(n=11)
    lin = {"u": params["w"]}  # [d, h] used as a 4 -> 5-class linear model
    y = y % 5
    out = lambda p, xb: xb @ p["u"]  # noqa: E731
    flat, unravel = ravel_pytree(lin)
    loss = lambda z: jnp.mean(jax.vmap(_ce)(out(unravel(z), x), y))  # noqa: E731
    tr_h = float(jnp.trace(jax.hessian(loss)(flat)))
    diag = curvature.curvature_carriers(out, _ce, lin, (x, y))
    np.testing.assert_allclose(diag.gauss_newton_trace, tr_h, rtol=1e-12)
    assert diag.num_examples == 11


def test_participation_ratio_and_share_closed_forms():
    assert curvature.participation_ratio(np.ones(40)) == pytest.approx(40.0)
    assert curvature.participation_ratio(np.r_[1.0, np.zeros(9)]) == pytest.approx(1.0)
    # two equal carriers among tiny ones: (2 + 8e-6)^2 / (2 + 8e-12) -> 2
    assert curvature.participation_ratio(np.r_[1.0, 1.0, np.full(8, 1e-6)]) == pytest.approx(2.0, rel=1e-5)
    t = np.array([5.0, 3.0, 1.0, 0.5, 0.5])  # total 10: 5+3+1 = 9 reaches 90%
    assert curvature.carriers_of_share(t, 0.9) == 3
    assert curvature.carriers_of_share(t, 0.5) == 1
