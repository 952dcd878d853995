import numpy as np
import pytest

from prune4rel_jax.data import noise
from prune4rel_jax.errors import UserError


def _labels(n=1000, c=10):
  return np.arange(n) % c


def test_symmetric_flips_exactly_rate_to_other_classes():
  labels = _labels()
  noisy = noise.corrupt(labels, "sym", 0.4, 10, seed=3)
  assert (noisy != labels).sum() == 400  # every chosen example moves to another class
  assert noisy.min() >= 0 and noisy.max() < 10
  # Targets are spread over the other classes, not concentrated on one.
  assert len(np.unique(noisy[noisy != labels] - labels[noisy != labels])) > 5


def test_asymmetric_follows_class_map_only():
  labels = _labels()
  class_map = {2: 7, 3: 8}
  noisy = noise.corrupt(labels, "asym", 0.5, 10, seed=1, class_map=class_map)
  changed = noisy != labels
  assert set(labels[changed]) <= {2, 3}
  assert all(noisy[i] == class_map[labels[i]] for i in np.flatnonzero(changed))
  # round(0.5·N) examples were drawn; only those of classes 2 and 3 actually change (≈ 1/5 of them).
  assert 60 <= changed.sum() <= 140


def test_noise_is_seeded_and_clean_is_identity():
  labels = _labels()
  a = noise.corrupt(labels, "sym", 0.2, 10, seed=7)
  np.testing.assert_array_equal(a, noise.corrupt(labels, "sym", 0.2, 10, seed=7))
  assert (a != noise.corrupt(labels, "sym", 0.2, 10, seed=8)).any()
  np.testing.assert_array_equal(noise.corrupt(labels, "clean", 0.9, 10, seed=0), labels)


def test_next_class_map_default_for_asym():
  labels = _labels(100)
  noisy = noise.corrupt(labels, "asym", 1.0, 10, seed=0)
  np.testing.assert_array_equal(noisy, (labels + 1) % 10)


@pytest.mark.parametrize("noise_type,rate", [("typo", 0.1), ("sym", 1.5)])
def test_bad_noise_arguments_raise_user_error(noise_type, rate):
  with pytest.raises(UserError):
    noise.corrupt(_labels(), noise_type, rate, 10, seed=0)
