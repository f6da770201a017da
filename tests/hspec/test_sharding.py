"""Data-parallel HVP and Lanczos (params replicated, batch sharded over 4 CPU devices) equal one device."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import hspec
    # XLA:CPU with 4 fake devices on 2 busy cores: two collective programs in flight at once starved
    # the all-reduce rendezvous once here (a 40 s "may be stuck" abort). Synchronous dispatch avoids it.
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    from tests.hspec.conftest import mlp_loss, mlp_params
    assert jax.device_count() == 4, jax.devices()
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    kx, ky, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (64, 6)); y = jax.random.randint(ky, (64,), 0, 4)
    params = mlp_params(kp, [6, 32, 4], jnp.float32)
    shard = NamedSharding(mesh, P("data")); repl = NamedSharding(mesh, P())
    xs, ys = jax.device_put(x, shard), jax.device_put(y, shard)
    ps = jax.device_put(params, repl)
    v = jax.random.normal(jax.random.key(1), (3, sum(l.size for l in jax.tree.leaves(params))))
    single = hspec.hessian_operator(lambda p: mlp_loss(p, (x, y)), params).matvec(v)
    sharded_op = hspec.hessian_operator(lambda p: mlp_loss(p, (xs, ys)), ps)
    sharded = sharded_op.matvec(jax.device_put(v, repl))
    rel = float(jnp.max(jnp.abs(sharded - single)) / jnp.max(jnp.abs(single)))
    batched = hspec.hessian_operator(mlp_loss, ps, batches=[(xs, ys)]).matvec(v)
    rel_b = float(jnp.max(jnp.abs(batched - single)) / jnp.max(jnp.abs(single)))
    t1 = hspec.top_eigenvalues(lambda p: mlp_loss(p, (x, y)), params, 5, key=jax.random.key(2), num_steps=60)
    t4 = hspec.top_eigenvalues(lambda p: mlp_loss(p, (xs, ys)), ps, 5, key=jax.random.key(2), num_steps=60)
    rel_e = float(np.max(np.abs(t4.eigenvalues - t1.eigenvalues) / np.abs(t1.eigenvalues)))
    print(rel, rel_b, rel_e)
    assert rel < 1e-5 and rel_b < 1e-5 and rel_e < 1e-4, (rel, rel_b, rel_e)
    """
)


def test_sharded_batch_equals_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
