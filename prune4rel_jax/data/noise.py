"""Synthetic label noise, seeded and reproducible on every host.

Conventions follow the Prune4ReL code (kaist-dmlab/Prune4Rel): a fixed number `round(rate·N)` of examples is
chosen uniformly at random; *symmetric* noise gives each of them a label drawn uniformly from the **other**
classes (so the realised noise rate equals `rate`), *asymmetric* noise maps each of them through the dataset's
class-confusion map (classes the map leaves alone keep their label, so the realised rate can be below `rate`).
"""

import numpy as np

from prune4rel_jax.errors import UserError

NOISE_TYPES = ("clean", "sym", "asym")


def symmetric(labels: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
  noisy = labels.copy()
  flip = rng.permutation(len(labels))[: int(round(rate * len(labels)))]
  # An offset in [1, C) added mod C is uniform over the other C-1 classes.
  noisy[flip] = (labels[flip] + rng.integers(1, num_classes, size=len(flip))) % num_classes
  return noisy


def asymmetric(labels: np.ndarray, rate: float, class_map: dict[int, int],
               rng: np.random.Generator) -> np.ndarray:
  noisy = labels.copy()
  flip = rng.permutation(len(labels))[: int(round(rate * len(labels)))]
  lookup = np.arange(max(labels.max() + 1, max(class_map, default=0) + 1))
  for source, target in class_map.items():
    lookup[source] = target
  noisy[flip] = lookup[labels[flip]]
  return noisy


def next_class_map(num_classes: int) -> dict[int, int]:
  """y → (y+1) mod C, the asymmetric noise the original uses for ImageNet-1K and CIFAR-100 (fixed)."""
  return {c: (c + 1) % num_classes for c in range(num_classes)}


def corrupt(labels: np.ndarray, noise_type: str, rate: float, num_classes: int, seed: int,
            class_map: dict[int, int] | None = None) -> np.ndarray:
  """Noisy copy of `labels`; the same arguments give the same labels on every host and run."""
  if noise_type not in NOISE_TYPES:
    raise UserError(f"data.noise_type={noise_type!r}; expected one of {NOISE_TYPES}")
  if not 0.0 <= rate <= 1.0:
    raise UserError(f"data.noise_rate={rate} must lie in [0, 1]")
  rng = np.random.default_rng(seed)
  if noise_type == "clean" or rate == 0.0:
    return labels.copy()
  if noise_type == "sym":
    return symmetric(labels, rate, num_classes, rng)
  return asymmetric(labels, rate, class_map if class_map is not None else next_class_map(num_classes), rng)
