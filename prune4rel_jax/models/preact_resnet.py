"""PreActResNet-18 exactly as DivideMix, SOP and Prune4ReL define it (their `PreResNet.py`).

It is not the textbook pre-activation ResNet, and both quirks are kept: the stem is conv → BN → ReLU, and an
identity shortcut carries the *pre-activated* input ReLU(BN(x)), not x. There is no final BN/ReLU before the
pool. Widths are 64/128/256/512 × (width/64); 11,171,274 parameters for 10 classes at width 64.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from prune4rel_jax.models.layers import Conv, Head, batch_norm


class PreActBlock(nn.Module):
  features: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    a = nn.relu(batch_norm(train)(x))
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = Conv(self.features, (1, 1), strides=self.stride, dtype=self.dtype)(a)
    else:
      shortcut = a
    h = Conv(self.features, (3, 3), strides=self.stride, padding=1, dtype=self.dtype)(a)
    h = Conv(self.features, (3, 3), padding=1, dtype=self.dtype)(nn.relu(batch_norm(train)(h)))
    return h + shortcut


class PreActResNet18(nn.Module):
  num_classes: int
  width: int = 64
  dtype: Any = jnp.float32  # computation dtype (`config.model.dtype`); parameters and BN statistics stay float32

  @classmethod
  def defaults(cls) -> ml_collections.ConfigDict:
    """Its options (the `config.model.preact_resnet18` section): its fields but `num_classes` and `dtype`
    (`config.model.dtype`), at their defaults."""
    return ml_collections.ConfigDict(dict(width=cls.width))

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    x = nn.relu(batch_norm(train)(Conv(self.width, (3, 3), padding=1, dtype=self.dtype)(x)))
    for stage, stride in enumerate((1, 2, 2, 2)):
      for block in range(2):
        x = PreActBlock(self.width * 2**stage, stride if block == 0 else 1, self.dtype)(x, train)
    features = x.mean(axis=(1, 2))  # = avg_pool2d(4) on the 4×4 map of a 32×32 input
    return Head(self.num_classes, self.dtype)(features), features
