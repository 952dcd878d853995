"""Layers with PyTorch's default initialisation and BatchNorm settings, so that a Flax network starts from the
same distribution as the original PyTorch one (fidelity for cross-framework validation)."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

# torch.nn.Conv2d/Linear weights: kaiming_uniform(a=√5) = U(±1/√fan_in) = variance_scaling(1/3, fan_in, uniform).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
  """torch.nn.Linear bias: U(±1/√fan_in)."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


Conv = functools.partial(nn.Conv, use_bias=False, kernel_init=torch_kernel_init)


def batch_norm(train: bool) -> nn.BatchNorm:
  """torch BatchNorm2d defaults: momentum 0.1 (= Flax 0.9), eps 1e-5. Under jit with the batch sharded over
  devices, the statistics are those of the global batch (synchronous BN)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)


class Head(nn.Module):
  """The classifier: torch-initialised Linear on the pooled features."""
  num_classes: int

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    return nn.Dense(self.num_classes, kernel_init=torch_kernel_init,
                    bias_init=torch_bias_init(features.shape[-1]))(features)
