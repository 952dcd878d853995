"""The per-epoch learning rate against PyTorch's closed forms of CosineAnnealingLR and MultiStepLR, every epoch."""

import numpy as np
import pytest

from prune4rel_jax import optim
from prune4rel_jax.config import default_config
from prune4rel_jax.errors import UserError


def _optim(**overrides):
  cfg = default_config().optim
  cfg.update(overrides)
  return cfg


def _lrs(cfg, epochs):
  return np.array([optim.learning_rate(cfg, epoch, epochs) for epoch in range(epochs)])


@pytest.mark.parametrize("lr, min_lr, epochs", [(0.02, 1e-4, 200), (0.1, 0.0, 200), (0.05, 0.05, 3), (0.3, 0.5, 5)])
def test_cosine_is_cosine_annealing_lr(lr, min_lr, epochs):
  cfg = _optim(schedule="cosine", lr=lr, min_lr=min_lr)
  t = np.arange(epochs)
  # float32 rounding of the lr (the optimiser state's dtype): relative, and absolute near the end of a cosine to 0
  np.testing.assert_allclose(_lrs(cfg, epochs), min_lr + (lr - min_lr) * (1 + np.cos(np.pi * t / epochs)) / 2,
                             rtol=1e-6, atol=1e-7 * lr)
  assert optim.learning_rate(cfg, epochs + 1, epochs) == pytest.approx(min_lr)  # past T_max: held (documented)
  assert optim.learning_rate(cfg, 0, 0) == pytest.approx(lr)  # a warm-up with epochs = 0


def test_multistep_is_multistep_lr_from_the_milestone_epoch_on():
  milestones = (5, 3, 5)  # MultiStepLR: unsorted is fine, a repeated milestone applies gamma twice
  cfg = _optim(schedule="multistep", lr=0.1, milestones=milestones, gamma=0.1)
  want = 0.1 * 0.1 ** np.searchsorted(sorted(milestones), np.arange(8), side="right")
  np.testing.assert_allclose(_lrs(cfg, 8), want, rtol=1e-6, atol=0)
  assert optim.learning_rate(cfg, 3, 8) == pytest.approx(0.01) and optim.learning_rate(cfg, 2, 8) == pytest.approx(0.1)


def test_constant_and_an_unknown_schedule():
  cfg = _optim(schedule="constant", lr=0.1)
  np.testing.assert_allclose(_lrs(cfg, 4), 0.1, rtol=1e-7)
  assert type(optim.learning_rate(cfg, 3, 4)) is float  # JSON-logged
  with pytest.raises(UserError, match="optim.schedule='linear'"):
    optim.learning_rate(_optim(schedule="linear"), 0, 4)
