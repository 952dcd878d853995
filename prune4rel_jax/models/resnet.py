"""ResNet-50 (torchvision layout, v1.5: stride on the 3×3 conv) for WebVision, Clothing-1M and ImageNet-1K.

Features are the 2048-d global-average-pooled output (the input of the last Linear), as the original uses for
Prune4ReL's similarities.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from prune4rel_jax.models.layers import Conv, Head, batch_norm


class Bottleneck(nn.Module):
  features: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out = self.features * 4
    conv = functools.partial(Conv, dtype=self.dtype)
    h = nn.relu(batch_norm(train)(conv(self.features, (1, 1))(x)))
    h = nn.relu(batch_norm(train)(conv(self.features, (3, 3), strides=self.stride, padding=1)(h)))
    h = batch_norm(train)(conv(out, (1, 1))(h))
    if self.stride != 1 or x.shape[-1] != out:
      x = batch_norm(train)(conv(out, (1, 1), strides=self.stride)(x))
    return nn.relu(h + x)


class ResNet50(nn.Module):
  num_classes: int
  width: int = 64
  dtype: Any = jnp.float32  # computation dtype (`config.model.dtype`); parameters and BN statistics stay float32

  @classmethod
  def defaults(cls) -> ml_collections.ConfigDict:
    """Its options (the `config.model.resnet50` section): its fields but `num_classes` and `dtype`
    (`config.model.dtype`), at their defaults."""
    return ml_collections.ConfigDict(dict(width=cls.width))

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    x = nn.relu(batch_norm(train)(Conv(self.width, (7, 7), strides=2, padding=3, dtype=self.dtype)(x)))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, (blocks, stride) in enumerate(((3, 1), (4, 2), (6, 2), (3, 2))):
      for block in range(blocks):
        x = Bottleneck(self.width * 2**stage, stride if block == 0 else 1, self.dtype)(x, train)
    features = x.mean(axis=(1, 2))
    return Head(self.num_classes, self.dtype)(features), features
