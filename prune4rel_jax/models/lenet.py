"""LeNet-5 as DeepCore builds it (`deepcore/nets/lenet.py`), its network for MNIST-like data: two 5×5 conv + ReLU +
2×2 max-pool stages, then Linear 120 → 84 → classes. Grey images get padding 2 on the first conv (28 px → 28),
colour ones none (32 px → 28), so both reach 16×5×5 before the Linear layers. No BatchNorm.

Why not `SmallCNN` for Fashion-MNIST: global pooling after two 3×3 convs throws away where things are, which
28×28 clothing needs. Clean Fashion-MNIST, CE, 5 epochs on all 60k images (`configs/fashion_mnist.py:ce`,
noise_rate 0, uniform, fraction 1): SmallCNN width 16 73.1 % test accuracy, this LeNet 88.0 % (and 13 vs 18 s per
epoch on the 2-core CPU)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from prune4rel_jax.errors import UserError
from prune4rel_jax.models.layers import Conv, Head, torch_bias_init


class LeNet(nn.Module):
  num_classes: int
  dtype: Any = jnp.float32  # computation dtype (`config.model.dtype`); parameters stay float32

  @classmethod
  def defaults(cls) -> ml_collections.ConfigDict:
    """No options (`dtype` is `config.model.dtype`), so no `config.model.lenet` section."""
    return ml_collections.ConfigDict()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    del train  # no BatchNorm or dropout
    padding = 2 if x.shape[-1] == 1 else 0
    if ((min(x.shape[1:3]) + 2 * padding - 4) // 2 - 4) // 2 < 1:  # conv, pool, conv, pool
      raise UserError(f"model lenet: {x.shape[1]}×{x.shape[2]} images are too small for its two 5×5 conv + "
                      f"pool stages (at least 12 px grey, 16 px colour); use model.name=small_cnn")
    for features, pad in ((6, padding), (16, 0)):
      x = Conv(features, (5, 5), padding=pad, use_bias=True, dtype=self.dtype,
               bias_init=torch_bias_init(5 * 5 * x.shape[-1]))(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    features = nn.relu(Head(84, self.dtype)(nn.relu(Head(120, self.dtype)(x))))  # Head: a torch-initialised Linear
    return Head(self.num_classes, self.dtype)(features), features
