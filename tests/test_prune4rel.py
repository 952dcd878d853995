"""Prune4ReL: the jitted, blocked, batched greedy against a plain sequential NumPy loop (the original's algorithm,
one pick at a time, N×N similarities in float64): same subset, same order, on 1 and 8 devices, both gains, both
metrics, with and without balance; the balance schedule and confidences on hand-made cases; option validation;
the quickstart pipeline with Prune4ReL."""

import jax
import ml_collections
import numpy as np
import pytest

from prune4rel_jax import parallel, train
from prune4rel_jax.errors import UserError
from prune4rel_jax.selection import METHODS, SelectionInputs, prune4rel
from prune4rel_jax.selection.similarity import unit_rows
from test_end_to_end import quickstart_config

MESHES = {1: parallel.make_mesh(jax.devices()[:1]), 8: parallel.make_mesh()}


def reference_greedy(embeddings, conf, labels, num_classes, budget, metric="cossim", tau=0.95, eta=100.0,
                     gain="original", balance=False):
  """The original's loop, step by step: gains, masked argmax (round-robin class under balance), NC update."""
  e = np.asarray(embeddings, np.float64)
  conf = np.asarray(conf, np.float64)
  if metric == "cossim":
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    s = 0.5 + 0.5 * u @ u.T
    w = s * (s > tau)
  else:
    dist = np.sqrt(((e[:, None, :] - e[None, :, :]) ** 2).sum(-1))
    w = np.clip(1 / (dist + 0.1) - 0.1, 0, 10)
  n = len(conf)
  nc, taken, order = np.zeros(n), np.zeros(n, bool), []
  remaining = np.bincount(labels, minlength=num_classes)
  initial, available, floor, broken = remaining.copy(), list(range(num_classes)), 0, False
  for t in range(budget):
    if gain == "original":
      g = np.tanh((nc + conf) / eta) - np.tanh(nc / eta)
    else:
      g = (np.tanh((nc[:, None] + w * conf[None, :]) / eta) - np.tanh(nc / eta)[:, None]).sum(0)
    g[taken] = -np.inf
    if balance and not broken:
      c = available[t % len(available)]
      while remaining[c] == 0:
        if len(available) == num_classes:
          floor = initial[c]
        available = [a for a in available if a != c]
        c = available[t % len(available)]
        if initial[c] - remaining[c] > 1.5 * floor:
          broken = True
      members = np.flatnonzero(labels == c)
      p = members[np.argmax(g[members])]
      remaining[c] -= 1
    else:
      p = int(np.argmax(g))
    taken[p] = True
    order.append(p)
    nc += w[:, p] * conf[p]
  return np.asarray(order)


def _data(kind, n=160, d=12, classes=4, seed=0):
  """Random Gaussian embeddings, or tight clusters (many τ-neighbours, so rounds conflict often)."""
  rng = np.random.default_rng(seed)
  if kind == "random":
    embeddings = rng.normal(size=(n, d))
  else:
    centres = rng.normal(size=(8, d))
    embeddings = centres[rng.integers(0, 8, n)] + 0.35 * rng.normal(size=(n, d))
  labels = rng.integers(0, classes, n)
  return embeddings.astype(np.float32), rng.uniform(0.2, 1.0, n).astype(np.float32), labels


def _jitted(embeddings, conf, labels, classes, budget, mesh, metric="cossim", tau=0.95, eta=100.0, gain="original",
            balance=False, block_size=8, max_proposals=64):
  schedule = prune4rel.class_schedule(labels, classes, budget) if balance else np.full(budget, -1)
  points = unit_rows(embeddings) if metric == "cossim" else embeddings
  return prune4rel.greedy_select(mesh, points, conf, schedule, labels, budget, metric=metric, gain=gain, tau=tau,
                                 eta=eta, block_size=block_size, max_proposals=max_proposals)


@pytest.mark.parametrize("devices", [1, 8])
@pytest.mark.parametrize("gain", ["original", "exact"])
@pytest.mark.parametrize("kind,tau", [("random", 0.75), ("clustered", 0.95)])
@pytest.mark.parametrize("balance", [False, True])
def test_batched_greedy_equals_the_sequential_reference(devices, gain, kind, tau, balance):
  embeddings, conf, labels = _data(kind)
  budget = 70
  expected = reference_greedy(embeddings, conf, labels, 4, budget, tau=tau, eta=2.0, gain=gain, balance=balance)
  order, counts = _jitted(embeddings, conf, labels, 4, budget, MESHES[devices], tau=tau, eta=2.0, gain=gain,
                          balance=balance)
  np.testing.assert_array_equal(order, expected)
  assert 1 < counts["rounds"] < budget  # several picks per round, and some rounds cut short by a dependency


