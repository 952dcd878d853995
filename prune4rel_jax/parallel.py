"""Data parallelism over a 1-D device mesh: replicated state, example-sharded batches.

Why `jax.jit` with `NamedSharding` and not `pmap`: since JAX 0.8 `pmap` is itself `jit(shard_map(...))` and is
"in maintenance mode"; the JAX docs recommend jit with explicit shardings for new code. Under jit, BatchNorm over
a batch sharded on `data` computes its statistics over the *global* batch (synchronous BN) with no `axis_name`
plumbing, which is exactly the single-GPU semantics of the original PyTorch code, and the gradient all-reduce is
inserted by the compiler. The axis is `Auto` (not the `make_mesh` default `Explicit`) so per-example gathers and
scatters (SOP's u/v, DivideMix probabilities, forgetting counters) need no sharding annotations.
"""

from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from prune4rel_jax.errors import UserError

DATA = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D `('data',)` mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def example_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (example) axis split over devices."""
  return NamedSharding(mesh, P(DATA))


def process_rows(global_size: int) -> slice:
  """The rows of a global batch that this process feeds (processes own equal, contiguous slices)."""
  per_process = global_size // jax.process_count()
  start = jax.process_index() * per_process
  return slice(start, start + per_process)


def to_global(mesh: Mesh, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Assemble each process's rows into global arrays sharded along the example axis."""
  sharding = example_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def to_host(x: jax.Array) -> np.ndarray:
  """A global array as a full numpy array on every host."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def must_sync_each_step(mesh: Mesh) -> bool:
  """XLA's CPU all-reduce deadlocks when several collective steps are in flight on few cores (it aborts after
  40 s), so on simulated CPU devices every step is awaited before the next is dispatched. Accelerators keep
  asynchronous dispatch."""
  return mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu"


def check_divisible(batch_size: int, mesh: Mesh, field: str) -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise UserError(f"{field}={batch_size} must be divisible by the number of devices ({n})")
