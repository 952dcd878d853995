"""Warm-up recorders: what selection methods read from the warmed-up network(s), computed on device.

`warm_up` (train.py) trains the learner on the full noisy set, feeds every train step's per-example outputs to a
`ForgettingRecorder` when the method counts forgetting events, then turns one evaluation-mode pass into the
`SelectionInputs` fields the method `needs` (`record_run`). Per-example scores are jitted, vmapped functions run
over example-sharded chunks (`map_examples`), so they are data-parallel like training.
"""

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from prune4rel_jax import parallel
from prune4rel_jax.learners.base import cross_entropy

# Fields computed from the evaluation-mode pass; one column per warm-up run for the `PER_RUN` ones.
PREDICTION_FIELDS = frozenset({"logits", "features", "grad_norms", "error_norms"})
PER_RUN = frozenset({"grad_norms", "error_norms"})
# Upper bound on the floats one chunk of `map_examples` may materialise (per-example gradients are [d+1, C]).
CHUNK_FLOATS = 2**26


def _count_forgetting(state, index: jax.Array, correct: jax.Array):
  """One mini-batch of forgetting bookkeeping (Toneva et al.; DeepCore's `after_loss`): an event is a flip from
  correct (on the noisy label) at the example's previous visit to incorrect now; `last_correct` starts False. When
  a batch straddles two epochs and holds an example twice, only its later copy counts, so the update stays a
  deterministic scatter."""
  last_correct, events = state
  position = jnp.arange(index.shape[0])
  seen_again = ((index[None, :] == index[:, None]) & (position[None, :] > position[:, None])).any(axis=1)
  forgot = last_correct[index] & ~correct & ~seen_again
  events = events.at[index].add(forgot.astype(events.dtype))
  last_correct = last_correct.at[jnp.where(seen_again, last_correct.shape[0], index)].set(correct, mode="drop")
  return last_correct, events


class ForgettingRecorder:
  """Forgetting-event counters of every training example, kept on device (replicated) and updated by one jitted
  scatter per train step; pass it as `on_step` to `Learner.train_epoch`."""

  def __init__(self, num_examples: int, mesh: jax.sharding.Mesh):
    replicated = parallel.replicated(mesh)
    self._sync = parallel.must_sync_each_step(mesh)
    self._update = jax.jit(_count_forgetting, donate_argnums=0, out_shardings=replicated)
    # (last_correct, events): a pytree, so warm-up checkpoints save and restore it as is.
    self.state = jax.jit(lambda: (jnp.zeros(num_examples, bool), jnp.zeros(num_examples, jnp.int32)),
                         out_shardings=replicated)()

  def __call__(self, per_example: Mapping[str, jax.Array]) -> None:
    self.state = self._update(self.state, per_example["index"], per_example["correct"])
    if self._sync:  # a collective step in flight with the next train step deadlocks simulated CPU devices
      jax.block_until_ready(self.state)

  def events(self) -> np.ndarray:
    return parallel.to_host(self.state[1])


