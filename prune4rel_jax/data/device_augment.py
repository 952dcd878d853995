"""The training views made on the accelerator: jitted, per example, from a key (`config.loading.device_views`).

The host views (`augment.py`, AutoAugment in Pillow per image) bound SOP+ runs on a GPU host. These make the same
views from the raw uint8 batch on device, inside the jitted train step: the same operations, probabilities,
magnitudes and order (AutoAugment sub-policy → crop → flip → Cutout), uint8 in and out, so the model's
normalisation is unchanged. Only the random draws differ from the host's (a JAX key per example instead of
`BatchRandom`), so a run's pixels differ from a host-view run's while their distribution is the same.

The Pillow operations are reproduced with Pillow's own integer arithmetic where it has one: the 16.16 fixed-point
nearest-neighbour affine map of `Image.transform` (rotate, shear, translate), its float32 `Image.blend` with
truncation (Brightness, Contrast, Color, Sharpness), its ITU-R 601 integer luma, its rounded 3×3 SMOOTH filter
with copied borders, and ImageOps' lookup tables (Equalize, Solarize, Posterize, Invert). AutoContrast uses exact
integer division where Pillow's float64 occasionally lands one level lower (`tests/test_device_augment.py`).
dm-pix (checked, 0.4.5) has none of these with Pillow's semantics (its brightness is additive, its contrast uses
the channel mean, its saturation works in HSV, its affine sampling rounds float coordinates); a flip alone is no
reason for a dependency, so all of it is written here in jnp.

Per example, every candidate of a sub-policy slot is cheap (a 256-entry lookup table per channel, one blend, one
gather), so each slot computes its lookup table, blend and affine map and the draws select which one acts; the
others are exact identities. `tests/test_device_augment.py` compares every operation with Pillow's.
"""

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from prune4rel_jax.data import autoaugment
from prune4rel_jax.errors import UserError

# A device view: a uint8 [N, H, W, C] batch and a key → the augmented uint8 batch.
DeviceView = Callable[[jax.Array, jax.Array], jax.Array]

# Lookup-table operations, in the order of `_lut`'s candidates (0: none).
LUT_OPS = ("none", "Invert", "AutoContrast", "Equalize", "Solarize", "Posterize2", "Contrast", "Brightness")
# Blends with a degenerate image, in the order of `_blend`'s branches: Color blends with the grey image, Sharpness
# with the smoothed one.
BLEND_OPS = ("Color", "Sharpness")
AFFINE_OPS = ("ShearX", "ShearY", "TranslateXAbs", "TranslateYAbs", "Rotate")
# ImageFilter.SMOOTH: a 3×3 kernel of ones with 5 in the centre, divided by 13.
_SMOOTH_CENTRE, _SMOOTH_SCALE = 5, 13
# Fixed-point scale of Pillow's nearest-neighbour affine transform.
_FIXED_ONE = 65536


# ---- lookup tables: [C, 256] int32 per image ----------------------------------------------------------------
def _luma(image: jax.Array) -> jax.Array:
  """Pillow's `convert("L")` of a 3-channel int32 image, kept as 3 equal channels; the image itself otherwise
  (the host applies every operation to a non-RGB image channel by channel, as greyscale)."""
  if image.shape[-1] != 3:
    return image
  grey = (image[..., 0] * 19595 + image[..., 1] * 38470 + image[..., 2] * 7471 + 0x8000) >> 16
  return jnp.broadcast_to(grey[..., None], image.shape)


def _histogram(image: jax.Array) -> jax.Array:
  """[C, 256] pixel counts per channel (one flat bincount: 2-3× faster on CPU than a 2-D scatter)."""
  channels = image.shape[-1]
  bins = jnp.arange(channels) * 256 + image
  return jnp.bincount(bins.reshape(-1), length=channels * 256).reshape(channels, 256)


