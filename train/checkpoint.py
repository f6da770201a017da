"""Checkpoints of a training run: orbax on disk, a content digest, and never an overwrite.

Layout: `<run>/checkpoints/epoch_00003/` holds the state after epoch 3 (epoch 0 is the initialisation).
Each is one orbax composite checkpoint with two items: `state`, the arrays of the training state as a flat
dict (leaf i of the pytree under the key "leaf_00000i", so that any pytree node type — NNX State, optax
NamedTuples — round-trips through the template's structure), and `meta`, JSON with the epoch, step, the
leaf paths, the run's config and metrics so far, and a sha256 digest of every array's bytes.

Orbax writes into a temporary directory and renames it when complete, so a process killed mid-save
leaves the previous checkpoints intact and no half-written `epoch_N`. Restoring recomputes the digest:
a checkpoint whose bytes changed on disk is reported as corrupted, never silently used and never
overwritten (saving to an existing epoch is refused).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

import jax
import numpy as np

FORMAT = 1
_NAME = re.compile(r"^epoch_(\d+)$")
_TMP = re.compile(r"^epoch_\d+\.orbax-checkpoint-tmp")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or does not match the run that reads it."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (full disk, lost permissions); nothing of it is left behind."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint on disk cannot be read or its contents changed since it was written."""


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    """The checkpoint directory of a run directory.

    Args:
        run_dir: the run's output directory.

    Returns:
        `<run_dir>/checkpoints`.
    """
    return Path(run_dir) / "checkpoints"


def epoch_path(ckpt_dir: str | os.PathLike, epoch: int) -> Path:
    """The directory of the checkpoint after `epoch` (0: initialisation).

    Args:
        ckpt_dir: a run's checkpoint directory.
        epoch: the epoch number.

    Returns:
        `<ckpt_dir>/epoch_<epoch, 5 digits>`.
    """
    return Path(ckpt_dir) / f"epoch_{epoch:05d}"


def list_epochs(ckpt_dir: str | os.PathLike) -> list[int]:
    """The epochs that have a complete (renamed, hence committed) checkpoint, ascending.

    Args:
        ckpt_dir: a run's checkpoint directory (may not exist).

    Returns:
        Sorted epoch numbers.
    """
    path = Path(ckpt_dir)
    if not path.is_dir():
        return []
    return sorted(int(m.group(1)) for p in path.iterdir() if p.is_dir() and (m := _NAME.match(p.name)))


def _is_key(x: Any) -> bool:
    """Whether a leaf is a typed PRNG key array (saved as its raw uint32 data)."""
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_numpy(x: Any) -> np.ndarray:
    """A leaf as a numpy array (typed PRNG keys as their key data)."""
    return np.asarray(jax.random.key_data(x) if _is_key(x) else x)


def tree_digest(arrays: Iterable[np.ndarray]) -> str:
    """A sha256 over the dtype, shape and bytes of each array, in order.

    Args:
        arrays: numpy arrays.

    Returns:
        The hex digest.
    """
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _leaf_paths(tree: Any) -> list[str]:
    """Readable paths of a pytree's leaves, used to check a checkpoint matches its template."""
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def save(ckpt_dir: str | os.PathLike, epoch: int, tree: Any, meta: dict[str, Any]) -> Path:
    """Write the checkpoint after `epoch` atomically; refuse to overwrite an existing one.

    Args:
        ckpt_dir: a run's checkpoint directory (created if missing).
        epoch: the epoch just completed (0: initialisation).
        tree: the training state pytree (arrays only).
        meta: JSON-serialisable extras (step, config, metrics...); `epoch`, `digest`, `paths` and
            `format` are added.

    Returns:
        The checkpoint's directory.

    Raises:
        CheckpointError: the checkpoint exists already, or the directory cannot be written.
    """
    import orbax.checkpoint as ocp

    path = epoch_path(ckpt_dir, epoch)
    if path.exists():
        raise CheckpointError(f"checkpoint {path} exists already; it is never overwritten. Resume the run "
                              "with --resume, or remove that directory yourself if it is unwanted")
    path.parent.mkdir(parents=True, exist_ok=True)
    leaves = [_to_numpy(x) for x in jax.tree.leaves(tree)]
    arrays = {f"leaf_{i:06d}": a for i, a in enumerate(leaves)}
    full_meta = dict(meta, epoch=epoch, digest=tree_digest(leaves), paths=_leaf_paths(tree), format=FORMAT)
    json.dumps(full_meta)  # fail before writing anything if meta is not JSON
    try:
        with _quiet_orbax(), ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            ckptr.save(path.absolute(), args=ocp.args.Composite(
                state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(full_meta)))
    except Exception as err:  # orbax wraps the OSError in several layers; report the root cause once
        _remove_partial(Path(ckpt_dir), path)
        raise CheckpointWriteError(f"could not write checkpoint {path.name} in {Path(ckpt_dir)}: "
                                   f"{_root_cause(err)}") from None
    return path


