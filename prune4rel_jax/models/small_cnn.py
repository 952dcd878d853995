"""A small CNN for the quickstart and the tests: two or three conv-BN-ReLU stages and global pooling."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from prune4rel_jax.models.layers import Conv, Head, batch_norm


class SmallCNN(nn.Module):
  num_classes: int
  width: int = 32
  stages: int = 2
  dtype: Any = jnp.float32  # computation dtype (`config.model.dtype`); parameters and BN statistics stay float32

  @classmethod
  def defaults(cls) -> ml_collections.ConfigDict:
    """Its options (the `config.model.small_cnn` section): its fields but `num_classes` and `dtype`
    (`config.model.dtype`), at their defaults."""
    return ml_collections.ConfigDict(dict(width=cls.width, stages=cls.stages))

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    for i in range(self.stages):
      x = Conv(self.width * 2**i, (3, 3), padding=1, strides=1 if i == 0 else 2, dtype=self.dtype)(x)
      x = nn.relu(batch_norm(train)(x))
    features = x.mean(axis=(1, 2))
    return Head(self.num_classes, self.dtype)(features), features
