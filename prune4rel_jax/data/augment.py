"""Batch-level numpy augmentations, applied on host inside the grain pipeline.

Random draws come from `BatchRandom`, which draws for the whole *global* batch and keeps this process's rows,
so an image's augmentation depends only on (seed, step, row) — not on how many processes share the batch, and
resuming at step k reproduces the same pixels.
"""

import dataclasses
import functools

import numpy as np

from prune4rel_jax.data import autoaugment


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


def random_crop(images: np.ndarray, padding: int, rnd: BatchRandom, size: int | None = None) -> np.ndarray:
  """Zero-pad by `padding` and crop a `size`×`size` window (default: the original size) at a random offset
  (torchvision RandomCrop(size, padding))."""
  _, h, w, _ = images.shape
  out_h, out_w = (h, w) if size is None else (size, size)
  if padding == 0 and (out_h, out_w) == (h, w):
    return images
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  tops = rnd.integers(0, h + 2 * padding - out_h + 1)
  lefts = rnd.integers(0, w + 2 * padding - out_w + 1)
  # One slice per image: far cheaper than a fancy-indexed gather on 224-px images.
  return np.stack([image[t:t + out_h, l:l + out_w] for image, t, l in zip(padded, tops, lefts)])


def _resize(image: np.ndarray, size: int) -> np.ndarray:
  """One uint8 [h, w, c] image resized to size × size with Pillow's bilinear filter (torchvision's on PIL)."""
  from PIL import Image

  grey = image.shape[-1] == 1
  resized = np.asarray(Image.fromarray(image[..., 0] if grey else image).resize((size, size), Image.BILINEAR))
  return resized[..., None] if grey else resized


def random_resized_crop(images: np.ndarray, size: int, rnd: BatchRandom, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3), attempts: int = 10) -> np.ndarray:
  """torchvision RandomResizedCrop: a window of random area (a `scale` share of the image) and log-uniform aspect
  `ratio` at a random place, resized to size × size; if `attempts` draws all miss the image, the central window
  with the aspect ratio clamped to `ratio`."""
  _, h, w, _ = images.shape
  areas = h * w * (scale[0] + (scale[1] - scale[0]) * np.stack([rnd.uniform() for _ in range(attempts)]))
  log_ratio = np.log(ratio[0]) + np.log(ratio[1] / ratio[0]) * np.stack([rnd.uniform() for _ in range(attempts)])
  crop_w = np.round(np.sqrt(areas * np.exp(log_ratio))).astype(np.int64)  # [attempts, n]
  crop_h = np.round(np.sqrt(areas / np.exp(log_ratio))).astype(np.int64)
  fits = (crop_w > 0) & (crop_w <= w) & (crop_h > 0) & (crop_h <= h)
  first, found = fits.argmax(0), fits.any(0)
  fallback_w = w if w / h <= ratio[1] else int(round(h * ratio[1]))
  fallback_h = h if w / h >= ratio[0] else int(round(w / ratio[0]))
  crop_w = np.where(found, np.take_along_axis(crop_w, first[None], 0)[0], fallback_w)
  crop_h = np.where(found, np.take_along_axis(crop_h, first[None], 0)[0], fallback_h)
  top = np.where(found, np.floor(rnd.uniform() * (h - crop_h + 1)), (h - crop_h) // 2).astype(np.int64)
  left = np.where(found, np.floor(rnd.uniform() * (w - crop_w + 1)), (w - crop_w) // 2).astype(np.int64)
  return np.stack([_resize(image[t:t + ch, l:l + cw], size)
                   for image, t, l, ch, cw in zip(images, top, left, crop_h, crop_w)])


def center_crop(images: np.ndarray, size: int) -> np.ndarray:
  """The central size × size window (torchvision CenterCrop's rounding); the test view of the 224-px datasets."""
  _, h, w, _ = images.shape
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return images[:, top:top + size, left:left + size]


def random_flip(images: np.ndarray, rnd: BatchRandom) -> np.ndarray:
  """Horizontal flip with probability 1/2 per image."""
  flip = rnd.uniform() < 0.5
  return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


def weak(images: np.ndarray, rnd: BatchRandom, crop_padding: int, flip: bool, size: int | None = None,
         crop: str = "pad") -> np.ndarray:
  """The standard training view: a random crop of side `size` (default: the image's) — with padding (`pad`, the
  original's) or resized (`resized`) — then (optionally) a horizontal flip."""
  if crop == "resized":
    images = random_resized_crop(images, size or images.shape[1], rnd)
  else:
    images = random_crop(images, crop_padding, rnd, size)
  return random_flip(images, rnd) if flip else images


def cutout(images: np.ndarray, size: int, fill: np.ndarray, rnd: BatchRandom) -> np.ndarray:
  """Cutout as the originals apply it (DARTS' `Cutout`): a `size`×`size` square centred on a uniform pixel,
  clipped at the borders, on every image. They zero it after normalisation; our images stay uint8 until the
  model normalises them on device, so the square gets `fill`, the dataset's mean pixel (0 after normalisation up
  to uint8 rounding)."""
  if size == 0:
    return images
  _, h, w, _ = images.shape
  cy, cx = rnd.integers(0, h), rnd.integers(0, w)
  rows, cols = np.arange(h), np.arange(w)
  in_rows = (rows >= np.clip(cy - size // 2, 0, h)[:, None]) & (rows < np.clip(cy + size // 2, 0, h)[:, None])
  in_cols = (cols >= np.clip(cx - size // 2, 0, w)[:, None]) & (cols < np.clip(cx + size // 2, 0, w)[:, None])
  inside = in_rows[:, :, None, None] & in_cols[:, None, :, None]
  return np.where(inside, fill.astype(images.dtype), images)


def strong(images: np.ndarray, rnd: BatchRandom, cutout_size: int, fill: np.ndarray, **weak_args) -> np.ndarray:
  """SOP+'s strong view, also Prune4ReL's scoring view: one AutoAugment CIFAR-10 sub-policy, the weak view's
  crop and flip (`weak_args`; the original flips first, the two commute in distribution), then Cutout."""
  images = autoaugment.autoaugment(images, rnd)
  images = weak(images, rnd, **weak_args)
  return cutout(images, cutout_size, fill, rnd)


# The views `make_view` builds: two independent weak ones, SOP+'s strong one and the test view (no augmentation).
VIEWS = ("image", "image2", "image_strong", "test")


def make_view(name: str, cfg, mean: tuple[float, ...] | None = None):
  """The augmentation behind a batch key (see `Learner.views`); `cfg` is `config.data`, `mean` the dataset's
  per-channel mean in [0, 1] (the strong view's Cutout fill)."""
  weak_args = dict(crop_padding=cfg.crop_padding, flip=cfg.flip, size=cfg.image_size or None, crop=cfg.crop)
  if name in ("image", "image2"):  # independent weak views (DivideMix uses two)
    return functools.partial(weak, **weak_args)
  if name == "test":  # evaluation: the central image_size crop, or None (the raw images) when image_size is 0
    return (lambda images, rnd: center_crop(images, cfg.image_size)) if cfg.image_size else None
  if name == "image_strong":
    if mean is None:
      raise ValueError("the image_strong view needs the dataset's mean pixel (make_view's `mean`)")
    fill = np.round(255 * np.asarray(mean, np.float64)).astype(np.uint8)
    return functools.partial(strong, cutout_size=cfg.cutout, fill=fill, **weak_args)
  raise ValueError(f"no augmentation is defined for the view {name!r}")