def _pillow_blend(degenerate: jax.Array, image: jax.Array, factor: jax.Array) -> jax.Array:
  """`Image.blend(degenerate, image, factor)` as Pillow computes it: degenerate + factor·(image − degenerate) in
  float32, truncated, clipped. Pillow rounds the product before the sum; XLA would contract the two into an FMA
  (one rounding, which moves 0.1-0.3 % of pixels one level at factors above 1), so the product is taken as the
  sum of two exact ones: the factor's top 12 significant bits and the rest, each times a difference of at most
  8 bits."""
  degenerate, image = degenerate.astype(jnp.float32), image.astype(jnp.float32)
  factor = jnp.asarray(factor, jnp.float32)
  bits = jax.lax.bitcast_convert_type(factor, jnp.uint32) & jnp.uint32(0xFFFFF000)
  high = jax.lax.bitcast_convert_type(bits, jnp.float32)
  difference = image - degenerate
  product = high * difference + (factor - high) * difference
  return jnp.clip(degenerate + product, 0, 255).astype(jnp.int32)


def _blend_lut(degenerate: jax.Array, factor: jax.Array) -> jax.Array:
  """The blend with a constant [C, 1] degenerate for every input level."""
  return _pillow_blend(degenerate, jnp.arange(256), factor)


def _autocontrast_lut(image: jax.Array) -> jax.Array:
  """ImageOps.autocontrast: each channel's [min, max] stretched to [0, 255]; a flat channel is kept."""
  levels = jnp.arange(256)
  low = image.min(axis=(0, 1))[:, None]
  high = image.max(axis=(0, 1))[:, None]
  stretched = jnp.clip((levels - low) * 255 // jnp.maximum(high - low, 1), 0, 255)
  return jnp.where(high > low, stretched, levels)


def _equalize_lut(image: jax.Array) -> jax.Array:
  """ImageOps.equalize: per channel, step = (pixels − count of the top level) // 255 and level i maps to
  (step // 2 + pixels below i) // step; kept when step is 0."""
  histogram = _histogram(image)
  levels = jnp.arange(256)
  top = jnp.max(jnp.where(histogram > 0, levels, 0), axis=1, keepdims=True)
  step = (histogram.sum(1, keepdims=True) - jnp.take_along_axis(histogram, top, 1)) // 255
  below = jnp.cumsum(histogram, axis=1) - histogram
  equalized = jnp.minimum((step // 2 + below) // jnp.maximum(step, 1), 255)
  return jnp.where(step > 0, equalized, levels)


def _contrast_lut(image: jax.Array, factor: jax.Array) -> jax.Array:
  """ImageEnhance.Contrast: a blend with the luma's mean, rounded half up (per channel for a non-RGB image)."""
  pixels = image.shape[0] * image.shape[1]
  total = _luma(image).sum(axis=(0, 1))
  mean = (2 * total + pixels) // (2 * pixels)
  return _blend_lut(mean[:, None], factor)


def _lut(op: jax.Array, value: jax.Array, image: jax.Array) -> jax.Array:
  """The [C, 256] lookup table of LUT_OPS[op] at magnitude `value` for this image. Every candidate is computed
  (under vmap a switch computes every branch too) and a one-hot contraction picks one: with a select, XLA fuses
  all candidates into the per-pixel lookup and recomputes them for every pixel (3× slower per slot on CPU)."""
  levels = jnp.broadcast_to(jnp.arange(256), (image.shape[-1], 256))
  candidates = jnp.stack([
      levels,
      255 - levels,
      _autocontrast_lut(image),
      _equalize_lut(image),
      jnp.where(levels < value, levels, 255 - levels),  # Solarize at threshold `value`
      levels & ~((1 << (8 - value.astype(jnp.int32))) - 1),  # Posterize to `value` bits
      _contrast_lut(image, value),
      _blend_lut(jnp.zeros((image.shape[-1], 1)), value),  # Brightness: a blend with black
  ])
  pick = jax.nn.one_hot(op, len(LUT_OPS), dtype=jnp.float32)
  return jnp.einsum("k,kcl->cl", pick, candidates.astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST).astype(jnp.int32)


# ---- blends and the affine map ------------------------------------------------------------------------------
def _smooth(image: jax.Array) -> jax.Array:
  """ImageFilter.SMOOTH: the 3×3 kernel, rounded to nearest (no ties: the sum is over 13); borders copied."""
  padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0)))
  h, w = image.shape[:2]
  window = sum(padded[i:i + h, j:j + w] for i in range(3) for j in range(3))
  inner = (window + (_SMOOTH_CENTRE - 1) * image + _SMOOTH_SCALE // 2) // _SMOOTH_SCALE
  rows, cols = jnp.arange(h)[:, None, None], jnp.arange(w)[None, :, None]
  border = (rows == 0) | (rows == h - 1) | (cols == 0) | (cols == w - 1)
  return jnp.where(border, image, inner)


def _blend(op: jax.Array, factor: jax.Array, image: jax.Array) -> jax.Array:
  """ImageEnhance's blend of the image with its degenerate (BLEND_OPS[op]); factor 1 returns the image exactly."""
  return _pillow_blend(jax.lax.switch(op, (_luma, _smooth), image), image, factor)


def _pillow_affine(name: str, magnitude: float, h: int, w: int) -> tuple[float, ...]:
  """The inverse affine map (output → input pixel, Pillow's `data` of Transform.AFFINE) of an operation, in
  float64 as Pillow computes it (`Image.rotate`'s matrix about the centre, rounded to 15 digits)."""
  if name == "Rotate":
    angle = -math.radians(magnitude % 360.0)
    cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)
    cx, cy = w / 2, h / 2
    return (cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy)
  return {"ShearX": (1, magnitude, 0, 0, 1, 0), "ShearY": (1, 0, 0, magnitude, 1, 0),
          "TranslateXAbs": (1, 0, magnitude, 0, 1, 0), "TranslateYAbs": (1, 0, 0, 0, 1, magnitude)}[name]


