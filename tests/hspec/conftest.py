"""Tiny networks with dense float64 Hessians, the reference every hspec test compares against."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree


@pytest.fixture
def x64():
    """Run a test in float64 and restore the previous setting afterwards."""
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


def mlp_params(key, sizes, dtype):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (a, b), dtype) / np.sqrt(a), "b": 0.1 * jax.random.normal(k, (b,), dtype)}
        for k, a, b in zip(keys, sizes[:-1], sizes[1:])
    ]


def mlp_loss(params, batch):
    """Mean softmax cross-entropy of a tanh MLP (smooth, so the Hessian is well defined everywhere)."""
    x, y = batch
    h = x
    for layer in params[:-1]:
        h = jnp.tanh(h @ layer["w"] + layer["b"])
    logits = h @ params[-1]["w"] + params[-1]["b"]
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], 1)[:, 0])


@pytest.fixture
def tiny_problem(x64):
    """A 5-8-3 tanh MLP on 40 samples: (params, (x, y), dense Hessian, ravel unravel)."""
    key = jax.random.key(0)
    kx, ky, kp = jax.random.split(key, 3)
    x = jax.random.normal(kx, (40, 5), jnp.float64)
    y = jax.random.randint(ky, (40,), 0, 3)
    params = mlp_params(kp, [5, 8, 3], jnp.float64)
    flat, unravel = ravel_pytree(params)
    dense = np.asarray(jax.hessian(lambda f: mlp_loss(unravel(f), (x, y)))(flat))
    return params, (x, y), dense, unravel


def prescribed_matrix(eigenvalues, seed=0):
    """Q diag(λ) Qᵀ with a random orthogonal Q (float64 numpy)."""
    n = len(eigenvalues)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return (q * np.asarray(eigenvalues)) @ q.T


class CountingLoss:
    """A loss wrapped to count, through public routes only, how often it is traced and how often it runs.

    ``traced`` counts Python calls of the function: JAX calls it once per trace, so this is the number of
    times a driver built (hoisted, linearised) the loss anew. ``runs`` counts executions of its compiled
    forward pass, by a ``jax.debug.callback`` inside it; call :meth:`runs_so_far` to read it.
    """

    def __init__(self, fn):
        self.fn = fn
        self.traced = 0
        self._runs = 0

    def _ran(self):
        self._runs += 1

    def __call__(self, *args):
        self.traced += 1
        jax.debug.callback(self._ran)
        return self.fn(*args)

    def runs_so_far(self) -> int:
        jax.effects_barrier()  # callbacks are asynchronous
        return self._runs
