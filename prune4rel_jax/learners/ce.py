"""Standard cross-entropy training: the paper's "standard model" and the learner-agnostic baseline."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from prune4rel_jax.learners.base import Learner, TrainState, apply_gradients, cross_entropy, negative_entropy


def train_step(state: TrainState, batch, key, *, model: nn.Module, tx: optax.GradientTransformation,
               penalty: bool = False):
  """One SGD step of the mean CE on the batch's noisy labels; with `penalty`, plus the mean Σ p log p (DivideMix's
  warm-up confidence penalty: minimising it raises the entropy)."""
  del key
  labels = batch["label"]

  def loss_fn(params):
    (logits, _), updates = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                                       train=True, mutable=["batch_stats"])
    per_example = cross_entropy(logits, labels)
    loss = per_example.mean()
    if penalty:
      loss = loss + negative_entropy(logits).mean()
    return loss, (updates["batch_stats"], logits, per_example)

  (loss, (batch_stats, logits, per_example)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = apply_gradients(tx, state, grads, batch_stats)
  correct = jnp.argmax(logits, -1) == labels
  metrics = {"loss": loss, "accuracy": correct.mean()}
  return state, metrics, {"index": batch["index"], "correct": correct, "loss": per_example}


class CrossEntropy(Learner):
  name = "ce"

  def step_function(self):
    return functools.partial(train_step, model=self.model, tx=self.tx)