def _fixed_point(matrix: tuple[float, ...]) -> np.ndarray:
  """Pillow's 16.16 fixed-point form of an affine map, with the half-pixel offsets folded into the constants."""
  a, b, c, d, e, f = matrix
  fix = lambda v: int(np.floor(v * _FIXED_ONE + 0.5))  # noqa: E731
  return np.array([fix(a), fix(b), fix(c + a * 0.5 + b * 0.5), fix(d), fix(e), fix(f + d * 0.5 + e * 0.5)],
                  np.int32)


_IDENTITY = _fixed_point((1, 0, 0, 0, 1, 0))


def _warp(image: jax.Array, fixed: jax.Array) -> jax.Array:
  """Nearest-neighbour affine warp exactly as Pillow's fixed-point loop: output (x, y) reads input
  ((a·x + b·y + c) >> 16, (d·x + e·y + f) >> 16), black outside."""
  h, w = image.shape[:2]
  y, x = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  source_x = (fixed[0] * x + fixed[1] * y + fixed[2]) >> 16
  source_y = (fixed[3] * x + fixed[4] * y + fixed[5]) >> 16
  inside = (source_x >= 0) & (source_x < w) & (source_y >= 0) & (source_y < h)
  pixels = image[jnp.clip(source_y, 0, h - 1), jnp.clip(source_x, 0, w - 1)]
  return jnp.where(inside[..., None], pixels, 0)


# ---- AutoAugment --------------------------------------------------------------------------------------------
@functools.lru_cache
def _policy_tables(h: int, w: int) -> dict[str, np.ndarray]:
  """Per (sub-policy, slot): probability, LUT op, blend op, magnitude, and the fixed-point affine map for each
  sign ([25, 2, 2, 6]; the identity for other operations)."""
  shape = (len(autoaugment.CIFAR10_POLICY), 2)
  tables = {"probability": np.zeros(shape, np.float32), "lut": np.zeros(shape, np.int32),
            "blend": np.zeros(shape, np.int32), "is_blend": np.zeros(shape, bool),
            "value": np.zeros(shape, np.float32), "affine": np.zeros((*shape, 2, 6), np.int32)}
  for row, sub_policy in enumerate(autoaugment.CIFAR10_POLICY):
    for slot, (name, probability, level) in enumerate(sub_policy):
      magnitude = autoaugment.OPERATIONS[name].magnitude(level)
      tables["probability"][row, slot] = probability
      tables["value"][row, slot] = magnitude
      tables["lut"][row, slot] = LUT_OPS.index(name) if name in LUT_OPS else 0
      tables["is_blend"][row, slot] = name in BLEND_OPS
      tables["blend"][row, slot] = BLEND_OPS.index(name) if name in BLEND_OPS else 0
      for negate in (0, 1):
        tables["affine"][row, slot, negate] = (
            _fixed_point(_pillow_affine(name, -magnitude if negate else magnitude, h, w)) if name in AFFINE_OPS
            else _IDENTITY)
  return tables


