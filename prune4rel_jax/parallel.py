"""Data parallelism over a 1-D device mesh: replicated state, example-sharded batches, per-example functions
jitted over example-sharded chunks of host arrays (`map_examples`).

Why `jax.jit` with `NamedSharding` and not `pmap`: since JAX 0.8 `pmap` is itself `jit(shard_map(...))` and is
"in maintenance mode"; the JAX docs recommend jit with explicit shardings for new code. Under jit, BatchNorm over
a batch sharded on `data` computes its statistics over the *global* batch (synchronous BN) with no `axis_name`
plumbing, which is exactly the single-GPU semantics of the original PyTorch code, and the gradient all-reduce is
inserted by the compiler. The axis is `Auto` (not the `make_mesh` default `Explicit`) so per-example gathers and
scatters (SOP's u/v, DivideMix probabilities, forgetting counters) need no sharding annotations.
"""

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from prune4rel_jax.errors import UserError

DATA = "data"
# Upper bound on the floats one chunk of `map_examples` may materialise (per-example gradients are [d+1, C]).
CHUNK_FLOATS = 2**26


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


def pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
  """`array` grown to `rows` rows with copies of its first row (callers mask or trim them)."""
  return np.concatenate([array, np.repeat(array[:1], rows - len(array), axis=0)]) if len(array) < rows else array


def shard_rows(mesh: Mesh, array: np.ndarray) -> jax.Array:
  """A host array present on every process as a global array split along its rows over the mesh."""
  return jax.make_array_from_callback(array.shape, example_sharded(mesh), lambda i: array[i])


def map_examples(fn: Callable[..., jax.Array], mesh: Mesh, *arrays: np.ndarray, shared: tuple = (),
                 floats_per_row: int | None = None, max_rows: int | None = None) -> np.ndarray:
  """`fn(*chunks, *shared)` jitted over example-sharded chunks of `arrays` (a batched function of per-example
  rows); `shared` host arrays are replicated on every device, `shared` pytrees of device arrays (a network state)
  are used where they are. The last chunk is padded with row 0 and trimmed. A chunk holds at most
  `CHUNK_FLOATS / floats_per_row` rows (`floats_per_row`: the largest per-example intermediate of `fn`, by
  default its widest input row) and at most `max_rows` (rounded up to a multiple of the devices)."""
  n = len(arrays[0])
  devices = mesh.devices.size
  floats_per_row = floats_per_row or max(int(np.prod(a.shape[1:], dtype=np.int64)) for a in arrays)
  rows = max(devices, CHUNK_FLOATS // max(floats_per_row, 1) // devices * devices)
  rows = min(rows, -(-min(n, max_rows or n) // devices) * devices)
  sharding = example_sharded(mesh)
  shared = [jax.make_array_from_callback(a.shape, replicated(mesh), lambda i, a=a: a[i])
            if isinstance(a, np.ndarray) else a for a in shared]
  jitted = jax.jit(fn, in_shardings=(sharding,) * len(arrays) + tuple(jax.tree.map(lambda x: x.sharding, a)
                                                                         for a in shared),
                   out_shardings=sharding)
  out = []
  for start in range(0, n, rows):
    chunk = [np.asarray(a[start:start + rows]) for a in arrays]
    outputs = jitted(*[shard_rows(mesh, pad_rows(c, rows)) for c in chunk], *shared)
    out.append(to_host(outputs)[:len(chunk[0])])
  return np.concatenate(out)


def must_sync_each_step(mesh: Mesh) -> bool:
  """XLA's CPU all-reduce deadlocks when several collective steps are in flight on few cores (it aborts after
  40 s), so on simulated CPU devices every step is awaited before the next is dispatched. Accelerators keep
  asynchronous dispatch."""
  return mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu"


def check_divisible(batch_size: int, mesh: Mesh, field: str) -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise UserError(f"{field}={batch_size} must be divisible by the number of devices ({n})")


def barrier(name: str) -> None:
  """Wait until every process reaches the barrier `name` (a no-op on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
