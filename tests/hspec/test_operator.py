"""One HessianOperator shared by every driver, the operator interface Lanczos needs, and clear errors
for bad input (a non-scalar loss, integer parameters, vectors of the wrong size)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hspec
from tests.hspec.conftest import CountingLoss, mlp_loss, prescribed_matrix


def _all_drivers(first, *rest, key, **kw):
    """top 5, trace, density and λ_max, each called with ``first, *rest`` as its leading arguments."""
    return dict(
        top=hspec.top_eigenvalues(first, *rest, k=5, key=key, num_steps=40, **kw),
        trace=hspec.hutchinson_trace(first, *rest, key=key, num_samples=20, **kw),
        density=hspec.spectral_density(first, *rest, key=key, num_steps=20, num_probes=3, **kw),
        power=hspec.power_iteration(first, *rest, key=key, num_iters=500, tol=1e-12, **kw),
    )


def test_one_operator_serves_every_driver(tiny_problem):
    """One operator gives the loss-function form's numbers, built and linearised once for all four drivers."""
    params, batch, dense, _ = tiny_problem
    key = jax.random.key(11)
    by_fn = CountingLoss(lambda p: mlp_loss(p, batch))
    from_fn = _all_drivers(by_fn, params, key=key)
    by_op = CountingLoss(lambda p: mlp_loss(p, batch))
    op = hspec.hessian_operator(by_op, params)
    from_op = _all_drivers(op, key=key)

    # The loss-function form builds an operator per driver: four traces, and four linearisations plus
    # four loss checks run. The shared operator: one trace, one linearisation, one loss check.
    assert (by_fn.traced, by_fn.runs_so_far()) == (4, 8)
    assert (by_op.traced, by_op.runs_so_far()) == (1, 2)
    # Same numbers either way, and the right ones.
    np.testing.assert_allclose(from_op["top"].eigenvalues, from_fn["top"].eigenvalues, rtol=1e-12)
    np.testing.assert_allclose(from_op["top"].eigenvalues, np.linalg.eigvalsh(dense)[::-1][:5], rtol=1e-9)
    np.testing.assert_allclose(from_op["trace"].samples, from_fn["trace"].samples, rtol=1e-12)
    np.testing.assert_allclose(from_op["density"].nodes, from_fn["density"].nodes, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(from_op["density"].weights, from_fn["density"].weights, rtol=1e-10, atol=1e-14)
    ev = np.linalg.eigvalsh(dense)
    assert from_op["power"].eigenvalue == pytest.approx(ev[np.argmax(np.abs(ev))], rel=1e-8)


def test_operator_with_batches_and_subset(tiny_problem):
    """An operator over batches and a parameter subset carries both: top k of the dense sub-block."""
    params, (x, y), dense, _ = tiny_problem
    op = hspec.hessian_operator(mlp_loss, params, batches=[(x[:25], y[:25]), (x[25:], y[25:])], wrt=r"^1/")
    block = dense[-27:, -27:]  # the last layer's 8*3 + 3 entries
    top = hspec.top_eigenvalues(op, k=3, key=jax.random.key(0), num_steps=27)
    np.testing.assert_allclose(top.eigenvalues, np.linalg.eigvalsh(block)[::-1][:3], rtol=1e-9)
    trace = hspec.hutchinson_trace(op, key=jax.random.key(1), num_samples=400, chunk=100)
    assert abs(trace.trace - np.trace(block)) < 4 * trace.stderr


DRIVERS = {
    "top_eigenvalues": {"k": 2},
    "hutchinson_trace": {},
    "spectral_density": {},
    "power_iteration": {},
}


def test_operator_excludes_loss_arguments(x64):
    params = {"x": jnp.ones(4)}
    op = hspec.hessian_operator(lambda p: jnp.sum(p["x"] ** 4), params)
    for driver, kw in DRIVERS.items():
        for name, value in [("batches", [()]), ("wrt", "x"), ("method", "jvp")]:
            with pytest.raises(TypeError, match=f"{driver}: {name} cannot be given with a HessianOperator"):
                getattr(hspec, driver)(op, key=jax.random.key(0), **kw, **{name: value})
        # params given positionally (k in its place, say) is refused the same way.
        with pytest.raises(TypeError, match=f"{driver}: params cannot be given with a HessianOperator"):
            getattr(hspec, driver)(op, params, key=jax.random.key(0), **kw)


def test_loss_form_needs_params_and_k(tiny_problem):
    params, batch, _, _ = tiny_problem
    with pytest.raises(TypeError, match="give params after the loss function"):
        hspec.hutchinson_trace(lambda p: mlp_loss(p, batch), key=jax.random.key(0))
    with pytest.raises(TypeError, match="give k, the number of eigenvalues"):
        hspec.top_eigenvalues(lambda p: mlp_loss(p, batch), params, key=jax.random.key(0))
    op = hspec.hessian_operator(lambda p: mlp_loss(p, batch), params)
    with pytest.raises(TypeError, match=r"give k=5 by keyword: top_eigenvalues\(op, k=k, key=key\)"):
        hspec.top_eigenvalues(op, 5, key=jax.random.key(0))


def test_nonfinite_operator_is_reported_by_every_driver(tiny_problem):
    params, batch, _, _ = tiny_problem
    loss = CountingLoss(lambda p: mlp_loss(p, batch))
    op = hspec.hessian_operator(loss, jax.tree.map(lambda x: x * jnp.nan, params))
    for call in (
        lambda: hspec.top_eigenvalues(op, k=3, key=jax.random.key(0)),
        lambda: hspec.hutchinson_trace(op, key=jax.random.key(0)),
        lambda: hspec.spectral_density(op, key=jax.random.key(0)),
        lambda: hspec.power_iteration(op, key=jax.random.key(0)),
        lambda: hspec.lanczos(op, 3, key=jax.random.key(0)),  # checks the products instead
    ):
        with pytest.raises(hspec.NonFiniteError, match="the loss is nan|not finite at Lanczos step 0"):
            call()
    assert loss.runs_so_far() == 2  # one linearisation, one loss evaluation for all four checks


# --------------------------------------------------------------------------------------------------
# The interface Lanczos needs


class DenseOperator:
    """A symmetric matrix written against hspec.SymmetricOperator alone (no hspec base class)."""

    def __init__(self, a):
        self.a = jnp.asarray(a)
        self.dim = a.shape[0]
        self.dtype = self.a.dtype

    def matvec(self, v):
        return v @ self.a

    @property
    def pure_matvec(self):
        return _apply

    @property
    def args(self):
        return self.a


def _apply(a, v):
    return v @ a


@pytest.mark.parametrize("loop", ["python", "fori"])
def test_lanczos_takes_any_symmetric_operator(x64, loop):
    a = prescribed_matrix(np.linspace(-2.0, 3.0, 24), seed=5)
    op = DenseOperator(a)
    assert isinstance(op, hspec.SymmetricOperator)
    res = hspec.lanczos(op, 24, key=jax.random.key(0), loop=loop)
    np.testing.assert_allclose(res.ritz_values[0], np.linalg.eigvalsh(a)[::-1], atol=1e-12)
    wrapped = hspec.MatvecOperator(lambda v: v @ jnp.asarray(a), dim=24, dtype=jnp.float64)
    assert isinstance(wrapped, hspec.SymmetricOperator)
    res_wrapped = hspec.lanczos(wrapped, 24, key=jax.random.key(0), loop=loop)
    np.testing.assert_allclose(res_wrapped.ritz_values, res.ritz_values, atol=1e-12)


def test_lanczos_operator_errors(x64):
    a = jnp.asarray(prescribed_matrix(np.arange(1.0, 7.0)))
    with pytest.raises(ValueError, match="give dim=n"):
        hspec.lanczos(lambda v: v @ a, 3, key=jax.random.key(0))
    with pytest.raises(TypeError, match="operator must be a hspec.HessianOperator .* got a ndarray"):
        hspec.lanczos(np.eye(3), 3, key=jax.random.key(0))
    with pytest.raises(ValueError, match="dim=5 disagrees with the operator's dimension 6"):
        hspec.lanczos(DenseOperator(a), 3, key=jax.random.key(0), dim=5)


@pytest.mark.parametrize("loop", ["python", "fori"])
def test_plain_callable_of_the_wrong_size(x64, loop):
    """A callable whose size is not dim, or that returns the wrong shape: both sizes in the message."""
    a = jnp.asarray(prescribed_matrix(np.arange(1.0, 7.0)))
    kw = dict(key=jax.random.key(0), dtype=jnp.float64, loop=loop, basis="device")
    with pytest.raises(ValueError, match=r"failed on a stack of vectors of shape \(1, 7\) \(n = dim = 7\)"):
        hspec.lanczos(lambda v: v @ a, 3, dim=7, **kw)
    with pytest.raises(ValueError, match=r"returned shape \(1, 5\) for vectors of shape \(1, 6\)"):
        hspec.lanczos(lambda v: (v @ a)[:, :5], 3, dim=6, **kw)


# --------------------------------------------------------------------------------------------------
# Bad input, clear messages


def test_vector_of_wrong_size_or_structure(tiny_problem):
    params, batch, dense, _ = tiny_problem
    op = hspec.hessian_operator(lambda p: mlp_loss(p, batch), params)
    n = dense.shape[0]
    expected = rf"shape \[{n}\] or \[S, {n}\] \({n} = the number of parameters\); got shape \(112,\)"
    with pytest.raises(ValueError, match=expected):
        op.matvec(jnp.ones(112))
    with pytest.raises(ValueError, match=rf"got shape \(2, 3, {n}\)"):
        op.matvec(jnp.ones((2, 3, n)))
    with pytest.raises(TypeError, match=f"takes a flat array of shape .* with n = {n} parameters; got a list"):
        op.matvec(params)
    with pytest.raises(ValueError, match=rf"HessianOperator.unravel .* got shape \({n + 1},\)"):
        op.unravel(jnp.ones(n + 1))
    with pytest.raises(ValueError, match="ravel's argument .* does not have the pytree structure"):
        op.ravel(params[:1])
    # The right shapes still give H·v.
    v = jax.random.normal(jax.random.key(0), (n,), jnp.float64)
    np.testing.assert_allclose(op.matvec(op.ravel(op.unravel(v))), dense @ v, atol=1e-10)


@pytest.mark.parametrize("shape", [(), (1,)])
def test_scalar_loss_of_shape_one_is_accepted(x64, shape):
    lam = np.array([4.0, 2.0, 1.0, -1.0])
    a = jnp.asarray(prescribed_matrix(lam, seed=2))
    top = hspec.top_eigenvalues(lambda p: (0.5 * p @ a @ p).reshape(shape), jnp.zeros(4), 2, key=jax.random.key(0))
    np.testing.assert_allclose(top.eigenvalues, [4.0, 2.0], atol=1e-12)


def test_non_scalar_loss_is_refused(tiny_problem):
    params, (x, y), _, _ = tiny_problem

    def per_sample(p):
        return jax.vmap(lambda xi, yi: mlp_loss(p, (xi[None], yi[None])))(x, y)

    with pytest.raises(ValueError, match=r"the loss must return a scalar; it returned an array of shape \(40,\)"):
        hspec.top_eigenvalues(per_sample, params, 3, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"the loss must return a scalar; it returned an array of shape \(5, 1\)"):
        hspec.hessian_operator(lambda p, b: per_sample(p)[:5, None], params, batches=[(x[:5], y[:5])])
    with pytest.raises(TypeError, match=r"it returned a tuple of 2 arrays of shapes \[\(\), \(40,\)\]"):
        hspec.hutchinson_trace(lambda p: (mlp_loss(p, (x, y)), per_sample(p)), params, key=jax.random.key(0))


def test_integer_parameters_are_named(x64):
    params = {"layer": {"w": jnp.ones(3)}, "step": jnp.asarray(7, jnp.int32)}

    def loss(p):
        return jnp.sum(p["layer"]["w"] ** 4) * p["step"]

    with pytest.raises(TypeError, match="parameters must be floating point .* leaf 'step' has dtype int32"):
        hspec.top_eigenvalues(loss, params, 1, key=jax.random.key(0))
    # Held fixed by wrt, an integer leaf is fine: H = diag(12 w^2) * step = 84 I.
    top = hspec.top_eigenvalues(loss, params, 1, key=jax.random.key(0), wrt="layer")
    assert top.eigenvalues[0] == pytest.approx(84.0, rel=1e-12)


@pytest.mark.parametrize("micro_batch", [1, 7, 50, 60, None])
@pytest.mark.parametrize("method", ["jvp", "linearize"])
def test_whole_dataset_operator_accumulates_micro_batches_in_one_scan(tiny_problem, micro_batch, method):
    """data= with micro_batch= is the Hessian of the mean loss over all the examples (dense, float64), whatever
    the split: equal micro-batches, a remainder, or one batch; and the loss is the whole data's."""
    params, (x, y), dense, _ = tiny_problem
    op = hspec.hessian_operator(mlp_loss, params, data=(x, y), micro_batch=micro_batch, method=method)
    assert op.num_samples == len(y)
    V = jax.random.normal(jax.random.key(5), (3, op.dim), jnp.float64)
    np.testing.assert_allclose(op.matvec(V), V @ dense, rtol=1e-10, atol=1e-12)
    assert float(op.loss()) == pytest.approx(float(mlp_loss(params, (x, y))), rel=1e-12)
    top = hspec.top_eigenvalues(op, k=3, key=jax.random.key(0), num_steps=op.dim)
    np.testing.assert_allclose(top.eigenvalues, np.linalg.eigvalsh(dense)[::-1][:3], rtol=1e-9)


def test_whole_dataset_operator_refuses_mixed_inputs(tiny_problem):
    params, (x, y), _, _ = tiny_problem
    with pytest.raises(ValueError, match="give batches or data, not both"):
        hspec.hessian_operator(mlp_loss, params, batches=[(x, y)], data=(x, y), micro_batch=10)
    with pytest.raises(ValueError, match="micro_batch needs data="):
        hspec.hessian_operator(mlp_loss, params, batches=[(x, y)], micro_batch=10)
    with pytest.raises(ValueError, match="micro_batch must be >= 1"):
        hspec.hessian_operator(mlp_loss, params, data=(x, y), micro_batch=0)
