"""train.measure: a run measures its checkpoints through one hspec.HessianFactory and compiles its Hessian once."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest


def test_two_checkpoints_through_one_factory_compile_once_and_measure_as_alone(tiny_cfg, compile_events):
    """A BatchNorm network, so that the loss closes over each checkpoint's own statistics (a new closure each
    time): the second checkpoint compiles nothing, and both measure exactly as a measurement on its own does."""
    import hspec
    from train import experiment, measure
    from train.hessian import hessian_loss

    cfg = dataclasses.replace(tiny_cfg, model="linear", activation="relu", batchnorm=True, curvature="none")
    exp = experiment.build_experiment(cfg, progress=False)
    spec = measure.SpectrumSpec.from_config(cfg)
    first = exp.template
    # Another checkpoint: other parameters and other BatchNorm statistics.
    second = first._replace(params=jax.tree.map(lambda a: 1.1 * a, first.params),
                            rest=jax.tree.map(lambda a: a + 0.25, first.rest))
    keys = dict(lanczos_key=exp.keys.lanczos_start, trace_key=exp.keys.trace_probes)
    data = dict(data=(exp.hessian.x, exp.hessian.y), micro_batch=cfg.hessian_batch_size, progress=False)

    def measured(state, factory):
        return measure.measure(hessian_loss(exp.model_defs.eval_def, state.rest), state.params, None, spec, **keys,
                               **data, factory=factory)

    factory = hspec.HessianFactory()
    at_first = measured(first, factory)
    assert compile_events, "the first checkpoint compiles the Hessian programs"
    compile_events.clear()
    at_second = measured(second, factory)
    assert compile_events == []
    for kept, alone in ((at_first, measured(first, None)), (at_second, measured(second, None))):
        np.testing.assert_array_equal(kept.spectrum["eigenvalues"], alone.spectrum["eigenvalues"])
        assert kept.sharpness["trace"] == alone.sharpness["trace"]
    assert not np.array_equal(at_first.spectrum["eigenvalues"], at_second.spectrum["eigenvalues"])
