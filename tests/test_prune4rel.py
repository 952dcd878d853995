"""Prune4ReL: the jitted, blocked, batched greedy against a plain sequential NumPy loop (the original's algorithm,
one pick at a time, N×N similarities in float64): same subset, same order, on 1 and 8 devices, both gains, both
metrics, with and without balance; the balance schedule and confidences on hand-made cases; option validation;
the quickstart pipeline with Prune4ReL."""

import functools

import jax
import ml_collections
import numpy as np
import pytest

from prune4rel_jax import parallel, select_subset, train
from prune4rel_jax.errors import UserError
from prune4rel_jax.selection import METHODS, SelectionInputs, prune4rel
from prune4rel_jax.selection.similarity import unit_rows
from test_end_to_end import quickstart_config

pytestmark = pytest.mark.usefixtures("fast_compilation")

MESHES = {1: parallel.make_mesh(jax.devices()[:1]), 8: parallel.make_mesh()}


def reference_greedy(embeddings, conf, labels, num_classes, budget, metric="cossim", tau=0.95, eta=100.0,
                     gain="original", balance=False, tie_break="index", details=False, dtype=np.float64):
  """The original's loop, step by step: gains, masked argmax (round-robin class under balance), NC update.
  `tie_break="gain"` ranks by the log of the gain computed as sinh(Δ)/(cosh(a)·cosh(a + Δ)) (no cancellation). With
  `details`, also each step's gain and runner-up (the best other candidate of the step) by the plain difference.
  `dtype=np.float32` keeps NC and the plain gains in float32, as the original (where they round to 0 at NC/η ≈ 9,
  against 19 in float64)."""
  e = np.asarray(embeddings, np.float64)
  conf = np.asarray(conf, dtype)
  if metric == "cossim":
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    s = 0.5 + 0.5 * u @ u.T
    w = s * (s > tau)
  else:
    dist = np.sqrt(((e[:, None, :] - e[None, :, :]) ** 2).sum(-1))
    w = np.clip(1 / (dist + 0.1) - 0.1, 0, 10)
  w = w.astype(dtype)
  n = len(conf)
  nc, taken, order, gains, runner_up = np.zeros(n, dtype), np.zeros(n, bool), [], [], []
  remaining = np.bincount(labels, minlength=num_classes)
  initial, available, floor, broken = remaining.copy(), list(range(num_classes)), 0, False

  def difference(low, step, stable):
    if stable:  # log(sinh(Δ) / (cosh(a)·cosh(a + Δ))), log cosh x = logaddexp(x, −x) − log 2
      with np.errstate(divide="ignore"):
        return (np.log(np.sinh(step)) - np.logaddexp(low, -low) - np.logaddexp(low + step, -low - step)
                + 2 * np.log(2))
    return np.tanh(low + step) - np.tanh(low)

  for t in range(budget):
    if gain == "original":
      g, key = (difference(nc / eta, conf / eta, stable) for stable in (False, tie_break == "gain"))
    else:
      g = difference(nc[:, None] / eta, w * conf[None, :] / eta, False).sum(0)
      key = g if tie_break == "index" else np.exp(difference(nc[:, None] / eta, w * conf[None, :] / eta, True)).sum(0)
    g[taken], key[taken] = -np.inf, -np.inf
    members = np.arange(n)
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
      remaining[c] -= 1
    p = members[np.argmax(key[members])]
    others = members[(members != p) & ~taken[members]]
    gains.append(g[p])
    runner_up.append(g[others[np.argmax(key[others])]] if len(others) else -np.inf)
    taken[p] = True
    order.append(p)
    nc += w[:, p] * conf[p]
  if details:
    return np.asarray(order), np.asarray(gains), np.asarray(runner_up)
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
            balance=False, block_size=8, max_proposals=64, tie_break="index"):
  schedule = prune4rel.class_schedule(labels, classes, budget) if balance else np.full(budget, -1)
  points = unit_rows(embeddings) if metric == "cossim" else embeddings
  return prune4rel.greedy_select(mesh, points, conf, schedule, labels, budget, metric=metric, gain=gain, tau=tau,
                                 eta=eta, block_size=block_size, max_proposals=max_proposals, tie_break=tie_break)


@pytest.mark.parametrize("devices", [1, 8])
@pytest.mark.parametrize("gain", ["original", "exact"])
@pytest.mark.parametrize("kind,tau", [("random", 0.75), ("clustered", 0.95)])
@pytest.mark.parametrize("balance", [False, True])
def test_batched_greedy_equals_the_sequential_reference(devices, gain, kind, tau, balance):
  embeddings, conf, labels = _data(kind)
  budget = 70
  expected = reference_greedy(embeddings, conf, labels, 4, budget, tau=tau, eta=2.0, gain=gain, balance=balance)
  result = _jitted(embeddings, conf, labels, 4, budget, MESHES[devices], tau=tau, eta=2.0, gain=gain,
                   balance=balance)
  np.testing.assert_array_equal(result.order, expected)
  assert 1 < result.rounds < budget  # several picks per round, and some rounds cut short by a dependency


