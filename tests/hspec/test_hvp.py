import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import hspec
from tests.hspec.conftest import CountingLoss, mlp_loss


def test_hvp_equals_dense_hessian(tiny_problem):
    params, batch, dense, unravel = tiny_problem
    v = jax.random.normal(jax.random.key(1), (dense.shape[0],), jnp.float64)
    got = hspec.hvp(lambda p: mlp_loss(p, batch), params, unravel(v))
    np.testing.assert_allclose(ravel_pytree(got)[0], dense @ v, rtol=0, atol=1e-10 * np.abs(dense @ v).max())


def test_hvp_works_inside_user_jit(tiny_problem):
    params, batch, dense, unravel = tiny_problem
    v = jnp.ones(dense.shape[0])
    jitted = jax.jit(lambda p, v: hspec.hvp(lambda q: mlp_loss(q, batch), p, v))
    np.testing.assert_allclose(ravel_pytree(jitted(params, unravel(v)))[0], dense @ v, atol=1e-10)


def test_hessian_symmetric(tiny_problem):
    params, batch, dense, unravel = tiny_problem
    op = hspec.hessian_operator(lambda p: mlp_loss(p, batch), params)
    eye = jnp.eye(op.dim)
    h = np.asarray(op.matvec(eye))
    np.testing.assert_allclose(h, h.T, atol=1e-12)
    np.testing.assert_allclose(h, dense, atol=1e-10)


@pytest.mark.parametrize("method", ["linearize", "jvp"])
def test_weighted_batches_equal_union(tiny_problem, method):
    """Unequal batches (17, 17, 6) are weighted by size: the result is one HVP over the union."""
    params, (x, y), dense, unravel = tiny_problem
    batches = [(x[:17], y[:17]), (x[17:34], y[17:34]), (x[34:], y[34:])]
    loss = CountingLoss(mlp_loss)
    op = hspec.hessian_operator(loss, params, batches=batches, method=method)
    v = jax.random.normal(jax.random.key(2), (2, op.dim), jnp.float64)
    np.testing.assert_allclose(op.matvec(v), v @ dense, atol=1e-10)
    assert op.num_samples == 40
    # Two distinct batch shapes -> the loss traced twice (one program per shape), not three times.
    assert loss.traced == 2


def test_subset_equals_dense_subblock(tiny_problem):
    params, batch, dense, unravel = tiny_problem
    # Last layer only: its leaves are the last 8*3 + 3 entries of the ravelled vector (b before w).
    op = hspec.hessian_operator(lambda p: mlp_loss(p, batch), params, wrt=r"^1/")
    n_last = 8 * 3 + 3
    block = dense[-n_last:, -n_last:]
    h = np.asarray(op.matvec(jnp.eye(op.dim)))
    assert op.dim == n_last
    np.testing.assert_allclose(h, block, atol=1e-10)
    # The same subset from a bool mask and from a callable.
    mask = [{"b": False, "w": False}, {"b": True, "w": True}]
    h_mask = np.asarray(hspec.hessian_operator(lambda p: mlp_loss(p, batch), params, wrt=mask).matvec(jnp.eye(n_last)))
    h_call = np.asarray(
        hspec.hessian_operator(lambda p: mlp_loss(p, batch), params, wrt=lambda path, leaf: path.startswith("1/")).matvec(
            jnp.eye(n_last)
        )
    )
    chex.assert_trees_all_close(h_mask, block, h_call, atol=1e-10)


@pytest.mark.parametrize("method", ["linearize", "jvp"])
def test_closed_over_data_is_hoisted_not_folded(tiny_problem, method):
    """The operator's program takes the data a loss closes over as arguments: XLA folds constants
    (FINDINGS.md, trap 2). A plain jit of the same product, the control, does embed them."""
    params, batch, dense, unravel = tiny_problem

    def loss(p):
        return mlp_loss(p, batch)

    folded = re.compile(r"constant dense<[^\n]*tensor<40x5xf64>")
    op = hspec.hessian_operator(loss, params, method=method)
    v = jnp.ones((1, op.dim))
    program = jax.jit(op.pure_matvec).lower(op.args, v).as_text()
    control = jax.jit(lambda v: hspec.hvp(loss, params, unravel(v))).lower(v[0]).as_text()
    assert folded.search(control)
    if method == "jvp":  # the data are an argument (a linearised map holds only what it needs of them)
        assert "tensor<40x5xf64>" in program
    assert not folded.search(program)
    np.testing.assert_allclose(op.matvec(v), v @ dense, atol=1e-10)


