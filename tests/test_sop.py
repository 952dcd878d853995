"""SOP+: the loss and its gradients against NumPy, the sharded u/v step, 1 vs 8 devices, the strong view, and a
run through the whole pipeline (SOP+ warm-up, Prune4ReL scoring on the strong view, training on the subset)."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prune4rel_jax import evaluate, parallel, train
from prune4rel_jax.config import default_config
from prune4rel_jax.data import augment, autoaugment, digits, pipeline
from prune4rel_jax.errors import UserError
from prune4rel_jax.learners import LEARNERS
from prune4rel_jax.learners.sop import sop_loss
from prune4rel_jax.models import create_model

EPS = 1e-4


pytestmark = pytest.mark.usefixtures("fast_compilation")


# ---- a plain NumPy SOP(+) loss --------------------------------------------------------------------------------
def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _np_loss(logits, strong, targets, u, v, rc, rb, v_in_q=None, weak_target=None):
  """float64 SOP(+) loss as written in the original. The stop-gradients are explicit inputs: V inside the
  corrected prediction comes from `v_in_q`, the hard label and the consistency target from `weak_target` (both
  default to the live values), so finite differences w.r.t. v or the logits follow the original's gradient paths."""
  v_in_q = v if v_in_q is None else v_in_q
  weak_target = logits if weak_target is None else weak_target
  b, c = targets.shape
  U = np.clip(u**2 * targets, 0, 1)
  V = np.clip(v**2 * (1 - targets), 0, 1)
  q = np.maximum(_softmax(logits) + U - np.clip(v_in_q**2 * (1 - targets), 0, 1), EPS)
  q = np.clip(q / np.maximum(np.abs(q).sum(-1, keepdims=True), EPS), EPS, 1)
  loss = np.mean(-np.sum(targets * np.log(q), -1))
  loss += np.sum((np.eye(c)[weak_target.argmax(-1)] + U - V - targets)**2) / b
  if rb > 0:
    loss += rb * np.sum(-np.log(np.clip(q.mean(0), EPS, 1)) / c)
  if strong is not None and rc > 0:
    p = _softmax(weak_target)
    log_strong = strong - strong.max(-1, keepdims=True)
    log_strong -= np.log(np.exp(log_strong).sum(-1, keepdims=True))
    loss += rc * np.mean(np.sum(p * (np.log(p) - log_strong), -1))
  return loss


def _numeric_grad(f, x, h=1e-6):
  grad = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    up, down = x.copy(), x.copy()
    up[i] += h
    down[i] -= h
    grad[i] = (f(up) - f(down)) / (2 * h)
  return grad


def _tiny_batch(b=6, c=4, seed=0):
  rng = np.random.default_rng(seed)
  logits, strong = rng.normal(0, 2, (b, c)), rng.normal(0, 2, (b, c))
  targets = np.eye(c)[rng.integers(0, c, b)]
  # magnitudes where U, V matter, including entries clipped at 1 (|u|, |v| > 1)
  u = rng.choice([-1, 1], (b, 1)) * rng.uniform(0.2, 1.3, (b, 1))
  v = rng.choice([-1, 1], (b, c)) * rng.uniform(0.1, 1.2, (b, c))
  return logits, strong, targets, u, v


@pytest.mark.parametrize("rc,rb", [(0.9, 0.1), (0.0, 0.0), (0.5, 0.0), (0.0, 0.3)])
def test_loss_equals_numpy(rc, rb):
  logits, strong, targets, u, v = _tiny_batch()
  got, ce = jax.jit(functools.partial(sop_loss, ratio_consistency=rc, ratio_balance=rb))(
      *(jnp.asarray(a, jnp.float32) for a in (logits, strong, targets, u, v)))
  np.testing.assert_allclose(got, _np_loss(logits, strong, targets, u, v, rc, rb), rtol=1e-5)
  no_terms = _np_loss(logits, None, targets, u, v, 0, 0)
  assert np.mean(ce) < no_terms  # the per-example output is the CE part, MSE excluded
  if rc == rb == 0:
    assert abs(got - no_terms) < 1e-5


