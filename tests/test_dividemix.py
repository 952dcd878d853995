"""DivideMix: the MixMatch pieces against NumPy, the GMM on planted splits, the labelled/unlabelled stream, one
co-training step on one vs eight devices, and the quickstart pipeline end to end (with a checkpoint restore)."""

import json
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from sklearn.mixture import GaussianMixture

from prune4rel_jax import checkpoint, parallel, train
from prune4rel_jax.config import default_config
from prune4rel_jax.data import digits, pipeline
from prune4rel_jax.data.augment import make_view
from prune4rel_jax.errors import UserError
from prune4rel_jax.learners import LEARNERS, ce, dividemix
from prune4rel_jax.models import create_model
from test_end_to_end import quickstart_config

pytestmark = pytest.mark.usefixtures("fast_compilation")


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_co_targets_mixup_and_losses_match_numpy():
  rng = np.random.default_rng(0)
  b, c = 3, 4
  net_x1, net_x2, net_u1, net_u2, peer_u1, peer_u2 = (_softmax(rng.normal(size=(b, c))) for _ in range(6))
  labels, weights = np.array([0, 2, 3]), np.array([0.9, 0.2, 0.6])

  def squared(p):  # sharpening at T = 0.5
    return p**2 / (p**2).sum(-1, keepdims=True)

  want_x = squared(weights[:, None] * np.eye(c)[labels] + (1 - weights[:, None]) * (net_x1 + net_x2) / 2)
  want_u = squared((net_u1 + net_u2 + peer_u1 + peer_u2) / 4)
  got_x, got_u = dividemix.co_targets((net_x1, net_x2), (net_u1, net_u2), (peer_u1, peer_u2), labels, weights, 0.5)
  np.testing.assert_allclose(got_x, want_x, rtol=1e-6)
  np.testing.assert_allclose(got_u, want_u, rtol=1e-6)
  p = net_x1
  np.testing.assert_allclose(dividemix.sharpen(p, 0.25), p**4 / (p**4).sum(-1, keepdims=True), rtol=1e-6)

  inputs = rng.normal(size=(4 * b, 2, 2, 1)).astype(np.float32)
  targets = np.concatenate([want_x, want_x, want_u, want_u]).astype(np.float32)
  perm = rng.permutation(4 * b)
  for lam in (0.3, 0.7):  # λ' = max(λ, 1 − λ) = 0.7 either way
    mixed_inputs, mixed_targets = dividemix.mixup(inputs, targets, np.float32(lam), perm)
    np.testing.assert_allclose(mixed_inputs, 0.7 * inputs + 0.3 * inputs[perm], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mixed_targets, 0.7 * targets + 0.3 * targets[perm], rtol=1e-6, atol=1e-7)

  logits = rng.normal(size=(4 * b, c)).astype(np.float32)
  log_probs = np.log(_softmax(logits.astype(np.float64)))
  probs = np.exp(log_probs)
  want = (-np.mean(np.sum(mixed_targets[:2 * b] * log_probs[:2 * b], axis=1)),
          np.mean((probs[2 * b:] - mixed_targets[2 * b:]) ** 2),
          np.sum(0.25 * np.log(0.25 / probs.mean(0))))
  np.testing.assert_allclose(dividemix.mixmatch_losses(logits, mixed_targets, 2 * b), want, rtol=1e-5)
  # "partners": only the first 2B mixed rows are forwarded; no L_u, the prior term over those rows
  partners = dividemix.mixmatch_losses(logits[:2 * b], mixed_targets[:2 * b], 2 * b)
  np.testing.assert_allclose(partners, (want[0], 0.0, np.sum(0.25 * np.log(0.25 / probs[:2 * b].mean(0)))),
                             rtol=1e-5)