@pytest.mark.parametrize("devices", [1, 8])
def test_euclidean_metric_equals_the_reference(devices):
  embeddings, conf, labels = _data("clustered", seed=1)
  embeddings *= 3.0  # distances around the 9.9 cut-off of 1/(dist + 0.1) − 0.1, so some pairs are independent
  expected = reference_greedy(embeddings, conf, labels, 4, 40, metric="euclidean", eta=1.0)
  result = _jitted(embeddings, conf, labels, 4, 40, MESHES[devices], metric="euclidean", eta=1.0)
  np.testing.assert_array_equal(result.order, expected)


@pytest.mark.parametrize("max_proposals", [1, 64])
def test_whole_pool_exhausting_classes_then_unconstrained(max_proposals):
  """Classes run out and the schedule turns free (class_schedule's fallback) inside a round's window."""
  embeddings, conf, _ = _data("clustered", n=40, seed=2)
  labels = np.random.default_rng(3).permutation(np.repeat([0, 1, 2, 3], [2, 6, 12, 20]))
  schedule = prune4rel.class_schedule(labels, 4, 40)
  assert schedule[0] >= 0 and schedule[-1] == -1
  expected = reference_greedy(embeddings, conf, labels, 4, 40, eta=1.0, balance=True)
  result = _jitted(embeddings, conf, labels, 4, 40, MESHES[8], eta=1.0, balance=True, block_size=4096,
                   max_proposals=max_proposals)
  np.testing.assert_array_equal(result.order, expected)
  if max_proposals == 1:
    assert (result.rounds, result.proposals) == (40, 40)


@pytest.mark.parametrize("devices", [1, 8])
def test_class_rounds_rank_deeper_once_classes_run_out(devices):
  """12 classes, 7 of them small: while all remain a class round ranks each class 2·⌈width/12⌉ + 1 deep
  (`class_depth`); once the small ones are exhausted, 5 classes share a window of 64 steps, which needs more (the
  rounds ranking to the full width: with depth 2 there, 32 picks differ). Picks and gains stay the reference's,
  runner-ups bound its (they are measured at the round's start)."""
  embeddings, conf, _ = _data("random", n=256, seed=4)
  labels = np.random.default_rng(5).permutation(np.repeat(np.arange(12), [8] * 7 + [40] * 5))
  schedule = prune4rel.class_schedule(labels, 12, 220)
  assert np.all(schedule >= 0) and len(np.unique(schedule[-64:])) == 5
  assert np.bincount(schedule[-64:]).max() + 1 > prune4rel.class_depth(64, 12)
  order, gains, runner_up = reference_greedy(embeddings, conf, labels, 12, 220, tau=0.95, eta=2.0, balance=True,
                                             details=True)
  result = _jitted(embeddings, conf, labels, 12, 220, MESHES[devices], tau=0.95, eta=2.0, balance=True)
  np.testing.assert_array_equal(result.order, order)
  np.testing.assert_allclose(result.gains, gains, atol=1e-5)
  assert np.all(result.runner_up >= runner_up - 1e-5)


def test_class_rows_group_each_devices_examples_by_class_in_index_order():
  labels = np.array([1, 0, 1, 1, -1, 0, 0, 2, 0, 0])  # two devices of 5 rows; −1: padding
  members, row_class = prune4rel.class_rows(labels, 2, 2)
  np.testing.assert_array_equal(members, [[1, 5], [0, 2], [3, 5], [0, 1], [3, 4], [2, 5]])
  np.testing.assert_array_equal(row_class, [0, 1, 1, 0, 0, 2])
  members, row_class = prune4rel.class_rows(np.array([0, 0, 0, 1, -1, -1]), 2, 2)  # device 1 needs fewer rows
  np.testing.assert_array_equal(members, [[0, 1], [2, 3], [0, 3], [3, 3]])
  np.testing.assert_array_equal(row_class, [0, 0, 1, np.iinfo(np.int32).max])


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


def test_quickstart_runs_end_to_end_with_prune4rel_and_tau_auto(tmp_path):
  """The run reports its diagnostics (summary.json, selection.png); `prune4rel-select` re-selects from the run's
  checkpoint and reproduces its subset at the τ that tau=auto chose."""
  config = quickstart_config()
  config.epochs, config.selection.warmup_epochs, config.model.small_cnn.width = 1, 1, 8
  config.selection.name, config.selection.balance = "prune4rel", True
  config.selection.prune4rel.update(view="test", tau="auto")
  summary = train.train_and_evaluate(config, str(tmp_path))
  selected = np.load(tmp_path / "selected_indices.npy")
  assert summary["selection"] == "prune4rel" and len(np.unique(selected)) == summary["subset_size"] == 750
  diagnostics = summary["selection_diagnostics"]
  assert diagnostics["tau_rule"] == "auto" and 0.5 < diagnostics["tau"] < 1 and diagnostics["picks"] == 750
  assert diagnostics["neighbours_same_clean_share"] is not None and (tmp_path / "selection.png").exists()

  selection, seed, inputs, clean = select_subset.from_run(str(tmp_path))
  options = {"fraction": selection.fraction, "balance": selection.balance, "prune4rel": selection.prune4rel}
  (again,) = select_subset.select(options, seed, inputs, clean, [diagnostics["tau"]], str(tmp_path / "tuned"))
  np.testing.assert_array_equal(np.load(tmp_path / "tuned" / f"tau={diagnostics['tau']}.npy"), selected)
  assert {k: again[k] for k in diagnostics if k != "tau_rule"} == \
      {k: v for k, v in diagnostics.items() if k != "tau_rule"}