def map_examples(fn: Callable[..., jax.Array], mesh: jax.sharding.Mesh, *arrays: np.ndarray,
                 shared: tuple[np.ndarray, ...] = (), floats_per_row: int | None = None) -> np.ndarray:
  """`fn(*chunks, *shared)` jitted over example-sharded chunks of `arrays` (a batched function of per-example
  rows), with the `shared` arrays replicated on every device; the last chunk is padded with row 0 and trimmed.
  A chunk holds at most `CHUNK_FLOATS / floats_per_row` rows (`floats_per_row`: the largest per-example
  intermediate of `fn`, by default its widest input row)."""
  n = len(arrays[0])
  devices = mesh.devices.size
  floats_per_row = floats_per_row or max(int(np.prod(a.shape[1:], dtype=np.int64)) for a in arrays)
  rows = max(devices, CHUNK_FLOATS // max(floats_per_row, 1) // devices * devices)
  rows = min(rows, -(-n // devices) * devices)
  sharding = parallel.example_sharded(mesh)
  jitted = jax.jit(fn, in_shardings=(sharding,) * len(arrays) + (parallel.replicated(mesh),) * len(shared),
                   out_shardings=sharding)
  shared = [jax.make_array_from_callback(a.shape, parallel.replicated(mesh), lambda i, a=a: a[i]) for a in shared]
  out = []
  for start in range(0, n, rows):
    chunk = [np.asarray(a[start:start + rows]) for a in arrays]
    outputs = jitted(*[shard_rows(mesh, pad_rows(c, rows)) for c in chunk], *shared)
    out.append(parallel.to_host(outputs)[:len(chunk[0])])
  return np.concatenate(out)


def pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
  """`array` grown to `rows` rows with copies of its first row (callers mask or trim them)."""
  return np.concatenate([array, np.repeat(array[:1], rows - len(array), axis=0)]) if len(array) < rows else array


def shard_rows(mesh: jax.sharding.Mesh, array: np.ndarray) -> jax.Array:
  """A host array present on every process as a global array split along its rows over the mesh."""
  return jax.make_array_from_callback(array.shape, parallel.example_sharded(mesh), lambda i: array[i])


def _example_grad_norm(logits: jax.Array, features: jax.Array, label: jax.Array) -> jax.Array:
  """‖∂CE/∂(W, b)‖₂ of the final Linear layer for one example, taken at the trained weights: the layer is
  perturbed by (ΔW, Δb) around them, so only the recorded logits and features are needed (GraNd as DeepCore
  computes it: bias gradient p − y and weight gradient z ⊗ (p − y))."""

  def loss(delta_w, delta_b):
    return cross_entropy((logits + features @ delta_w + delta_b)[None], label[None])[0]

  grad_w, grad_b = jax.grad(loss, argnums=(0, 1))(jnp.zeros((features.shape[-1], logits.shape[-1])),
                                                   jnp.zeros(logits.shape[-1]))
  return jnp.sqrt(jnp.sum(grad_w**2) + jnp.sum(grad_b**2))


def grad_norms(logits: jax.Array, features: jax.Array, labels: jax.Array) -> jax.Array:
  return jax.vmap(_example_grad_norm)(logits.astype(jnp.float32), features.astype(jnp.float32), labels)


def error_norms(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """EL2N (Paul et al. 2021): ‖softmax(logits) − onehot(label)‖₂."""
  probs = jax.nn.softmax(logits.astype(jnp.float32))
  return jnp.linalg.norm(probs - jax.nn.one_hot(labels, logits.shape[-1]), axis=-1)


def record_run(needs: frozenset[str], labels: np.ndarray, mesh: jax.sharding.Mesh,
               predictions: Mapping[str, np.ndarray] | None,
               forgetting: ForgettingRecorder | None) -> dict[str, np.ndarray]:
  """The `needs` fields from one warmed-up network: its evaluation-mode `predictions` (logits, features) and the
  forgetting counters of its warm-up."""
  record = {}
  for field in ("logits", "features"):
    if field in needs:
      record[field] = predictions[field]
  if "grad_norms" in needs:
    logits, features = predictions["logits"], predictions["features"]
    record["grad_norms"] = map_examples(grad_norms, mesh, logits, features, labels,
                                        floats_per_row=(features.shape[1] + 1) * logits.shape[1])
  if "error_norms" in needs:
    record["error_norms"] = map_examples(error_norms, mesh, predictions["logits"], labels)
  if "forgetting_events" in needs:
    record["forgetting_events"] = forgetting.events()
  return record


def combine_runs(runs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """One record from several warm-up runs: `PER_RUN` fields stacked as columns, the others from the first run."""
  return {field: np.stack([run[field] for run in runs], axis=1) if field in PER_RUN else value
          for field, value in runs[0].items()}
