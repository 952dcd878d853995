"""Batch-level numpy augmentations, applied on host inside the grain pipeline.

Random draws come from `BatchRandom`, which draws for the whole *global* batch and keeps this process's rows,
so an image's augmentation depends only on (seed, step, row) — not on how many processes share the batch, and
resuming at step k reproduces the same pixels.
"""

import dataclasses
import functools

import numpy as np


@dataclasses.dataclass
class BatchRandom:
  """Draws for a global batch of `global_size` rows, restricted to this process's `rows`."""
  rng: np.random.Generator
  rows: slice
  global_size: int

  def integers(self, low: int, high: int) -> np.ndarray:
    return self.rng.integers(low, high, size=self.global_size)[self.rows]

  def uniform(self) -> np.ndarray:
    return self.rng.random(self.global_size)[self.rows]


def random_crop(images: np.ndarray, padding: int, rnd: BatchRandom) -> np.ndarray:
  """Zero-pad by `padding` and crop back to the original size at a random offset (torchvision RandomCrop)."""
  if padding == 0:
    return images
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  rows = rnd.integers(0, 2 * padding + 1)[:, None] + np.arange(h)[None, :]  # [n, h]
  cols = rnd.integers(0, 2 * padding + 1)[:, None] + np.arange(w)[None, :]  # [n, w]
  return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def random_flip(images: np.ndarray, rnd: BatchRandom) -> np.ndarray:
  """Horizontal flip with probability 1/2 per image."""
  flip = rnd.uniform() < 0.5
  return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


def weak(images: np.ndarray, rnd: BatchRandom, crop_padding: int, flip: bool) -> np.ndarray:
  """The standard training view: random crop with padding, then (optionally) a horizontal flip."""
  images = random_crop(images, crop_padding, rnd)
  return random_flip(images, rnd) if flip else images


def make_view(name: str, cfg):
  """The augmentation behind a batch key (see `Learner.views`); `cfg` is `config.data`."""
  if name in ("image", "image2"):  # independent weak views (DivideMix uses two)
    return functools.partial(weak, crop_padding=cfg.crop_padding, flip=cfg.flip)
  raise ValueError(f"no augmentation is defined for the view {name!r}")
