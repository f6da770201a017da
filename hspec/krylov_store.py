"""The Krylov state of a Lanczos run kept on disk, verified by sha256, so that a killed run resumes from its last save.

:class:`KrylovStore` writes and restores it (``basis.bin`` and ``state.npz``; the format is fixed: states saved by
earlier versions resume); :func:`saved_progress` reads how far a saved state is, cheaply, for listings.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from hspec.errors import KrylovStateError
from hspec.ritz import ritz_decomposition

__all__ = ["KrylovStore", "saved_progress"]


class KrylovStore:
    """The host Krylov state of one run kept in a directory, so that a killed run resumes from its last save.

    Files: ``basis.bin``, the basis rows in step order (``[row, start, n]``, append-only, so a save writes
    only the rows added since the last one), and ``state.npz``: the steps done, the coefficients, the shape,
    the sha256 of every basis row written, the run's identity (``checkpoint_identity``) and a sha256 of all
    these arrays, replaced atomically after the rows it refers to are on disk. A resumed run continues exactly
    as the uninterrupted one: every row is fixed once written, and the steps are deterministic. A state that
    does not verify (a row overwritten or zeroed, a file truncated, a ``state.npz`` that is not a zip) or that
    belongs to another identity raises :class:`hspec.KrylovStateError` and is never resumed from.

    Args:
      directory: where the files live (created on the first save).
      every_s: seconds between saves (0: after every slice of steps).
      identity: a JSON-serialisable dict naming what the state belongs to (network, sample, settings), saved
        with it; a saved state with another identity is refused. None: not checked (the start vector and α_0
        decide, see :meth:`restore`).
    """

    BASIS, STATE = "basis.bin", "state.npz"
    _KEYS = ("steps", "alphas", "betas", "shape", "elapsed_s", "row_digests", "identity", "digest")

    def __init__(self, directory: str | os.PathLike, every_s: float = 60.0, identity: dict | None = None):
        self.dir, self.every_s = Path(directory), float(every_s)
        self.rows_on_disk, self.last_save = 0, time.monotonic()
        # Seconds of stepping behind the state restored (earlier processes), and when this one began: each save
        # records their sum, so that a run killed and resumed still knows what its steps cost.
        self.resumed_s, self.opened = 0.0, time.monotonic()
        self.digests: list[bytes] = []  # sha256 of basis rows 0.. as written (row r: [S, n] in file order)
        if identity is not None and not isinstance(identity, dict):
            raise TypeError(f"checkpoint_identity must be a dict (or None), got a {type(identity).__name__}")
        try:
            self.identity_json = json.dumps(identity, sort_keys=True)
        except (TypeError, ValueError) as err:
            raise TypeError(f"checkpoint_identity must be JSON-serialisable: {err}") from None
        self.identity = json.loads(self.identity_json)  # as it reads back (tuples become lists)

    def _shape(self, V) -> list:
        return [int(V.shape[0]), int(V.shape[1]), int(V.shape[2]), str(V.dtype)]

    def _refuse(self, what: str) -> KrylovStateError:
        return KrylovStateError(f"the Krylov state in {self.dir} cannot be used: {what}; delete {self.dir} to start "
                                "this spectrum afresh")

    def _read_state(self) -> dict[str, np.ndarray]:
        """The arrays of ``state.npz``, verified against the sha256 it carries (KrylovStateError if not)."""
        try:
            with contextlib.ExitStack() as stack:
                saved = np.load(self.dir / self.STATE)
                if not isinstance(saved, np.lib.npyio.NpzFile):
                    raise ValueError("not an npz archive")
                stack.enter_context(saved)
                arrays = {name: saved[name] for name in saved.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            raise self._refuse(f"{self.STATE} is unreadable ({type(err).__name__}: {' '.join(str(err).split())})") \
                from None
        if "digest" not in arrays:
            raise self._refuse(f"{self.STATE} carries no digest (written by an older hspec), so its basis cannot be "
                               "verified")
        missing = [k for k in self._KEYS if k not in arrays]
        if missing:
            raise self._refuse(f"{self.STATE} lacks {', '.join(missing)}")
        if _arrays_digest({k: v for k, v in arrays.items() if k != "digest"}) != str(arrays["digest"]):
            raise self._refuse(f"{self.STATE} does not match its sha256")
        return arrays

    def _check_identity(self, saved: dict[str, np.ndarray]) -> None:
        """Refuse a state saved under another identity (when this run gives one)."""
        if self.identity is None:
            return
        theirs = json.loads(str(saved["identity"]))
        if theirs == self.identity:
            return
        if not isinstance(theirs, dict):
            raise self._refuse(f"it was saved without a checkpoint_identity, this run gives {self.identity_json}")
        keys = sorted(set(theirs) | set(self.identity))
        diff = [k for k in keys if theirs.get(k, "<absent>") != self.identity.get(k, "<absent>")]
        detail = "; ".join(f"{k}: saved {_short(theirs.get(k, '<absent>'))}, this run "
                           f"{_short(self.identity.get(k, '<absent>'))}" for k in diff)
        raise KrylovStateError(f"the Krylov state in {self.dir} belongs to another computation: its "
                               f"checkpoint_identity differs in {', '.join(diff)} ({detail}); delete {self.dir} to "
                               "start this spectrum afresh, or give this run its own checkpoint_dir")

    def _other_run(self, what: str) -> int:
        """A state of another run: start afresh (0) without an identity; refused when the identities agreed."""
        if self.identity is None:
            return 0
        raise self._refuse(f"its checkpoint_identity matches this run's but {what}")

    def _check_row(self, disk, i: int, digests: np.ndarray) -> np.ndarray:
        row = disk[i]
        if hashlib.sha256(row).digest() != digests[i].tobytes():
            raise self._refuse(f"row {i} of {self.BASIS} does not match its sha256 (overwritten or damaged)")
        return row

    def restore(self, state, matvec) -> int:
        """Fill ``state`` from the directory and return the steps done there (0: nothing to resume).

        Every piece read is verified first: ``state.npz`` against its sha256, the identity (when this run
        gives one), ``basis.bin``'s length, and each basis row read against its sha256; what does not verify
        raises :class:`hspec.KrylovStateError`. A verified state resumes only when its starts, dimension and
        dtype match, its first basis row is this run's start vector, and the operator gives back its α_0 (one
        product, so that a state saved for another network or Hessian sample is never continued); otherwise
        the run starts afresh, or, when the identities matched, is refused. The step budget may differ: a
        state saved under a smaller ``max_steps`` that ran out before converging continues under a larger one
        (a Lanczos run truncated at j steps is exactly a j-step run), and one saved under a larger budget is
        truncated to this one.
        """
        V, alphas, betas, _ = state
        basis = self.dir / self.BASIS
        if not (self.dir / self.STATE).is_file():
            return 0  # nothing saved (a basis.bin alone: killed before its first state; rewritten from row 0)
        saved = self._read_state()
        self._check_identity(saved)
        if not basis.is_file():
            raise self._refuse(f"{self.BASIS} is missing")
        S, capacity, n = (int(d) for d in V.shape)
        saved_j, shape = int(saved["steps"]), json.loads(str(saved["shape"]))
        if [shape[0], shape[2], shape[3]] != [S, n, str(V.dtype)] or saved_j < 1:
            return self._other_run(f"it holds {shape[0]} starts of size {shape[2]} in {shape[3]} after {saved_j} "
                                   f"steps, this run {S} of size {n} in {V.dtype}")
        digests = saved["row_digests"]
        j = min(saved_j, capacity)
        rows = min(j + 1, capacity)  # rows 0..j: the basis so far and the next vector
        size, row_bytes = basis.stat().st_size, S * n * V.dtype.itemsize
        if size < len(digests) * row_bytes:
            raise self._refuse(f"{self.BASIS} is truncated ({size} bytes, {len(digests)} rows of {row_bytes} "
                               "bytes recorded)")
        if len(digests) < rows:
            raise self._refuse(f"{self.STATE} records {len(digests)} basis rows, its {saved_j} steps need {rows}")
        # Read through a memory map: the basis (GBs for a large network) is copied once, not twice.
        disk = np.memmap(basis, dtype=V.dtype, mode="r", shape=(rows, S, n))
        v0 = np.asarray(V[:, 0])
        if not np.array_equal(self._check_row(disk, 0, digests), v0):
            return self._other_run("its start vector differs")
        alpha0 = np.sum(v0 * np.asarray(matvec(jnp.asarray(v0))), axis=-1)
        if not np.allclose(alpha0, saved["alphas"][:, 0], rtol=1e-9, atol=0):
            return self._other_run("the operator gives another α_0 (another network or Hessian sample)")
        for i in range(1, rows):
            V[:, i] = self._check_row(disk, i, digests)
        del disk
        alphas[:, :j], betas[:, :j] = saved["alphas"][:, :j], saved["betas"][:, :j]
        # Truncated to a smaller budget, the share of the saved time that its j steps took.
        self.resumed_s = float(saved["elapsed_s"]) * j / saved_j
        # Truncated to a smaller budget, the rows on disk beyond it stay valid (v_j included): never rewritten.
        self.rows_on_disk = rows if saved_j <= capacity else len(digests)
        self.digests = [d.tobytes() for d in digests[: self.rows_on_disk]]
        self.identity_json = str(saved["identity"])  # kept by a run that gave none (equal where it gave one)
        return j

    def save(self, state, j: int, *, force: bool = False) -> None:
        """Save after j steps (basis rows 0..j are set), at most every ``every_s`` seconds unless forced.

        At the end of the buffers (j = their capacity) the next vector v_j, which has no row there, is
        taken from the state's current vector, so that a run with a larger budget can continue.
        """
        if not force and time.monotonic() - self.last_save < self.every_s:
            return
        V, alphas, betas, v = state
        self.dir.mkdir(parents=True, exist_ok=True)
        first, hi = self.rows_on_disk, min(j + 1, V.shape[1])
        rows = V[:, first:hi].transpose(1, 0, 2)
        if j + 1 > V.shape[1] and v is not None and first <= j:
            rows = np.concatenate([rows, np.asarray(v, dtype=V.dtype)[None]])
            hi = j + 1
        rows = np.ascontiguousarray(rows)
        with open(self.dir / self.BASIS, "r+b" if first else "wb") as f:
            f.seek(first * V.shape[0] * V.shape[2] * V.dtype.itemsize)
            f.write(rows.tobytes())
            f.flush()
            os.fsync(f.fileno())
        self.digests[first : first + len(rows)] = [hashlib.sha256(row).digest() for row in rows]
        arrays = dict(steps=np.int64(j), alphas=alphas[:, :j], betas=betas[:, :j],
                      shape=np.str_(json.dumps(self._shape(V))),
                      elapsed_s=np.float64(self.resumed_s + time.monotonic() - self.opened),
                      row_digests=np.frombuffer(b"".join(self.digests), np.uint8).reshape(-1, 32),
                      identity=np.str_(self.identity_json))
        tmp = self.dir / f".{self.STATE}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, digest=np.str_(_arrays_digest(arrays)), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / self.STATE)
        self.rows_on_disk, self.last_save = hi, time.monotonic()

    @classmethod
    def progress(cls, directory: str | os.PathLike) -> dict | None:
        """``{"steps": j, "identity": ...}`` of a directory's saved state, read cheaply (for listings).

        Nothing is verified here (:meth:`restore` does that); None: no readable state there.
        """
        try:
            with np.load(Path(directory) / cls.STATE) as saved:
                identity = json.loads(str(saved["identity"])) if "identity" in saved.files else None
                return {"steps": int(saved["steps"]), "identity": identity}
        except (OSError, KeyError, ValueError, EOFError, AttributeError, zipfile.BadZipFile, zlib.error):
            return None

    @classmethod
    def saved_steps(cls, directory: str | os.PathLike) -> int | None:
        """The steps a directory's saved state holds (None: no saved state there)."""
        progress = cls.progress(directory)
        return None if progress is None else progress["steps"]

    def clear(self) -> None:
        """Remove the files (the run finished) and the directory when it is left empty."""
        for name in (self.STATE, self.BASIS, f".{self.STATE}.tmp"):
            (self.dir / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()


def _arrays_digest(arrays: dict[str, Any]) -> str:
    """sha256 of named arrays: each name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def saved_progress(directory: str | os.PathLike, *, k: int, tol: float) -> dict[str, int] | None:
    """How far a saved Krylov state is: its steps, and how many of the top k Ritz values of its first start have
    converged there (residual <= tol · |θ_1|, the rule of :func:`hspec.top_eigenvalues`). None when the folder
    holds no readable state. Reads only the coefficients (cheap: for listings of long runs)."""
    path = Path(directory) / KrylovStore.STATE
    try:
        with np.load(path) as saved:
            steps, alphas, betas = int(saved["steps"]), np.asarray(saved["alphas"]), np.asarray(saved["betas"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    if steps < 1 or alphas.shape[-1] < 1:
        return None
    values, residuals, _, _ = ritz_decomposition(alphas[:1], betas[:1])
    converged = int(np.sum(residuals[0][:k] <= tol * abs(values[0][0])))
    return {"steps": steps, "converged": converged}
