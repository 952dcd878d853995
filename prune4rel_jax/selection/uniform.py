"""Uniform random selection: the baseline that needs no warm-up."""

import numpy as np

from prune4rel_jax.selection.base import Method, SelectionInputs, class_quotas


class Uniform(Method):
  name = "uniform"

  def select(self, inputs: SelectionInputs, budget: int) -> np.ndarray:
    rng = np.random.default_rng(self.seed)
    if not self.cfg.balance:
      return rng.choice(len(inputs.labels), budget, replace=False)
    quotas = class_quotas(inputs.labels, inputs.num_classes, budget)
    picks = [rng.choice(np.flatnonzero(inputs.labels == c), q, replace=False) for c, q in enumerate(quotas)]
    return np.concatenate(picks)