def test_warm_up_loss_is_ce_plus_the_confidence_penalty():
  """The warm-up step (CE's, with `penalty` for asymmetric noise) minimises mean CE + mean Σ p log p."""
  config = default_config()
  config.model.name, config.model.small_cnn.width = "small_cnn", 4
  model = create_model(config.model, 10, (0.5,), (0.25,))
  learner = LEARNERS.get("ce")(config, model, 10, parallel.make_mesh(jax.devices()[:1]))
  state = learner.init(jax.random.key(0), (8, 8, 1), 6)
  rng = np.random.default_rng(0)
  batch = {"image": rng.random((6, 8, 8, 1), np.float32), "label": rng.integers(0, 10, 6), "index": np.arange(6)}
  (logits, _), _ = model.apply({"params": state.params, "batch_stats": state.batch_stats}, batch["image"],
                               train=True, mutable=["batch_stats"])
  log_probs = np.log(_softmax(np.asarray(logits, np.float64)))
  cross_entropy = -log_probs[np.arange(6), batch["label"]].mean()
  penalty = (np.exp(log_probs) * log_probs).sum(-1).mean()
  for with_penalty, want in ((False, cross_entropy), (True, cross_entropy + penalty)):
    _, metrics, _ = ce.train_step(state, batch, None, model=model, tx=learner.tx, penalty=with_penalty)
    np.testing.assert_allclose(metrics["loss"], want, rtol=1e-5)


def _planted_losses(n=3000, seed=0):
  """Min-max normalised losses: 60 % clean examples around 0.1, 40 % noisy ones around 0.6."""
  rng = np.random.default_rng(seed)
  clean = rng.random(n) < 0.6
  x = np.where(clean, rng.normal(0.1, 0.05, n), rng.normal(0.6, 0.15, n)).clip(0, None)
  return (x - x.min()) / (x.max() - x.min()), clean


GMM = dict(reg_covar=5e-4, max_iter=10, tol=1e-2)  # the original's GaussianMixture settings


def test_clean_probability_recovers_a_planted_split():
  x, clean = _planted_losses()
  assert ((dividemix.clean_probability(x, **GMM, seed=3) > 0.5) == clean).mean() > 0.98
  rng = np.random.default_rng(1)  # well separated: every posterior is confident
  low, high = rng.normal(0.1, 0.02, 300), rng.normal(0.8, 0.02, 200)
  prob = dividemix.clean_probability(np.concatenate([low, high]), **GMM, seed=0)
  assert prob[:300].min() > 0.9 and prob[300:].max() < 0.1


def test_clean_probability_reads_the_lower_mean_component_whatever_sklearns_order():
  x, clean = _planted_losses()
  first_is_lower = []
  for seed in range(10):
    fit = GaussianMixture(n_components=2, random_state=seed, **GMM).fit(x[:, None])
    first_is_lower.append(fit.means_[0, 0] < fit.means_[1, 0])
    prob = dividemix.clean_probability(x, **GMM, seed=seed)
    assert prob[clean].mean() > 0.9 and prob[~clean].mean() < 0.1
  assert any(first_is_lower) and not all(first_is_lower)  # the seeds cover both orders


def test_clean_probability_is_seeded_float64_and_quiet():
  # Three even clusters: the k-means seeding decides which two of them the mixture merges.
  rng = np.random.default_rng(0)
  x = np.concatenate([rng.normal(c, 0.02, 200) for c in (0.1, 0.5, 0.9)]).astype(np.float32)
  middle_is_clean = set()
  for seed in range(10):
    prob = dividemix.clean_probability(x, **GMM, seed=seed)
    assert prob.dtype == np.float64 and np.array_equal(prob, dividemix.clean_probability(x, **GMM, seed=seed))
    middle_is_clean.add(bool(prob[200:400].mean() > 0.5))
  assert middle_is_clean == {False, True}
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # one EM iteration does not converge: sklearn's warning must stay inside
    dividemix.clean_probability(x, reg_covar=5e-4, max_iter=1, tol=0.0, seed=0)


def _views(padding):
  cfg = default_config().data
  cfg.crop_padding, cfg.flip = padding, False
  return {name: make_view(name, cfg) for name in dividemix.DivideMix.views}


def _stream(labelled, unlabelled, seed, batch_size=4):
  images = (np.arange(60 * 16).reshape(60, 4, 4, 1) * 7 % 251).astype(np.uint8)
  labels = np.arange(60) % 10
  indices = np.random.default_rng(0).permutation(60)[:40]
  stream, steps = pipeline.co_divided_stream(images, labels, indices, np.asarray(labelled), np.asarray(unlabelled),
                                             batch_size=batch_size, seed=seed, views=_views(1))
  return list(stream), steps, images, labels, indices


