"""Flax models by name. Every model maps uint8 images to `(logits, features)`; features are the penultimate
activations (the input of the final Linear) that selection methods use as embeddings."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from prune4rel_jax.models.lenet import LeNet
from prune4rel_jax.models.preact_resnet import PreActResNet18
from prune4rel_jax.models.resnet import ResNet50
from prune4rel_jax.models.small_cnn import SmallCNN
from prune4rel_jax.errors import UserError
from prune4rel_jax.registry import Registry

MODELS = Registry("model")
MODELS.register("small_cnn")(SmallCNN)
MODELS.register("lenet")(LeNet)
MODELS.register("preact_resnet18")(PreActResNet18)
MODELS.register("resnet50")(ResNet50)


class Classifier(nn.Module):
  """Normalises uint8 images on device (host→device traffic stays uint8), then runs the backbone."""
  backbone: nn.Module
  mean: tuple[float, ...]
  std: tuple[float, ...]

  def __call__(self, images: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    x = (images.astype(jnp.float32) / 255.0 - jnp.asarray(self.mean)) / jnp.asarray(self.std)
    return self.backbone(x, train)


def create_model(cfg, num_classes: int, mean, std) -> Classifier:
  """`cfg` is `config.model`: `name`, and one section per model holding its keyword arguments (e.g.
  `config.model.small_cnn.width`)."""
  backbone = MODELS.get(cfg.name)
  kwargs = dict(cfg[cfg.name]) if cfg.name in cfg else {}
  try:
    return Classifier(backbone(num_classes=num_classes, **kwargs), tuple(mean), tuple(std))
  except TypeError as e:
    raise UserError(f"config.model.{cfg.name}: {e}") from None
