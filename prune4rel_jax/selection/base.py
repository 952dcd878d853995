"""The one interface every selection method implements, and the record the warm-up fills for it."""

import dataclasses
from collections.abc import Callable
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
  forgetting_events: np.ndarray | None = None  # [N] correct→incorrect flips over every warm-up mini-batch
  grad_norms: np.ndarray | None = None  # [N, R] last-layer gradient norms (GraNd), one column per warm-up run
  error_norms: np.ndarray | None = None  # [N, R] ‖softmax − onehot(label)‖ (EL2N), one column per warm-up run
  deepfool_norms: np.ndarray | None = None  # [N] ‖r‖² of the DeepFool perturbation that flips the prediction

  @property
  def probs(self) -> np.ndarray:
    z = self.logits - self.logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


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


class Method:
  """A data-pruning method: picks `budget` training examples from a `SelectionInputs`."""
  name: ClassVar[str]
  # The `SelectionInputs` fields it reads, each computed by `records.RECORDERS`; an empty set means no warm-up is run
  # (e.g. Uniform).
  needs: ClassVar[frozenset[str]] = frozenset()
  # The view of the scoring pass, one of `augment.VIEWS`: "test" (no augmentation); Prune4ReL's is configurable.
  view: ClassVar[str] = "test"
  # How many networks the warm-up trains from fresh initialisations (GraNd/EL2N average over `repeat`).
  warmup_runs: int = 1

  def __init__(self, cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, seed: int):
    self.cfg, self.mesh, self.seed = cfg, mesh, seed
    self.hp = cfg[self.name] if self.name in cfg else ml_collections.ConfigDict()

  def require_choice(self, field: str, allowed) -> None:
    """Bad input as one line: `selection.<name>.<field>` must be one of `allowed`."""
    if self.hp[field] not in allowed:
      raise UserError(f"selection.{self.name}.{field}={self.hp[field]!r}; expected one of {', '.join(allowed)}")

  @classmethod
  def defaults(cls) -> ml_collections.ConfigDict:
    """This method's options (its `config.selection.<name>` section), defaults = the original's."""
    return ml_collections.ConfigDict()

  def select(self, inputs: SelectionInputs, budget: int) -> np.ndarray:
    """Indices into the training set, `budget` of them, in the order they were chosen."""
    raise NotImplementedError

  def select_and_report(self, inputs: SelectionInputs, budget: int, clean_labels: np.ndarray | None = None):
    """`select`, plus a report of how the subset was chosen (Prune4ReL: `diagnostics.Report`) or None.
    `clean_labels` (None where unknown) may only inform the report, never the choice."""
    del clean_labels
    return self.select(inputs, budget), None


def budget_for(fraction: float, num_examples: int) -> int:
  """k = round(fraction · N), as the original; fraction must lie in (0, 1]."""
  if not 0.0 < fraction <= 1.0:
    raise UserError(f"selection.fraction={fraction} must lie in (0, 1]")
  return max(1, int(round(fraction * num_examples)))


def class_quotas(labels: np.ndarray, num_classes: int, budget: int) -> np.ndarray:
  """Class-proportional budgets by noisy label (DeepCore's `balance`, round(f·n_c)), made to sum to exactly
  `budget` by largest remainders (ties to the lower class), so a balanced subset has the same size as a global one."""
  shares = budget * np.bincount(labels, minlength=num_classes).astype(np.int64)  # integer maths: exact ties
  quotas, remainders = np.divmod(shares, len(labels))
  quotas[np.argsort(-remainders, kind="stable")[:budget - quotas.sum()]] += 1
  return quotas


def rank_select(scores: np.ndarray, budget: int, labels: np.ndarray, num_classes: int, balance: bool,
                highest: bool) -> np.ndarray:
  """The `budget` best-ranked examples (highest or lowest `scores`, lower index first on ties), globally or, with
  `balance`, `class_quotas` per noisy-label class (concatenated class by class, each in rank order)."""
  order = np.argsort(-scores if highest else scores, kind="stable")
  if not balance:
    return order[:budget]
  ranked_labels = labels[order]
  quotas = class_quotas(labels, num_classes, budget)
  return np.concatenate([order[ranked_labels == c][:q] for c, q in enumerate(quotas)])
