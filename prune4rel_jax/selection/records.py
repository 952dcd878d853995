"""Warm-up recorders: what selection methods read from the warmed-up network(s), computed on device.

`warm_up` (train.py) trains the learner on the full noisy set, feeds every train step's per-example outputs to a
`ForgettingRecorder` when the method counts forgetting events, then turns one evaluation-mode pass into the
`SelectionInputs` fields the method `needs` (`record_run`); fields that need the network itself (DeepFool's
attacks, `record_deepfool`) come from `Method.record_network`, given a `Network`. Per-example scores are jitted,
vmapped functions run over example-sharded chunks (`map_examples`), so they are data-parallel like training.
"""

import dataclasses
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
                 shared: tuple = (), floats_per_row: int | None = None, max_rows: int | None = None) -> np.ndarray:
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
  sharding = parallel.example_sharded(mesh)
  shared = [jax.make_array_from_callback(a.shape, parallel.replicated(mesh), lambda i, a=a: a[i])
            if isinstance(a, np.ndarray) else a for a in shared]
  jitted = jax.jit(fn, in_shardings=(sharding,) * len(arrays) + tuple(jax.tree.map(lambda x: x.sharding, a)
                                                                         for a in shared),
                   out_shardings=sharding)
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


def loss_residuals(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """∂CE/∂logits per example (= softmax − onehot(label)), by `vmap(grad)`: the bias gradient r of the final
  Linear layer, whose weight gradient is r ⊗ features (DeepCore's `calc_gradient` embeddings are [r, r ⊗ e])."""
  def loss(z, y):
    return cross_entropy(z[None], y[None])[0]
  return jax.vmap(jax.grad(loss))(logits.astype(jnp.float32), labels)


def error_norms(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """EL2N (Paul et al. 2021): ‖softmax(logits) − onehot(label)‖₂."""
  probs = jax.nn.softmax(logits.astype(jnp.float32))
  return jnp.linalg.norm(probs - jax.nn.one_hot(labels, logits.shape[-1]), axis=-1)


@dataclasses.dataclass(frozen=True)
class Network:
  """A warmed-up network, for records that need the network itself rather than its outputs (DeepFool):
  `predict(state, images) -> (logits, features)` in evaluation mode, the training images it scores, the
  per-channel std the model normalises pixels by (perturbations are measured on normalised inputs) and how many
  images one jitted chunk may hold."""
  predict: Callable
  state: object
  images: np.ndarray
  std: tuple[float, ...]
  batch_size: int


def deepfool_norms(logits_of: Callable[[jax.Array], jax.Array], images: jax.Array, scale: jax.Array,
                   max_iter: int) -> jax.Array:
  """‖r‖² of the DeepFool perturbation (Moosavi-Dezfooli et al. 2016, as DeepCore: no overshoot) that flips each
  image's prediction, r in normalised-input units (pixels move by r·`scale`).

  A step linearises every logit around the current point and moves onto the nearest linearised boundary between
  the original prediction k̂ and another class k: r = |f_k − f_k̂| / ‖w_k‖² · w_k, w_k = ∇f_k − ∇f_k̂. An example
  stops once its prediction changes, all stop after `max_iter` steps. The C input gradients of a step come from
  one forward pass and C backward passes (`lax.map` over one-hot cotangents: one backward's memory at a time)."""
  x0 = images.astype(jnp.float32)
  batch = jnp.arange(x0.shape[0])

  def logits_at(u):
    return logits_of(x0 + u * scale).astype(jnp.float32)

  zero = jnp.zeros_like(x0)
  start = logits_at(zero)
  first = jnp.argmax(start, -1)
  classes = jax.nn.one_hot(first, start.shape[-1], dtype=bool)

  def step(carry):
    i, u, active = carry
    f, pullback = jax.vjp(logits_at, u)
    cotangents = jnp.broadcast_to(jnp.eye(f.shape[-1], dtype=f.dtype)[:, None, :], (f.shape[-1],) + f.shape)
    grads = jax.lax.map(lambda c: pullback(c)[0].reshape(f.shape[0], -1), cotangents)  # [C, B, D]
    w = grads - grads[first, batch][None]
    norms = jnp.linalg.norm(w, axis=-1).T  # [B, C]
    gaps = jnp.abs(f - f[batch, first][:, None])
    distances = jnp.where(classes | (norms == 0), jnp.inf, gaps / jnp.where(norms == 0, 1.0, norms))
    target = jnp.argmin(distances, -1)
    length = distances[batch, target] / norms[batch, target]
    moving = active & jnp.isfinite(length)
    r = jnp.where(moving[:, None], length[:, None] * w[target, batch], 0.0)
    u = u + r.reshape(u.shape)
    return i + 1, u, active & (jnp.argmax(logits_at(u), -1) == first)

  def unfinished(carry):
    i, _, active = carry
    return (i < max_iter) & jnp.any(active)

  u = jax.lax.while_loop(unfinished, step, (0, zero, jnp.ones(first.shape, bool)))[1]
  return jnp.sum(u.reshape(u.shape[0], -1) ** 2, -1)


def record_deepfool(network: Network, mesh: jax.sharding.Mesh, max_iter: int) -> np.ndarray:
  """`deepfool_norms` of every training image, over example-sharded chunks of at most `network.batch_size`
  images (DeepCore attacks `selection_batch` images at a time)."""
  scale = 255.0 * np.asarray(network.std, np.float32)

  def attack(images, state):
    return deepfool_norms(lambda x: network.predict(state, x)[0], images, scale, max_iter)

  images = network.images
  one_image = jax.ShapeDtypeStruct((1, *images.shape[1:]), jnp.uint8)
  num_classes = jax.eval_shape(network.predict, network.state, one_image)[0].shape[-1]
  pixels = int(np.prod(images.shape[1:]))
  return map_examples(attack, mesh, images, shared=(network.state,), floats_per_row=(num_classes + 1) * pixels,
                      max_rows=network.batch_size)  # the C input gradients of a chunk: [C, rows, pixels]


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
