"""Images/s of one full train step (forward, backward, optimiser and BatchNorm update), JAX vs PyTorch.

  python benchmarks/train_step.py --model preact_resnet18 --width 16 --learners ce,sop_plus
  python benchmarks/train_step.py --model resnet50 --batch 64 --image 224 --learners ce

For each learner: compile time (reported separately), the median of `--repeats` timed runs of `--steps` steps
each, model FLOPs per step from XLA's cost analysis, achieved FLOP/s and its share of the device's measured
matmul peak. The same model and learner step in PyTorch (`torch_reference.py`, same batch shapes, same device),
in NCHW and channels_last memory formats, is timed in the same run, its runs interleaved with JAX's, and gives
the ratio. `--pipeline` also times the grain input pipeline with the learner's augmentations, to show whether input
or compute bounds a run. Prints a Markdown table.
"""

import argparse
import os
import statistics
import sys
import time

# PyTorch's OpenMP threads spin at barriers by default; on a machine shared with other jobs a descheduled thread
# stalls every barrier (measured on the 2-core VM at load 6: a CE step 8× slower). Passive waiting is the fair
# setting; it must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

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
  c.model.dtype = args.dtype
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


def timed(step, steps: int):
  """A no-argument timer: the mean seconds of `steps` calls of `step`, each awaited."""
  def run():
    start = time.perf_counter()
    for _ in range(steps):
      step()
    return (time.perf_counter() - start) / steps
  return run


def jax_runner(args, learner_name: str, image_shape, mesh):
  """The compiled step (timed compile, XLA's FLOP count of the lowered program) and a timer of `args.steps` steps
  on a device batch."""
  config = make_config(args, learner_name)
  model = create_model(config.model, args.classes, (0.5,) * image_shape[-1], (0.25,) * image_shape[-1])
  learner = LEARNERS.get(learner_name)(config, model, args.classes, mesh)
  state = learner.init(jax.random.key(0), image_shape, args.batch)
  rng = np.random.default_rng(0)
  batch = parallel.to_global(mesh, synthetic_batch(learner, args.batch, image_shape, args.classes, rng))
  key = jax.random.key(1)
  start = time.perf_counter()
  lowered = learner.jitted_train_step(state).lower(state, batch, key)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  # The FLOPs of the program as written, before the backend rewrites it: on GPUs the compiled program's count leaves
  # out the convolutions that become cuDNN calls (PreActResNet-18, CE, 256 images: 3.4 GFLOP compiled on an H200,
  # 742 lowered; 2026-12-04).
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan")))

  def step():
    nonlocal state
    state, metrics, _ = compiled(state, batch, key)  # the state is donated; the batch stays on device
    jax.block_until_ready(metrics)  # also the CPU-mesh rule; on one device it costs nothing measurable

  step()  # warm
  return timed(step, args.steps), {"compile_s": compile_s, "flops": flops}


def torch_runner(args, learner_name: str, image_shape, channels_last: bool):
  import torch_reference

  step = torch_reference.make_step(learner_name, args.model, args.width, args.batch, image_shape, args.classes,
                                   channels_last)
  step()  # warm (oneDNN primitive caches)
  return timed(step, args.steps)


def interleaved_medians(runners: dict, repeats: int) -> dict[str, float]:
  """Median seconds per step of each runner, the runs taken in turn so that a change in the machine's load
  (shared with other jobs) hits every framework alike."""
  runs = {name: [] for name in runners}
  for _ in range(repeats):
    for name, run in runners.items():
      runs[name].append(run())
  return {name: statistics.median(r) for name, r in runs.items()}


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
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                 help="config.model.dtype of the JAX step (the PyTorch reference stays float32)")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--image", type=int, default=32)
  p.add_argument("--channels", type=int, default=3)
  p.add_argument("--classes", type=int, default=10)
  p.add_argument("--learners", default="ce")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--no-torch", dest="torch", action="store_false")
  p.add_argument("--pipeline", action="store_true", help="also time the grain input pipeline")
  args = p.parse_args()

  image_shape = (args.image, args.image, args.channels)
  mesh = parallel.make_mesh(jax.devices()[:1])
  device = jax.devices()[0]
  peak = matmul_peak_flops()
  print(f"device: {device.platform} {device.device_kind}, {os.cpu_count()} CPUs; jax {jax.__version__}; measured "
        f"fp32 matmul peak {peak / 1e9:.1f} GFLOP/s; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; model "
        f"{args.model} width {args.width} {args.dtype}, batch {args.batch}, image {image_shape}; median of "
        f"{args.repeats} runs of {args.steps} steps, interleaved; load average {os.getloadavg()[0]:.2f}", flush=True)
  if args.torch:
    import torch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
          f"{os.environ['OMP_WAIT_POLICY']}", flush=True)
  print("| learner | JAX compile s | JAX img/s | PyTorch img/s NCHW | PyTorch img/s channels_last | JAX/NCHW "
        "| JAX/channels_last | GFLOP/step | achieved GFLOP/s | % of peak | pipeline img/s | load |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for name in args.learners.split(","):
    run_jax, info = jax_runner(args, name, image_shape, mesh)
    runners = {"jax": run_jax}
    if args.torch:
      runners["nchw"] = torch_runner(args, name, image_shape, channels_last=False)
      runners["nhwc"] = torch_runner(args, name, image_shape, channels_last=True)
    step_s = interleaved_medians(runners, args.repeats)
    ips = {k: args.batch / s for k, s in step_s.items()}
    load = os.getloadavg()[0]
    achieved = info["flops"] / step_s["jax"]
    pipe = time_pipeline(args, name, image_shape) if args.pipeline else float("nan")
    nchw, nhwc = ips.get("nchw", float("nan")), ips.get("nhwc", float("nan"))
    print(f"| {name} | {info['compile_s']:.1f} | {ips['jax']:.1f} | {nchw:.1f} | {nhwc:.1f} | "
          f"{ips['jax'] / nchw:.2f} | {ips['jax'] / nhwc:.2f} | {info['flops'] / 1e9:.2f} | {achieved / 1e9:.1f} | "
          f"{100 * achieved / peak:.0f} | {pipe:.0f} | {load:.2f} |", flush=True)


if __name__ == "__main__":
  main()
