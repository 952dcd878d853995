"""Warm-up recorders: what selection methods read from the warmed-up network(s), computed on device.

`loop.WarmUp` trains the learner on the full noisy set, feeds every train step's per-example outputs to a
`ForgettingRecorder` when the method counts forgetting events, then turns one evaluation-mode pass into the
`SelectionInputs` fields the method `needs` (`record_run`); fields that need the network itself (DeepFool's
attacks, in `deepfool.py`) come from `Method.record_network`, given a `Network`. Per-example scores are jitted,
vmapped functions run over example-sharded chunks (`parallel.map_examples`), so they are data-parallel like
training.
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
    record["grad_norms"] = parallel.map_examples(grad_norms, mesh, logits, features, labels,
                                                 floats_per_row=(features.shape[1] + 1) * logits.shape[1])
  if "error_norms" in needs:
    record["error_norms"] = parallel.map_examples(error_norms, mesh, predictions["logits"], labels)
  if "forgetting_events" in needs:
    record["forgetting_events"] = forgetting.events()
  return record


def combine_runs(runs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """One record from several warm-up runs: `PER_RUN` fields stacked as columns, the others from the first run."""
  return {field: np.stack([run[field] for run in runs], axis=1) if field in PER_RUN else value
          for field, value in runs[0].items()}
