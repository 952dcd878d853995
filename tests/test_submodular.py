"""CRAIG, GradMatch, Submodular and DeepFool: the greedy optimisers and submodular functions against plain-NumPy
versions of DeepCore's, the gradient similarities against explicit DeepCore-layout gradient embeddings, OMP on an
exactly sparse target, DeepFool on a linear model with closed-form boundary distances, and one end-to-end run."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from prune4rel_jax import parallel, train
from prune4rel_jax.selection import METHODS, SelectionInputs, deepfool, submodular
from prune4rel_jax.selection.base import Network, class_quotas
from prune4rel_jax.selection.gradmatch import orthogonal_matching_pursuit
from test_end_to_end import quickstart_config

MESH = parallel.make_mesh()
N, C, D = 48, 3, 4


def _method(name, balance=False, seed=0, **options):
  cfg = ml_collections.ConfigDict({"balance": balance, name: {**METHODS.get(name).defaults(), **options}})
  return METHODS.get(name)(cfg, MESH, seed)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  return SelectionInputs(labels=rng.integers(0, C, N), num_classes=C, logits=rng.normal(size=(N, C)) * 2,
                         features=rng.normal(size=(N, D)).astype(np.float32))


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _gradients(inputs):
  """DeepCore's `calc_gradient` rows: [bias grad (C), weight grad (C×d, row-major)], in float64."""
  r = _softmax(inputs.logits) - np.eye(inputs.num_classes)[inputs.labels]
  e = inputs.features.astype(np.float64)
  return np.concatenate([r, (r[:, :, None] * e[:, None, :]).reshape(len(r), -1)], 1)


def _cossim(g):
  unit = g / np.linalg.norm(g, axis=1, keepdims=True)
  return 0.5 + 0.5 * unit @ unit.T


def _craig_matrix(g):
  """DeepCore's balance path: −euclidean_dist_pair_np, then −= min − 1e-3."""
  sq = (g**2).sum(1)
  m = -np.sqrt(np.clip(sq[:, None] + sq[None] - 2 * g @ g.T, 1e-12, None))
  return m - (m.min() - 1e-3)


# ---- NumPy references of DeepCore's functions and optimisers -----------------------------------------------------
def _value(function, s, chosen):
  chosen = list(chosen)
  if function == "FacilityLocation":
    return np.maximum(s[:, chosen], 0).max(1).sum() if chosen else 0.0
  if function == "GraphCut":
    return s[:, chosen].sum() - s[np.ix_(chosen, chosen)].sum()
  return np.linalg.slogdet(s[np.ix_(chosen, chosen)])[1] if chosen else 0.0


def _gain(function, s, chosen, j):
  """DeepCore's gain of j given `chosen`: the value difference (graph cut: plus the S_jj DeepCore leaves out)."""
  gain = _value(function, s, list(chosen) + [j]) - _value(function, s, chosen)
  return gain + s[j, j] if function == "GraphCut" else gain


def _reference(optimizer, function, s, k):
  n = len(s)
  chosen = []
  if optimizer == "NaiveGreedy":
    for _ in range(k):
      gains = np.array([-np.inf if j in chosen else _gain(function, s, chosen, j) for j in range(n)])
      chosen.append(int(np.argmax(gains)))
    return chosen
  bounds = np.array([_gain(function, s, [], j) for j in range(n)])
  for _ in range(k):
    best, last = -np.inf, -1
    while True:
      top = int(np.argmax(bounds))
      if optimizer == "LazyGreedy" and top == last:
        break
      gain = _gain(function, s, chosen, top)
      if optimizer == "ApproximateLazyGreedy":
        if gain >= 0.9 * bounds[top] or gain == bounds[top]:
          last = top
          break
        bounds[top] = gain
        continue
      bounds[top] = gain
      if gain >= best:
        best, last = gain, top
    chosen.append(last)
    bounds[last] = -np.inf
  return chosen


def _similarity_case(n=14, seed=1):
  """A cosine-similarity matrix with one exact duplicate (rows/columns 3 and 9 tie) so ties are exercised."""
  x = np.random.default_rng(seed).normal(size=(n, 8))
  x[9] = x[3]
  return _cossim(x).astype(np.float32)