def _crops(image):
  """The 9 crops a 1-pixel shift can produce from `image`."""
  padded = np.pad(image, ((1, 1), (1, 1), (0, 0)))
  return [padded[i:i + 4, j:j + 4] for i in range(3) for j in range(3)]


def test_labelled_unlabelled_stream_steps_cycling_and_determinism():
  labelled, unlabelled = np.arange(0, 20, 2), np.array([1, 5, 9, 13, 17])
  batches, steps, images, labels, indices = _stream(labelled, unlabelled, seed=7)
  assert steps == len(batches) == 3  # ⌈10 / 4⌉ labelled batches
  seen = np.concatenate([b["position"] for b in batches])
  assert sorted(seen[:10]) == list(labelled) and set(seen[10:]) <= set(labelled)  # completed from a reshuffle
  cycled = np.concatenate([b["u_position"] for b in batches])  # 12 rows from a set of 5: 2 passes and a part
  assert sorted(cycled[:5]) == sorted(cycled[5:10]) == list(unlabelled) and set(cycled[10:]) <= set(unlabelled)
  assert list(cycled[:5]) != list(cycled[5:10])  # reshuffled per pass
  for b in batches:
    assert "u_label" not in b
    for prefix in ("", "u_"):
      np.testing.assert_array_equal(b[prefix + "index"], indices[b[prefix + "position"]])
      for row, index in enumerate(b[prefix + "index"]):
        for view in ("image", "image2"):
          assert any(np.array_equal(b[prefix + view][row], crop) for crop in _crops(images[index]))
    np.testing.assert_array_equal(b["label"], labels[b["index"]])
  assert any(not np.array_equal(b["image"], b["image2"]) for b in batches)  # independent views

  again, _, _, _, _ = _stream(labelled, unlabelled, seed=7)
  for a, b in zip(batches, again):
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  other, _, _, _, _ = _stream(labelled, unlabelled, seed=8)
  assert not all(np.array_equal(a["position"], b["position"]) for a, b in zip(batches, other))
  assert _stream([], unlabelled, seed=7)[1] == 0


def _config():
  c = default_config()
  c.model.name = "small_cnn"
  c.model.small_cnn.width = 8
  c.data.crop_padding, c.data.flip = 1, False
  c.batch_size, c.eval_batch_size = 32, 16
  c.learner.name = "dividemix"
  c.learner.dividemix.warmup_epochs = 0
  return c


def _one_co_training_step(devices):
  config, data = _config(), digits.load()
  mesh = parallel.make_mesh(devices)
  model = create_model(config.model, data.num_classes, data.mean, data.std)
  learner = LEARNERS.get("dividemix")(config, model, data.num_classes, mesh)
  indices = np.arange(40)
  epoch = pipeline.EpochData(data.train_images, data.train_labels, indices, config.batch_size, 0, 0,
                             _views(1), "test")
  state = learner.init(jax.random.key(0), data.image_shape, len(indices))
  losses = learner._eval_losses(state, epoch)
  planted = np.stack([_planted_losses(len(indices), seed)[0] for seed in (1, 2)]).astype(np.float32)
  state, probs = learner._divide(state, planted, epoch)
  clean = probs[1] > 0.5
  stream, _ = pipeline.co_divided_stream(data.train_images, data.train_labels, indices, np.flatnonzero(clean),
                                         np.flatnonzero(~clean), batch_size=16, seed=0, views=epoch.views)
  batch = next(stream)
  batch = parallel.to_global(mesh, {**batch, "lambda_u": np.full(16, 25.0, np.float32)})
  state, metrics, _ = learner.jitted_train_step(state)(state, batch, jax.random.key(1))
  return losses, jax.device_get(state), jax.device_get(metrics)


def test_one_and_eight_devices_give_the_same_co_training_step():
  one, eight = _one_co_training_step(jax.devices()[:1]), _one_co_training_step(jax.devices())
  np.testing.assert_allclose(one[0], eight[0], rtol=1e-5, atol=1e-6)
  assert jax.tree.structure(one[1]) == jax.tree.structure(eight[1])
  for a, b in zip(jax.tree.leaves(one[1]), jax.tree.leaves(eight[1])):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  for k in one[2]:
    np.testing.assert_allclose(one[2][k], eight[2][k], rtol=1e-5, atol=1e-7)
  assert (one[1].nets[0].train.step, one[1].nets[1].train.step) == (1, 0)  # net1 trained, its peer untouched


