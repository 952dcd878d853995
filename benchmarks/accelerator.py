"""The figures to take when an accelerator is lent, in one command within a time budget (default 8 minutes).

  python benchmarks/accelerator.py --out accelerator.json     # sized from the device it finds
  # on jax 0.11.2's GPU compiler prefix XLA_FLAGS=--xla_gpu_enable_triton_gemm=false (benchmarks/README.md)
  python benchmarks/accelerator.py --toy --out /tmp/toy.json  # toy sizes (the default on CPU), as its test runs it

Sizes come from the first device (`plan`); the rows, in the order they run:
  - pipeline: img/s of the grain stream with grain worker processes (`pipeline.time_stream`) on in-memory uint8
    images (no JPEG decoding): weak view, weak + strong (SOP+) at 32 px, and weak at 224 px;
  - selection: the Prune4ReL greedy at 1M×512, 14 classes, class-balanced, k = 0.2·N (`selection.py --case`, in
    its own process), with MFU of its similarity matmuls against the float32 peak;
  - train: PreActResNet-18 (width 64, 32 px) in float32 and bfloat16 and ResNet-50 (224 px) in bfloat16, each
    with CE, SOP+ and DivideMix (its co-training step), on one device: img/s of the jitted step and XLA's FLOPs per
    step (`train_step.jax_runner`), MFU against the device's dense peak for the dtype (`PEAK_TFLOPS`).
The budget is checked before each row: a row starts only if the time left exceeds the longest row of its part so
far, the selection's process is stopped once it has used half the time left, and every row is written to `--out`
as soon as it ends.
"""

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
import types

# Several JAX processes (this one and the selection's) share the device: allocate on demand, not 75 % each.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import pipeline as pipeline_bench  # noqa: E402
import train_step  # noqa: E402
from prune4rel_jax import parallel  # noqa: E402
from prune4rel_jax.config import default_config  # noqa: E402
from prune4rel_jax.data import pipeline  # noqa: E402
from prune4rel_jax.data.augment import make_view  # noqa: E402

LEARNERS = ("ce", "sop_plus", "dividemix")
# Dense (no 2:4 sparsity) peak TFLOP/s per device as JAX sees it, matched by substring of `device_kind` in order.
# float32 is what JAX's default matmul precision runs float32 dots and convolutions as: TF32 tensor cores on
# NVIDIA Ampere and later, one bfloat16 pass on TPU. NVIDIA datasheets give sparse figures; dense is half:
# H100 SXM / H200 SXM: BF16 1,979, TF32 989 (nvidia.com/en-us/data-center/h100, /h200); H200 NVL: BF16 1,671, TF32
# 835 (/h200); H100 PCIe: BF16 1,513, TF32 756 (/h100); A100 SXM and PCIe: BF16 624, TF32 312 (A100 datasheet).
# Google gives bf16 per chip: v4 275 (cloud.google.com/tpu/docs/v4), v5e ("TPU v5 lite") 197 (/v5e), v6e ("TPU v6
# lite") 918 (/v6e).
PEAK_TFLOPS = (("h200 nvl", 835.5, 417.5), ("h200", 989.4, 494.7), ("h100 pcie", 756.5, 378.0),
               ("h100", 989.4, 494.7), ("a100", 312.0, 156.0), ("tpu v4", 275.0, 275.0),
               ("tpu v5 lite", 197.0, 197.0), ("tpu v6 lite", 918.0, 918.0))


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """The device's dense peak FLOP/s for `dtype` (float32 or bfloat16), None if `PEAK_TFLOPS` does not know it."""
  for name, bf16, f32 in PEAK_TFLOPS:
    if name in device_kind.lower():
      return 1e12 * (bf16 if dtype == "bfloat16" else f32)
  return None


@dataclasses.dataclass(frozen=True)
class TrainCase:
  model: str
  width: int
  dtype: str
  image: int
  batch: int


