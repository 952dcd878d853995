"""Prune4ReL's selection diagnostics and tau/eta=auto: the sampled neighbourhood profile against brute-force NumPy,
the auto rule on a case with a known answer, the tie report and its warning on a saturating and a non-saturating
selection, and the method end to end."""

import jax
import ml_collections
import numpy as np
import pytest

from prune4rel_jax import parallel, reporting
from prune4rel_jax.errors import UserError
from prune4rel_jax.selection import METHODS, SelectionInputs, diagnostics, prune4rel
from prune4rel_jax.selection.similarity import unit_rows
from test_prune4rel import _data, _jitted, _separated

pytestmark = pytest.mark.usefixtures("fast_compilation")

MESHES = {1: parallel.make_mesh(jax.devices()[:1]), 8: parallel.make_mesh()}


def _hierarchy(supers=4, subs=3, size=10):
  """Unit embeddings whose s = 0.5 + 0.5·cos is exactly known: 0.99 within a sub-cluster, 0.95 within a
  super-cluster, 0.5 across; every example has 9, 20 and 90 neighbours at those levels."""
  n = supers * subs * size
  sub = np.arange(n) // size
  basis = np.eye(supers + supers * subs + n)
  embeddings = (np.sqrt(0.9) * basis[sub // subs] + np.sqrt(0.08) * basis[supers + sub]
                + np.sqrt(0.02) * basis[supers + supers * subs + np.arange(n)])
  return embeddings.astype(np.float32), sub // subs


@pytest.mark.parametrize("devices", [1, 8])
def test_profile_counts_equal_brute_force(devices):
  embeddings, _, labels = _data("clustered", n=150)
  clean = np.random.default_rng(1).integers(0, 4, len(labels))
  units = unit_rows(embeddings)
  profile = diagnostics.neighbour_profile(MESHES[devices], units, clean, metric="cossim", tau=0.93, sample_size=40,
                                          seed=3, block_size=16)
  sample = np.sort(np.random.default_rng(3).choice(150, 40, replace=False))
  s = 0.5 + 0.5 * units[sample].astype(np.float64) @ units.T.astype(np.float64)
  j = profile.column(0.93)
  assert profile.thresholds[j] == pytest.approx(0.93)
  near = s > 0.93
  np.testing.assert_array_equal(profile.counts[:, j], near.sum(1) - 1)
  np.testing.assert_array_equal(profile.same_clean[:, j], (near & (clean[None, :] == clean[sample, None])).sum(1) - 1)
  np.testing.assert_allclose(profile.weights[:, j], (s * near).sum(1), rtol=1e-5)


@pytest.mark.parametrize("eta,expected", [(1.0, 0.99), (2.0, 0.95), (10.0, 0.5)])
def test_auto_tau_is_the_smallest_tau_whose_coverage_is_at_most_the_target(eta, expected):
  """k/N = 0.2 and conf = 1, so the expected coverage is 0.2·deg/η with deg = 1 (τ ≥ 0.99), 1 + 9·0.99 = 9.91
  (0.95 ≤ τ < 0.99), 28.91 (0.5 ≤ τ < 0.95): the target 1 is first met just above 0.99, 0.95 and 0.5."""
  embeddings, _ = _hierarchy()
  conf = np.ones(len(embeddings), np.float32)
  profile = diagnostics.neighbour_profile(MESHES[8], embeddings, None, metric="cossim", tau="auto",
                                          sample_size=len(embeddings), seed=0, block_size=32)
  tau, resolved_eta = diagnostics.resolve(profile, "auto", eta, conf, budget=24, coverage=1.0)
  assert resolved_eta == eta
  assert expected <= tau < expected + 0.012  # the next grid point above the level
  assert diagnostics.expected_coverage(profile, conf, 24, eta)[profile.column(tau)] <= 1.0


def test_saturation_is_where_jitted_float32_tanh_reaches_one(optimized_compilation):
  tanh = jax.jit(jax.numpy.tanh)
  assert tanh(np.float32(diagnostics.SATURATION)) == 1.0 > tanh(np.float32(diagnostics.SATURATION - 0.5))


def test_auto_eta_makes_the_coverage_at_tau_the_target():
  embeddings, _ = _hierarchy()
  conf = np.ones(len(embeddings), np.float32)
  profile = diagnostics.neighbour_profile(MESHES[1], embeddings, None, metric="cossim", tau=0.97,
                                          sample_size=len(embeddings), seed=0, block_size=32)
  assert diagnostics.resolve(profile, 0.97, "auto", conf, 24, 0.5) == (0.97, pytest.approx(0.2 * 9.91 / 0.5))


def _report(embeddings, conf, labels, eta, tie_break="index", budget=60):
  result = _jitted(embeddings, conf, labels, 4, budget, MESHES[8], tau=0.9, eta=eta, balance=True,
                   tie_break=tie_break)
  profile = diagnostics.neighbour_profile(MESHES[8], unit_rows(embeddings), labels, metric="cossim", tau=0.9,
                                          sample_size=50, seed=0, block_size=16)
  return diagnostics.Report.build(profile, result, tau=0.9, eta=eta, auto=(0.9, eta), coverage=1.0, conf=conf,
                                  budget=budget, tie_break=tie_break), result


def test_saturating_selection_reports_its_ties_and_warns(tmp_path, optimized_compilation):
  embeddings, conf, labels = _separated()
  report, result = _report(embeddings, conf, labels, eta=0.05)
  s = report.summary
  first_zero = int(np.flatnonzero(result.gains == 0)[0])
  assert s["saturated_at_pick"] == first_zero + 1 and s["zero_gain_picks"] == np.sum(result.gains == 0)
  assert s["tie_share"] > 0.9 and s["tie_picks"] >= s["zero_gain_picks"] - 4  # the last pick of a class has no rival
  assert "uniform draw" in report.warning() and "tau=auto" in report.warning()
  assert s["neighbours_same_clean_share"] is not None and 0 < s["objective_per_example"] <= 1
  assert "ties" in report.line() and "saturated at pick" in report.line()
  reporting.save_figure(report.figure(), tmp_path / "selection.png")
  assert (tmp_path / "selection.png").stat().st_size > 0
  by_gain, _ = _report(embeddings, conf, labels, eta=0.05, tie_break="gain")
  assert "stable gain" in by_gain.warning()


def test_non_saturating_selection_reports_no_ties():
  embeddings, conf, labels = _data("random")
  report, _ = _report(embeddings, conf, labels, eta=2.0, budget=40)
  assert report.summary["tie_picks"] == 0 and report.summary["saturated_at_pick"] is None
  assert report.warning() is None


def _method(**options):
  cfg = ml_collections.ConfigDict({"balance": True, "prune4rel": {**prune4rel.Prune4ReL.defaults(), **options}})
  return METHODS.get("prune4rel")(cfg, MESHES[8], 0)


def test_method_with_tau_auto_uses_and_reports_the_resolved_tau():
  embeddings, _, labels = _data("clustered", n=200, seed=4)
  logits = np.random.default_rng(4).normal(size=(200, 4)).astype(np.float32)
  inputs = SelectionInputs(labels=labels, num_classes=4, logits=logits, features=embeddings)
  order, report = _method(tau="auto", eta=1.0, block_size=32).select_and_report(inputs, 50, clean_labels=labels)
  s = report.summary
  assert s["tau_rule"] == "auto" and s["eta_rule"] == "fixed" and s["expected_coverage"] <= diagnostics.SATURATION
  fixed, _ = _method(tau=s["tau"], eta=1.0, block_size=32).select_and_report(inputs, 50)
  np.testing.assert_array_equal(order, fixed)
  assert s["neighbours_same_clean_share"] is not None


@pytest.mark.parametrize("options,message", [
    ({"tau": 2.0}, "tau=2.0 must lie in"), ({"tau": -1.0}, "tau=-1.0 must lie in"), ({"tau": "often"}, "tau='often'"),
    ({"eta": "auto", "tau": "auto"}, "tau=auto needs"), ({"tau": "auto", "metric": "euclidean"}, "tau=auto needs"),
    ({"tie_break": "random"}, "tie_break"), ({"coverage": 0.0}, "coverage"), ({"diagnostic_sample": 0}, "sample")])
def test_bad_auto_options_are_user_errors(options, message):
  with pytest.raises(UserError, match=message):
    _method(**options)