def _maximise(s, optimizer, function, k, key=0, sample_size=1):
  rows = -(-len(s) // 8) * 8
  padded = np.zeros((rows, rows), np.float32)
  padded[:len(s), :len(s)] = s
  sharded = jax.device_put(padded, parallel.example_sharded(MESH))
  order = submodular.maximise(sharded, jnp.arange(rows) < len(s), jnp.int32(k), jax.random.key(key),
                              function=function, optimizer=optimizer, size=k, sample_size=sample_size)
  return np.asarray(order)[:k].tolist()


@pytest.mark.parametrize("function", sorted(submodular.FUNCTIONS))
@pytest.mark.parametrize("optimizer", ["NaiveGreedy", "LazyGreedy", "ApproximateLazyGreedy"])
def test_greedy_optimisers_match_the_numpy_reference(function, optimizer):
  s = _similarity_case()
  k = 6 if function == "LogDeterminant" else 10  # 3 and 9 are identical: log det of both is −inf
  expected = _reference(optimizer, function, s.astype(np.float64), k)
  assert _maximise(s, optimizer, function, k) == expected
  if optimizer == "LazyGreedy":
    assert expected == _reference("NaiveGreedy", function, s.astype(np.float64), k)


@pytest.mark.parametrize("function", sorted(submodular.FUNCTIONS))
def test_function_gains_match_the_numpy_values(function):
  s = _similarity_case()
  f = submodular.FUNCTIONS[function]
  jnp_s = jnp.asarray(s)
  state = f.init(jnp_s, 4)
  chosen = []
  for t, p in enumerate([5, 0, 12, 7]):
    expected = [_gain(function, s.astype(np.float64), chosen, j) for j in range(len(s))]
    mask = np.isfinite(expected) & ~np.isin(np.arange(len(s)), chosen)
    np.testing.assert_allclose(np.asarray(f.gains(jnp_s, state))[mask], np.asarray(expected)[mask], rtol=1e-4,
                               atol=1e-4)
    assert np.isclose(float(f.gain_of(jnp_s, state, 2)), expected[2], rtol=1e-4, atol=1e-4)
    state = f.update(jnp_s, state, p, t)
    chosen.append(p)


def test_the_duplicate_ties_go_to_the_lower_index():
  s = _similarity_case()
  picks = _maximise(s, "NaiveGreedy", "FacilityLocation", 14)
  assert picks.index(3) < picks.index(9)


def test_stochastic_greedy_is_seeded_and_exact_with_a_full_sample():
  s = _similarity_case()
  first = _maximise(s, "StochasticGreedy", "FacilityLocation", 5, key=3, sample_size=3)
  assert first == _maximise(s, "StochasticGreedy", "FacilityLocation", 5, key=3, sample_size=3)
  assert any(first != _maximise(s, "StochasticGreedy", "FacilityLocation", 5, key=k, sample_size=3)
             for k in (4, 5, 6))
  s[9, 9] -= 0.01  # break the duplicate's tie: a full sample in random order then finds the same argmax
  assert (_maximise(s, "StochasticGreedy", "GraphCut", 8, key=1, sample_size=14)
          == _reference("NaiveGreedy", "GraphCut", s.astype(np.float64), 8))
  assert submodular.stochastic_sample_size(1000, 100) == round(-np.log(0.9) * 10)


# ---- gradient similarities and the methods ------------------------------------------------------------------------
def test_gradient_similarities_match_explicit_gradient_embeddings():
  inputs = _inputs()
  residuals, augmented = submodular.gradient_factors(inputs, MESH)
  np.testing.assert_allclose(residuals, _softmax(inputs.logits) - np.eye(C)[inputs.labels], atol=1e-6)
  g = _gradients(inputs)
  valid = np.ones(N, bool)
  same = np.zeros(N, np.int32)
  np.testing.assert_allclose(submodular.cosine_similarity(residuals, augmented, same, valid), _cossim(g),
                             atol=2e-5)
  np.testing.assert_allclose(submodular.craig_similarity(residuals, augmented, same, valid), _craig_matrix(g),
                             atol=2e-4)
  blocks = submodular.craig_similarity(residuals, augmented, inputs.labels.astype(np.int32), valid)
  for c in range(C):
    members = inputs.labels == c
    np.testing.assert_allclose(blocks[np.ix_(members, members)], _craig_matrix(g[members]), atol=2e-4)
    assert np.all(np.asarray(blocks)[np.ix_(members, ~members)] == 0)


@pytest.mark.parametrize("balance", [False, True])
def test_craig_and_submodular_match_the_reference_per_class(balance):
  inputs = _inputs()
  g = _gradients(inputs)
  groups = ([(np.flatnonzero(inputs.labels == c), q) for c, q in enumerate(class_quotas(inputs.labels, C, 15))]
            if balance else [(np.arange(N), 15)])
  craig, weights, graph_cut = [], [], []
  for members, k in groups:
    if balance:
      s = _craig_matrix(g[members])
    else:  # DeepCore's block-diagonal matrix: one shifted block per class, zeros across classes
      s = np.zeros((N, N))
      for c in range(C):
        m = inputs.labels == c
        s[np.ix_(m, m)] = _craig_matrix(g[m])
    picks = _reference("LazyGreedy", "FacilityLocation", s, k)
    craig += members[picks].tolist()
    nearest = np.sort(picks)[np.argmax(s[np.sort(picks)], axis=0)]  # DeepCore's `calc_weights`
    weights += (1 + np.bincount(nearest, minlength=len(members))[picks]).tolist()
    graph_cut += members[_reference("LazyGreedy", "GraphCut", _cossim(g[members]), k)].tolist()
  method = _method("craig", balance)
  assert method.select(inputs, 15).tolist() == craig
  assert method.weights.tolist() == weights and sum(weights) == N + 15
  assert _method("submodular", balance).select(inputs, 15).tolist() == graph_cut


def _omp_reference(a, b, k, lam):
  """DeepCore's `orthogonal_matching_pursuit_np` (the picks, before its NNLS weights)."""
  chosen, resid = [], b.copy()
  for i in range(k):
    projections = a.T @ resid
    projections[chosen] = -np.inf
    chosen.append(int(np.argmax(projections)))
    s = a[:, chosen]
    if i == 0:
      x = projections[chosen[0]] / (s[:, 0] @ s[:, 0])
      resid = b - s[:, 0] * x
    else:
      resid = b - s @ np.linalg.solve(s.T @ s + lam * np.eye(len(chosen)), s.T @ b)
  return chosen


def test_omp_recovers_an_exactly_sparse_target():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(40, 16))
  b = a[:, [11, 2, 6]] @ np.array([3.0, 2.0, 1.0])
  gram = jnp.asarray(a.T @ a, jnp.float32)
  order = orthogonal_matching_pursuit(gram, jnp.asarray(a.T @ b, jnp.float32), jnp.ones(16, bool), jnp.int32(5),
                                      1e-6, size=5)
  assert np.asarray(order)[:3].tolist() == _omp_reference(a, b, 3, 1e-6) == [11, 2, 6]  # largest weight first


