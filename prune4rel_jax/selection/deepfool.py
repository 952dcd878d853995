"""DeepFool (Ducoffe & Precup 2018, as DeepCore codes it): the examples closest to the decision boundary first,
measured by the squared norm of the DeepFool perturbation that flips the warmed-up network's prediction.

The attack needs the network, so it runs at the end of the warm-up (`record_network`): `records.deepfool_norms`,
jitted and vmapped over example-sharded chunks of the training images (test view, as DeepCore's `dst_train`).
"""

import ml_collections
import numpy as np

from prune4rel_jax.errors import UserError
from prune4rel_jax.selection import records
from prune4rel_jax.selection.base import Method, SelectionInputs, rank_select


class DeepFool(Method):
  name = "deepfool"
  needs = frozenset({"deepfool_norms"})

  def __init__(self, cfg, mesh, seed):
    super().__init__(cfg, mesh, seed)
    if self.hp.max_iter < 1:
      raise UserError(f"selection.deepfool.max_iter={self.hp.max_iter} must be >= 1")

  @classmethod
  def defaults(cls):
    return ml_collections.ConfigDict(dict(max_iter=50))  # DeepCore's `max_iter`

  def record_network(self, network: records.Network) -> dict[str, np.ndarray]:
    return {"deepfool_norms": records.record_deepfool(network, self.mesh, self.hp.max_iter)}

  def select(self, inputs: SelectionInputs, budget: int) -> np.ndarray:
    """The smallest perturbations (DeepCore sorts ascending), globally or per noisy-label class."""
    return rank_select(inputs.deepfool_norms, budget, inputs.labels, inputs.num_classes, self.cfg.balance,
                       highest=False)
