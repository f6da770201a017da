"""The Krylov basis' memory, against numbers computed by hand."""

import jax.numpy as jnp
import numpy as np
import pytest

from hspec import memory


def test_krylov_bytes_by_hand():
    # 3 x 12,000 = 36,000 rows; x 1,770,240 = 63,728,640,000 values; x 4 bytes.
    assert memory.krylov_bytes(num_starts=3, num_steps=12_000, dim=1_770_240, dtype=jnp.float32) == 254_914_560_000
    assert memory.krylov_bytes(num_starts=1, num_steps=100, dim=10, dtype=np.float64) == 8_000


def test_what_fits_by_hand():
    mem = memory.krylov_memory(num_starts=3, num_steps=12_000, dim=1_770_240, dtype=jnp.float32,
                               available=100 * 10**9)
    assert mem.where == "host" and mem.needed == mem.peak == 254_914_560_000  # the CPU default: the host basis
    assert mem.usable == 90 * 10**9 and not mem.fits
    assert mem.steps_that_fit(1) == 12_710  # 90e9 / 7,080,960 bytes a row = 12,710.2
    assert mem.steps_that_fit() == 4_236  # 90e9 / (3 x 7,080,960) = 4,236.7
    assert mem.starts_that_fit() == 1  # 90e9 / (12,000 x 7,080,960) = 1.06
    on_device = memory.KrylovMemory(3, 12_000, 1_770_240, 4, "device", 100 * 10**9)
    assert on_device.peak == 2 * 254_914_560_000 and on_device.steps_that_fit(1) == 6_355  # the end copy: half
    unknown = memory.KrylovMemory(3, 12_000, 1_770_240, 4, "device", None)
    assert unknown.fits and unknown.steps_that_fit() == 12_000  # nothing to refuse on
    assert memory.krylov_memory(num_starts=2, num_steps=500, dim=300, dtype=jnp.float32).num_steps == 300  # <= n


@pytest.mark.parametrize("loop, basis, where", [("auto", "auto", "host"), ("fori", "auto", "device"),
                                                ("python", "device", "device"), ("python", "host", "host")])
def test_basis_location_on_cpu(loop, basis, where):
    assert memory.basis_location(loop, basis) == where


def test_available_memory_on_cpu_is_the_hosts():
    host = memory.host_available_bytes()
    assert host is not None and host > 0
    assert memory.available_bytes("device") > 0 and memory.available_bytes("host") > 0  # the CPU device is the host
