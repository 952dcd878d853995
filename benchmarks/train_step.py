"""Images/s of one full train step (forward, backward, optimiser and BatchNorm update), JAX vs PyTorch.

  python benchmarks/train_step.py --model preact_resnet18 --width 16 --learners ce,sop_plus
  python benchmarks/train_step.py --model resnet50 --batch 64 --image 224 --learners ce

For each learner: compile time (reported separately), the median of `--repeats` timed runs of `--steps` steps
each, model FLOPs per step from XLA's cost analysis, achieved FLOP/s and its share of the device's measured
matmul peak. The same model and CE step in PyTorch (`torch_reference.py`, same batch, same device) gives the
ratio. `--pipeline` also times the grain input pipeline with the learner's augmentations, to show whether input
or compute bounds a run. Prints a Markdown table.
"""

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from prune4rel_jax import parallel  # noqa: E402
from prune4rel_jax.config import default_config  # noqa: E402
from prune4rel_jax.data import pipeline  # noqa: E402
from prune4rel_jax.data.augment import make_view  # noqa: E402
from prune4rel_jax.learners import LEARNERS  # noqa: E402
from prune4rel_jax.models import create_model  # noqa: E402


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
  """The device's achievable float32 FLOP/s, measured on a large matmul."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n**3 / min(times)


def make_config(args, learner: str):
  c = default_config()
  c.model.name = args.model
  c.model[args.model].width = args.width
  c.learner.name = learner
  c.batch_size = args.batch
  return c


def synthetic_batch(learner, batch: int, image_shape, num_classes: int, rng: np.random.Generator):
  """A global batch with every view the learner's step reads. DivideMix's co-training step reads a labelled and
  an unlabelled half (`u_` views) and the step's λ_u; it trains the state's first network against the second."""
  dividemix = learner.name == "dividemix"
  batch = batch // 2 if dividemix else batch
  host = {"index": np.arange(batch, dtype=np.int32), "position": np.arange(batch, dtype=np.int32),
          "label": rng.integers(0, num_classes, batch).astype(np.int32)}
  for view in learner.views:
    host[view] = rng.integers(0, 256, (batch, *image_shape), dtype=np.uint8)
    if dividemix:
      host[f"u_{view}"] = rng.integers(0, 256, (batch, *image_shape), dtype=np.uint8)
  if dividemix:
    host["lambda_u"] = np.full(batch, learner.hp.lambda_u, np.float32)
  return host


def time_jax(args, learner_name: str, image_shape, mesh):
  config = make_config(args, learner_name)
  model = create_model(config.model, args.classes, (0.5,) * image_shape[-1], (0.25,) * image_shape[-1])
  learner = LEARNERS.get(learner_name)(config, model, args.classes, mesh)
  state = learner.init(jax.random.key(0), image_shape, args.batch)
  rng = np.random.default_rng(0)
  batch = parallel.to_global(mesh, synthetic_batch(learner, args.batch, image_shape, args.classes, rng))
  key = jax.random.key(1)
  start = time.perf_counter()
  compiled = learner.jitted_train_step(state).lower(state, batch, key).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan")))
  state, metrics, _ = compiled(state, batch, key)  # warm
  jax.block_until_ready(metrics)
  runs = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    for _ in range(args.steps):
      state, metrics, _ = compiled(state, batch, key)
      jax.block_until_ready(metrics)  # also the CPU-mesh rule; on one device it costs nothing measurable
    runs.append((time.perf_counter() - start) / args.steps)
  step_s = statistics.median(runs)
  return {"compile_s": compile_s, "step_s": step_s, "flops": flops}


def time_torch(args, image_shape):
  import torch
  import torch_reference

  torch.manual_seed(0)
  h, w, c = image_shape
  model = torch_reference.MODELS[args.model](args.classes, args.width, in_channels=c).train()
  if args.channels_last:
    model = model.to(memory_format=torch.channels_last)
  step = torch_reference.ce_step_fn(model)
  images = torch.randn(args.batch, c, h, w)
  if args.channels_last:
    images = images.to(memory_format=torch.channels_last)
  labels = torch.randint(0, args.classes, (args.batch,))
  step(images, labels)
  runs = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    for _ in range(args.steps):
      step(images, labels)
    runs.append((time.perf_counter() - start) / args.steps)
  return {"step_s": statistics.median(runs), "threads": torch.get_num_threads(), "version": torch.__version__}


def time_pipeline(args, learner_name: str, image_shape, steps: int = 20) -> float:
  """Images/s of the grain stream producing the learner's views from 5,000 in-memory uint8 images."""
  config = make_config(args, learner_name)
  learner_cls = LEARNERS.get(learner_name)
  images = np.random.default_rng(0).integers(0, 256, (5000, *image_shape), dtype=np.uint8)
  labels = np.zeros(5000, np.int64)
  views = {v: make_view(v, config.data, (0.5,) * image_shape[-1]) for v in learner_cls.views}
  stream = pipeline.train_stream(images, labels, np.arange(5000), batch_size=args.batch, seed=0, views=views,
                                 start_step=0, num_steps=steps + 1)
  next(stream)
  start = time.perf_counter()
  for _ in range(steps):
    next(stream)
  return steps * args.batch / (time.perf_counter() - start)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="preact_resnet18", choices=["preact_resnet18", "resnet50"])
  p.add_argument("--width", type=int, default=64)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--image", type=int, default=32)
  p.add_argument("--channels", type=int, default=3)
  p.add_argument("--classes", type=int, default=10)
  p.add_argument("--learners", default="ce")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--no-torch", dest="torch", action="store_false")
  p.add_argument("--channels-last", action="store_true", help="PyTorch in NHWC memory format")
  p.add_argument("--pipeline", action="store_true", help="also time the grain input pipeline")
  args = p.parse_args()

  image_shape = (args.image, args.image, args.channels)
  mesh = parallel.make_mesh(jax.devices()[:1])
  device = jax.devices()[0]
  peak = matmul_peak_flops()
  print(f"device: {device.platform} {device.device_kind}; jax {jax.__version__}; measured fp32 matmul peak "
        f"{peak / 1e9:.1f} GFLOP/s; model {args.model} width {args.width}, batch {args.batch}, "
        f"image {image_shape}", flush=True)
  torch_result = time_torch(args, image_shape) if args.torch else None
  if torch_result:
    print(f"torch {torch_result['version']}, {torch_result['threads']} threads", flush=True)
  print("| learner | JAX compile s | JAX img/s | GFLOP/step | achieved GFLOP/s | % of peak | PyTorch img/s (CE) "
        "| JAX/PyTorch | pipeline img/s |")
  print("|---|---|---|---|---|---|---|---|---|")
  for name in args.learners.split(","):
    r = time_jax(args, name, image_shape, mesh)
    jax_ips = args.batch / r["step_s"]
    achieved = r["flops"] / r["step_s"]
    torch_ips = args.batch / torch_result["step_s"] if torch_result else float("nan")
    pipe = time_pipeline(args, name, image_shape) if args.pipeline else float("nan")
    print(f"| {name} | {r['compile_s']:.1f} | {jax_ips:.1f} | {r['flops'] / 1e9:.2f} | {achieved / 1e9:.1f} | "
          f"{100 * achieved / peak:.0f} | {torch_ips:.1f} | {jax_ips / torch_ips:.2f} | {pipe:.0f} |", flush=True)


if __name__ == "__main__":
  main()
