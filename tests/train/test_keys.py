"""The run's randomness: one root key, one stream per purpose, and each purpose drawing from its own stream."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from train import keys


def _bits(key) -> tuple:
    return tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())


def test_streams_are_distinct_and_derived_from_the_seed_as_recorded():
    k = keys.run_keys(0)
    streams = {name: getattr(k, name) for name in keys.STREAMS}
    assert len({_bits(v) for v in streams.values()}) == len(keys.STREAMS)
    root = jax.random.key(0)
    assert _bits(root) not in {_bits(v) for v in streams.values()}
    # Rebuild each stream from the recorded derivation alone.
    record = keys.derivation(k)
    split = jax.random.split(jax.random.key(record["seed"]), len(record["streams"]))
    for name, index in record["streams"].items():
        assert _bits(split[index]) == _bits(streams[name])
    assert set(record["streams"]) == {f.name for f in dataclasses.fields(keys.RunKeys)} - {"seed"}


def test_no_stream_serves_two_purposes_in_a_run(data_dir):
    """The Lanczos start is not the initialisation, the trace probes not the augmentation, and the Hessian
    sample is not the first examples of epoch 1 (each was true of the earlier derivation)."""
    from train import data, experiment, presets

    cfg = dataclasses.replace(presets.get("tiny-fcn-mnist"), data_dir=data_dir)
    exp = experiment.build_experiment(cfg)
    k = exp.keys
    assert _bits(k.lanczos_start) != _bits(k.init) and _bits(k.trace_probes) != _bits(k.augment)
    first_epoch = data.epoch_permutation(len(exp.ds.y_train), k.data_order, 1)
    sample = np.asarray(exp.hessian.indices)
    assert not np.array_equal(np.sort(first_epoch[: len(sample)]), sample)
    # The Hessian sample is exactly the draw of its own stream.
    want = np.sort(np.asarray(jax.random.permutation(k.hessian_sample, len(exp.ds.y_train))[: len(sample)]))
    np.testing.assert_array_equal(sample, want)
    # The initial weights are those of the init stream (another seed's init stream gives others).
    other = experiment.build_experiment(dataclasses.replace(cfg, seed=1))
    first = [np.asarray(a) for a in jax.tree.leaves(exp.template.params)]
    assert not all(np.array_equal(a, np.asarray(b)) for a, b in zip(first, jax.tree.leaves(other.template.params)))
