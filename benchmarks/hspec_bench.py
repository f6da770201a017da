"""hspec engine benchmarks: ratios against baselines measured in the same run (issue 2).

Sections (``--sections``, default all but top1000 and reorth):
  hvp       HVP time / gradient time and one Lanczos step / gradient time, LeNet-5 and an MLP on 1000
            MNIST images, through ``top_eigenvalues`` with its defaults on a loss that closes over its
            data, as a user writes it; also jvp-of-grad vs the linearised operator, and the loop forms.
  eigsh     HVPs and wall time to the top 20 at 1e-6 relative residual, against
            ``scipy.sparse.linalg.eigsh`` on the same jitted HVP.
  compile   first-call (compile) time of top_eigenvalues against the second call.
  memory    peak memory and time of basis="device" against basis="host" at m = 200 and m = 1000 (MLP),
            each in a fresh process (peak RSS on CPU; device peak bytes on GPU).
  top1000   the top 1000 of LeNet-5 on 1000 MNIST images: time, peak memory, converged count, steps.
  reorth    the same top 1000 (3000 steps) with the DGKS orthogonalisation against Gram-Schmidt twice on
            every step, and the largest difference of their converged eigenvalues.

Every number printed is a median of repeats after a warm-up. Run:
  python benchmarks/hspec_bench.py [--sections hvp,eigsh,compile,memory,top1000] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hspec  # noqa: E402


def median_time(fn, repeats=5):
    """Median wall time of fn() (which must block) over repeats, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def mnist_sample(data_dir, n=1000):
    from train import data

    ds = data.load("mnist", data_dir)
    return np.asarray(ds.x_train[:n]), np.asarray(ds.y_train[:n])


def user_loss(model_name, x, y, seed=0):
    """The loss as a user writes it: NNX split once, data closed over."""
    from flax import nnx

    from train import models

    model = models.build(model_name, num_classes=10, input_shape=x.shape[1:], rngs=nnx.Rngs(seed),
                         **({"depth": 1, "width": 70} if model_name == "fcn" else {}))
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    xj, yj = jnp.asarray(x), jnp.asarray(y)

    def loss(p):
        logits = nnx.merge(graphdef, p, rest)(xj)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, yj[:, None], 1)[:, 0])

    return loss, params


def per_step_seconds(loss, params, m_small=30, m_large=80, repeats=3, **kw):
    """Seconds per Lanczos step: (T(m_large) - T(m_small)) / (m_large - m_small), removing fixed costs."""
    hessian = hspec.HessianFactory()  # compiled at the warm-up call, as a run compiles at its first checkpoint
    run = lambda m: hspec.top_eigenvalues(hessian(loss, params), k=5, key=jax.random.key(0),  # noqa: E731
                                          num_steps=m, **kw)
    t_small = median_time(lambda: run(m_small), repeats)
    t_large = median_time(lambda: run(m_large), repeats)
    return (t_large - t_small) / (m_large - m_small), t_small


def section_hvp(data_dir):
    x, y = mnist_sample(data_dir)
    for name in ("lenet5", "fcn"):
        loss, params = user_loss(name, x, y)
        n = sum(p.size for p in jax.tree.leaves(params))
        grad = jax.jit(jax.grad(loss))
        t_grad = median_time(lambda: jax.block_until_ready(grad(params)))
        bare = jax.jit(lambda p, v: hspec.hvp(loss, p, v))
        v = jax.tree.map(jnp.ones_like, params)
        t_bare = median_time(lambda: jax.block_until_ready(bare(params, v)))
        op = hspec.hessian_operator(loss, params)
        vec = jax.random.normal(jax.random.key(0), (1, op.dim))
        t_op = median_time(lambda: jax.block_until_ready(op.matvec(vec)))
        op_jvp = hspec.hessian_operator(loss, params, method="jvp")
        t_jvp = median_time(lambda: jax.block_until_ready(op_jvp.matvec(vec)))
        vec8 = jax.random.normal(jax.random.key(0), (8, op.dim))
        t_op8 = median_time(lambda: jax.block_until_ready(op.matvec(vec8)))
        step, t_small = per_step_seconds(loss, params)
        print(f"[hvp] {name}: per-call overhead of top_eigenvalues (second call, m=30): {t_small - 30 * step:.2f} s")
        print(f"[hvp] {name} n={n}: grad {t_grad*1e3:.1f} ms | user jit(hvp) closed-over data {t_bare/t_grad:.2f} grads "
              f"| operator jvp {t_jvp/t_grad:.2f} | operator linearised {t_op/t_grad:.2f} | 8 vectors vmapped "
              f"{t_op8/(8*t_op):.2f} of 8 calls | Lanczos step (top_eigenvalues defaults) {step/t_grad:.2f} grads "
              f"({step*1e3:.0f} ms)")
        for loop in ("python", "fori"):
            s, _ = per_step_seconds(loss, params, 20, 50, 2, loop=loop)
            print(f"[hvp] {name} loop={loop}: Lanczos step {s/t_grad:.2f} grads ({s*1e3:.0f} ms)")


