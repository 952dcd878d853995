"""One device and eight simulated devices must train to the same parameters: the data-parallel step is exact."""

import jax
import numpy as np

from prune4rel_jax import evaluate, parallel
from prune4rel_jax.config import default_config
from prune4rel_jax.data import digits, pipeline
from prune4rel_jax.data.augment import make_view
from prune4rel_jax.learners import LEARNERS
from prune4rel_jax.models import create_model


def _config():
  c = default_config()
  c.model.name = "small_cnn"
  c.model.small_cnn.width = 8
  c.data.crop_padding = 1
  c.data.flip = False
  c.batch_size = 32
  return c


def _train_two_steps(devices):
  config = _config()
  data = digits.load()
  mesh = parallel.make_mesh(devices)
  model = create_model(config.model, data.num_classes, data.mean, data.std)
  learner = LEARNERS.get("ce")(config, model, data.num_classes, mesh)
  state = learner.init(jax.random.key(0), data.image_shape, data.num_train)
  views = {"image": make_view("image", config.data)}
  batches = pipeline.train_stream(data.train_images, data.train_labels, np.arange(256), batch_size=32, seed=0,
                                  views=views, start_step=0, num_steps=2)
  state, metrics = learner.run_steps(state, batches, 2, jax.random.key(1), "test")
  logits = evaluate.predict_dataset(learner, state, data.test_images, np.arange(40), 16)["logits"]
  return jax.device_get(state), metrics, logits


def test_one_and_eight_devices_give_the_same_training():
  assert jax.device_count() == 8
  one = _train_two_steps(jax.devices()[:1])
  eight = _train_two_steps(jax.devices())
  for a, b in zip(jax.tree.leaves(one[0]), jax.tree.leaves(eight[0])):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  assert one[1].keys() == eight[1].keys()
  for k in one[1]:
    np.testing.assert_allclose(one[1][k], eight[1][k], rtol=1e-5)
  np.testing.assert_allclose(one[2], eight[2], rtol=1e-4, atol=1e-5)


def test_batch_is_sharded_and_state_replicated():
  mesh = parallel.make_mesh()
  batch = parallel.to_global(mesh, {"x": np.arange(16.0)})
  assert batch["x"].sharding.spec == parallel.example_sharded(mesh).spec
  assert len(batch["x"].addressable_shards) == 8
  assert batch["x"].addressable_shards[1].data.shape == (2,)
