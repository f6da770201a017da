"""The memory a Lanczos run's Krylov basis takes, where it lives, and whether it fits there.

:func:`hspec.lanczos` allocates its whole basis up front: ``num_starts x m x n`` values, m the largest
Krylov space the run may grow to (``max_steps``). On the device (``basis="device"``, the GPU default)
that is device memory; with the host basis (the CPU default) it is host memory. At its end a device run
hands the rows it used back through a slice of the device basis, a copy on the device (measured on CPU:
a 3 GB buffer of which 1 GB was used peaked at 4 GB), so a device run needs up to twice its basis there.
A run that cannot hold it fails after whatever came before it (training, for a tracking run): ask
:func:`krylov_memory` first.

    mem = krylov_memory(num_starts=3, num_steps=12_000, dim=1_770_240, dtype=jnp.float32)
    mem.needed           # 254,914,560,000 bytes (254.9 GB): the basis
    mem.peak             # twice that where the basis is on the device
    mem.fits             # False on an 80 GB GPU
    mem.steps_that_fit(1)  # the most steps one start can have there
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

__all__ = ["FIT_FRACTION", "KrylovMemory", "krylov_bytes", "krylov_memory", "basis_location",
           "available_bytes", "host_available_bytes", "device_available_bytes"]

# The share of the available memory the basis may take. The rest is for the operator's own arrays (model,
# data batches, the activations of a Hessian-vector product), XLA's temporaries (the device step copies one
# block of the basis, a 32nd of it) and the coefficients.
FIT_FRACTION = 0.9


def krylov_bytes(*, num_starts: int, num_steps: int, dim: int, dtype) -> int:
    """Bytes of a Krylov basis: num_starts x num_steps x dim x the dtype's size.

    Args:
      num_starts: S, the Lanczos starts run together.
      num_steps: the rows allocated per start (a growing run allocates its ``max_steps``).
      dim: n, the operator's size (the parameters the Hessian is taken over).
      dtype: the vectors' dtype.

    Returns:
      The size in bytes (a Python int: no overflow).
    """
    return int(num_starts) * int(num_steps) * int(dim) * np.dtype(dtype).itemsize


def basis_location(loop: str = "auto", basis: str = "auto") -> str:
    """Where :func:`hspec.lanczos` keeps the basis with these arguments on this backend: "host" or "device".

    On the CPU backend the device is host memory too; the answer still says which of lanczos' forms runs.
    """
    from hspec.krylov import _pick_loop

    return _pick_loop(loop, basis)[1]


def host_available_bytes() -> int | None:
    """The host memory available to a new allocation: MemAvailable of /proc/meminfo, else free pages; None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def device_available_bytes(device: jax.Device | None = None) -> int | None:
    """Free memory of a device (its limit less what is in use, from ``memory_stats()``); None where not reported.

    Args:
      device: the device (default: the first local device).
    """
    device = device if device is not None else jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except (NotImplementedError, RuntimeError, AttributeError):
        return None
    if not stats or "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def available_bytes(where: str) -> int | None:
    """Memory available where the basis lives: the device's free memory, the host's (also on the CPU backend,
    and where a device reports none); None when neither is known."""
    if where == "device" and jax.default_backend() != "cpu":
        free = device_available_bytes()
        if free is not None:
            return free
    return host_available_bytes()


@dataclasses.dataclass(frozen=True)
class KrylovMemory:
    """The Krylov basis of a run against the memory where it lives.

    Attributes:
      num_starts, num_steps, dim, itemsize: the basis' shape and element size.
      where: "device" or "host".
      available: bytes available there (None: unknown, then the run is not refused).
    """

    num_starts: int
    num_steps: int
    dim: int
    itemsize: int
    where: str
    available: int | None

    @property
    def needed(self) -> int:
        """Bytes of the basis."""
        return self.num_starts * self.num_steps * self.dim * self.itemsize

    @property
    def copies(self) -> int:
        """Bases' worth of memory the run needs at its peak: 2 on the device (the rows used are copied there
        on their way back to the host at the end), 1 on the host."""
        return 2 if self.where == "device" else 1

    @property
    def peak(self) -> int:
        """Bytes the run needs where the basis lives, at its peak."""
        return self.copies * self.needed

    @property
    def usable(self) -> int | None:
        """The bytes the basis may take: FIT_FRACTION of the available memory."""
        return None if self.available is None else int(FIT_FRACTION * self.available)

    @property
    def fits(self) -> bool:
        """Whether the basis fits (True when the available memory is unknown)."""
        return self.usable is None or self.peak <= self.usable

    def steps_that_fit(self, num_starts: int | None = None) -> int:
        """The most rows per start that fit with ``num_starts`` starts (default: this run's)."""
        per_row = (num_starts or self.num_starts) * self.dim * self.itemsize * self.copies
        return self.num_steps if self.usable is None else self.usable // per_row

    def starts_that_fit(self) -> int:
        """The most starts of ``num_steps`` rows that fit."""
        per_start = self.num_steps * self.dim * self.itemsize * self.copies
        return self.num_starts if self.usable is None else self.usable // per_start


def krylov_memory(*, num_starts: int, num_steps: int, dim: int, dtype, loop: str = "auto", basis: str = "auto",
                  available: int | None = None) -> KrylovMemory:
    """The Krylov basis a :func:`hspec.lanczos` call would allocate, and the memory where it would live.

    Args:
      num_starts: S. num_steps: the rows per start (``max_steps`` of a growing run, clamped to n).
      dim: n. dtype: the vectors' dtype.
      loop, basis: as given to :func:`hspec.lanczos` (they decide host or device).
      available: the bytes available there, to override the measurement (None: measured now).

    Returns:
      A :class:`KrylovMemory`; ``.fits`` says whether to go on.
    """
    where = basis_location(loop, basis)
    return KrylovMemory(int(num_starts), min(int(num_steps), int(dim)), int(dim), np.dtype(dtype).itemsize, where,
                        available if available is not None else available_bytes(where))
