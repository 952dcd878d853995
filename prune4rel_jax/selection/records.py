"""Warm-up recorders: what selection methods read from the warmed-up network(s), computed on device.

A method declares the `SelectionInputs` fields it reads in `Method.needs`, and nothing else: `RECORDERS` computes
each field from a finished warm-up run (`WarmedUp`). `loop.WarmUp` trains the learner on the full noisy set, feeds
every train step's per-example outputs to a `ForgettingRecorder` when a `STEP_FIELDS` field is needed, runs one
evaluation-mode scoring pass when a `PREDICTION_FIELDS` one is, and calls `record_run`. Per-example scores are
jitted, vmapped functions over example-sharded chunks (`parallel.map_examples`, DeepFool's attack too), so they
are data-parallel like training.
"""

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from prune4rel_jax import parallel
from prune4rel_jax.learners.base import cross_entropy
from prune4rel_jax.selection.base import Network
from prune4rel_jax.selection.deepfool import record_deepfool

# Fields computed from the evaluation-mode scoring pass, and from every warm-up train step's outputs; one column per
# warm-up run for the `PER_RUN` ones.
PREDICTION_FIELDS = frozenset({"logits", "features", "grad_norms", "error_norms"})
STEP_FIELDS = frozenset({"forgetting_events"})
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


def zero_counters(num_examples: int, mesh: jax.sharding.Mesh):
  """Forgetting counters before the first step: (last_correct, events), replicated; a pytree, so warm-up save
  points hold it as is."""
  return jax.jit(lambda: (jnp.zeros(num_examples, bool), jnp.zeros(num_examples, jnp.int32)),
                 out_shardings=parallel.replicated(mesh))()


class ForgettingRecorder:
  """Forgetting-event counters of every training example (`zero_counters`, or a save point's), kept on device and
  updated by one jitted scatter per train step; pass it as `on_step` to `Learner.train_epoch`."""

  def __init__(self, counters, mesh: jax.sharding.Mesh):
    self.state = counters
    self._sync = parallel.must_sync_each_step(mesh)
    self._update = jax.jit(_count_forgetting, donate_argnums=0, out_shardings=parallel.replicated(mesh))

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
class WarmedUp:
  """One finished warm-up run: what a recorder may read. `predictions` (evaluation-mode logits and features of every
  training example, in the method's view) is None unless a `PREDICTION_FIELDS` field is needed, `forgetting` unless
  a `STEP_FIELDS` one is; `hp` is the method's own config section."""
  network: Network
  labels: np.ndarray
  mesh: jax.sharding.Mesh
  hp: ml_collections.ConfigDict
  predictions: Mapping[str, np.ndarray] | None = None
  forgetting: ForgettingRecorder | None = None


def _grad_norms(run: WarmedUp) -> np.ndarray:
  logits, features = run.predictions["logits"], run.predictions["features"]
  return parallel.map_examples(grad_norms, run.mesh, logits, features, run.labels,
                               floats_per_row=(features.shape[1] + 1) * logits.shape[1])


# The one table of warm-up signals: a method lists the fields it reads in `Method.needs`, and each field is
# computed here from a finished warm-up run. A new signal is a `SelectionInputs` field and one entry below (and in
# `PREDICTION_FIELDS`/`STEP_FIELDS` when it reads the scoring pass or the train steps).
RECORDERS: dict[str, Callable[[WarmedUp], np.ndarray]] = {
    "logits": lambda run: run.predictions["logits"],
    "features": lambda run: run.predictions["features"],
    "grad_norms": _grad_norms,
    "error_norms": lambda run: parallel.map_examples(error_norms, run.mesh, run.predictions["logits"], run.labels),
    "forgetting_events": lambda run: run.forgetting.events(),
    "deepfool_norms": lambda run: record_deepfool(run.network, run.mesh, run.hp.max_iter),
}


def record_run(needs: frozenset[str], run: WarmedUp) -> dict[str, np.ndarray]:
  """The `needs` fields of one finished warm-up run."""
  return {field: RECORDERS[field](run) for field in sorted(needs)}


def combine_runs(runs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """One record from several warm-up runs: `PER_RUN` fields stacked as columns, the others from the first run."""
  return {field: np.stack([run[field] for run in runs], axis=1) if field in PER_RUN else value
          for field, value in runs[0].items()}
