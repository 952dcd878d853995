"""The training views made on device (`data/device_augment.py`) against the host's Pillow views: every AutoAugment
operation on the same images at the same magnitude, whole strong views replayed on the host from the device's
draws, the draws against the policy's probabilities, and CE and SOP+ steps with `loading.device_views` on the 8
simulated devices."""

import jax
import numpy as np
import pytest
from scipy import stats

from prune4rel_jax import parallel
from prune4rel_jax.config import default_config
from prune4rel_jax.data import augment, autoaugment, device_augment, digits, pipeline
from prune4rel_jax.errors import UserError
from prune4rel_jax.learners import LEARNERS
from prune4rel_jax.models import create_model

pytestmark = pytest.mark.usefixtures("fast_compilation")

# AutoContrast: Pillow maps a level through float64 (ix·scale + offset), which now and then lands just below the
# exact integer; the device divides exactly. Measured: 0.26-0.31 % of pixels one level apart, never more.
AUTOCONTRAST_TOLERANCE = 0.01


def _photos(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
  """Images with structure (4×4 blocks plus noise) and each its own range of levels, so that AutoContrast,
  Equalize and Contrast have something to do; the last two are flat and two-level (the identity cases)."""
  rng = np.random.default_rng(seed)
  h, w, c = shape
  blocks = rng.integers(0, 256, (n, -(-h // 4), -(-w // 4), c)).astype(np.float64)
  smooth = np.repeat(np.repeat(blocks, 4, 1), 4, 2)[:, :h, :w] + rng.normal(0, 12, (n, h, w, c))
  low, high = rng.integers(0, 100, (n, 1, 1, 1)), rng.integers(150, 256, (n, 1, 1, 1))
  images = np.clip(low + smooth / 255 * (high - low), 0, 255).astype(np.uint8)
  images[-1] = 77
  images[-2] = np.where(np.arange(w) < w // 2, 30, 200)[None, :, None]
  return images


def _operations() -> list[tuple[str, int, bool]]:
  """Every (operation, level) of the policy, both signs of the signed ones, and ShearX (defined, unused)."""
  used = sorted({(name, level) for sub_policy in autoaugment.CIFAR10_POLICY for name, _, level in sub_policy})
  return [(name, level, negate) for name, level in [*used, ("ShearX", 8)]
          for negate in ((False, True) if autoaugment.OPERATIONS[name].signed else (False,))]


def _slot_arguments(name: str, level: int, negate: bool, h: int, w: int) -> tuple:
  """`apply_slot`'s arguments for one operation that fires."""
  magnitude = autoaugment.OPERATIONS[name].magnitude(level)
  da = device_augment
  affine = (da._fixed_point(da._pillow_affine(name, -magnitude if negate else magnitude, h, w))
            if name in da.AFFINE_OPS else da._IDENTITY)
  return (da.LUT_OPS.index(name) if name in da.LUT_OPS else 0, da.BLEND_OPS.index(name) if name in da.BLEND_OPS
          else 0, name in da.BLEND_OPS, np.float32(magnitude), affine)


@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28, 1)])
def test_every_operation_matches_pillow(shape):
  images, operations = _photos(12, shape), _operations()
  args = [_slot_arguments(*op, *shape[:2]) for op in operations]
  columns = [np.repeat(np.stack([a[i] for a in args]), len(images), axis=0) for i in range(5)]
  device = jax.jit(jax.vmap(device_augment.apply_slot))(np.tile(images, (len(args), 1, 1, 1)).astype(np.int32),
                                                        *columns)
  device = np.asarray(device).reshape(len(args), *images.shape)
  for (name, level, negate), got in zip(operations, device):
    want = np.stack([autoaugment.apply_operation(image, name, level, negate) for image in images])
    difference = np.abs(got - want.astype(np.int64))
    label = f"{name} level {level}{' negated' if negate else ''}"
    if name == "AutoContrast":
      assert difference.max() <= 1 and (difference > 0).mean() < AUTOCONTRAST_TOLERANCE, label
    else:
      np.testing.assert_array_equal(got, want, err_msg=label)


class _Replay:
  """A `BatchRandom` of one row that hands out given draws in order."""

  def __init__(self, values):
    self.values = iter(values)

  def integers(self, low, high):
    return np.asarray([next(self.values)])

  def uniform(self):
    return np.asarray([next(self.values)], np.float64)


def _host_strong(images, draws, cfg, mean) -> np.ndarray:
  """`augment.strong` (the host's view) of each image, fed the device's draws in the order the host draws them:
  sub-policy; per slot, fire (0 fires, 1 does not) and sign (1 negates); crop offsets; flip (0 flips); Cutout."""
  view = pipeline.Loading().views(("image_strong",), cfg, mean)["image_strong"]
  out = []
  for i, image in enumerate(images):
    slots = [(0.0 if draws["fires"][i, s] else 1.0, float(draws["negate"][i, s])) for s in range(2)]
    values = [draws["row"][i], *slots[0], *slots[1], draws["top"][i], draws["left"][i],
              0.0 if draws["flip"][i] else 1.0, draws["cy"][i], draws["cx"][i]]
    out.append(view(image[None], _Replay(values))[0])
  return np.stack(out)


def test_strong_view_is_the_host_view_with_the_same_draws():
  shape, crop_padding, image_size = (32, 32, 3), 2, 28  # a crop to a smaller side, as the 224-px datasets do
  cfg = default_config().data
  cfg.update(crop_padding=crop_padding, image_size=image_size)
  images, mean, key = _photos(64, shape), (0.4, 0.5, 0.6), jax.random.key(3)
  view = jax.jit(device_augment.make_view("image_strong", cfg, mean))
  got = np.asarray(view(images, key))
  draws = jax.vmap(lambda k: device_augment.draw_strong(k, shape, crop_padding, image_size))(
      device_augment.example_keys(key, len(images)))
  want = _host_strong(images, jax.device_get(draws), cfg, mean)
  assert got.shape == want.shape == (64, image_size, image_size, 3)
  difference = np.abs(got.astype(np.int64) - want)
  assert difference.max() <= 1 and (difference > 0).mean() < AUTOCONTRAST_TOLERANCE
  assert np.asarray(draws["fires"]).any(1).mean() > 0.5  # most images went through an operation
  np.testing.assert_array_equal(view(images, key), got)  # a pure function of the key
  assert (np.asarray(view(images, jax.random.key(4))) != got).mean() > 0.3


def test_draws_follow_the_policy_and_are_uniform():
  n, shape, padding = 40_000, (32, 32, 3), 4
  draws = jax.device_get(jax.jit(jax.vmap(lambda k: device_augment.draw_strong(k, shape, padding, None)))(
      device_augment.example_keys(jax.random.key(0), n)))
  uniform = lambda values, k: stats.chisquare(np.bincount(values, minlength=k)).pvalue  # noqa: E731
  assert uniform(draws["row"], 25) > 1e-3
  for name, k in (("top", 2 * padding + 1), ("left", 2 * padding + 1), ("cy", 32), ("cx", 32)):
    assert uniform(draws[name], k) > 1e-3, name
  for name, rate in (("flip", draws["flip"].mean()), ("negate", draws["negate"].mean())):
    assert abs(rate - 0.5) < 4.5 * np.sqrt(0.25 / draws[name].size), name
  for row, sub_policy in enumerate(autoaugment.CIFAR10_POLICY):
    chosen = draws["row"] == row
    for slot, (_, probability, _) in enumerate(sub_policy):
      rate = draws["fires"][chosen, slot].mean()
      assert abs(rate - probability) <= 4.5 * np.sqrt(probability * (1 - probability) / chosen.sum()), (row, slot)


def test_views_fn_makes_each_view_and_its_unlabelled_copy_from_its_own_key():
  cfg = default_config().data
  images = _photos(8, (32, 32, 3))
  batch = {"image": images, "image2": images, "u_image": images, "u_image2": images, "label": np.arange(8)}
  made = jax.jit(device_augment.views_fn(("image", "image2"), cfg, (0.5,) * 3))(batch, jax.random.key(0))
  views = [np.asarray(made[k]) for k in ("image", "image2", "u_image", "u_image2")]
  assert all((a != b).any() for i, a in enumerate(views) for b in views[i + 1:])
  np.testing.assert_array_equal(made["label"], batch["label"])


def _config(learner: str, **loading):
  c = default_config()
  c.model.name = "small_cnn"
  c.model.small_cnn.width = 8
  c.data.update(crop_padding=1, flip=False, cutout=4)
  c.batch_size = 32
  c.learner.name = learner
  c.loading.update(loading)
  return c


def _learner(learner_name: str, data, **loading):
  config = _config(learner_name, **loading)
  model = create_model(config.model, data.num_classes, data.mean, data.std)
  return LEARNERS.get(learner_name)(config, model, data.num_classes, parallel.make_mesh()), config


def _two_steps(learner, config, data, calls: int = 1):
  """Two training steps on 8 devices from a fresh state and the learner's stream, in `calls` calls of `run_steps`
  (as an epoch boundary or a resume splits them): the final state, the last call's metrics and the first batch."""
  subset = np.arange(200)
  state = learner.with_learning_rate(learner.init(jax.random.key(0), data.image_shape, len(subset)), 0.05)
  views = pipeline.Loading(**config.loading).views(learner.views, config.data, data.mean)
  batches = list(pipeline.train_stream(data.train_images, data.train_labels, subset, batch_size=32, seed=0,
                                       views=views, start_step=0, num_steps=2))
  stream = iter(batches)
  for _ in range(calls):
    state, metrics = learner.run_steps(state, stream, 2 // calls, jax.random.key(1), "t")
  return jax.device_get(state), metrics, batches[0]


@pytest.mark.parametrize("learner_name", ["ce", "sop_plus"])
def test_training_on_device_views_is_deterministic_and_resumable(learner_name):
  data = digits.load()
  learner, config = _learner(learner_name, data, device_views=True)
  state, metrics, batch = _two_steps(learner, config, data)
  for name in learner.views:  # the host ships the raw images
    np.testing.assert_array_equal(batch[name], data.train_images[batch["index"]])
  assert np.isfinite(metrics["loss"])
  again, _, _ = _two_steps(learner, config, data, calls=2)  # the views' key follows the state's step
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)


def test_host_path_is_unchanged_without_device_views():
  config = default_config()
  assert config.loading.device_views is False
  images = _photos(6, (32, 32, 3))
  views = pipeline.Loading(**config.loading).views(LEARNERS.get("sop_plus").views, config.data, (0.5,) * 3)
  rnd = lambda: augment.BatchRandom(np.random.default_rng(0), slice(None), 6)  # noqa: E731
  for name, view in views.items():
    np.testing.assert_array_equal(view(images, rnd()), augment.make_view(name, config.data, (0.5,) * 3)(images, rnd()))
  model = create_model(_config("sop_plus").model, 10, (0.5,), (0.25,))
  assert LEARNERS.get("sop_plus")(_config("sop_plus"), model, 10, parallel.make_mesh())._device_views is None


def test_a_crop_without_device_version_is_refused_at_construction():
  config = _config("sop_plus", device_views=True)
  config.data.crop = "resized"
  model = create_model(config.model, 10, (0.5,), (0.25,))
  with pytest.raises(UserError, match="device_views"):
    LEARNERS.get("sop_plus")(config, model, 10, parallel.make_mesh())