def _root_cause(err: BaseException) -> str:
    """The innermost exception of a chain, in a few words (e.g. the OSError of a full disk, also when tensorstore
    reports it inside a ValueError of 1,500 characters)."""
    seen = set()
    while (err.__cause__ or err.__context__) is not None and id(err) not in seen:
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror} (errno {err.errno})"
    return _brief(err)


def _brief(err: BaseException) -> str:
    """An orbax/tensorstore error in a few words: the operating system's error when it names one, else the last
    two clauses of the message (without the tensorstore spec), e.g. "CRC-32C checksum verification failed:
    expected=..., actual=...", and the file it concerns."""
    text = str(err).split(" [tensorstore_spec")[0]
    code = re.search(r"\[os_error_code='(\d+)'\]", text)
    if code:
        return f"{os.strerror(int(code.group(1)))} (errno {code.group(1)})"
    files = re.findall(r'local file "([^"]+)"', text)
    detail = ": ".join(text.split(": ")[-2:]).split(";")[0].strip()
    detail = detail if len(detail) <= 200 else detail[:197] + "..."
    where = f" in {files[-1]}" if files else ""
    return f"{type(err).__name__}{where}: {detail}"


def _drop_closed_loop_callbacks(hook):
    """sys.unraisablehook, less the 'Event loop is closed' errors of tensorstore callbacks that arrive after orbax
    closed its event loop on a failed read or write: noise after the one error line that says what happened."""
    def unraisablehook(unraisable):
        if unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed":
            return
        hook(unraisable)

    unraisablehook.drops_closed_loop_callbacks = True
    return unraisablehook


class _DropOrphanedTensorstoreErrors(logging.Filter):
    """asyncio's reports of what orbax leaves behind when one read fails: tasks whose tensorstore error nobody
    retrieved (orbax raised the first one, and restore reports it) and callbacks into its closed event loop. They
    are logged when the garbage collector finds them, possibly long after the call: the filter stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]!r}"
        return "Event loop is closed" not in text and "tensorstore_spec" not in text


def _drop_orphaned_tensorstore_errors() -> None:
    """Install the asyncio filter above once."""
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _DropOrphanedTensorstoreErrors) for f in asyncio_log.filters):
        asyncio_log.addFilter(_DropOrphanedTensorstoreErrors())


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """Around an orbax save or restore: its worker threads' error logs (a traceback per failed write) are not
    shown, since the error is raised here and reported once; late tensorstore callbacks into orbax's closed event
    loop and its orphaned tasks print nothing (they go through sys.unraisablehook and the asyncio logger, filtered
    from here on: they may come after the call)."""
    if not getattr(sys.unraisablehook, "drops_closed_loop_callbacks", False):
        sys.unraisablehook = _drop_closed_loop_callbacks(sys.unraisablehook)
    _drop_orphaned_tensorstore_errors()
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        absl.setLevel(level)


def _remove_partial(ckpt_dir: Path, path: Path) -> None:
    """Delete what a failed save left: its temporary directory, or an incomplete final one."""
    shutil.rmtree(path, ignore_errors=True)
    for p in ckpt_dir.iterdir() if ckpt_dir.is_dir() else ():
        if _TMP.match(p.name):
            shutil.rmtree(p, ignore_errors=True)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without reading its arrays.

    Args:
        path: a checkpoint directory (`.../epoch_N`).

    Returns:
        The metadata dict.

    Raises:
        CorruptCheckpointError: it cannot be read.
    """
    meta_file = Path(path) / "meta" / "metadata"
    try:
        with open(meta_file) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        reason = f"its metadata {meta_file} is unreadable ({err})"
        raise CorruptCheckpointError(_corrupt_message(path, reason)) from None


