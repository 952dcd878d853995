"""The network optimiser and its per-epoch learning-rate schedule, as the original PyTorch code sets them.

PyTorch SGD with `weight_decay` adds the (coupled) L2 term to the gradient before momentum, and its schedulers
step once per *epoch*; so the learning rate is a hyperparameter injected into the optax state and set on the
host at the start of each epoch (`with_learning_rate`), which also serves learners whose number of steps per
epoch varies (DivideMix).
"""

import math

import jax.numpy as jnp
import optax

from prune4rel_jax.errors import UserError

SCHEDULES = ("cosine", "multistep", "constant")


def make_optimizer(cfg) -> optax.GradientTransformation:
  """`cfg` is `config.optim`. SGD(momentum, nesterov) with coupled weight decay and an injectable lr."""

  def sgd(learning_rate):
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                       optax.sgd(learning_rate, momentum=cfg.momentum or None, nesterov=cfg.nesterov))

  return optax.inject_hyperparams(sgd)(learning_rate=cfg.lr)


def learning_rate(cfg, epoch: int, total_epochs: int) -> float:
  """The lr of `epoch` (0-based): CosineAnnealingLR(T_max=total_epochs, eta_min=min_lr), MultiStepLR(milestones,
  gamma) or constant, each stepped per epoch as in PyTorch."""
  if cfg.schedule == "cosine":
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * epoch / max(total_epochs, 1))) / 2
  if cfg.schedule == "multistep":
    return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
  if cfg.schedule == "constant":
    return cfg.lr
  raise UserError(f"optim.schedule={cfg.schedule!r}; expected one of {SCHEDULES}")


def with_learning_rate(opt_state, lr: float):
  """`opt_state` of `make_optimizer` with its learning rate replaced (same dtype and placement)."""
  old = opt_state.hyperparams["learning_rate"]
  return opt_state._replace(hyperparams={**opt_state.hyperparams,
                                         "learning_rate": jnp.asarray(lr, old.dtype, device=old.sharding)})