@pytest.mark.parametrize("balance", [False, True])
def test_gradmatch_matches_the_reference_omp(balance):
  inputs = _inputs()
  g = _gradients(inputs)
  groups = ([(np.flatnonzero(inputs.labels == c), q) for c, q in enumerate(class_quotas(inputs.labels, C, 12))]
            if balance else [(np.arange(N), 12)])
  expected = []
  for members, k in groups:
    expected += members[_omp_reference(g[members].T, g[members].mean(0), k, 1.0)].tolist()
  assert _method("gradmatch", balance).select(inputs, 12).tolist() == expected


def test_bad_options_are_user_errors():
  from prune4rel_jax.errors import UserError
  for name, option, match in (("submodular", {"function": "Cut"}, "selection.submodular.function"),
                              ("submodular", {"greedy": "Lazy"}, "selection.submodular.greedy"),
                              ("craig", {"greedy": "Lazy"}, "selection.craig.greedy"),
                              ("gradmatch", {"lam": -1.0}, "selection.gradmatch.lam"),
                              ("deepfool", {"max_iter": 0}, "selection.deepfool.max_iter")):
    with pytest.raises(UserError, match=match):
      _method(name, **option)


# ---- DeepFool -----------------------------------------------------------------------------------------------------
def _linear_network(images, std=(1.0,)):
  rng = np.random.default_rng(2)
  w = rng.normal(size=(int(np.prod(images.shape[1:])), 3)).astype(np.float32)
  b = rng.normal(size=3).astype(np.float32)
  state = jax.device_put({"w": w, "b": b}, parallel.replicated(MESH))

  def predict(state, x):
    return x.reshape(x.shape[0], -1) @ state["w"] + state["b"], x

  return Network(predict, state, images, std, batch_size=16), w, b


