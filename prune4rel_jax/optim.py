"""The network optimiser and its per-epoch learning-rate schedule, as the original PyTorch code sets them.

PyTorch SGD with `weight_decay` adds the (coupled) L2 term to the gradient before momentum, and its schedulers
step once per *epoch*; so the learning rate is a hyperparameter injected into the optax state and set on the
host at the start of each epoch (`with_learning_rate`), which also serves learners whose number of steps per
epoch varies (DivideMix).
"""

import collections

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
  """The lr of `epoch` (0-based), set on the host once per epoch. optax evaluates it in float32, the dtype the
  optimiser state holds it in, so it equals PyTorch's float64 closed forms to float32 rounding."""
  return float(_schedule(cfg, total_epochs)(epoch))


def _schedule(cfg, total_epochs: int) -> optax.Schedule:
  """CosineAnnealingLR(T_max=total_epochs, eta_min=min_lr), MultiStepLR(milestones, gamma) or constant, each
  stepped per epoch as in PyTorch.

  On every training epoch these equal PyTorch's closed forms: optax's cosine is lr·((1 − α)·c + α) =
  min_lr + (lr − min_lr)·c for α = min_lr / lr (config.validate rejects lr <= 0), and its piecewise constant
  applies a factor from the epoch equal to the milestone on, a repeated milestone twice, as MultiStepLR does.
  Past T_max, reached only by a warm-up longer than `epochs`, optax holds min_lr where PyTorch's cosine would
  rise again.
  """
  if cfg.schedule == "cosine":
    return optax.cosine_decay_schedule(cfg.lr, max(total_epochs, 1), alpha=cfg.min_lr / cfg.lr)
  if cfg.schedule == "multistep":
    counts = collections.Counter(cfg.milestones)
    return optax.piecewise_constant_schedule(cfg.lr, {m: cfg.gamma ** n for m, n in counts.items()})
  if cfg.schedule == "constant":
    return optax.constant_schedule(cfg.lr)
  raise UserError(f"optim.schedule={cfg.schedule!r}; expected one of {SCHEDULES}")


def with_learning_rate(opt_state, lr: float):
  """`opt_state` of `make_optimizer` with its learning rate replaced (same dtype and placement)."""
  old = opt_state.hyperparams["learning_rate"]
  return opt_state._replace(hyperparams={**opt_state.hyperparams,
                                         "learning_rate": jnp.asarray(lr, old.dtype, device=old.sharding)})
