"""Standard cross-entropy training: the paper's "standard model" and the learner-agnostic baseline."""

import jax
import jax.numpy as jnp

from prune4rel_jax.learners.base import Learner, TrainState, cross_entropy


class CrossEntropy(Learner):
  name = "ce"

  def train_step(self, state: TrainState, batch, key):
    del key
    labels = batch["label"]

    def loss_fn(params):
      (logits, _), updates = self.model.apply({"params": params, "batch_stats": state.batch_stats},
                                              batch["image"], train=True, mutable=["batch_stats"])
      per_example = cross_entropy(logits, labels)
      return per_example.mean(), (updates["batch_stats"], logits, per_example)

    (loss, (batch_stats, logits, per_example)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = self.apply_gradients(state, grads, batch_stats)
    correct = jnp.argmax(logits, -1) == labels
    metrics = {"loss": loss, "accuracy": correct.mean()}
    return state, metrics, {"index": batch["index"], "correct": correct, "loss": per_example}