def section_eigsh(data_dir, k=20, tol=1e-6):
    import scipy.sparse.linalg as sla

    x, y = mnist_sample(data_dir)
    for name in ("fcn", "lenet5"):
        loss, params = user_loss(name, x, y)
        op = hspec.hessian_operator(loss, params)
        # Lanczos grows until the top k converge (a truncated run is an exact shorter run). Timed on a
        # second call (compiled, as eigsh's HVP is); convergence is checked every 10 steps.
        hessian = hspec.HessianFactory()
        run = lambda: hspec.top_eigenvalues(hessian(loss, params), k=k, key=jax.random.key(1),  # noqa: E731
                                            num_steps=k + 10, max_steps=600, tol=tol)
        run()
        t = time.perf_counter()
        top = run()
        t_lanczos = time.perf_counter() - t
        count = {"n": 0}

        def mv(v):
            count["n"] += 1
            return np.asarray(op.matvec(jnp.asarray(v, op.dtype).ravel()), np.float64)

        lin = sla.LinearOperator((op.dim, op.dim), matvec=mv, dtype=np.float64)
        mv(np.ones(op.dim))  # compiled already; keep the counter honest
        count["n"] = 0
        t = time.perf_counter()
        vals = sla.eigsh(lin, k=k, which="LA", tol=tol, v0=np.ones(op.dim))[0][::-1]
        t_eigsh = time.perf_counter() - t
        agree = float(np.max(np.abs(vals - top.eigenvalues) / np.abs(top.eigenvalues[0])))
        print(f"[eigsh] {name}: top {k} at {tol:g} relative: hspec {top.num_steps} HVPs {t_lanczos:.1f} s "
              f"({top.num_converged} converged) | eigsh {count['n']} HVPs {t_eigsh:.1f} s | HVP ratio "
              f"{top.num_steps/count['n']:.2f}, time ratio {t_lanczos/t_eigsh:.2f} | max |diff|/lambda1 {agree:.1e}")


def section_compile(data_dir):
    x, y = mnist_sample(data_dir)
    loss, params = user_loss("lenet5", x, y)
    hessian = hspec.HessianFactory()  # kept across the calls, as a run keeps it across checkpoints
    run = lambda: hspec.top_eigenvalues(hessian(loss, params), k=10, key=jax.random.key(0), num_steps=40)  # noqa: E731
    t = time.perf_counter()
    run()
    first = time.perf_counter() - t
    second = median_time(run, 2)
    print(f"[compile] LeNet-5 top_eigenvalues(k=10, m=40): first call {first:.1f} s, second {second:.1f} s, "
          f"compile+trace overhead {first-second:.1f} s")


