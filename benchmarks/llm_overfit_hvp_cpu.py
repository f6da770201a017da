"""Sizing the CPU overfitting LLM experiment: the cost of one Hessian-vector product of the last block, one
Lanczos reorthogonalisation and one training step, at candidate GPT-2 sizes, measured in one run.

    taskset -c 1 python benchmarks/llm_overfit_hvp_cpu.py [--widths 64,96,128] [--blocks 64,128] [--tokens 8192]

Run it on ONE core (taskset, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"),
as the experiment runs. For each (width, block) it builds the model the `train llm` pipeline builds (4 layers,
4 heads, character-level Shakespeare, the run's fixed Hessian sample of --tokens tokens), linearises the
gradient of the last block once (hspec.hessian_operator, as train.measure does) and times
  * one product H v (median of --repeats),
  * the host reorthogonalisation of one Lanczos step against --basis rows of the last-block size (two
    matrix-vector products with the basis: its cost grows with the step),
  * one AdamW training step of 64 sequences.
Estimated seconds per spectrum: steps * HVP + steps^2 / 2 * reorth(1 row), the steps given by --steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

import hspec
from whole_set_hvp_cpu import median_seconds  # the same timing (benchmarks/ is on the path)


def time_size(width: int, block: int, tokens: int, basis_rows: int, repeats: int) -> dict:
    """HVP, reorthogonalisation and training-step seconds of one candidate size."""
    from train.llm import loop, presets, train

    cfg = presets.apply_overrides(presets.get("gpt2-nano-shakespeare-cpu"), {
        "model.n_embd": str(width), "model.n_head": "4", "model.n_layer": "4", "block_size": str(block),
        "hessian_sequences": str(tokens // block), "hessian_batch": str(tokens // block)})
    r = train.build(cfg)
    params = loop.full_params(r.state.params, r.fixed)
    pattern = train.subset_pattern(cfg, r.model_info["arch_config"])
    with jax.default_matmul_precision("highest"):
        t0 = time.perf_counter()
        op = hspec.hessian_operator(r.hessian_loss, params, batches=r.hessian_batches, wrt=pattern)
        v = jax.random.normal(jax.random.key(1), (op.dim,), op.dtype)
        jax.block_until_ready(op.matvec(v))
        build_s = time.perf_counter() - t0
        hvp_s = median_seconds(lambda: op.matvec(v), repeats)
    basis = np.random.default_rng(0).standard_normal((basis_rows, op.dim)).astype(np.float32)
    w = np.asarray(v)
    reorth_s = median_seconds(lambda: basis.T @ (basis @ w), repeats)
    step_fn = loop.lm_train_step(r.split.train_def, r.optim)
    from train.llm import data as data_lib
    xs, ys, ws = data_lib.train_batch(r.data.train, r.keys.data_order, 0, cfg.micro_batch, cfg.grad_accum)
    state = r.state

    def one_step():
        nonlocal state
        state, loss = step_fn(state, r.fixed, xs, ys, ws, jax.random.key(0))
        return loss

    step_s = median_seconds(one_step, repeats)
    n_params = int(sum(np.size(x) for x in jax.tree.leaves(r.state.params)))
    return {"width": width, "block": block, "tokens": tokens, "dim": int(op.dim), "params": n_params,
            "build_s": build_s, "hvp_s": hvp_s, "reorth_s": reorth_s, "reorth_rows": basis_rows,
            "train_step_s": step_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", default="64,96,128")
    p.add_argument("--blocks", default="64,128")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--basis", type=int, default=2000, help="rows of the basis in the reorthogonalisation timed")
    p.add_argument("--steps", type=int, default=3000, help="Lanczos steps assumed for one spectrum")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    print(f"{'width':>5} {'block':>5} {'tokens':>6} {'dim':>7} {'params':>8} {'HVP s':>7} {'reorth s':>8} "
          f"{'step s':>7} {'est. spectrum s':>15}")
    for width in map(int, a.widths.split(",")):
        for block in map(int, a.blocks.split(",")):
            t = time_size(width, block, a.tokens, a.basis, a.repeats)
            per_row = t["reorth_s"] / t["reorth_rows"]
            est = a.steps * t["hvp_s"] + a.steps ** 2 / 2 * per_row
            print(f"{width:>5} {block:>5} {t['tokens']:>6} {t['dim']:>7} {t['params']:>8} {t['hvp_s']:>7.3f} "
                  f"{t['reorth_s']:>8.3f} {t['train_step_s']:>7.3f} {est:>15.0f}", flush=True)


if __name__ == "__main__":
    main()