def test_deepfool_on_a_linear_model_is_the_distance_to_the_nearest_boundary():
  images = np.random.default_rng(1).integers(0, 256, (40, 2, 2, 1)).astype(np.uint8)
  std = (2.0 / 255.0,)  # normalised units: pixels / 2, so squared distances scale by 1/4
  network, w, b = _linear_network(images, std)
  x = images.reshape(40, -1).astype(np.float64)
  f = x @ w + b
  top = f.argmax(1)
  gaps = f[np.arange(40), top][:, None] - f
  normals = np.linalg.norm(w[:, top].T[:, :, None] - w[None], axis=1)  # [40, 3]
  own = np.arange(3)[None] == top[:, None]
  distance = np.where(own, np.inf, gaps / np.where(own, 1.0, normals)).min(1)
  norms = deepfool.record_deepfool(network, MESH, max_iter=50)
  np.testing.assert_allclose(norms, (distance / 2) ** 2, rtol=1e-3)
  inputs = SelectionInputs(labels=top, num_classes=3, deepfool_norms=norms)
  np.testing.assert_array_equal(_method("deepfool").select(inputs, 10), np.argsort(distance)[:10])
  balanced = _method("deepfool", balance=True).select(inputs, 10)
  np.testing.assert_array_equal(np.bincount(top[balanced], minlength=3), class_quotas(top, 3, 10))


def test_deepfool_takes_newton_steps_until_max_iter():
  # logits [0, log(x / 10)]: class 0 until x = 10, approached from below by linearised (Newton) steps that never
  # overshoot, so the perturbation after `max_iter` steps has a closed form.
  images = np.array([1, 2, 4, 7, 1, 2, 4, 7], np.uint8).reshape(8, 1, 1, 1)
  state = jax.device_put({"boundary": jnp.float32(10.0)}, parallel.replicated(MESH))

  def predict(state, x):
    v = x.reshape(-1)
    return jnp.stack([jnp.zeros_like(v), jnp.log(v / state["boundary"])], 1), x

  network = Network(predict, state, images, (1 / 255.0,), batch_size=8)  # normalised units = pixels
  for max_iter in (1, 3):
    v = images.reshape(-1).astype(np.float64)
    for _ in range(max_iter):
      v = v - v * np.log(v / 10.0)
    np.testing.assert_allclose(deepfool.record_deepfool(network, MESH, max_iter),
                               (v - images.reshape(-1)) ** 2, rtol=1e-4)


# ---- end to end ---------------------------------------------------------------------------------------------------
def test_deepfool_end_to_end(tmp_path):
  config = quickstart_config()
  config.epochs, config.selection.warmup_epochs, config.model.small_cnn.width = 0, 1, 8  # no retraining
  config.selection.name, config.selection.balance, config.selection.deepfool.max_iter = "deepfool", True, 2
  config.learner.name = "ce"
  summary = train.train_and_evaluate(config, str(tmp_path))
  selected = np.load(tmp_path / "selected_indices.npy")
  assert len(np.unique(selected)) == summary["subset_size"] == round(0.5 * summary["num_train"])
  phases = [json.loads(line)["phase"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert phases.count("warmup") == 1
