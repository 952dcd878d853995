"""The one interface every selection method implements, and the record the warm-up fills for it."""

import dataclasses
from typing import ClassVar

import jax
import ml_collections
import numpy as np

from prune4rel_jax.errors import UserError


@dataclasses.dataclass
class SelectionInputs:
  """What the warm-up recorded, per training example. Fields a method does not list in `needs` are None."""
  labels: np.ndarray                    # noisy labels [N] (the only labels a method may use)
  num_classes: int
  logits: np.ndarray | None = None      # [N, C] evaluation-mode logits of the warmed-up network
  features: np.ndarray | None = None    # [N, d] penultimate embeddings

  @property
  def probs(self) -> np.ndarray:
    z = self.logits - self.logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


class Method:
  """A data-pruning method: picks `budget` training examples from a `SelectionInputs`."""
  name: ClassVar[str]
  # The `SelectionInputs` fields it reads; an empty set means no warm-up is run (e.g. Uniform).
  needs: ClassVar[frozenset[str]] = frozenset()
  # The view of the scoring pass: "test" (no augmentation) or "strong" (Prune4ReL's strongly augmented view).
  view: ClassVar[str] = "test"

  def __init__(self, cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, seed: int):
    self.cfg, self.mesh, self.seed = cfg, mesh, seed
    self.hp = cfg[self.name] if self.name in cfg else ml_collections.ConfigDict()

  @classmethod
  def defaults(cls) -> ml_collections.ConfigDict:
    """This method's options (its `config.selection.<name>` section), defaults = the original's."""
    return ml_collections.ConfigDict()

  def select(self, inputs: SelectionInputs, budget: int) -> np.ndarray:
    """Indices into the training set, `budget` of them, in the order they were chosen."""
    raise NotImplementedError


def budget_for(fraction: float, num_examples: int) -> int:
  """k = round(fraction · N), as the original; fraction must lie in (0, 1]."""
  if not 0.0 < fraction <= 1.0:
    raise UserError(f"selection.fraction={fraction} must lie in (0, 1]")
  return max(1, int(round(fraction * num_examples)))


def per_class_budgets(labels: np.ndarray, num_classes: int, fraction: float) -> np.ndarray:
  """Class-proportional budgets round(fraction · n_c) by noisy label (DeepCore's `balance`)."""
  counts = np.bincount(labels, minlength=num_classes)
  return np.round(fraction * counts).astype(np.int64)
