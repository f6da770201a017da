"""The run's randomness: one root key per run, split once into one named stream per purpose.

Every random choice of a run comes from exactly one of these streams, so that no two purposes share
random bits (a shared stream correlates choices that the paper treats as independent, e.g. the Lanczos
start vector with the initial weights). Functions take the key of their purpose, never a seed.

    root = jax.random.key(seed)
    streams = jax.random.split(root, len(STREAMS))     # streams[i] is the key of STREAMS[i]

Within a stream, per-step and per-epoch keys are `fold_in(stream, step)` / `fold_in(stream, epoch)`, so
a resumed run draws exactly what an uninterrupted one does. `derivation()` is written into every
results.json so that a reader can rebuild any key from the seed.
"""

from __future__ import annotations

import dataclasses

import jax

# Order matters: stream i is split(root, n)[i]. Append new streams at the end, never reorder.
STREAMS = (
    "init",            # model initialisation
    "data_order",      # epoch permutations: fold_in(data_order, epoch)
    "augment",         # CIFAR flip/crop: fold_in(augment, step)
    "data_options",    # training subset, label noise, random labels, Gaussian inputs
    "hessian_sample",  # which training examples the Hessian is computed on
    "lanczos_start",   # Lanczos start vectors (and restarts after a breakdown)
    "trace_probes",    # Hutchinson probe vectors for Tr(H)
    "density_probes",  # stochastic Lanczos quadrature probes of the spectral density
    "dropout",         # dropout masks (LLMs): fold_in(dropout, step)
)


@dataclasses.dataclass(frozen=True)
class RunKeys:
    """The named PRNG streams of one run (see the module docstring)."""

    seed: int
    init: jax.Array
    data_order: jax.Array
    augment: jax.Array
    data_options: jax.Array
    hessian_sample: jax.Array
    lanczos_start: jax.Array
    trace_probes: jax.Array
    density_probes: jax.Array
    dropout: jax.Array


def run_keys(seed: int) -> RunKeys:
    """Split `key(seed)` once into the run's named streams.

    Args:
        seed: the run's integer seed.

    Returns:
        RunKeys with one independent key per purpose.
    """
    streams = jax.random.split(jax.random.key(int(seed)), len(STREAMS))
    return RunKeys(int(seed), **{name: streams[i] for i, name in enumerate(STREAMS)})


def derivation(keys: RunKeys) -> dict:
    """How the run's keys were derived, for results.json (enough to rebuild each from the seed).

    Args:
        keys: the run's keys.

    Returns:
        {"seed", "root", "split", "streams": {name: index}, "impl"}.
    """
    return {
        "seed": keys.seed,
        "root": "jax.random.key(seed)",
        "split": f"jax.random.split(root, {len(STREAMS)})",
        "streams": {name: i for i, name in enumerate(STREAMS)},
        "per_step": "fold_in(stream, step) for augment and dropout; fold_in(data_order, epoch) per epoch",
        "impl": str(jax.random.key_impl(keys.init)),
    }
