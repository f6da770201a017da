"""A huge batch on XLA:CPU: one gradient over the whole batch, or the same gradient accumulated over micro-batches?

The batch-size sweeps train LeNet-5 at batches up to the whole of MNIST (60,000 images in one step). This times
the mean-loss gradient of one such batch computed two ways, in one run:

- ``whole``: one `jax.grad` over all B images (what `train.loop.make_train_step` does; the baseline);
- ``scan C``: the sum of per-micro-batch gradients over B / C slices of C images, in one `jax.lax.scan` inside
  one jit, divided by B: the same gradient in exact arithmetic (floating point sums in another order).

It prints each way's seconds (median of the rounds, after a compiled warm-up), its ratio to ``whole`` and its
largest difference from ``whole`` relative to each leaf's largest entry. The images are random: the cost does
not depend on their values. LeNet-5 has no BatchNorm; a network with one would need the whole batch's
statistics, which micro-batches do not give.

Memory: the whole-batch gradient at B = 60000 holds several GB of activations. Run beside the large-batch sweeps on
a 24 GB machine (whose batch-60000 run held 7.3 GB), it ran that sweep out of memory: the kernel killed the sweep,
which resumed from its last epoch's checkpoint. Pause the sweeps first, or use a smaller --batch.

  PYTHONPATH=. python benchmarks/large_batch_cpu.py [--batch 60000] [--chunks 500,2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from train import loop
from train.models.lenet import LeNet5


def gradients(batch: int, chunks: list[int]):
    """{name: jitted grad(params, x, y)} for the whole batch and each micro-batch size (which must divide it)."""
    fm, params, rest = loop.split_model(LeNet5(rngs=nnx.Rngs(0)))

    def loss_sum(p, x, y):
        return loop.cross_entropy(nnx.merge(fm.train_def, p, rest, copy=True)(x), y).sum()

    def whole(p, x, y):
        return jax.tree.map(lambda g: g / batch, jax.grad(loss_sum)(p, x, y))

    def scanned(c):
        def grad(p, x, y):
            xs, ys = x.reshape(batch // c, c, *x.shape[1:]), y.reshape(batch // c, c)

            def body(acc, xy):
                return jax.tree.map(jnp.add, acc, jax.grad(loss_sum)(p, *xy)), None

            total, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, p), (xs, ys))
            return jax.tree.map(lambda g: g / batch, total)
        return grad

    ways = {"whole": jax.jit(whole)}
    for c in chunks:
        if batch % c:
            raise SystemExit(f"--chunks: {c} does not divide --batch {batch}")
        ways[f"scan {c}"] = jax.jit(scanned(c))
    return ways, params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=60000)
    ap.add_argument("--chunks", default="500,2000", help="micro-batch sizes, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    ways, params = gradients(args.batch, [int(c) for c in args.chunks.split(",")])
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((args.batch, 28, 28, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, args.batch), jnp.int32)
    print(f"LeNet-5, batch {args.batch}, {args.rounds} rounds; jax {jax.__version__}, {platform.machine()}, "
          f"{jax.device_count()} {jax.default_backend()} device(s)")
    # Compiled and warm once; each way's difference from the whole-batch gradient, from this first call.
    grads = {name: jax.block_until_ready(f(params, x, y)) for name, f in ways.items()}
    diffs = {name: max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                       for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(grads["whole"])))
             for name, g in grads.items()}
    times = {name: [] for name in ways}
    for _ in range(args.rounds):  # interleaved, so that a change in the machine's load touches every way alike
        for name, f in ways.items():
            t = time.perf_counter()
            jax.block_until_ready(f(params, x, y))
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["whole"])
    print(f"{'way':<12}{'seconds':>9}{'ratio to whole':>16}{'max rel diff':>14}")
    for name in ways:
        t = statistics.median(times[name])
        print(f"{name:<12}{t:>9.2f}{base / t:>15.2f}x{diffs[name]:>14.1e}")


if __name__ == "__main__":
    main()