def _separated(n=120, d=16, clusters=6, seed=0):
  """Tight clusters around orthogonal centres (s ≈ 0.99 within, 0.5 across), confidences spaced 0.004 apart: with
  eta 0.2 a cluster saturates in float32 after two or three picks, while untouched examples' gains stay distinct."""
  rng = np.random.default_rng(seed)
  embeddings = np.eye(d)[rng.integers(0, clusters, n)] + 0.05 * rng.normal(size=(n, d))
  conf = rng.permutation(np.linspace(0.5, 1.0, n))
  return embeddings.astype(np.float32), conf.astype(np.float32), rng.integers(0, 4, n)


@pytest.mark.parametrize("devices", [1, 8])
@pytest.mark.parametrize("balance", [False, True])
def test_pick_gains_and_runner_ups_match_the_reference(devices, balance):
  """Each pick's float32 gain is the reference's; the runner-up is measured at the round's start, so it bounds the
  reference's from above, and equals it when every round settles one pick. The objective is F(S) of the picks."""
  embeddings, conf, labels = _data("random")
  _, gains, runner_up = reference_greedy(embeddings, conf, labels, 4, 70, tau=0.75, eta=2.0, balance=balance,
                                         details=True)
  batched = _jitted(embeddings, conf, labels, 4, 70, MESHES[devices], tau=0.75, eta=2.0, balance=balance)
  np.testing.assert_allclose(batched.gains, gains, atol=1e-5)
  assert np.all(batched.runner_up >= runner_up - 1e-5)
  single = _jitted(embeddings, conf, labels, 4, 70, MESHES[devices], tau=0.75, eta=2.0, balance=balance,
                   max_proposals=1)
  np.testing.assert_allclose(single.runner_up, runner_up, atol=1e-5)
  u = unit_rows(embeddings).astype(np.float64)
  s = 0.5 + 0.5 * u @ u[batched.order].T
  nc = (s * (s > 0.75)) @ conf[batched.order].astype(np.float64)
  assert batched.objective == pytest.approx(np.tanh(nc / 2.0).sum(), rel=1e-5)


@pytest.mark.parametrize("devices", [1, 8])
@pytest.mark.parametrize("balance", [False, True])
def test_saturated_ties_go_by_index_or_by_the_stable_gain(devices, balance, optimized_compilation):
  """`index` (the original): at eta 0.05 every float32 gain is exactly 1 (untouched) or 0 (covered), so picks go by
  index, as in a float32 sequential loop. `gain`: at eta 0.2 clusters saturate in float32 after a few picks, and
  picks still follow the true gain (the float64 loop); there the two rules choose differently."""
  embeddings, conf, labels = _separated()
  run = functools.partial(_jitted, embeddings, conf, labels, 4, 60, MESHES[devices], tau=0.9, balance=balance)
  expected = reference_greedy(embeddings, conf, labels, 4, 60, tau=0.9, eta=0.05, balance=balance,
                              dtype=np.float32)
  by_index = run(eta=0.05)
  np.testing.assert_array_equal(by_index.order, expected)
  assert set(np.unique(by_index.gains)) == {0.0, 1.0}
  expected = reference_greedy(embeddings, conf, labels, 4, 60, tau=0.9, eta=0.2, balance=balance, tie_break="gain")
  by_gain = run(eta=0.2, tie_break="gain")
  np.testing.assert_array_equal(by_gain.order, expected)
  assert np.sum(by_gain.gains == 0) > 30
  assert not np.array_equal(run(eta=0.2).order, by_gain.order)


def test_log_tanh_difference_is_exact_where_the_float32_difference_is_zero():
  low = np.array([0.0, 1.0, 8.0, 12.0, 40.0, 300.0], np.float64)
  step = np.array([0.5, 1e-3, 0.7, 0.7, 2.0, 1.0], np.float64)
  expected = np.log(np.sinh(step)) - np.logaddexp(low, -low) - np.logaddexp(low + step, -low - step) + 2 * np.log(2)
  np.testing.assert_allclose(prune4rel.log_tanh_difference(low.astype(np.float32), step.astype(np.float32)),
                             expected, rtol=1e-5)
  np.testing.assert_allclose(np.exp(expected[:2]), np.tanh(low + step)[:2] - np.tanh(low)[:2], rtol=1e-9)
  assert np.tanh(np.float32(12.7)) - np.tanh(np.float32(12.0)) == 0.0  # all the original's float32 gain sees
