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
    """The Hessian sample is not the first examples of epoch 1 (it was in the earlier derivation), and the initial
    weights are the init stream's (the Lanczos start: the next test, on what the measurement used)."""
    from train import data, experiment, presets

    cfg = dataclasses.replace(presets.get("tiny-fcn-mnist"), data_dir=data_dir)
    exp = experiment.build_experiment(cfg)
    k = exp.keys
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


def test_the_lanczos_start_a_measurement_draws_is_its_own_stream_not_the_init_key(data_dir, monkeypatch):
    """What the consumer used: the first vector that a run's measurement hands to its Hessian operator (the
    operator's public matvec sees every product) is the start vector that hspec.lanczos draws from the run's
    lanczos_start stream, and not the one the init key would give."""
    import hspec
    from train import experiment, presets, run

    cfg = dataclasses.replace(presets.get("tiny-fcn-mnist"), data_dir=data_dir, k=4, lanczos_steps=12,
                              max_lanczos_steps=48, trace_samples=2)
    exp = experiment.build_experiment(cfg)
    seen, real = [], hspec.HessianOperator.matvec

    def matvec(self, v):
        seen.append(np.asarray(v))
        return real(self, v)

    monkeypatch.setattr(hspec.HessianOperator, "matvec", matvec)
    metrics = dict(train_loss=1.0, train_acc=0.1, test_loss=1.0, test_acc=0.1)
    run.measure_state(exp, exp.template, metrics, epoch=0, step=0, checkpoint=None, progress=False)
    used = seen[0].reshape(-1)

    def start_from(key) -> np.ndarray:
        first = []
        hspec.lanczos(lambda v: first.append(np.asarray(v)) or v, 2, key=key, dim=used.size, dtype=used.dtype)
        return first[0].reshape(-1)

    np.testing.assert_array_equal(used, start_from(exp.keys.lanczos_start))
    assert not np.allclose(used, start_from(exp.keys.init))