@pytest.mark.parametrize("field, value", [("p_threshold", 1.0), ("loss_history", 0), ("mix_unlabelled", "some"),
                                          ("confidence_penalty", "maybe"), ("temperature", 0.0)])
def test_bad_hyperparameters_name_the_field(field, value):
  config = _config()
  config.learner.dividemix[field] = value
  with pytest.raises(UserError, match=f"learner.dividemix.{field}"):
    LEARNERS.get("dividemix")(config, None, 10, parallel.make_mesh())


def _quickstart_config(epochs: int):
  """The quickstart with DivideMix, shortened: one warm-up epoch, then SmallLoss scores the warmed-up DivideMix."""
  config = quickstart_config()
  config.model.small_cnn.width = 8
  config.epochs = epochs
  config.selection.name, config.selection.warmup_epochs = "small_loss", 1
  config.learner.name = "dividemix"
  return config


def test_quickstart_with_dividemix_warms_up_divides_and_restores(tmp_path):
  config = _quickstart_config(epochs=2)
  config.learner.dividemix.warmup_epochs = 1
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert 0.0 <= summary["test_accuracy"] <= 1.0

  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(r["phase"], r["epoch"]) for r in records] == [("warmup", 0), ("train", 0), ("train", 1)]
  assert all(np.isfinite(r["loss"]) for r in records)
  assert "labelled_net1" not in records[1] and 0 < records[2]["labelled_net1"] < 1
  assert 0 < records[2]["lambda_u"] < config.learner.dividemix.lambda_u  # ramping up

  data = digits.load()
  mesh = parallel.make_mesh()
  model = create_model(config.model, data.num_classes, data.mean, data.std)
  learner = LEARNERS.get("dividemix")(config, model, data.num_classes, mesh)
  with checkpoint.Checkpoints(str(tmp_path), config.checkpoint) as checkpoints:
    snapshot = checkpoints.restore_latest(lambda n: learner.init(jax.random.key(0), data.image_shape, n))
  assert snapshot.epoch == 2 and isinstance(snapshot.state, dividemix.DivideMixState)
  prob = snapshot.state.nets[1].clean_prob
  assert prob.sharding.spec == parallel.example_sharded(mesh).spec
  n = summary["subset_size"]
  assert np.mean(np.asarray(prob)[:n] > 0.5) == pytest.approx(records[2]["labelled_net1"])  # net1 trained on it


# Every DivideMix hyperparameter its selection warm-up does not read, each changed to another valid value.
UNREAD_BY_THE_WARMUP = dict(warmup_epochs=3, p_threshold=0.7, temperature=0.8, alpha=0.5, lambda_u=5.0,
                            rampup_epochs=4, gmm_reg_covar=1e-3, gmm_max_iter=5, gmm_tol=1e-3,
                            mix_unlabelled="partners")


def test_runs_that_differ_in_hyperparameters_the_warmup_does_not_read_share_one_warmup(tmp_path):
  """`DivideMix.warmup_hyperparameters` is complete: with every other field changed, the warm-up network is
  bit-identical, and the shared warm-up cache files both under one identity."""
  learner = dividemix.DivideMix
  assert set(UNREAD_BY_THE_WARMUP) == set(learner.defaults()) - set(learner.warmup_hyperparameters)
  config = _quickstart_config(epochs=0)  # the warm-up and the selection only
  changed = config.copy_and_resolve_references()
  changed.learner.dividemix.update(UNREAD_BY_THE_WARMUP)

  entries = []
  for name, c in (("defaults", config), ("changed", changed)):
    train.train_and_evaluate(c, str(tmp_path / name), warmup_cache=str(tmp_path / f"{name}_cache"))
    (entry,) = (tmp_path / f"{name}_cache").iterdir()
    entries.append(entry)
  assert entries[0].name == entries[1].name
  with ocp.StandardCheckpointer() as checkpointer:
    networks = [checkpointer.restore(entry / "run0") for entry in entries]
  assert jax.tree.structure(networks[0]) == jax.tree.structure(networks[1])
  for a, b in zip(jax.tree.leaves(networks[0]), jax.tree.leaves(networks[1])):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(np.load(tmp_path / "defaults" / "selected_indices.npy"),
                                np.load(tmp_path / "changed" / "selected_indices.npy"))
