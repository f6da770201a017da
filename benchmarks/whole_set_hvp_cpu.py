"""The Hessian of a whole training set on this CPU: per-example cost of the HVP against the gradient, and the
HVP's GFLOP/s against the machine's matmul peak, all measured in one run.

    python benchmarks/whole_set_hvp_cpu.py [--sizes 1000,4000,16000,60000] [--micro-batch 1000] [--repeats 3]

The network is the paper's LeNet-5 (61,706 parameters) on MNIST; the speed of an HVP does not depend on where
the parameters sit, so the initialisation is used (no checkpoint needed). For each N the script times
  * the gradient of the mean loss over the first N training images, accumulated over micro-batches in one
    ``lax.scan`` (as the training step and the operator do), and
  * one product of ``hspec.hessian_operator(loss, params, data=(x[:N], y[:N]), micro_batch=C, method=...)``
    for ``method="jvp"`` (forward-over-reverse inside the scan: one micro-batch's activations in memory) and,
    up to ``--linearize-max`` examples, ``"linearize"`` (the scan linearised once: every micro-batch's
    residuals kept),
and prints the per-example seconds and their ratio (HVP / gradient). The peak is the best of a few float32
matmuls of 2048 x 2048 at precision "highest" (2 n^3 flops each); the HVP's flops are XLA's own count
(``cost_analysis``) of one micro-batch's product, times the number of micro-batches. Medians of --repeats.
It also times one Lanczos step at the largest N (the HVP plus the host reorthogonalisation against 1000 rows).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import hspec
from hspec.hvp import micro_batched, scanned_mean_loss
from train import measure


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` (blocked until ready) over ``repeats`` calls after one warm-up call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """The best float32 matmul rate of this CPU through XLA, in GFLOP/s (2 n^3 flops per product)."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    mm = jax.jit(lambda a, b: jnp.matmul(a, b, precision="highest"))
    jax.block_until_ready(mm(a, b))
    best = min(_timed(lambda: mm(a, b)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def lenet_problem():
    """(loss_fn(params, batch), params, x_train, y_train) of LeNet-5 on MNIST at its initialisation."""
    from train import presets
    from train.experiment import build_experiment
    from train.hessian import hessian_loss

    exp = build_experiment(presets.get("lenet-mnist-sgd"), False)
    return (hessian_loss(exp.model_defs.eval_def, exp.template.rest), exp.template.params,
            jnp.asarray(exp.ds.x_train), jnp.asarray(exp.ds.y_train))


def hvp_flops(loss_fn, params, batch) -> float:
    """XLA's flop count of one HVP over one batch (no scan, so the count is not the loop body's once)."""
    op = hspec.hessian_operator(loss_fn, params, batches=[batch], method="jvp")
    v = jnp.zeros((1, op.dim), op.dtype)
    programs, (consts, sel, fix, b) = op._parts[0][0], op.args[0][0]
    cost = programs.apply_jvp.lower(consts, sel, fix, b, v).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,4000,16000,60000")
    ap.add_argument("--micro-batch", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--linearize-max", type=int, default=16000,
                    help="time method='linearize' up to this N (it keeps every micro-batch's residuals)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    C = args.micro_batch
    print(f"machine: {measure.cpu_model()}, {os.cpu_count()} cores; jax {jax.__version__}; micro-batch {C}")
    loss_fn, params, x, y = lenet_problem()
    peak = matmul_peak_gflops()
    print(f"matmul peak (float32, 2048^3, precision highest): {peak:.1f} GFLOP/s")
    flops_mb = hvp_flops(loss_fn, params, (x[:C], y[:C]))
    print(f"XLA flops of one HVP over {C} images: {flops_mb / 1e9:.2f} GFLOP ({flops_mb / C / 1e6:.2f} MFLOP per image)")
    print(f"{'N':>6} {'grad s':>8} {'grad us/ex':>10} {'hvp(jvp) s':>10} {'jvp/grad':>8} {'hvp(lin) s':>10} "
          f"{'lin/grad':>8} {'GFLOP/s':>8} {'% peak':>7}")
    for n in sizes:
        data = (x[:n], y[:n])
        scanned = scanned_mean_loss(loss_fn, C, n)
        grad = jax.jit(jax.grad(scanned))
        parts = micro_batched(data, C)
        t_grad = median_seconds(lambda: grad(params, parts), args.repeats)
        op = hspec.hessian_operator(loss_fn, params, data=data, micro_batch=C, method="jvp")
        v = jax.random.normal(jax.random.key(2), (op.dim,), op.dtype)
        t_jvp = median_seconds(lambda: op.matvec(v), args.repeats)
        lin = "-"
        if n <= args.linearize_max:
            op_lin = hspec.hessian_operator(loss_fn, params, data=data, micro_batch=C, method="linearize")
            t_lin = median_seconds(lambda: op_lin.matvec(v), args.repeats)
            lin = f"{t_lin:10.3f} {t_lin / t_grad:8.2f}"
            del op_lin
        else:
            lin = f"{'-':>10} {'-':>8}"
        rate = flops_mb * (n / C) / t_jvp / 1e9
        print(f"{n:6d} {t_grad:8.3f} {1e6 * t_grad / n:10.1f} {t_jvp:10.3f} {t_jvp / t_grad:8.2f} {lin} "
              f"{rate:8.1f} {100 * rate / peak:6.1f}%")
    # One Lanczos step at the largest N: the product plus the host reorthogonalisation against 1000 rows.
    n = sizes[-1]
    op = hspec.hessian_operator(loss_fn, params, data=(x[:n], y[:n]), micro_batch=C, method="jvp")
    steps = 3
    basis = np.asarray(jax.random.normal(jax.random.key(4), (1000, op.dim), jnp.float32))
    w = np.asarray(op.matvec(v))
    t0 = time.perf_counter()
    for _ in range(steps):
        w2 = np.asarray(op.matvec(jnp.asarray(w / np.linalg.norm(w))))
        w2 = w2 - basis.T @ (basis @ w2)
        w2 = w2 - basis.T @ (basis @ w2)
    per_step = (time.perf_counter() - t0) / steps
    print(f"Lanczos step at N = {n} (HVP + two reorthogonalisation passes against 1000 rows): {per_step:.2f} s")


if __name__ == "__main__":
    main()