def test_hoist_constants_returns_the_closed_over_arrays(tiny_problem):
    params, (x, y), _, _ = tiny_problem

    def loss(p):
        return mlp_loss(p, (x, y))

    pure, consts = hspec.hoist_constants(loss, params)
    assert any(np.shape(c) == x.shape and np.array_equal(c, x) for c in consts)
    assert float(pure(consts, params)) == pytest.approx(float(loss(params)), rel=1e-14)
    # New constants, same program: the loss of other data.
    swapped = [2 * x if c is x or (np.shape(c) == x.shape and np.array_equal(c, x)) else c for c in consts]
    assert float(pure(swapped, params)) == pytest.approx(float(mlp_loss(params, (2 * x, y))), rel=1e-14)


def test_a_factory_kept_across_checkpoints_compiles_once(tiny_problem, compile_events):
    """Two checkpoints (other parameters, a new closure over other data of the same shapes) through one
    HessianFactory: the second compiles nothing and gives its own Hessian."""
    params, (x, y), dense, unravel = tiny_problem
    hessian = hspec.HessianFactory()

    def checkpoint_loss(xs):
        return lambda p: mlp_loss(p, (xs, y))  # a new function at each checkpoint, as train's losses are

    first = hspec.top_eigenvalues(hessian(checkpoint_loss(x), params), k=5, key=jax.random.key(0), num_steps=30)
    assert len(compile_events) > 0  # a new loss: its programs were compiled
    np.testing.assert_allclose(first.eigenvalues, np.linalg.eigvalsh(dense)[::-1][:5], rtol=1e-8)
    later, x2, key = jax.tree.map(lambda a: 1.5 * a, params), 2 * x, jax.random.key(1)
    compile_events.clear()
    second = hspec.top_eigenvalues(hessian(checkpoint_loss(x2), later), k=5, key=key, num_steps=30)
    assert compile_events == []
    flat, unr = ravel_pytree(later)
    dense2 = jax.hessian(lambda f: mlp_loss(unr(f), (2 * x, y)))(flat)
    np.testing.assert_allclose(second.eigenvalues, np.linalg.eigvalsh(dense2)[::-1][:5], rtol=1e-6)


def test_a_factory_compiles_a_different_loss_anew(tiny_problem, compile_events):
    """Programs are shared by the traced loss, not by shapes alone: another loss of the same shapes is its own."""
    params, batch, dense, unravel = tiny_problem
    hessian = hspec.HessianFactory()
    v = jnp.ones(dense.shape[0])
    np.testing.assert_allclose(hessian(lambda p: mlp_loss(p, batch), params).matvec(v), dense @ v, atol=1e-10)
    compile_events.clear()
    doubled = hessian(lambda p: 2 * mlp_loss(p, batch), params).matvec(v)
    assert len(compile_events) > 0
    np.testing.assert_allclose(doubled, 2 * dense @ v, atol=1e-10)


def test_new_data_same_function_gives_new_hessian(tiny_problem):
    """The program cache must not freeze the data: constants are refreshed on every call."""
    params, (x, y), dense, unravel = tiny_problem
    data = {"x": x, "y": y}

    def loss(p):
        return mlp_loss(p, (data["x"], data["y"]))

    a = hspec.hessian_operator(loss, params).matvec(jnp.ones(dense.shape[0]))
    data["x"] = 2 * x
    b = hspec.hessian_operator(loss, params).matvec(jnp.ones(dense.shape[0]))
    flat, unr = ravel_pytree(params)
    dense2 = jax.hessian(lambda f: mlp_loss(unr(f), (2 * x, y)))(flat)
    np.testing.assert_allclose(b, dense2 @ jnp.ones(dense.shape[0]), atol=1e-10)
    assert not np.allclose(a, b)


def test_wrt_errors(tiny_problem):
    params, batch, dense, unravel = tiny_problem
    with pytest.raises(ValueError, match="selects no parameters"):
        hspec.hessian_operator(lambda p: mlp_loss(p, batch), params, wrt="nothing_matches")
    with pytest.raises(ValueError, match="structure of params"):
        hspec.hessian_operator(lambda p: mlp_loss(p, batch), params, wrt=[True])