def test_gradients_equal_numpy_finite_differences():
  rc, rb = 0.9, 0.1
  logits, strong, targets, u, v = _tiny_batch(seed=1)
  f = functools.partial(_np_loss, targets=targets, rc=rc, rb=rb)
  want = {
      "logits": _numeric_grad(lambda x: f(x, strong, u=u, v=v, weak_target=logits), logits),
      "strong": _numeric_grad(lambda x: f(logits, x, u=u, v=v), strong),
      "u": _numeric_grad(lambda x: f(logits, strong, u=x, v=v), u),
      "v": _numeric_grad(lambda x: f(logits, strong, u=u, v=x, v_in_q=v), v),  # V is stopped inside q
  }
  grads = jax.grad(lambda *a: sop_loss(*a[:2], jnp.asarray(targets, jnp.float32), *a[2:], rc, rb)[0],
                   argnums=(0, 1, 2, 3))(*(jnp.asarray(a, jnp.float32) for a in (logits, strong, u, v)))
  for (name, expected), got in zip(want.items(), grads):
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=2e-6, err_msg=name)
  assert np.all(want["u"][np.abs(u) > 1] == 0)  # clipped U passes no gradient (a case the batch must contain)
  assert np.any(want["u"] != 0)


# ---- the jitted, sharded step ---------------------------------------------------------------------------------
def _config(**sop):
  c = default_config()
  c.model.name = "small_cnn"
  c.model.small_cnn.width = 8
  c.data.crop_padding = 1
  c.data.flip = False
  c.data.cutout = 4
  c.batch_size = 32
  c.learner.name = "sop_plus"
  c.learner.sop_plus.update(sop)
  return c


def _learner(config, mesh, data):
  model = create_model(config.model, data.num_classes, data.mean, data.std)
  return LEARNERS.get("sop_plus")(config, model, data.num_classes, mesh)


def _collectives(hlo: str) -> list[str]:
  ops = r"(all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)(-start)?\("
  return [line for line in hlo.splitlines() if re.search(ops, line)]