def peak_memory_bytes():
    """Device peak bytes where the backend reports them (GPU), else the process's peak RSS."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"], "device peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def sample_live_device_bytes(stop, out):
    """Peak total size of live jax arrays (what lives in device memory, on any backend), sampled."""
    while not stop.is_set():
        out[0] = max(out[0], sum(a.nbytes for a in jax.live_arrays()))
        time.sleep(0.02)


def memory_child(data_dir, basis, m):
    import threading

    x, y = mnist_sample(data_dir)
    loss, params = user_loss("fcn", x, y)
    stop, live = threading.Event(), [0]
    sampler = threading.Thread(target=sample_live_device_bytes, args=(stop, live), daemon=True)
    sampler.start()
    t = time.perf_counter()
    res = hspec.top_eigenvalues(loss, params, 10, key=jax.random.key(0), num_steps=m, basis=basis, loop="python")
    seconds = time.perf_counter() - t
    stop.set()
    sampler.join()
    peak, kind = peak_memory_bytes()
    print(json.dumps({"basis": basis, "m": m, "seconds": seconds, "peak_mb": peak / 2**20, "kind": kind,
                      "live_device_mb": live[0] / 2**20, "lambda1": float(res.eigenvalues[0])}))


def section_memory(data_dir):
    rows = []
    for m in (200, 1000):
        for basis in ("device", "host"):
            out = subprocess.run([sys.executable, __file__, "--memory-child", f"{basis}:{m}", "--data-dir", data_dir],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for m in (200, 1000):
        dev = next(r for r in rows if r["m"] == m and r["basis"] == "device")
        host = next(r for r in rows if r["m"] == m and r["basis"] == "host")
        print(f"[memory] MLP 784-70-10 (n=55,660), m={m}: device basis: live device arrays {dev['live_device_mb']:.0f} MB, "
              f"{dev['kind']} {dev['peak_mb']:.0f} MB, {dev['seconds']:.1f} s | host basis: live device arrays "
              f"{host['live_device_mb']:.0f} MB, {host['kind']} {host['peak_mb']:.0f} MB, {host['seconds']:.1f} s | "
              f"time ratio host/device {host['seconds']/dev['seconds']:.2f}")


def train_one_epoch(loss_of_batch, params, x, y, lr=0.05, batch=128):
    """One epoch of momentum SGD, so that the top-1000 benchmark measures a trained network."""
    import optax

    tx = optax.sgd(lr, momentum=0.9)
    state = tx.init(params)

    @jax.jit
    def step(p, s, xb, yb):
        g = jax.grad(loss_of_batch)(p, xb, yb)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    for i in range(0, len(x) - batch + 1, batch):
        params, state = step(params, state, x[i : i + batch], y[i : i + batch])
    return params


def trained_lenet_loss(data_dir, tag):
    """LeNet-5 after one epoch of momentum SGD and its loss on 1000 MNIST training images."""
    from flax import nnx

    from train import data, models

    ds = data.load("mnist", data_dir)
    model = models.build("lenet5", num_classes=10, input_shape=(28, 28, 1), rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_of_batch(p, xb, yb):
        logits = nnx.merge(graphdef, p, rest)(xb)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, yb[:, None], 1)[:, 0])

    t = time.perf_counter()
    params = train_one_epoch(loss_of_batch, params, ds.x_train, ds.y_train)
    print(f"[{tag}] trained LeNet-5 one epoch of momentum SGD in {time.perf_counter() - t:.0f} s")
    x, y = jnp.asarray(ds.x_train[:1000]), jnp.asarray(ds.y_train[:1000])
    return (lambda p: loss_of_batch(p, x, y)), params


def section_top1000(data_dir, k=1000):
    loss, params = trained_lenet_loss(data_dir, "top1000")
    t = time.perf_counter()
    res = hspec.top_eigenvalues(loss, params, k, key=jax.random.key(0), num_steps=3 * k, max_steps=6 * k,
                                progress=True)
    seconds = time.perf_counter() - t
    peak, kind = peak_memory_bytes()
    fit = hspec.power_law_verdict(res.eigenvalues, k)
    print(f"[top1000] LeNet-5 after one epoch, 1000 MNIST images: {res.num_steps} steps, {seconds:.0f} s, "
          f"{res.num_converged}/{k} converged (tol {res.tol:g}), {int(np.sum(res.eigenvalues > 0))} positive, "
          f"{kind} {peak/2**30:.2f} GiB; {fit.verdict}")


def gram_schmidt_twice(basis, w):
    """The baseline: the host orthogonalisation before the DGKS test, two full passes on every step."""
    w = w.copy()
    for _ in range(2):
        for s in range(w.shape[0]):
            w[s] -= (basis[s] @ w[s]) @ basis[s]
    return w


def section_reorth(data_dir, k=1000):
    """Top 1000 of LeNet-5 (3000 steps, host basis) with the DGKS orthogonalisation and with the
    always-twice baseline, in one process on the same network; times and the largest difference of
    the converged eigenvalues."""
    from hspec import lanczos_steps

    loss, params = trained_lenet_loss(data_dir, "reorth")
    op = hspec.hessian_operator(loss, params)
    run = lambda: hspec.top_eigenvalues(op, k=k, key=jax.random.key(0), num_steps=3 * k)  # noqa: E731
    hspec.top_eigenvalues(op, k=5, key=jax.random.key(0), num_steps=30)  # compile outside the timings
    results, seconds = {}, {}
    dgks = lanczos_steps._host_orthogonalize
    for name, orthogonalize in (("twice", gram_schmidt_twice), ("dgks", dgks)):
        lanczos_steps._host_orthogonalize = orthogonalize
        try:
            t = time.perf_counter()
            results[name] = run()
            seconds[name] = time.perf_counter() - t
        finally:
            lanczos_steps._host_orthogonalize = dgks
        res = results[name]
        print(f"[reorth] {name}: {res.num_steps} steps in {seconds[name]:.0f} s, {res.num_converged}/{k} converged")
    a, b = results["twice"], results["dgks"]
    both = a.converged & b.converged
    diff = np.max(np.abs(a.eigenvalues[both] - b.eigenvalues[both]) / np.abs(a.eigenvalues[0]))
    print(f"[reorth] DGKS / always twice: {seconds['dgks'] / seconds['twice']:.2f} of the time; "
          f"{int(both.sum())} eigenvalues converged in both, largest difference {diff:.1e} λ_1")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="hvp,eigsh,compile,memory")
    parser.add_argument("--data-dir", default=os.environ.get("HSPEC_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        basis, m = args.memory_child.split(":")
        memory_child(args.data_dir, basis, int(m))
        return
    print(f"# {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, {os.cpu_count()} CPUs")
    sections = {"hvp": section_hvp, "eigsh": section_eigsh, "compile": section_compile, "memory": section_memory,
                "top1000": section_top1000, "reorth": section_reorth}
    for name in args.sections.split(","):
        sections[name](args.data_dir)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