def plan(device, toy: bool) -> dict:
  """The sizes of every row for `device`. On an accelerator: batch 256 (PreActResNet-18) and 128 (ResNet-50),
  halved below 40 GiB of device memory, 10 steps × 3 runs, 1M×512 selection, a worker per two CPUs (at most 8).
  Toy: every row at a few pixels and examples, the small CNN standing in for both networks (compiling their nine
  steps takes minutes of CPU; `tests/test_precision.py` covers the networks in bfloat16), and no worker processes
  (each imports this script anew)."""
  if toy:
    return dict(train=[TrainCase("small_cnn", 4, "float32", 8, 8), TrainCase("small_cnn", 4, "bfloat16", 8, 8),
                       TrainCase("small_cnn", 4, "bfloat16", 16, 8)],
                steps=1, repeats=1, selection=(2000, 14, 64), pipeline_images=64, pipeline_sides=(8, 40, 32),
                pipeline_batch=16, pipeline_steps=2, workers=0)
  memory = device_memory(device)
  scale = 2 if memory is not None and memory < 40 * 2**30 else 1
  return dict(train=[TrainCase("preact_resnet18", 64, "float32", 32, 256 // scale),
                     TrainCase("preact_resnet18", 64, "bfloat16", 32, 256 // scale),
                     TrainCase("resnet50", 64, "bfloat16", 224, 128 // scale)],
              steps=10, repeats=3, selection=(1_000_000, 14, 512), pipeline_images=5000,
              pipeline_sides=(32, 256, 224), pipeline_batch=256, pipeline_steps=20,
              workers=max(1, min(8, (os.cpu_count() or 2) // 2)))


def train_row(case: TrainCase, learner: str, sizes: dict, device) -> dict:
  """img/s and MFU of one learner's jitted step: `train_step.jax_runner`, the median of `repeats` runs."""
  args = argparse.Namespace(model=case.model, width=case.width, dtype=case.dtype, batch=case.batch, classes=10,
                            steps=sizes["steps"])
  mesh = parallel.make_mesh([device])
  run, info = train_step.jax_runner(args, learner, (case.image, case.image, 3), mesh)
  step_s = statistics.median(run() for _ in range(sizes["repeats"]))
  peak = peak_flops(device.device_kind, case.dtype)
  return dict(img_per_s=case.batch / step_s, step_ms=1e3 * step_s, compile_s=info["compile_s"],
              gflop_per_step=info["flops"] / 1e9, tflop_per_s=info["flops"] / step_s / 1e12,
              mfu=None if peak is None else info["flops"] / step_s / peak)


def pipeline_row(views: tuple[str, ...], stored: int, crop: int, sizes: dict) -> dict:
  """img/s of the grain stream (`pipeline.time_stream`) with `sizes["workers"]` worker processes on in-memory
  uint8 images of side `stored`, cropped to `crop`."""
  cfg = default_config().data
  cfg.image_size = crop if crop != stored else 0
  images = np.random.default_rng(0).integers(0, 256, (sizes["pipeline_images"], stored, stored, 3), np.uint8)
  data = types.SimpleNamespace(train_images=images, train_labels=np.zeros(len(images), np.int64),
                               num_train=len(images))
  loading = pipeline.Loading(workers=sizes["workers"])
  first, rate = pipeline_bench.time_stream(data, {v: make_view(v, cfg, (0.5,) * 3) for v in views},
                                           sizes["pipeline_batch"], sizes["pipeline_steps"], loading)
  return dict(img_per_s=rate, first_batch_s=first)


def selection_row(n: int, classes: int, dim: int, device, timeout: float) -> dict:
  """The balanced greedy of `selection.py --case` in its own process, stopped after `timeout` seconds."""
  command = [sys.executable, os.path.join(HERE, "selection.py"), f"--case={n}:{classes}:1", f"--dim={dim}",
             "--reference-max=0"]
  try:
    out = subprocess.run(command, capture_output=True, text=True, timeout=max(timeout, 1.0), check=True)
  except subprocess.TimeoutExpired:
    return dict(status=f"stopped at the budget after {timeout:.0f} s")
  except subprocess.CalledProcessError as e:
    return dict(status=f"failed: {(e.stderr.strip().splitlines() or ['?'])[-1]}")
  r = json.loads(out.stdout.strip().splitlines()[-1])
  peak = peak_flops(device.device_kind, "float32")
  return dict(seconds=r["seconds"], compile_s=r["compile_s"], budget=r["budget"], rounds=r["rounds"],
              tflop_per_s=r["flops"] / r["seconds"] / 1e12,
              mfu=None if peak is None else r["flops"] / r["seconds"] / peak)


def tasks(sizes: dict, device) -> list[tuple[dict, object]]:
  """(the row's description, a function of the seconds left that measures it), in the order they run: the short
  parts first, so that long compilations cannot crowd them out; the selection may use half the time left."""
  out = []
  small, stored, crop = sizes["pipeline_sides"]
  for views, side, to in ((("image",), small, small), (("image", "image_strong"), small, small),
                          (("image",), stored, crop)):
    row = dict(part="pipeline", setting=f"{'+'.join(views)}, {side}→{to} px, {sizes['workers']} workers",
               batch=sizes["pipeline_batch"])
    out.append((row, lambda left, views=views, side=side, to=to: pipeline_row(views, side, to, sizes)))
  n, classes, dim = sizes["selection"]
  row = dict(part="selection", setting=f"prune4rel {n}×{dim}, {classes} classes, balanced, fraction 0.2", batch=None)
  out.append((row, lambda left: selection_row(n, classes, dim, device, left / 2)))
  for case in sizes["train"]:
    for learner in LEARNERS:
      row = dict(part="train", setting=f"{case.model} w{case.width} {case.dtype} {learner}, {case.image} px",
                 batch=case.batch)
      out.append((row, lambda left, case=case, learner=learner: train_row(case, learner, sizes, device)))
  return out


def run_within(todo, budget_s: float, on_row=lambda rows: None) -> list[dict]:
  """Runs the tasks in order while the budget lasts: a task starts only if the seconds left exceed the longest
  task of its part so far; the others are listed as skipped. A failing task is reported and the rest go on."""
  start, longest, rows = time.perf_counter(), {}, []
  for row, measure in todo:
    left = budget_s - (time.perf_counter() - start)
    if left <= longest.get(row["part"], 0.0):
      rows.append({**row, "status": f"skipped: {max(left, 0):.0f} s of the budget left"})
      on_row(rows)
      continue
    began = time.perf_counter()
    try:
      result = {"status": "ok", **measure(left)}
    except Exception as e:  # noqa: BLE001  (one row's failure, e.g. out of memory, must not lose the others)
      result = {"status": f"failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}"}
    seconds = time.perf_counter() - began
    longest[row["part"]] = max(longest.get(row["part"], 0.0), seconds)
    rows.append({**row, **result, "seconds_taken": seconds})
    on_row(rows)
  return rows


def device_memory(device) -> int | None:
  """Bytes the device's allocator may use; None where it does not say (CPU)."""
  return (device.memory_stats() or {}).get("bytes_limit") if device.platform != "cpu" else None


def describe(device, toy: bool, budget_s: float) -> dict:
  memory = device_memory(device)
  return dict(platform=device.platform, device_kind=device.device_kind, devices=jax.device_count(),
              memory_gib=None if memory is None else memory / 2**30, cpus=os.cpu_count(), jax=jax.__version__,
              toy=toy, budget_s=budget_s, bf16_peak_tflops=_tera(peak_flops(device.device_kind, "bfloat16")),
              f32_peak_tflops=_tera(peak_flops(device.device_kind, "float32")))


def _tera(flops: float | None) -> float | None:
  return None if flops is None else flops / 1e12


def table(rows: list[dict]) -> str:
  """One Markdown table of every row."""
  def number(value, spec):
    return "–" if value is None else format(value, spec)

  lines = ["| part | setting | batch | img/s or s | step ms | compile s | GFLOP/step | TFLOP/s | MFU | status |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    rate = number(r.get("img_per_s"), ".0f") if "img_per_s" in r else number(r.get("seconds"), ".1f") + " s"
    mfu = r.get("mfu")
    mfu = ("unknown peak" if "tflop_per_s" in r else "–") if mfu is None else f"{100 * mfu:.1f} %"
    lines.append(f"| {r['part']} | {r['setting']} | {number(r['batch'], 'd')} | {rate} | "
                 f"{number(r.get('step_ms'), '.1f')} | {number(r.get('compile_s'), '.1f')} | "
                 f"{number(r.get('gflop_per_step'), '.1f')} | {number(r.get('tflop_per_s'), '.2f')} | {mfu} | "
                 f"{r['status']} |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--toy", action="store_true", help="toy sizes (the default on CPU)")
  p.add_argument("--budget", type=float, default=480.0, help="seconds for all rows (8 minutes)")
  p.add_argument("--out", help="JSON file of the device and the rows, rewritten after each row")
  args = p.parse_args()
  device = jax.devices()[0]
  toy = args.toy or device.platform == "cpu"
  header = describe(device, toy, args.budget)
  print(json.dumps(header), flush=True)

  def write(rows):
    print(f"{rows[-1]['part']}: {rows[-1]['setting']}: {rows[-1]['status']}", file=sys.stderr, flush=True)
    if args.out:
      with open(args.out, "w") as f:
        json.dump({"device": header, "rows": rows}, f, indent=2)

  rows = run_within(tasks(plan(device, toy), device), args.budget, write)
  print(table(rows), flush=True)


if __name__ == "__main__":
  main()