def test_step_is_sgd_on_the_batch_rows_only_and_never_moves_the_table():
  data = digits.load()
  mesh = parallel.make_mesh()
  config = _config()
  learner = _learner(config, mesh, data)
  state = learner.init(jax.random.key(0), data.image_shape, 1500)
  rows, c = state.v.shape
  assert rows == 2048 and state.u.shape == (rows, 1) and state.u.sharding.spec == parallel.example_sharded(mesh).spec
  np.testing.assert_array_equal(np.asarray(state.v)[1500:], 0)  # padding
  assert 0 < np.std(np.asarray(state.v)[:1500]) < 2e-8  # N(0, 1e-8²)
  rng = np.random.default_rng(0)
  u0, v0 = rng.uniform(-1, 1, (rows, 1)).astype(np.float32), rng.uniform(-1, 1, (rows, c)).astype(np.float32)
  sharded = parallel.example_sharded(mesh)
  state = state.replace(u=jax.device_put(u0, sharded), v=jax.device_put(v0, sharded))
  positions = rng.choice(1500, 32, replace=False)
  positions[5] = positions[20]  # a batch straddling two epochs can hold an example twice: updates add up
  host = {"index": positions.astype(np.int32), "position": positions.astype(np.int32),
          "label": data.train_labels[positions].astype(np.int32), "image": data.train_images[positions],
          "image_strong": data.train_images[positions][:, ::-1]}
  batch = parallel.to_global(mesh, host)

  jax.config.update("jax_disable_most_optimizations", False)  # check the HLO a real run executes
  try:
    compiled = learner.jitted_train_step(state).lower(state, batch, jax.random.key(1)).compile()
  finally:
    jax.config.update("jax_disable_most_optimizations", True)
  # The step moves B positions and B rows, never the (rows × C) table: no collective of table size.
  assert not [op for op in _collectives(compiled.as_text()) if f"[{rows}," in op]
  replicated_lookup = jax.jit(lambda t, p: jax.lax.with_sharding_constraint(t, parallel.replicated(mesh))[p])
  assert [op for op in _collectives(replicated_lookup.lower(state.v, batch["position"]).compile().as_text())
          if f"[{rows}," in op]  # the check does see a table-sized collective

  params = {"params": state.network.params, "batch_stats": state.network.batch_stats}
  both = np.stack([host["image"], host["image_strong"]], 1).reshape(64, *data.image_shape)
  (logits, _), _ = learner.model.apply(params, both, train=True, mutable=["batch_stats"])
  logits = np.asarray(logits, np.float64).reshape(32, 2, c)
  weak, strong = logits[:, 0], logits[:, 1]
  new, metrics, per_example = compiled(state, batch, jax.random.key(1))
  targets = np.eye(c)[host["label"]]
  f = functools.partial(_np_loss, weak, strong, targets, rc=0.9, rb=0.1)
  np.testing.assert_allclose(metrics["loss"], f(u=u0[positions].astype(np.float64), v=v0[positions]), rtol=1e-4)

  touched = np.unique(positions)
  u_new, v_new = np.asarray(new.u), np.asarray(new.v)
  untouched = np.setdiff1d(np.arange(rows), touched)
  np.testing.assert_array_equal(u_new[untouched], u0[untouched])
  np.testing.assert_array_equal(v_new[untouched], v0[untouched])
  u_rows, v_rows = u0[touched].astype(np.float64), v0[touched].astype(np.float64)
  where = np.searchsorted(touched, positions)  # table row → batch rows (the duplicate sees both)
  grad_u = _numeric_grad(lambda x: f(u=x[where], v=v_rows[where]), u_rows)
  grad_v = _numeric_grad(lambda x: f(u=u_rows[where], v=x[where], v_in_q=v_rows[where]), v_rows)
  np.testing.assert_allclose(u_new[touched], u_rows - 10.0 * grad_u, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(v_new[touched], v_rows - 100.0 * grad_v, rtol=1e-4, atol=1e-4)
  assert np.abs(grad_u[touched == positions[5]]).max() > 0
  assert new.u.sharding.spec == sharded.spec and new.network.step == 1
  np.testing.assert_array_equal(per_example["correct"], weak.argmax(-1) == host["label"])


def _train_two_steps(devices):
  data = digits.load()
  mesh = parallel.make_mesh(devices)
  config = _config()
  learner = _learner(config, mesh, data)
  subset = np.arange(3, 259)
  state = learner.init(jax.random.key(0), data.image_shape, len(subset))
  u_init = np.asarray(state.u)  # the step donates the state
  views = {name: augment.make_view(name, config.data, data.mean) for name in learner.views}
  batches = pipeline.train_stream(data.train_images, data.train_labels, subset, batch_size=32, seed=0,
                                  views=views, start_step=0, num_steps=2)
  state, metrics = learner.run_steps(learner.with_learning_rate(state, 0.05), batches, 2, jax.random.key(1), "t")
  logits = evaluate.predict_dataset(learner, state, data.test_images, np.arange(40), 16)["logits"]
  return jax.device_get(state), metrics, logits, u_init


def test_one_and_eight_devices_give_the_same_training():
  one, eight = _train_two_steps(jax.devices()[:1]), _train_two_steps(jax.devices())
  assert np.abs(one[0].u - one[3]).max() > 0  # u did train
  for a, b in zip(jax.tree.leaves(one[0]), jax.tree.leaves(eight[0])):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  for k in one[1]:
    np.testing.assert_allclose(one[1][k], eight[1][k], rtol=1e-5)
  np.testing.assert_allclose(one[2], eight[2], rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(one[3], eight[3])  # the initial u does not depend on the device count


def test_plain_sop_needs_only_the_weak_view_and_bad_values_are_rejected():
  data = digits.load()
  mesh = parallel.make_mesh()
  assert _learner(_config(), mesh, data).views == ("image", "image_strong")
  assert _learner(_config(ratio_consistency=0.0, ratio_balance=0.0), mesh, data).views == ("image",)
  with pytest.raises(UserError, match="learner.sop_plus.lr_v"):
    _learner(_config(lr_v=-1.0), mesh, data)


# ---- the strong view -------------------------------------------------------------------------------------------
def _rnd(seed=0, n=6):
  return augment.BatchRandom(np.random.default_rng(seed), slice(0, n), n)


def _random_images(shape, n=6, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


@pytest.mark.parametrize("shape", [(8, 8, 1), (32, 32, 3), (12, 10, 2)])
def test_pixel_operations_equal_numpy(shape):
  x = _random_images(shape)[0]
  op = functools.partial(autoaugment.apply_operation, x, negate=False)
  np.testing.assert_array_equal(op("Invert", 7), 255 - x)
  np.testing.assert_array_equal(op("Solarize", 2), np.where(x >= 256 - 51, 255 - x, x))  # threshold 205
  np.testing.assert_array_equal(op("Solarize", 0), x)
  np.testing.assert_array_equal(op("Posterize2", 7), x & 0b11000000)  # 4 - int(2.8) = 2 bits
  shifted = np.zeros_like(x)
  shifted[:, :-3] = x[:, 3:]  # PIL's affine maps output (i, j) to input (i, j + 3); outside is black
  np.testing.assert_array_equal(op("TranslateXAbs", 3), shifted)
  shifted = np.zeros_like(x)
  shifted[3:] = x[:-3]
  np.testing.assert_array_equal(autoaugment.apply_operation(x, "TranslateYAbs", 3, negate=True), shifted)
  for name in autoaugment.OPERATIONS:
    assert op(name, 9).shape == x.shape and op(name, 9).dtype == np.uint8


def test_autoaugment_applies_the_drawn_sub_policy():
  images = _random_images((8, 8, 3), n=64)
  out = autoaugment.autoaugment(images, _rnd(3, 64))
  rng = np.random.default_rng(3)
  choice = rng.integers(0, 25, 64)
  slots = [(rng.random(64), rng.random(64)) for _ in range(2)]
  for i in range(64):
    want = images[i]
    for (name, probability, level), (fire, sign) in zip(autoaugment.CIFAR10_POLICY[choice[i]], slots):
      if fire[i] <= probability:
        want = autoaugment.apply_operation(want, name, level, sign[i] > 0.5)
    np.testing.assert_array_equal(out[i], want)
  assert (out != images).any(axis=(1, 2, 3)).mean() > 0.3


def test_cutout_and_flip_equal_numpy():
  images = _random_images((10, 12, 2))
  fill = np.array([7, 9], np.uint8)
  out = augment.cutout(images, 6, fill, _rnd(5))
  rng = np.random.default_rng(5)
  cy, cx = rng.integers(0, 10, 6), rng.integers(0, 12, 6)
  for i in range(6):
    want = images[i].copy()
    want[max(cy[i] - 3, 0):min(cy[i] + 3, 10), max(cx[i] - 3, 0):min(cx[i] + 3, 12)] = fill
    np.testing.assert_array_equal(out[i], want)
  np.testing.assert_array_equal(augment.cutout(images, 0, fill, _rnd(5)), images)
  flipped = augment.random_flip(images, _rnd(6))
  flip = np.random.default_rng(6).random(6) < 0.5
  for i in range(6):
    np.testing.assert_array_equal(flipped[i], images[i, :, ::-1] if flip[i] else images[i])


def test_strong_view_is_autoaugment_crop_flip_cutout_and_deterministic():
  config = _config()
  config.data.flip, config.data.cutout = True, 16
  mean = (0.1, 0.5, 0.9)
  view = augment.make_view("image_strong", config.data, mean)
  images = _random_images((32, 32, 3), n=8)
  out = view(images, _rnd(11, 8))
  np.testing.assert_array_equal(out, view(images, _rnd(11, 8)))  # a pure function of the draws
  assert (out != view(images, _rnd(12, 8))).any()
  rnd = _rnd(11, 8)
  want = augment.random_flip(augment.random_crop(autoaugment.autoaugment(images, rnd), 1, rnd), rnd)
  np.testing.assert_array_equal(out, augment.cutout(want, 16, np.array([26, 128, 230], np.uint8), rnd))
  with pytest.raises(ValueError, match="mean"):
    augment.make_view("image_strong", config.data)
  config.data.image_size = 24  # the 256-px datasets' 224 crop: both views crop alike, so they stack in one pass
  shapes = {augment.make_view(name, config.data, mean)(images, _rnd(1, 8)).shape for name in ("image", "image_strong")}
  assert shapes == {(8, 24, 24, 3)}


# ---- end to end -------------------------------------------------------------------------------------------------
def test_pipeline_with_sop_plus_warm_up_and_strong_scoring(tmp_path):
  config = _config()
  config.data.noise_rate = 0.4
  config.batch_size = 128
  config.epochs = 2
  config.selection.name = "prune4rel"
  config.selection.fraction = 0.5
  config.selection.warmup_epochs = 1
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["learner"] == "sop_plus" and summary["subset_size"] == 750
  assert 0.0 <= summary["test_accuracy"] <= 1.0
