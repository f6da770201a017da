"""Two spectra at once on a small CPU: do two processes that share the cores lose work to each other?

The sweep queues run two jobs side by side on a 2-core machine. Each JAX process sizes its CPU thread
pool to the cores it may use, so two unpinned processes run 2 x 2 threads on 2 cores. This times the
same fixed work (LeNet-5 Hessian-vector products on N MNIST-shaped inputs, `hspec.hvp` as every Lanczos
step applies it) in three arrangements, measured in one run:

- ``alone``: one worker, all cores (the baseline);
- ``pair``: two workers at once, both unpinned (what `nohup ... &` twice gives);
- ``pair-pinned``: two workers at once, each pinned to its own core with ``os.sched_setaffinity``
  before JAX starts, so each sizes its pool to one core.

It prints each arrangement's throughput (products per second, all workers together) and its ratio to
``alone``. Linux only (sched_setaffinity).

  PYTHONPATH=. python benchmarks/concurrent_cpu.py [--n 1000] [--products 60]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time


def worker(n: int, products: int, cpus: list[int] | None) -> dict:
    """Time `products` LeNet-5 HVPs on n inputs after one warm-up; pin to `cpus` before JAX loads."""
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    import jax
    from flax import nnx

    import hspec
    from train import models
    from train.hessian import loss_fn_from_model

    kx, ky, kv = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (n, 28, 28, 1))
    y = jax.random.randint(ky, (n,), 0, 10)
    loss, params = loss_fn_from_model(models.build("lenet5", num_classes=10, input_shape=(28, 28, 1),
                                                   rngs=nnx.Rngs(0)))
    hvp = jax.jit(lambda p, v: hspec.hvp(lambda q: loss(q, (x, y)), p, v))
    v = jax.tree.map(lambda p: jax.random.normal(kv, p.shape), params)
    jax.block_until_ready(hvp(params, v))
    t = time.perf_counter()
    for _ in range(products):
        v = hvp(params, v)
        v = jax.tree.map(lambda a: a / (1.0 + abs(a).max()), v)  # keep the chain bounded, as Lanczos does
    jax.block_until_ready(v)
    return {"seconds": time.perf_counter() - t, "products": products}


def run_workers(n: int, products: int, pins: list[list[int] | None]) -> float:
    """Start one worker per entry of `pins` at once; products per second over all of them."""
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(p), "--n", str(n),
                               "--products", str(products)], stdout=subprocess.PIPE, text=True)
             for p in pins]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit("a worker failed")
    # Throughput over the timed loops only: the slowest worker's loop bounds the pair's wall time.
    return sum(o["products"] for o in outs) / max(o["seconds"] for o in outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="inputs per Hessian-vector product")
    ap.add_argument("--products", type=int, default=60, help="timed products per worker")
    ap.add_argument("--rounds", type=int, default=2, help="repeat the three arrangements, interleaved")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.n, args.products, json.loads(args.worker))))
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("needs at least 2 usable cores")
    half = len(cores) // 2
    arrangements = {"alone": [None], "pair": [None, None], "pair-pinned": [cores[:half], cores[half:]]}
    rates = {k: [] for k in arrangements}
    for _ in range(args.rounds):
        for name, pins in arrangements.items():
            rates[name].append(run_workers(args.n, args.products, pins))
    print(f"# {platform.machine()} {len(cores)} usable cores; LeNet-5 HVP on {args.n} inputs, "
          f"{args.products} products per worker, {args.rounds} interleaved rounds (best shown)")
    print(f"{'arrangement':<14} {'products/s':>10} {'vs alone':>9}")
    base = max(rates["alone"])
    for name, r in rates.items():
        print(f"{name:<14} {max(r):>10.2f} {max(r) / base:>8.2f}x   rounds: {', '.join(f'{x:.2f}' for x in r)}")


if __name__ == "__main__":
    main()