def _corrupt_message(path: str | os.PathLike, reason: str) -> str:
    """The message for a corrupted checkpoint: what is wrong and what to do (it is left untouched)."""
    return (f"checkpoint at {path} is corrupted: {reason}. It was left untouched. Start without --resume "
            f"in a new --out directory, or remove that checkpoint directory to resume from the one before it")


def restore(path: str | os.PathLike, template: Any) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint into the structure of `template`, verifying its digest.

    Args:
        path: a checkpoint directory (`.../epoch_N`).
        template: a pytree with the structure, shapes and dtypes of the saved state (e.g. a freshly
            initialised state); its values are not used.

    Returns:
        (state pytree shaped like `template`, metadata dict).

    Raises:
        CorruptCheckpointError: unreadable, or the arrays' digest differs from the one saved.
        CheckpointError: the checkpoint holds a different structure (another model or optimizer).
    """
    import orbax.checkpoint as ocp

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {path}")
    meta = read_meta(path)
    leaves, treedef = jax.tree.flatten(template)
    if meta.get("paths") != _leaf_paths(template):
        raise CheckpointError(f"checkpoint at {path} holds a different state structure ({len(meta.get('paths', []))} "
                              f"arrays, expected {len(leaves)}): it was written by another model or optimizer")
    abstract = {f"leaf_{i:06d}": jax.ShapeDtypeStruct(a.shape, a.dtype)
                for i, a in enumerate(_to_numpy(x) for x in leaves)}
    try:
        with _quiet_orbax(), ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            restored = ckptr.restore(path.absolute(), args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        arrays = [np.asarray(restored["state"][k]) for k in sorted(abstract)]
    except Exception as err:  # orbax/tensorstore raise many types for damaged files
        reason = f"orbax could not read it ({_brief(err)})"
        raise CorruptCheckpointError(_corrupt_message(path, reason)) from None
    if tree_digest(arrays) != meta.get("digest"):
        reason = "the arrays' sha256 differs from the digest saved with them"
        raise CorruptCheckpointError(_corrupt_message(path, reason))
    out = [jax.random.wrap_key_data(a, impl=jax.random.key_impl(t)) if _is_key(t) else jax.numpy.asarray(a)
           for a, t in zip(arrays, leaves)]
    return jax.tree.unflatten(treedef, out), meta


def prune(ckpt_dir: str | os.PathLike, *, keep_last: int, keep: Iterable[int] = ()) -> list[int]:
    """Delete old checkpoints (and leftovers of killed saves), keeping the newest and the listed ones.

    Args:
        ckpt_dir: a run's checkpoint directory.
        keep_last: how many of the newest checkpoints to keep (at least 1: the last good one).
        keep: epochs always kept (initialisation, spectrum epochs).

    Returns:
        The epochs deleted.
    """
    epochs = list_epochs(ckpt_dir)
    keep_set = set(keep) | set(epochs[-max(keep_last, 1):])
    deleted = [e for e in epochs if e not in keep_set]
    for e in deleted:
        shutil.rmtree(epoch_path(ckpt_dir, e))
    for p in Path(ckpt_dir).iterdir():
        if _TMP.match(p.name):  # a save killed before its rename: never a usable checkpoint
            shutil.rmtree(p, ignore_errors=True)
    return deleted
