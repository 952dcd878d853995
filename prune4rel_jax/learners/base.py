"""What every learner shares: the train state, the epoch loop, evaluation-mode prediction.

A learner is a training algorithm (CE, SOP+, DivideMix). It owns how a fresh state is made (networks, optimiser,
per-example variables), one jitted data-parallel train step, and how the trained state predicts. The default
`train_epoch` drives the step over a grain stream; learners with a different epoch structure (DivideMix)
override it.
"""

from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct

from prune4rel_jax import optim, parallel
from prune4rel_jax.data.pipeline import EpochData
from prune4rel_jax.errors import UserError
from prune4rel_jax.progress import Progress

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class TrainState(struct.PyTreeNode):
  """One network's trainable state; a pure pytree, so it is jitted, sharded and checkpointed as is."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


class Learner:
  """Base class. Subclasses set `name`, `views` and implement `train_step`."""
  name: ClassVar[str]
  # The augmented copies of each image a training batch carries, keyed as in the batch dict.
  views: ClassVar[tuple[str, ...]] = ("image",)
  # The fields of this learner's config section that its selection warm-up (epochs of phase "warmup") reads; None:
  # all of them. Shared warm-ups are keyed by these only (`checkpoint.warmup_identity`), so cells that differ in
  # another field restore one warm-up instead of training the same network again.
  warmup_hyperparameters: ClassVar[tuple[str, ...] | None] = None

  def __init__(self, config: ml_collections.ConfigDict, model: nn.Module, num_classes: int,
               mesh: jax.sharding.Mesh):
    self.config, self.model, self.num_classes, self.mesh = config, model, num_classes, mesh
    self.hp = config.learner[self.name]  # this learner's hyperparameters
    self.tx = optim.make_optimizer(config.optim)
    self._jit_predict = jax.jit(self.predict, out_shardings=parallel.example_sharded(mesh))
    self._jit_step = None

  @classmethod
  def defaults(cls) -> ml_collections.ConfigDict:
    """This learner's hyperparameters (its `config.learner.<name>` section), defaults = the original's."""
    return ml_collections.ConfigDict()

  # ---- state ----------------------------------------------------------------------------------------------
  def network_state(self, rng: jax.Array, image_shape: tuple[int, ...]) -> TrainState:
    """A freshly initialised network and optimiser state, replicated over the mesh."""

    def create(rng):
      variables = self.model.init(rng, jnp.zeros((1, *image_shape), jnp.uint8), train=False)
      params = variables["params"]
      return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                        batch_stats=variables.get("batch_stats", {}), opt_state=self.tx.init(params))

    return jax.jit(create, out_shardings=parallel.replicated(self.mesh))(rng)

  def init(self, rng: jax.Array, image_shape: tuple[int, ...], num_examples: int) -> Any:
    """The learner's full state for training on `num_examples` examples (per-example variables included)."""
    del num_examples
    return self.network_state(rng, image_shape)

  def with_learning_rate(self, state: Any, lr: float) -> Any:
    return state.replace(opt_state=optim.with_learning_rate(state.opt_state, lr))

  # ---- training -------------------------------------------------------------------------------------------
  def train_step(self, state: Any, batch: Batch, key: jax.Array) -> tuple[Any, Metrics, Batch]:
    """One update on a global batch. Returns the new state, scalar metrics (batch means) and per-example
    outputs (`index`, `correct`, `loss`) that warm-up recorders may consume."""
    raise NotImplementedError

  def apply_gradients(self, state: TrainState, grads: Any, batch_stats: Any) -> TrainState:
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    return state.replace(step=state.step + 1, params=jax.tree.map(jnp.add, state.params, updates),
                         batch_stats=batch_stats, opt_state=opt_state)

  def train_epoch(self, state: Any, data: EpochData, lr: float, key: jax.Array,
                  on_step: Callable[[Batch], None] | None = None) -> tuple[Any, dict[str, float]]:
    """One epoch at learning rate `lr`; returns the state and the epoch's mean metrics. `on_step` receives each
    step's per-example outputs (warm-up recorders such as forgetting events)."""
    state = self.with_learning_rate(state, lr)
    return self.run_steps(state, data.batches(), data.steps, key, data.desc, on_step)

  def jitted_train_step(self, state: Any):
    """`train_step` compiled over the mesh: the state keeps its placement (replicated networks, sharded
    per-example variables) and is donated; per-example outputs stay sharded along the batch."""
    if self._jit_step is None:
      state_sharding = jax.tree.map(lambda x: x.sharding, state)
      self._jit_step = jax.jit(self.train_step, donate_argnums=0,
                               out_shardings=(state_sharding, parallel.replicated(self.mesh),
                                              parallel.example_sharded(self.mesh)))
    return self._jit_step

  def run_steps(self, state: Any, batches: Iterator[dict[str, np.ndarray]], num_steps: int, key: jax.Array,
                desc: str, on_step: Callable[[Batch], None] | None = None) -> tuple[Any, dict[str, float]]:
    """`num_steps` jitted, data-parallel `train_step`s over `batches`, with a progress line."""
    step_fn = self.jitted_train_step(state)
    sync = parallel.must_sync_each_step(self.mesh)
    progress = Progress(num_steps, desc)
    totals, losses = None, []
    for _ in range(num_steps):
      batch = parallel.to_global(self.mesh, next(batches))
      state, metrics, per_example = step_fn(state, batch, key)
      if sync:
        jax.block_until_ready(metrics)
      if on_step is not None:
        on_step(per_example)
      totals = metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)
      losses.append(metrics.get("loss"))  # stays on device; read only if the epoch's total is not finite
      progress.update(1, lambda: {k: float(v) for k, v in metrics.items()})
    means = {k: float(v) / max(num_steps, 1) for k, v in (totals or {}).items()}
    if not np.isfinite(means.get("loss", 0.0)):
      step, value = next(((i, float(v)) for i, v in enumerate(losses) if not np.isfinite(float(v))),
                         (num_steps - 1, means["loss"]))  # finite losses whose sum overflowed
      raise UserError(f"{desc}, step {step + 1}/{num_steps}: the loss is {value}; lower optim.lr or check the data")
    return state, means

  # ---- prediction -----------------------------------------------------------------------------------------
  def predict(self, state: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Evaluation-mode `(logits, features)`; pure, jitted by `predict_batch`."""
    return self.model.apply({"params": state.params, "batch_stats": state.batch_stats}, images, train=False)

  def predict_batch(self, state: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self._jit_predict(state, images)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example CE with integer labels (float32 whatever the logits' dtype)."""
  logits = logits.astype(jnp.float32)
  return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]


def step_key(key: jax.Array, state_step: jax.Array) -> jax.Array:
  """A fresh key per step, the same on every device (big_vision's fold_in convention)."""
  return jax.random.fold_in(key, state_step)
