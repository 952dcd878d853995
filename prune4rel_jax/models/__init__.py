"""Flax models by name: `config.model.name` picks one; `config.model.<name>` holds its options (its `defaults()`).
Every model maps uint8 images to `(logits, features)`; features are the penultimate activations (the input of the
final Linear) that selection methods use as embeddings.

`config.model.dtype` sets the computation dtype of every backbone (bfloat16 as in big_vision and the Flax ImageNet
example); parameters and BatchNorm statistics stay float32, and logits and features leave the model as float32,
so every loss, softmax and selection method computes in float32 whatever the network ran in."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from prune4rel_jax.models.lenet import LeNet
from prune4rel_jax.models.preact_resnet import PreActResNet18
from prune4rel_jax.models.resnet import ResNet50
from prune4rel_jax.models.small_cnn import SmallCNN
from prune4rel_jax.errors import UserError
from prune4rel_jax.registry import Registry

MODELS = Registry("model", {"small_cnn": SmallCNN, "lenet": LeNet, "preact_resnet18": PreActResNet18,
                             "resnet50": ResNet50})
DTYPES = ("float32", "bfloat16")  # `config.model.dtype`


class Classifier(nn.Module):
  """Normalises uint8 images on device (host→device traffic stays uint8), runs the backbone, and returns its
  logits and features in float32."""
  backbone: nn.Module
  mean: tuple[float, ...]
  std: tuple[float, ...]

  def __call__(self, images: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    x = (images.astype(jnp.float32) / 255.0 - jnp.asarray(self.mean)) / jnp.asarray(self.std)
    return jax.tree.map(lambda y: y.astype(jnp.float32), self.backbone(x, train))


def create_model(cfg, num_classes: int, mean, std) -> Classifier:
  """`cfg` is `config.model`: `name`, `dtype`, and one section per model with options holding its keyword
  arguments (e.g. `config.model.small_cnn.width`)."""
  backbone = MODELS.get(cfg.name)
  kwargs = dict(cfg[cfg.name]) if cfg.name in cfg else {}
  try:
    return Classifier(backbone(num_classes=num_classes, dtype=jnp.dtype(cfg.dtype), **kwargs), tuple(mean),
                      tuple(std))
  except TypeError as e:
    raise UserError(f"config.model.{cfg.name}: {e}") from None
