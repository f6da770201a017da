"""A tiny GPT-2's Hessian on 4 CPU devices, batch-sharded and parameter-sharded, equals one device.

The forced device count must be set before jax initialises, so the check runs in a subprocess. It compares
Hessian-vector products of the last block (train.llm's Hessian loss), the top eigenvalues from the same
Lanczos start, the accumulated gradient and one AdamW training step with data-parallel micro-batches,
against one device, to float32 rounding.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    # XLA:CPU with 4 fake devices on 2 busy cores: synchronous dispatch avoids a starved all-reduce rendezvous.
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    jax.config.update("jax_default_matmul_precision", "highest")
    from flax import nnx
    import hspec
    from train.llm import loop, sharding
    from train.models import gpt2
    assert jax.device_count() == 4, jax.devices()

    cfg = gpt2.GPT2Config(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=65, bias=True, gelu="exact")
    split, params, fixed = loop.split_model(gpt2.GPT2(cfg, rngs=nnx.Rngs(0)), lora=False)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 65, (8, 32)), rng.integers(0, 65, (8, 32))
    batch = (x, y, np.ones((8, 32), np.float32))
    loss = loop.hessian_loss(split.eval_def)
    wrt = gpt2.last_block_pattern(cfg)
    n = hspec.hessian_operator(loss, params, batches=[batch], wrt=wrt).dim
    v = jax.random.normal(jax.random.key(1), (3, n))
    single = np.asarray(hspec.hessian_operator(loss, params, batches=[batch], wrt=wrt).matvec(v))
    top1 = hspec.top_eigenvalues(loss, params, 3, batches=[batch], wrt=wrt, key=jax.random.key(2), num_steps=20)

    spec = loop.OptimSpec(1e-3, 1e-4, 0, 10, "constant", 0.9, 0.95, 1e-8, 0.1, 1.0)
    xs, ys, ws = (a.reshape(2, 4, 32) for a in batch)
    step = loop.make_train_step(split.train_def, spec)
    grads_fn = jax.jit(loop.accumulated_grads(split.train_def))
    flat = lambda tree: np.concatenate([np.ravel(a) for a in jax.tree.leaves(tree)])
    g1 = flat(grads_fn(params, fixed, xs, ys, ws, jax.random.key(3))[1])
    # The step donates its state: give it copies.
    state1, _ = step(loop.init_state(jax.tree.map(jnp.copy, params), spec), fixed, xs, ys, ws, jax.random.key(3))
    after1 = jax.tree.map(np.asarray, state1.params)

    for data, model in ((4, 1), (1, 4)):
        mesh = sharding.make_mesh(data, model)
        p = sharding.shard_params(params, mesh)
        if model > 1:  # the matrices really are split over the devices
            kernel = p["h"][1]["mlp"]["c_fc"]["kernel"][...]
            assert kernel.addressable_shards[0].data.shape[1] == 4 * 32 // model, kernel.sharding
        b = sharding.shard_batch(batch, mesh)
        assert b[0].addressable_shards[0].data.shape[0] == 8 // data
        hv = np.asarray(hspec.hessian_operator(loss, p, batches=[b], wrt=wrt).matvec(sharding.replicate(v, mesh)))
        rel = np.max(np.abs(hv - single)) / np.max(np.abs(single))
        top = hspec.top_eigenvalues(loss, p, 3, batches=[b], wrt=wrt, key=jax.random.key(2), num_steps=20)
        rel_e = np.max(np.abs(top.eigenvalues - top1.eigenvalues) / np.abs(top1.eigenvalues))
        sb, f = sharding.shard_batch((xs, ys, ws), mesh, axis=1), sharding.shard_params(fixed, mesh)
        g = flat(grads_fn(p, f, *sb, jax.random.key(3))[1])
        rel_g = np.max(np.abs(g - g1)) / np.max(np.abs(g1))
        # Adam's first step is lr * g / (|g| + eps): elements with |g| near eps amplify rounding, so the
        # parameters are compared to a small fraction of one step (lr = 1e-3), the gradients to rounding.
        state, _ = step(loop.init_state(p, spec), f, *sb, jax.random.key(3))
        step_diff = max(float(np.max(np.abs(np.asarray(a) - b_))) for a, b_ in zip(jax.tree.leaves(state.params),
                                                                               jax.tree.leaves(after1)))
        print(data, model, rel, rel_e, rel_g, step_diff, flush=True)
        assert rel < 1e-5 and rel_e < 1e-4 and rel_g < 1e-5 and step_diff < 2e-5, (data, model, rel, rel_e, rel_g)
    """
)


@pytest.mark.slow  # ~60-90 s on 2 cores: a fresh jax with 4 devices, three placements compiled
def test_batch_and_parameter_sharded_hessian_equal_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr[-4000:]
