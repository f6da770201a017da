"""Placing LLM batches and parameters on a device mesh: batch-parallel and parameter-sharded.

A mesh has two axes, "data" (batches split along their sequence axis) and "model" (each parameter matrix
split along its largest axis divisible by the axis size; vectors and indivisible leaves replicated). The
mesh uses Auto axis types (FINDINGS.md: jax 0.10's default Explicit types need an `out_sharding` on the
embedding lookup), so XLA propagates the placement through the training step and the Hessian-vector
products unchanged: nothing in the step or in hspec knows about the mesh.

Arrays are built with `jax.make_array_from_callback` from host data that every process computes alike
(batches come from the same keys everywhere), so the same code runs on one process or, after
`jax.distributed.initialize()`, on many: each process supplies only its own devices' shards.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["make_mesh", "mesh_shape", "shard_batch", "param_spec", "shard_params", "replicate", "to_host"]


def mesh_shape(data_parallel: int, model_parallel: int, num_devices: int) -> tuple[int, int]:
    """(data, model) axis sizes: data_parallel 0 means every device not used by the model axis.

    Raises:
        ValueError: the sizes do not multiply to the device count.
    """
    model = int(model_parallel)
    data = int(data_parallel) or max(num_devices // model, 1)
    if data * model != num_devices:
        raise ValueError(f"mesh data={data} x model={model} does not use the {num_devices} devices: choose "
                         f"data_parallel x model_parallel = {num_devices}")
    return data, model


def make_mesh(data: int, model: int = 1) -> Mesh:
    """A ("data", "model") mesh over all devices, with Auto axis types."""
    auto = jax.sharding.AxisType.Auto
    return jax.make_mesh((data, model), ("data", "model"), axis_types=(auto, auto))


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    """A global array with `sharding` from host data that every process holds in full."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def shard_batch(batch: Any, mesh: Mesh, axis: int = 0) -> Any:
    """Split every array of a batch along `axis` (the sequences) over the "data" axis.

    Raises:
        ValueError: the sequences do not divide evenly over the data axis.
    """
    size = mesh.shape["data"]

    def one(x):
        if np.shape(x)[axis] % size:
            raise ValueError(f"a batch of {np.shape(x)[axis]} sequences does not divide over {size} data-parallel "
                             "devices: choose a batch size that is a multiple of it")
        spec = P(*([None] * axis), "data")
        return _put(x, NamedSharding(mesh, spec))

    return jax.tree.map(one, batch)


def param_spec(shape: tuple[int, ...], model_size: int) -> P:
    """Shard a matrix along its largest axis divisible by the model axis; replicate anything else."""
    if model_size == 1 or len(shape) < 2:
        return P()
    candidates = [i for i in range(len(shape)) if shape[i] % model_size == 0]
    if not candidates:
        return P()
    axis = max(candidates, key=lambda i: shape[i])
    return P(*[("model" if i == axis else None) for i in range(len(shape))])


def shard_params(params: Any, mesh: Mesh) -> Any:
    """Parameters placed on the mesh: matrices split over "model" (see `param_spec`), the rest replicated."""
    size = mesh.shape["model"]
    return jax.tree.map(lambda x: _put(x, NamedSharding(mesh, param_spec(np.shape(x), size))), params)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array of a pytree copied to every device of the mesh."""
    return jax.tree.map(lambda x: _put(x, NamedSharding(mesh, P())), tree)


def to_host(tree: Any) -> Any:
    """Numpy copies of a pytree's arrays, gathered across processes when they are not all local."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)


def num_shards(mesh: Mesh | None) -> int:
    """Devices of a mesh (1 without one)."""
    return 1 if mesh is None else math.prod(mesh.shape.values())
