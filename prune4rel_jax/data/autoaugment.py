"""AutoAugment's CIFAR-10 policy as SOP+ and Prune4ReL apply it in their strong view.

Both originals use the Fast-AutoAugment "archive" version: every image gets one of the 25 sub-policies found on
CIFAR-10 (Cubuk et al., 2019), each of its two operations fires with its own probability, and a magnitude level
0-9 maps to an absolute value (`OPERATIONS`); shears, translations and rotations get a random sign. Magnitudes are
absolute, not relative to the image size (the originals apply the same values to 224-px images).

The operations run in Pillow on uint8 images: as RGB for 3 channels, otherwise channel by channel as greyscale
images, which is exact for 1 channel and for every per-pixel or geometric operation (with more than one
non-RGB channel, Contrast and Color then act per channel). Random draws come from the batch-level `BatchRandom`,
so an image's augmentation depends only on (seed, step, row).
"""

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

# (operation, probability, magnitude level) pairs, one sub-policy per row.
CIFAR10_POLICY = (
    (("Invert", 0.1, 7), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateXAbs", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateYAbs", 0.7, 9)),
    (("AutoContrast", 0.5, 8), ("Equalize", 0.9, 2)),
    (("ShearY", 0.2, 7), ("Posterize2", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, 5), ("Equalize", 0.5, 1)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateXAbs", 0.5, 8)),
    (("Equalize", 0.3, 7), ("AutoContrast", 0.4, 8)),
    (("TranslateYAbs", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 6)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, 3)),
    (("Equalize", 0.2, 0), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.2, 8), ("Equalize", 0.6, 4)),
    (("Color", 0.9, 9), ("Equalize", 0.6, 6)),
    (("AutoContrast", 0.8, 4), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, 3)),
    (("TranslateYAbs", 0.9, 9), ("TranslateYAbs", 0.7, 9)),
    (("AutoContrast", 0.9, 2), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, 8), ("Invert", 0.1, 3)),
    (("TranslateYAbs", 0.7, 9), ("AutoContrast", 0.9, 1)),
)


class Operation(NamedTuple):
  apply: Callable[[Image.Image, float], Image.Image]
  magnitude: Callable[[int], float]  # level 0-9 → the value `apply` takes
  signed: bool                       # the magnitude's sign is drawn at random


def _affine(matrix: Callable[[float], tuple[float, ...]]) -> Callable[[Image.Image, float], Image.Image]:
  """An inverse affine map (output pixel → input pixel), nearest neighbour, black outside, as PIL applies it."""
  return lambda image, m: image.transform(image.size, Image.Transform.AFFINE, matrix(m))


def _enhance(enhancer) -> Callable[[Image.Image, float], Image.Image]:
  return lambda image, factor: enhancer(image).enhance(factor)


def _enhance_factor(level: int) -> float:
  return level * 1.8 / 10 + 0.1


def _as_is(level: int) -> float:
  return level


OPERATIONS = {
    "ShearX": Operation(_affine(lambda m: (1, m, 0, 0, 1, 0)), lambda level: level * 0.3 / 10, True),
    "ShearY": Operation(_affine(lambda m: (1, 0, 0, m, 1, 0)), lambda level: level * 0.3 / 10, True),
    "TranslateXAbs": Operation(_affine(lambda m: (1, 0, m, 0, 1, 0)), _as_is, True),  # pixels
    "TranslateYAbs": Operation(_affine(lambda m: (1, 0, 0, 0, 1, m)), _as_is, True),
    "Rotate": Operation(lambda image, degrees: image.rotate(degrees), lambda level: int(level * 30 / 10), True),
    "AutoContrast": Operation(lambda image, _: ImageOps.autocontrast(image), _as_is, False),
    "Invert": Operation(lambda image, _: ImageOps.invert(image), _as_is, False),
    "Equalize": Operation(lambda image, _: ImageOps.equalize(image), _as_is, False),
    # Pixels >= the threshold are inverted; level 0 → 256 leaves the image unchanged.
    "Solarize": Operation(ImageOps.solarize, lambda level: 256 - int(level * 256 / 10), False),
    "Posterize2": Operation(ImageOps.posterize, lambda level: 4 - int(level * 4 / 10), False),  # bits kept
    "Contrast": Operation(_enhance(ImageEnhance.Contrast), _enhance_factor, False),
    "Color": Operation(_enhance(ImageEnhance.Color), _enhance_factor, False),
    "Brightness": Operation(_enhance(ImageEnhance.Brightness), _enhance_factor, False),
    "Sharpness": Operation(_enhance(ImageEnhance.Sharpness), _enhance_factor, False),
}


def _on_pil(image: np.ndarray, fn: Callable[[Image.Image], Image.Image]) -> np.ndarray:
  """`fn` applied to one uint8 [H, W, C] image: as RGB for 3 channels, else to each channel as greyscale."""
  if image.shape[-1] == 3:
    return np.asarray(fn(Image.fromarray(image)))
  bands = [np.asarray(fn(Image.fromarray(np.ascontiguousarray(image[..., c])))) for c in range(image.shape[-1])]
  return np.stack(bands, axis=-1)


def apply_operation(image: np.ndarray, name: str, level: int, negate: bool) -> np.ndarray:
  """One AutoAugment operation at magnitude `level` on a uint8 [H, W, C] image (`negate` flips a signed one)."""
  op = OPERATIONS[name]
  magnitude = -op.magnitude(level) if op.signed and negate else op.magnitude(level)
  return _on_pil(image, lambda pil: op.apply(pil, magnitude))


def autoaugment(images: np.ndarray, rnd) -> np.ndarray:
  """One uniformly drawn CIFAR-10 sub-policy per image of a uint8 [N, H, W, C] batch; `rnd` is a `BatchRandom`.

  Every draw is made for every image whether or not it is used, so the stream stays aligned across images."""
  choice = rnd.integers(0, len(CIFAR10_POLICY))
  slots = [(rnd.uniform(), rnd.uniform()) for _ in range(2)]  # per operation slot: (fires?, sign) draws
  out = np.empty_like(images)
  for i, image in enumerate(images):
    for (name, probability, level), (fire, sign) in zip(CIFAR10_POLICY[choice[i]], slots):
      if fire[i] <= probability:  # the original skips an operation when its draw exceeds the probability
        image = apply_operation(image, name, level, negate=sign[i] > 0.5)
    out[i] = image
  return out
