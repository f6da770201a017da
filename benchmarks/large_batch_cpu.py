"""A huge batch on XLA:CPU: the training step over the whole batch at once, or accumulated over micro-batches?

The batch-size sweeps train LeNet-5 at batches up to the whole of MNIST (60,000 images in one step). This times
`train.loop.make_train_step` (momentum SGD, weight decay 5e-4, as the sweeps train) on one such batch, in one run:

- ``whole``: `micro_batch=None`, one `jax.value_and_grad` over all B images (the baseline);
- ``micro C``: `micro_batch=C`, the per-micro-batch gradients of B / C slices of C images summed in one
  `jax.lax.scan` inside the step (and a smaller remainder when C does not divide B): the same step in exact
  arithmetic, floating-point sums in another order. The presets of batches above
  `train.presets.MICRO_BATCH_ABOVE` train this way, with C = `train.presets.MICRO_BATCH`.

It prints each way's seconds (median of the rounds, after a compiled warm-up), its ratio to ``whole`` and the
largest difference of its momentum buffer (the gradient plus weight decay, after one step) from ``whole``'s,
relative to each leaf's largest entry. The images
are random: the cost does not depend on their values. LeNet-5 has no BatchNorm; a network with one needs the
whole batch's statistics, and the step refuses micro-batches for it.

Memory: the whole-batch step at B = 60000 holds several GB of activations; micro-batches hold one micro-batch's.
On a 24 GB machine beside whole-batch sweeps (one held 7.3 GB) it ran a sweep out of memory: pause such sweeps
first, or use a smaller --batch.

  PYTHONPATH=. python benchmarks/large_batch_cpu.py [--batch 60000] [--chunks 2000,6000] [--rounds 3]
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

from train import loop, optim
from train.catalog import PAPER_WEIGHT_DECAY
from train.models.lenet import LeNet5


def steps(chunks: list[int]):
    """({name: the training step}, its starting state) for the whole batch and each micro-batch size."""
    model_defs, params, rest = loop.split_model(LeNet5(rngs=nnx.Rngs(0)))
    tx = optim.get("sgd", learning_rate=0.1, weight_decay=PAPER_WEIGHT_DECAY)
    ways = {"whole": loop.make_train_step(model_defs, tx)}
    ways.update({f"micro {c}": loop.make_train_step(model_defs, tx, micro_batch=c) for c in chunks})
    return ways, loop.TrainState(params, rest, tx.init(params))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=60000)
    ap.add_argument("--chunks", default="2000,6000", help="micro-batch sizes, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    ways, state = steps([int(c) for c in args.chunks.split(",")])
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((args.batch, 28, 28, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, args.batch), jnp.int32)
    key = jax.random.key(0)
    print(f"LeNet-5 training step, batch {args.batch}, {args.rounds} rounds; jax {jax.__version__}, "
          f"{platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s)")
    # Compiled and warm once; each way's difference from the whole-batch step, from this first call: in the
    # momentum buffer, which after one step holds the gradient plus weight decay (the parameters' change,
    # p1 - p0, would show float32's rounding of p1 instead).
    buffers = {name: [a for a in jax.tree.leaves(jax.block_until_ready(f(state, x, y, key))[0].opt_state)
                      if a.ndim > 0] for name, f in ways.items()}
    diffs = {name: max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in zip(bufs, buffers["whole"]))
             for name, bufs in buffers.items()}
    times = {name: [] for name in ways}
    for _ in range(args.rounds):  # interleaved, so that a change in the machine's load touches every way alike
        for name, f in ways.items():
            t = time.perf_counter()
            jax.block_until_ready(f(state, x, y, key))
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["whole"])
    print(f"{'way':<12}{'seconds':>9}{'ratio to whole':>16}{'max rel diff':>14}")
    for name in ways:
        t = statistics.median(times[name])
        print(f"{name:<12}{t:>9.2f}{base / t:>15.2f}x{diffs[name]:>14.1e}")


if __name__ == "__main__":
    main()
