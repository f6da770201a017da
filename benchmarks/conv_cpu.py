"""LeNet-5 convolution and pooling implementations on the current backend: gradient, HVP and training step.

For LeNet-5 (61,706 parameters) on N MNIST-shaped inputs (default 1000), times one jitted gradient,
one Hessian-vector product (`jax.jvp` of `jax.grad`) and one momentum-SGD training step at batch 128,
for each (conv_impl, pool_impl) pair over the same parameters. Prints medians after warm-up, with
ratios to the "xla + reduce_window" baseline measured in the same run (rounds are interleaved, so
load from other processes hits every variant alike). An MLP with about as many parameters is timed
too, as the floor a convolution-free network of that size reaches.

  PYTHONPATH=. python benchmarks/conv_cpu.py [--n 1000] [--repeats 9]
  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= PYTHONPATH=. python benchmarks/conv_cpu.py   # flags are read at start
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import numpy as np
import optax
from flax import nnx

from train import models

VARIANTS = [("xla", "reduce_window"), ("xla", "reshape"), ("slices", "reshape"), ("banded", "reduce_window"), ("banded", "reshape")]


def make_fns(model: nnx.Module, lr: float = 0.1):
    """Jitted gradient, HVP and SGD step of the mean cross-entropy, parameters and data as arguments.

    Args:
      model: an NNX classifier.
      lr: SGD learning rate (momentum 0.9).

    Returns:
      (params, grad_fn(params, x, y), hvp_fn(params, v, x, y), step_fn(params, opt_state, x, y), opt_state).
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p, x, y):
        logits = nnx.merge(graphdef, p, rest)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grad = jax.grad(loss)
    tx = optax.sgd(lr, momentum=0.9)

    def step(p, s, x, y):
        updates, s = tx.update(grad(p, x, y), s, p)
        return optax.apply_updates(p, updates), s

    hvp = lambda p, v, x, y: jax.jvp(lambda q: grad(q, x, y), (p,), (v,))[1]
    return params, jax.jit(grad), jax.jit(hvp), jax.jit(step), tx.init(params)


def time_once(fn, *args) -> float:
    """Wall time of one call, waiting for the result."""
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def main() -> None:
    """Run the benchmark and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="examples for the gradient and HVP")
    ap.add_argument("--batch", type=int, default=128, help="training-step batch size")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds (median reported)")
    args = ap.parse_args()

    kx, ky, kv = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (args.n, 28, 28, 1))
    y = jax.random.randint(ky, (args.n,), 0, 10)
    xb, yb = x[: args.batch], y[: args.batch]

    cases = {}
    for conv_impl, pool_impl in VARIANTS:
        m = models.build("lenet5", num_classes=10, input_shape=(28, 28, 1), rngs=nnx.Rngs(0),
                         conv_impl=conv_impl, pool_impl=pool_impl)
        cases[f"lenet5 {conv_impl} + {pool_impl}"] = make_fns(m)
    mlp = models.build("fcn", num_classes=10, input_shape=(28, 28, 1), rngs=nnx.Rngs(0), depth=1, width=78)
    cases[f"mlp 784-78-10 ({models.count_params(mlp):,} params)"] = make_fns(mlp)

    v_of = {k: jax.tree.map(lambda p: jax.random.normal(kv, p.shape), c[0]) for k, c in cases.items()}
    calls = {k: (lambda c=c, v=v_of[k]: [(c[1], (c[0], x, y)), (c[2], (c[0], v, x, y)), (c[3], (c[0], c[4], xb, yb))])()
             for k, c in cases.items()}
    t0 = time.perf_counter()
    for k in calls:  # warm-up: compile and run once
        for fn, a in calls[k]:
            time_once(fn, *a)
    compile_s = time.perf_counter() - t0
    times = {k: [[], [], []] for k in calls}
    for _ in range(args.repeats):
        for k in calls:
            for j, (fn, a) in enumerate(calls[k]):
                times[k][j].append(time_once(fn, *a))
    med = {k: [float(np.median(t)) for t in ts] for k, ts in times.items()}

    base = med[f"lenet5 {VARIANTS[0][0]} + {VARIANTS[0][1]}"]
    print(f"backend={jax.default_backend()} device={jax.devices()[0].device_kind} jax={jax.__version__} "
          f"cpus={os.cpu_count()} machine={platform.processor() or platform.machine()} "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"LeNet-5 (61,706 params), float32; grad/HVP on {args.n} inputs, SGD step at batch {args.batch}; "
          f"medians of {args.repeats} interleaved rounds after warm-up ({compile_s:.1f} s compile+warm-up)")
    print(f"{'variant':<36}{'grad ms':>9}{'HVP ms':>9}{'step ms':>9}   {'speed-up vs xla + reduce_window (grad, HVP, step)'}")
    for k, (g, h, s) in med.items():
        print(f"{k:<36}{1e3 * g:9.1f}{1e3 * h:9.1f}{1e3 * s:9.2f}   "
              f"{base[0] / g:5.2f}x {base[1] / h:5.2f}x {base[2] / s:5.2f}x")
    lay = models.layers
    backend = jax.default_backend()
    auto = [lay.choose_conv_impl("auto", backend, w, k, 1, p) for w, k, p in ((28, (5, 5, 1, 6), (2, 2)), (14, (5, 5, 6, 16), (0, 0)))]
    print(f"'auto' on this backend: conv1 {auto[0]}, conv2 {auto[1]}, pooling {lay.resolve_pool_impl('auto')}; "
          f"HVP/grad time ratio of the baseline: {base[1] / base[0]:.2f}")


if __name__ == "__main__":
    main()
