"""Images/s of the training views made on the host (Pillow, `data/augment.py`) and on device
(`data/device_augment.py`, `config.loading.device_views`), alone and inside SOP+ training.

  taskset -c 0 python benchmarks/device_views.py
  taskset -c 0 python benchmarks/device_views.py --models small_cnn:32 --steps 10 --repeats 2

Views: one batch of random uint8 images, the host view as the grain stream calls it (in this process) and the
jitted device view on a batch already on the device (the raw images travel in both paths, so the transfer is
left out); each path's compile time apart. Host stream: `pipeline.train_stream` with SOP+'s two views made on
the host, or shipping the raw images (what the host still does per batch with device views). Training: SOP+
(`run_steps`: host stream → `to_global` → jitted step) on in-memory random CIFAR-shaped images, the same learner
once with host views and once with device views, each compiled first, then `--steps` steps timed, the paths' runs
interleaved. Everything runs in this process on one XLA device, so on a CPU the device views, the train step and
the grain thread share the same cores. Prints Markdown tables.
"""

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prune4rel_jax import parallel  # noqa: E402
from prune4rel_jax.config import default_config  # noqa: E402
from prune4rel_jax.data import augment, device_augment, pipeline  # noqa: E402
from prune4rel_jax.learners import LEARNERS  # noqa: E402
from prune4rel_jax.models import create_model  # noqa: E402


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or "unknown"


def interleaved(runners: dict, repeats: int) -> dict[str, float]:
  """Median seconds of each no-argument runner, the runs taken in turn so that load changes hit all alike."""
  runs = {name: [] for name in runners}
  for _ in range(repeats):
    for name, run in runners.items():
      runs[name].append(run())
  return {name: statistics.median(times) for name, times in runs.items()}


def view_runners(name: str, shape: tuple[int, ...], batch: int, calls: int) -> tuple[dict, float]:
  """Timers of the host and device versions of view `name` (seconds per batch) and the device view's compile s."""
  cfg = default_config().data
  mean = (0.5,) * shape[-1]
  images = np.random.default_rng(0).integers(0, 256, (batch, *shape), dtype=np.uint8)
  host = augment.make_view(name, cfg, mean)
  start = time.perf_counter()
  device = jax.jit(device_augment.make_view(name, cfg, mean)).lower(images, jax.random.key(0)).compile()
  compile_s = time.perf_counter() - start
  on_device = jnp.asarray(images)
  keys = [jax.random.key(i) for i in range(calls)]

  def run_host():
    start = time.perf_counter()
    for step in range(calls):
      host(images, augment.BatchRandom(np.random.default_rng(step), slice(None), batch))
    return (time.perf_counter() - start) / calls

  def run_device():
    start = time.perf_counter()
    for key in keys:
      device(on_device, key).block_until_ready()
    return (time.perf_counter() - start) / calls

  run_device()  # warm
  return {"host": run_host, "device": run_device}, compile_s


def stream_runners(shape: tuple[int, ...], batch: int, calls: int) -> dict:
  """Timers of the host's grain stream with SOP+'s views made there, or shipping the raw images for device views
  (seconds per batch): what the host still does per batch in each path."""
  images = np.random.default_rng(0).integers(0, 256, (5000, *shape), dtype=np.uint8)
  labels = np.zeros(5000, np.int64)
  runners = {}
  for path in ("host", "device"):
    views = pipeline.Loading(device_views=path == "device").views(
        LEARNERS.get("sop_plus").views, default_config().data, (0.5,) * shape[-1])
    stream = pipeline.train_stream(images, labels, np.arange(5000), batch_size=batch, seed=0, views=views,
                                   start_step=0, num_steps=10**6)
    next(stream)
    runners[path] = batches_timer(stream, calls)
  return runners


def batches_timer(stream, calls: int):
  """A no-argument timer: seconds per batch of the next `calls` batches of `stream`."""

  def run():
    start = time.perf_counter()
    for _ in range(calls):
      next(stream)
    return (time.perf_counter() - start) / calls

  return run


