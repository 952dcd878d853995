"""`config.model.dtype=bfloat16`: every model computes in bfloat16 with float32 parameters, BatchNorm statistics
and outputs, and a few train steps of every learner track float32 from the same initialisation."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from prune4rel_jax import parallel
from prune4rel_jax.config import default_config, validate
from prune4rel_jax.data import augment, digits, pipeline
from prune4rel_jax.errors import UserError
from prune4rel_jax.learners import LEARNERS
from prune4rel_jax.models import MODELS, create_model
from test_end_to_end import quickstart_config

pytestmark = pytest.mark.usefixtures("fast_compilation")

STEPS, BATCH, EXAMPLES = 3, 32, 128
# (input shape, options) at which each model builds quickly; ResNet-50 needs 32 px to keep a 1×1 last stage.
MODEL_INPUTS = {"small_cnn": ((8, 8, 1), {}), "lenet": ((28, 28, 1), {}),
                "preact_resnet18": ((32, 32, 3), {"width": 4}), "resnet50": ((32, 32, 3), {"width": 4})}


def _dtypes(tree) -> set[str]:
  return {str(x.dtype) for x in jax.tree.leaves(tree)}


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_computes_in_bfloat16_with_float32_variables_and_outputs(name):
  shape, options = MODEL_INPUTS[name]
  cfg = default_config().model
  cfg.update(name=name, dtype="bfloat16")
  if options:
    cfg[name].update(options)
  model = create_model(cfg, 10, (0.5,) * shape[-1], (0.25,) * shape[-1])
  images = jax.ShapeDtypeStruct((2, *shape), jnp.uint8)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), images)
  (logits, features), updates = jax.eval_shape(functools.partial(model.apply, train=True, mutable=["batch_stats"]),
                                               variables, images)
  assert _dtypes(variables) == _dtypes(updates) | {"float32"} == {"float32"}
  assert logits.dtype == features.dtype == jnp.float32 and logits.shape == (2, 10)
  # Every convolution and matmul (the 1×1 convolutions and Linear layers are dot_generals) outputs bfloat16.
  jaxpr = jax.make_jaxpr(functools.partial(model.apply, train=False))(variables, images)
  products = [e for e in jaxpr.eqns if e.primitive.name in ("conv_general_dilated", "dot_general")]
  assert products and {str(e.outvars[0].aval.dtype) for e in products} == {"bfloat16"}


def test_dtype_defaults_to_float32_and_rejects_others():
  assert default_config().model.dtype == "float32"
  config = default_config()
  config.model.dtype = "float16"
  with pytest.raises(UserError, match="model.dtype='float16'; expected one of float32, bfloat16"):
    validate(config)


def _learner(name: str, dtype: str):
  """`name` on the quickstart's digits with a width-8 small CNN computing in `dtype`, batch `BATCH`, one device."""
  config = quickstart_config()
  config.model.small_cnn.width = 8
  config.model.dtype = dtype
  config.learner.name = name
  config.batch_size = BATCH
  data = digits.load()
  model = create_model(config.model, data.num_classes, data.mean, data.std)
  return LEARNERS.get(name)(config, model, data.num_classes, parallel.make_mesh(jax.devices()[:1])), config, data


def _batches(learner, config, data, indices):
  """DivideMix gets co-training batches (mixup, co-guessing) of a fixed half-labelled division."""
  views = {name: augment.make_view(name, config.data, data.mean) for name in learner.views}
  if learner.name != "dividemix":
    return pipeline.train_stream(data.train_images, data.train_labels, indices, batch_size=BATCH, seed=0,
                                 views=views, start_step=0, num_steps=STEPS)
  stream, _ = pipeline.co_divided_stream(data.train_images, data.train_labels, indices, indices[::2], indices[1::2],
                                         batch_size=BATCH // 2, seed=0, views=views)
  return ({**b, "lambda_u": np.full(BATCH // 2, 25.0, np.float32)} for b in stream)


def _train(name: str, dtype: str, initial):
  """`STEPS` jitted steps from a copy of the state `initial`; the final state and each step's loss."""
  learner, config, data = _learner(name, dtype)
  state = jax.tree.map(jnp.copy, initial)  # the step donates its input
  step, losses = learner.jitted_train_step(state), []
  for batch in itertools.islice(_batches(learner, config, data, np.arange(EXAMPLES)), STEPS):
    state, metrics, _ = step(state, parallel.to_global(learner.mesh, batch), jax.random.key(1))
    losses.append(float(metrics["loss"]))
  return jax.device_get(state), np.array(losses)


def _network(state):
  """The trained network's `TrainState` (DivideMix trains its first)."""
  return state.nets[0].train if hasattr(state, "nets") else getattr(state, "network", state)


def _relative(a, b) -> float:
  """‖a − b‖ / ‖b‖ over all leaves of two pytrees."""
  a, b = ravel_pytree(a)[0], ravel_pytree(b)[0]
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("name", ["ce", "sop_plus", "dividemix"])
def test_bfloat16_steps_track_float32(name):
  """From one initial state, 3 steps in bfloat16 keep float32 parameters and BatchNorm statistics, and track
  float32. Measured over initial states of seeds 0-3 (one CPU device), with the tolerance used here:
    - each step's loss: CE ≤ 0.01 %, DivideMix ≤ 0.004 % (tolerance 0.1 %); SOP+ ≤ 1.4 % (3 %): its MSE term
      reads the argmax prediction, and one near-tied argmax flipping moves the loss by 2/B/loss ≈ 1.5 %;
    - the parameter update, ‖Δθ_bf16 − Δθ_f32‖ / ‖Δθ_f32‖: CE 3.1-6.0 %, SOP+ 2.9-4.8 %, DivideMix 0.7-1.1 % (15 %);
    - the running BatchNorm statistics: ≤ 0.09 % (0.5 %)."""
  learner, _, data = _learner(name, "float32")
  initial = learner.init(jax.random.key(0), data.image_shape, EXAMPLES)
  (state32, losses32), (state16, losses16) = (_train(name, dtype, initial) for dtype in ("float32", "bfloat16"))
  assert _dtypes(state16) == {"float32", "int32"}  # the step counter is the one integer
  assert not np.array_equal(losses16, losses32)  # bfloat16 did run
  np.testing.assert_allclose(losses16, losses32, rtol=0.03 if name == "sop_plus" else 1e-3)
  start, trained16, trained32 = _network(initial), _network(state16), _network(state32)
  update16, update32 = (jax.tree.map(np.subtract, t.params, start.params) for t in (trained16, trained32))
  assert _relative(update16, update32) < 0.15
  assert _relative(trained16.batch_stats, trained32.batch_stats) < 0.005
