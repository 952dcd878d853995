"""A small CNN for the quickstart and the tests: two or three conv-BN-ReLU stages and global pooling."""

import flax.linen as nn
import jax

from prune4rel_jax.models.layers import Conv, Head, batch_norm


class SmallCNN(nn.Module):
  num_classes: int
  width: int = 32
  stages: int = 2

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    for i in range(self.stages):
      x = Conv(self.width * 2**i, (3, 3), padding=1, strides=1 if i == 0 else 2)(x)
      x = nn.relu(batch_norm(train)(x))
    features = x.mean(axis=(1, 2))
    return Head(self.num_classes)(features), features
