"""The one exit-status table of the command line: which errors are the user's input, which a failed numeric.

`python -m train` and `python -m train llm` print a known error as one line, `error: <what is wrong and the cure>`,
and exit with its status; anything else is a bug and keeps its traceback.

    0  success
    2  bad input: config, data, pre-trained weights, output directory, checkpoint, LoRA targets, a damaged Krylov
       state or results.json
    3  a non-finite loss, Hessian-vector product or loaded weights
    4  a spectrum whose top K did not converge (the checkpoint is kept: a larger max_lanczos_steps continues it)
"""

from __future__ import annotations

__all__ = ["BAD_INPUT", "NOT_FINITE", "NOT_CONVERGED", "exit_status"]

BAD_INPUT, NOT_FINITE, NOT_CONVERGED = 2, 3, 4


def exit_status(err: BaseException) -> int | None:
    """The exit status of a known error, else None (a bug: the traceback is shown).

    A SpectrumError (a run's spectrum failed after training) says in its message what to do; its status is
    that of its cause.
    """
    import hspec
    from train.checkpoint import CheckpointError
    from train.config import ConfigError
    from train.data.dataset import DataError
    from train.llm.presets import LLMConfigError
    from train.llm.weights import NonFiniteWeightsError, WeightsError
    from train.loop import NonFiniteLossError
    from train.record import RecordError
    from train.run import SpectrumError
    from train.rundir import OutputDirError

    if isinstance(err, SpectrumError):
        cause = err.__cause__
        return exit_status(cause) if isinstance(cause, Exception) else None
    if isinstance(err, (NonFiniteLossError, NonFiniteWeightsError, hspec.NonFiniteError)):
        return NOT_FINITE
    if isinstance(err, hspec.NotConvergedError):
        return NOT_CONVERGED
    bad_input = (ConfigError, LLMConfigError, CheckpointError, WeightsError, DataError, FileNotFoundError,
                 OutputDirError, hspec.KrylovStateError, RecordError)
    return BAD_INPUT if isinstance(err, bad_input) else None