@pytest.mark.parametrize("devices", [1, 8])
def test_euclidean_metric_equals_the_reference(devices):
  embeddings, conf, labels = _data("clustered", seed=1)
  embeddings *= 3.0  # distances around the 9.9 cut-off of 1/(dist + 0.1) − 0.1, so some pairs are independent
  expected = reference_greedy(embeddings, conf, labels, 4, 40, metric="euclidean", eta=1.0)
  order, _ = _jitted(embeddings, conf, labels, 4, 40, MESHES[devices], metric="euclidean", eta=1.0)
  np.testing.assert_array_equal(order, expected)


@pytest.mark.parametrize("max_proposals", [1, 64])
def test_whole_pool_exhausting_classes_then_unconstrained(max_proposals):
  """Classes run out and the schedule turns free (class_schedule's fallback) inside a round's window."""
  embeddings, conf, _ = _data("clustered", n=40, seed=2)
  labels = np.random.default_rng(3).permutation(np.repeat([0, 1, 2, 3], [2, 6, 12, 20]))
  schedule = prune4rel.class_schedule(labels, 4, 40)
  assert schedule[0] >= 0 and schedule[-1] == -1
  expected = reference_greedy(embeddings, conf, labels, 4, 40, eta=1.0, balance=True)
  order, counts = _jitted(embeddings, conf, labels, 4, 40, MESHES[8], eta=1.0, balance=True, block_size=4096,
                          max_proposals=max_proposals)
  np.testing.assert_array_equal(order, expected)
  if max_proposals == 1:
    assert counts == {"rounds": 40, "proposals": 40}


def test_class_schedule_follows_the_original_round_robin_and_fallback():
  labels = np.repeat([0, 1, 2], [1, 2, 6])
  # t=3: class 0 is exhausted (first, with 1 example) -> rotation [1, 2], 3 mod 2 -> class 2.
  # t=6: class 1 is exhausted -> rotation [2]; class 2 already has 3 picks > 1.5 · 1 -> global from t=7 on.
  assert prune4rel.class_schedule(labels, 3, 9).tolist() == [0, 1, 2, 2, 1, 2, 2, -1, -1]
  assert prune4rel.class_schedule(np.repeat([0, 1], [5, 5]), 2, 6).tolist() == [0, 1, 0, 1, 0, 1]


def test_confidences():
  probs = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]], np.float32)
  np.testing.assert_allclose(prune4rel.confidence(probs, "LeastConfidence"), [0.7, 1 / 3, 1.0], rtol=1e-6)
  np.testing.assert_allclose(prune4rel.confidence(probs, "Margin"), [0.5, 0.0, 1.0], atol=1e-6)
  entropy_conf = prune4rel.confidence(probs, "Entropy")
  assert entropy_conf[1] == pytest.approx(0.0, abs=1e-6)          # uniform: least confident
  assert entropy_conf[2] == pytest.approx(np.log(3), abs=1e-4)     # one-hot: most confident (sign fixed)
  assert entropy_conf[1] < entropy_conf[0] < entropy_conf[2]


def _method(balance=False, **options):
  cfg = ml_collections.ConfigDict({"balance": balance,
                                   "prune4rel": {**prune4rel.Prune4ReL.defaults(), **options}})
  return METHODS.get("prune4rel")(cfg, MESHES[8], 0)


def test_method_scores_softmax_confidence_and_unit_features():
  embeddings, _, labels = _data("clustered", seed=3)
  logits = np.random.default_rng(3).normal(size=(len(labels), 4)).astype(np.float32) * 2
  inputs = SelectionInputs(labels=labels, num_classes=4, logits=logits, features=embeddings)
  picked = _method(balance=True, eta=1.0, block_size=16).select(inputs, 30)
  conf = prune4rel.confidence(inputs.probs, "LeastConfidence")
  np.testing.assert_array_equal(picked, reference_greedy(embeddings, conf, labels, 4, 30, eta=1.0, balance=True))
  assert _method(view="test").view == "test" and _method().view == "image_strong"


@pytest.mark.parametrize("field,value", [("metric", "cosine"), ("uncertainty", "entropy"), ("gain", "lazy"),
                                         ("eta", 0.0), ("block_size", 0)])
def test_bad_options_are_user_errors(field, value):
  with pytest.raises(UserError, match=f"selection.prune4rel.{field}"):
    _method(**{field: value})


def test_quickstart_runs_end_to_end_with_prune4rel(tmp_path):
  config = quickstart_config()
  config.epochs, config.selection.warmup_epochs, config.model.small_cnn.width = 1, 1, 8
  config.selection.name, config.selection.balance = "prune4rel", True
  config.selection.prune4rel.view = "test"
  summary = train.train_and_evaluate(config, str(tmp_path))
  selected = np.load(tmp_path / "selected_indices.npy")
  assert summary["selection"] == "prune4rel" and len(np.unique(selected)) == summary["subset_size"] == 750
