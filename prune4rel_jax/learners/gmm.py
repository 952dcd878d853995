"""A two-component 1-D Gaussian mixture with scikit-learn's semantics, for DivideMix's clean probabilities.

DivideMix fits `sklearn.mixture.GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4)` to the
min-max normalised per-example losses and reads the posterior of the lower-mean component. This module repeats
that fit step for step: a one-run k-means (k-means++ seeding, Lloyd) gives one-hot responsibilities, the M-step
adds `reg_covar` to the variances and 10·eps to the component counts, EM stops when the mean log-likelihood moves
by less than `tol` or after `max_iter` iterations, and a final E-step gives the posteriors; all in float64.
The original leaves the k-means seeding unseeded; here it is seeded, so a run is reproducible.

It runs on the host in numpy, vectorised over examples: the input is one float per example (at most a few
hundred thousand), EM is a short sequential loop of reductions, and float64 on an accelerator would mean enabling
x64 for the whole program. One fit takes milliseconds next to the evaluation pass that produces the losses.
"""

import dataclasses

import numpy as np

EPS = np.finfo(np.float64).eps


@dataclasses.dataclass(frozen=True)
class Mixture:
  weights: np.ndarray    # [2]
  means: np.ndarray      # [2]
  variances: np.ndarray  # [2], reg_covar included
  iterations: int
  converged: bool


def kmeans_labels(x: np.ndarray, rng: np.random.Generator, max_iter: int = 300, tol: float = 1e-4) -> np.ndarray:
  """Two-cluster k-means of 1-D `x` (sklearn `KMeans(n_clusters=2, n_init=1)`): greedy k-means++ seeding with
  2 local trials, then Lloyd until the labels stop changing or the squared centre shift is at most
  `tol`·var(x). Returns 0/1 labels."""
  x = np.asarray(x, np.float64)
  first = x[rng.integers(len(x))]
  closest = (x - first) ** 2
  candidates = np.searchsorted(np.cumsum(closest), rng.random(2) * closest.sum())
  candidates = x[np.minimum(candidates, len(x) - 1)]
  potentials = np.minimum(closest[None, :], (x[None, :] - candidates[:, None]) ** 2).sum(axis=1)
  centres = np.array([first, candidates[np.argmin(potentials)]])
  labels = _nearest(x, centres)
  for _ in range(max_iter):
    new = np.array([x[labels == k].mean() if np.any(labels == k) else centres[k] for k in (0, 1)])
    shift, centres = np.sum((new - centres) ** 2), new
    previous, labels = labels, _nearest(x, centres)
    if np.array_equal(labels, previous) or shift <= tol * x.var():
      break
  return labels


def _nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
  return np.argmin((x[:, None] - centres[None, :]) ** 2, axis=1)


def _gaussian_parameters(x: np.ndarray, resp: np.ndarray, reg_covar: float):
  """sklearn's `_estimate_gaussian_parameters` for 1-D data: counts (+10·eps), means, variances (+reg_covar)."""
  counts = resp.sum(axis=0) + 10 * EPS
  means = resp.T @ x / counts
  variances = np.sum(resp * (x[:, None] - means[None, :]) ** 2, axis=0) / counts + reg_covar
  return counts, means, variances


def _log_joint(x: np.ndarray, weights: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
  """[n, 2] log π_k + log N(x | μ_k, σ²_k)."""
  return (np.log(weights)[None, :] - 0.5 * (np.log(2 * np.pi) + np.log(variances)[None, :])
          - 0.5 * (x[:, None] - means[None, :]) ** 2 / variances[None, :])


def _e_step(x, weights, means, variances):
  """(mean log-likelihood, [n, 2] log-responsibilities)."""
  joint = _log_joint(x, weights, means, variances)
  norm = np.logaddexp(joint[:, 0], joint[:, 1])
  return norm.mean(), joint - norm[:, None]


def fit(x: np.ndarray, labels: np.ndarray, reg_covar: float, max_iter: int, tol: float) -> Mixture:
  """EM from the one-hot responsibilities of `labels` (sklearn's `fit` after its k-means initialisation)."""
  x = np.asarray(x, np.float64)
  resp = np.eye(2)[labels]
  counts, means, variances = _gaussian_parameters(x, resp, reg_covar)
  weights = counts / len(x)
  lower_bound, converged, iterations = -np.inf, False, 0
  for iterations in range(1, max_iter + 1):
    previous = lower_bound
    lower_bound, log_resp = _e_step(x, weights, means, variances)
    counts, means, variances = _gaussian_parameters(x, np.exp(log_resp), reg_covar)
    weights = counts / counts.sum()
    if abs(lower_bound - previous) < tol:
      converged = True
      break
  return Mixture(weights, means, variances, iterations, converged)


def posteriors(x: np.ndarray, mixture: Mixture) -> np.ndarray:
  """[n, 2] component posteriors (sklearn `predict_proba`)."""
  _, log_resp = _e_step(np.asarray(x, np.float64), mixture.weights, mixture.means, mixture.variances)
  return np.exp(log_resp)


def clean_probability(losses: np.ndarray, *, reg_covar: float, max_iter: int, tol: float,
                      seed: int) -> np.ndarray:
  """DivideMix's clean probability of each example: the posterior of the lower-mean component of a two-component
  mixture fitted to `losses` (float64)."""
  labels = kmeans_labels(losses, np.random.default_rng(seed))
  mixture = fit(losses, labels, reg_covar, max_iter, tol)
  return posteriors(losses, mixture)[:, np.argmin(mixture.means)]
