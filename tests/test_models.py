import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prune4rel_jax.models import preact_resnet, resnet, small_cnn


def _num_params(module, shape):
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(shape), train=False))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("num_classes,expected", [(10, 11_171_274), (100, 11_217_444)])
def test_preact_resnet18_has_the_originals_parameter_count(num_classes, expected):
  assert _num_params(preact_resnet.PreActResNet18(num_classes), (1, 32, 32, 3)) == expected


def test_resnet50_has_torchvisions_parameter_count():
  assert _num_params(resnet.ResNet50(1000), (1, 224, 224, 3)) == 25_557_032


def test_identity_shortcut_carries_the_preactivated_input():
  """The original's quirk: with zero convolutions an identity block returns ReLU(BN(x)), not x."""
  block = preact_resnet.PreActBlock(features=4, stride=1)
  x = jax.random.normal(jax.random.key(1), (2, 5, 5, 4))
  variables = block.init(jax.random.key(0), x, train=False)
  params = jax.tree.map(jnp.zeros_like, variables["params"])
  params["BatchNorm_0"] = variables["params"]["BatchNorm_0"]
  out = block.apply({**variables, "params": params}, x, train=False)
  bn = variables["batch_stats"]["BatchNorm_0"]
  expected = jax.nn.relu((x - bn["mean"]) / jnp.sqrt(bn["var"] + 1e-5))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_outputs_are_logits_and_penultimate_features():
  model = small_cnn.SmallCNN(num_classes=7, width=8)
  x = jnp.zeros((3, 8, 8, 1))
  variables = model.init(jax.random.key(0), x, train=False)
  logits, features = model.apply(variables, x, train=False)
  assert logits.shape == (3, 7) and features.shape == (3, 16)
  # PyTorch default init: weights within ±1/sqrt(fan_in).
  kernel = variables["params"]["Conv_1"]["kernel"]
  assert float(jnp.abs(kernel).max()) <= 1 / np.sqrt(3 * 3 * 8) + 1e-6