def training_runners(model: str, width: int, batch: int, steps: int) -> tuple[dict, dict]:
  """Timers of `steps` SOP+ steps fed by the host stream, with host and with device views (seconds per step),
  and each path's compile s (the device path's step includes the views)."""
  images = np.random.default_rng(0).integers(0, 256, (5000, 32, 32, 3), dtype=np.uint8)
  labels = np.random.default_rng(1).integers(0, 10, 5000)
  mesh = parallel.make_mesh(jax.devices()[:1])
  runners, compile_s = {}, {}
  for path in ("host", "device"):
    config = default_config()
    config.model.name = model
    config.model[model].width = width
    config.learner.name = "sop_plus"
    config.batch_size = batch
    config.loading.device_views = path == "device"
    learner = LEARNERS.get("sop_plus")(config, create_model(config.model, 10, (0.5,) * 3, (0.25,) * 3), 10, mesh)
    state = learner.with_learning_rate(learner.init(jax.random.key(0), (32, 32, 3), len(images)), 0.02)
    views = pipeline.Loading(**config.loading).views(learner.views, config.data, (0.5,) * 3)
    stream = pipeline.train_stream(images, labels, np.arange(len(images)), batch_size=batch, seed=0, views=views,
                                   start_step=0, num_steps=10**6)
    start = time.perf_counter()
    state, _ = learner.run_steps(state, stream, 1, jax.random.key(1), "compile")
    compile_s[path] = time.perf_counter() - start
    runners[path] = steps_timer(learner, state, stream, steps)
  return runners, compile_s


def steps_timer(learner, state, stream, steps: int):
  """A no-argument timer: seconds per step of the next `steps` steps of `stream` (the state carries over)."""

  def run():
    nonlocal state
    start = time.perf_counter()
    state, _ = learner.run_steps(state, stream, steps, jax.random.key(1), "timed")
    return (time.perf_counter() - start) / steps

  return run


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--calls", type=int, default=5, help="view batches per timed run")
  p.add_argument("--models", default="small_cnn:32,preact_resnet18:16", help="model:width, comma-separated")
  p.add_argument("--steps", type=int, default=20, help="training steps per timed run")
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()
  device = jax.devices()[0]
  affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
  print(f"{cpu_model()}; {os.cpu_count()} CPUs, this process on cores {affinity}; device {device.platform} "
        f"{device.device_kind}; jax {jax.__version__}; batch {args.batch}; median of {args.repeats} interleaved "
        f"runs; load average {os.getloadavg()[0]:.2f}\n", flush=True)

  print("| view | image | host img/s | device img/s | device / host | device compile s | load |")
  print("|---|---|---|---|---|---|---|")
  for name in ("image_strong", "image"):
    for shape in ((32, 32, 3), (28, 28, 1)):
      runners, compile_s = view_runners(name, shape, args.batch, args.calls)
      seconds = interleaved(runners, args.repeats)
      host, dev = (args.batch / seconds[k] for k in ("host", "device"))
      print(f"| {name} | {'×'.join(map(str, shape))} | {host:.0f} | {dev:.0f} | {dev / host:.2f} | {compile_s:.1f} | "
            f"{os.getloadavg()[0]:.2f} |", flush=True)

  print("\n| host stream, SOP+'s views | image | views made on host img/s | raw images for device views img/s | "
        "load |")
  print("|---|---|---|---|---|")
  for shape in ((32, 32, 3), (28, 28, 1)):
    seconds = interleaved(stream_runners(shape, args.batch, 4 * args.calls), args.repeats)
    host, dev = (args.batch / seconds[k] for k in ("host", "device"))
    print(f"| grain, 1 read thread | {'×'.join(map(str, shape))} | {host:.0f} | {dev:.0f} | "
          f"{os.getloadavg()[0]:.2f} |", flush=True)

  print("\n| SOP+ training, model | host views img/s | device views img/s | device / host | compile s, host / device "
        "| load |")
  print("|---|---|---|---|---|---|")
  for spec in args.models.split(","):
    model, width = spec.split(":")
    runners, compile_s = training_runners(model, int(width), args.batch, args.steps)
    seconds = interleaved(runners, args.repeats)
    host, dev = (args.batch / seconds[k] for k in ("host", "device"))
    print(f"| {model} width {width} | {host:.1f} | {dev:.1f} | {dev / host:.2f} | {compile_s['host']:.1f} / "
          f"{compile_s['device']:.1f} | {os.getloadavg()[0]:.2f} |", flush=True)


if __name__ == "__main__":
  main()