def apply_slot(image: jax.Array, lut_op, blend_op, is_blend, value, affine) -> jax.Array:
  """One sub-policy slot on an int32 [H, W, C] image: its lookup table, blend and affine map, of which at most
  one is not the identity (a slot that does not fire passes lut_op 0, is_blend False and the identity map)."""
  lut = _lut(lut_op, value, image)
  image = lut[jnp.arange(image.shape[-1]), image]
  image = _blend(blend_op, jnp.where(is_blend, value, 1.0), image)
  return _warp(image, affine)


def _autoaugment_one(image: jax.Array, draws: dict) -> jax.Array:
  """The drawn sub-policy on one int32 image: each slot that fires, with its drawn sign. The two slots run as a
  scan, so the slot's program is traced and compiled once."""
  tables = jax.tree.map(jnp.asarray, _policy_tables(*image.shape[:2]))
  row, fires = draws["row"], draws["fires"]
  affine = jnp.where(fires[:, None], tables["affine"][row, jnp.arange(2), draws["negate"].astype(jnp.int32)],
                     jnp.asarray(_IDENTITY))
  slots = (jnp.where(fires, tables["lut"][row], 0), tables["blend"][row], fires & tables["is_blend"][row],
           tables["value"][row], affine)
  image, _ = jax.lax.scan(lambda image, slot: (apply_slot(image, *slot), None), image, slots)
  return image


# ---- the draws: one image's random choices, apart from the pixels so that tests can replay them on the host ----
def crop_size(shape: tuple[int, ...], size: int | None) -> tuple[int, int]:
  """The weak view's output side: `size`, or the image's."""
  return tuple(shape[:2]) if size is None else (size, size)


def _integer(uniform: jax.Array, n: int) -> jax.Array:
  """A uniform integer in [0, n) from a uniform float in [0, 1)."""
  return jnp.minimum((uniform * n).astype(jnp.int32), n - 1)


def _weak_draws(uniforms: jax.Array, shape: tuple[int, ...], crop_padding: int, size: int | None) -> dict:
  (h, w), (out_h, out_w) = shape[:2], crop_size(shape, size)
  return {"top": _integer(uniforms[0], h + 2 * crop_padding - out_h + 1),
          "left": _integer(uniforms[1], w + 2 * crop_padding - out_w + 1), "flip": uniforms[2] < 0.5}


def draw_weak(key: jax.Array, shape: tuple[int, ...], crop_padding: int, size: int | None) -> dict:
  """The weak view's draws for an image of `shape`: the crop window's offset in the zero-padded image (uniform
  over every window, `augment.random_crop`) and the flip (probability 1/2). All from one vector of uniforms: each
  separate `jax.random` call adds a threefry loop that XLA compiles for seconds."""
  return _weak_draws(jax.random.uniform(key, (3,)), shape, crop_padding, size)


def draw_strong(key: jax.Array, shape: tuple[int, ...], crop_padding: int, size: int | None) -> dict:
  """The strong view's draws: a uniform sub-policy, whether each slot fires (a uniform draw <= its probability,
  as `autoaugment.autoaugment`), each slot's sign (negated when a uniform draw > 1/2), the weak view's draws and
  Cutout's centre, a uniform pixel of the cropped image."""
  uniforms = jax.random.uniform(key, (10,))
  out_h, out_w = crop_size(shape, size)
  row = _integer(uniforms[0], len(autoaugment.CIFAR10_POLICY))
  probability = jnp.asarray(_policy_tables(*shape[:2])["probability"])[row]
  return {"row": row, "fires": uniforms[1:3] <= probability, "negate": uniforms[3:5] > 0.5,
          **_weak_draws(uniforms[5:8], shape, crop_padding, size),
          "cy": _integer(uniforms[8], out_h), "cx": _integer(uniforms[9], out_w)}


# ---- the views of one image, given its draws -----------------------------------------------------------------
def weak_one(image: jax.Array, draws: dict, crop_padding: int, flip: bool, size: int | None) -> jax.Array:
  """`augment.weak` for one image: the drawn window of the zero-padded image, then the drawn flip."""
  out_h, out_w = crop_size(image.shape, size)
  padded = jnp.pad(image, ((crop_padding, crop_padding), (crop_padding, crop_padding), (0, 0)))
  image = jax.lax.dynamic_slice(padded, (draws["top"], draws["left"], 0), (out_h, out_w, image.shape[-1]))
  return jnp.where(draws["flip"], image[:, ::-1], image) if flip else image


def _cutout_one(image: jax.Array, cy: jax.Array, cx: jax.Array, size: int, fill: np.ndarray) -> jax.Array:
  """`augment.cutout` for one image: the size×size square centred on (cy, cx), clipped, set to `fill`."""
  rows, cols = jnp.arange(image.shape[0])[:, None], jnp.arange(image.shape[1])[None, :]
  inside = (rows >= cy - size // 2) & (rows < cy + size // 2) & (cols >= cx - size // 2) & (cols < cx + size // 2)
  return jnp.where(inside[..., None], jnp.asarray(fill, image.dtype), image)


def strong_one(image: jax.Array, draws: dict, cutout_size: int, fill: np.ndarray, **weak_args) -> jax.Array:
  """`augment.strong` for one image: the drawn sub-policy, the weak view's crop and flip, then Cutout."""
  image = _autoaugment_one(image.astype(jnp.int32), draws).astype(jnp.uint8)
  image = weak_one(image, draws, **weak_args)
  return _cutout_one(image, draws["cy"], draws["cx"], cutout_size, fill) if cutout_size else image


def example_keys(key: jax.Array, n: int) -> jax.Array:
  """Example i's key, fold_in(key, i): its pixels depend on (key, row) only, not on how the batch is sharded."""
  return jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(n))


def per_example(draw: Callable, view_one: Callable) -> DeviceView:
  """A batch view from one image's `draw(key, shape)` and `view_one(image, draws)`."""

  def view(images: jax.Array, key: jax.Array) -> jax.Array:
    draws = jax.vmap(lambda k: draw(k, images.shape[1:]))(example_keys(key, images.shape[0]))
    return jax.vmap(view_one)(images, draws)

  return view


# ---- views by batch key -------------------------------------------------------------------------------------
def make_view(name: str, cfg, mean: tuple[float, ...]) -> DeviceView:
  """The device version of `augment.make_view(name, cfg, mean)` for a training view; a UserError (before any
  work) for settings without one."""
  if cfg.crop != "pad":
    raise UserError(f"loading.device_views=True makes only the padded crop (data.crop='pad') on device, not "
                    f"data.crop={cfg.crop!r}; set loading.device_views=False")
  crop_args = dict(crop_padding=cfg.crop_padding, size=cfg.image_size or None)
  if name in ("image", "image2"):
    return per_example(functools.partial(draw_weak, **crop_args),
                       functools.partial(weak_one, flip=cfg.flip, **crop_args))
  if name == "image_strong":
    fill = np.round(255 * np.asarray(mean, np.float64)).astype(np.uint8)
    return per_example(functools.partial(draw_strong, **crop_args),
                       functools.partial(strong_one, cutout_size=cfg.cutout, fill=fill, flip=cfg.flip, **crop_args))
  raise UserError(f"loading.device_views=True: no device version of the view {name!r}")


def views_fn(names: tuple[str, ...], cfg, mean: tuple[float, ...]) -> Callable[[dict, jax.Array], dict]:
  """A function (global batch, key) → batch with each view in `names` (and its unlabelled `u_` copy, which
  DivideMix's batches carry) made on device from the raw images the host shipped under that name. Each batch key
  draws from its own fold of `key`."""
  views = {name: make_view(name, cfg, mean) for name in names}
  keyed = [*names, *(f"u_{name}" for name in names)]

  def apply(batch: dict, key: jax.Array) -> dict:
    made = {k: views[k.removeprefix("u_")](batch[k], jax.random.fold_in(key, i))
            for i, k in enumerate(keyed) if k in batch}
    return {**batch, **made}

  return apply
