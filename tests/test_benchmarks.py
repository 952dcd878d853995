"""`benchmarks/accelerator.py`, the command for a lent accelerator, runs end to end at toy sizes on CPU (so that
it still works when one is lent), keeps to its time budget and knows the peaks it computes MFU against."""

import json
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import accelerator  # noqa: E402

pytestmark = pytest.mark.usefixtures("fast_compilation")


def test_toy_run_writes_every_row(tmp_path):
  out = tmp_path / "toy.json"
  run = subprocess.run([sys.executable, "benchmarks/accelerator.py", "--toy", "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert run.returncode == 0, run.stderr[-2000:]
  result = json.loads(out.read_text())
  assert result["device"]["platform"] == "cpu" and result["device"]["toy"]
  rows = result["rows"]
  assert [r["part"] for r in rows] == ["pipeline"] * 3 + ["selection"] + ["train"] * 9
  assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
  assert all(r["img_per_s"] > 0 for r in rows[:3])
  assert rows[3]["seconds"] > 0 and rows[3]["budget"] == 400  # k = 0.2 · 2000
  train = rows[4:]
  assert len({r["setting"] for r in train}) == 9
  assert all(r["img_per_s"] > 0 and r["gflop_per_step"] > 0 and r["mfu"] is None for r in train)  # no CPU peak
  table = run.stdout.strip().splitlines()[-len(rows) - 2:]
  assert table[0].startswith("| part |") and all("| ok |" in line for line in table[2:])


def test_peaks_are_matched_by_device_kind():
  assert accelerator.peak_flops("NVIDIA H200", "bfloat16") == 989.4e12
  assert accelerator.peak_flops("NVIDIA H200 NVL", "float32") == 417.5e12
  assert accelerator.peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756.5e12
  assert accelerator.peak_flops("NVIDIA H100 80GB HBM3", "float32") == 494.7e12
  assert accelerator.peak_flops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312e12
  assert accelerator.peak_flops("TPU v5 lite", "float32") == 197e12
  assert accelerator.peak_flops("cpu", "bfloat16") is None


def test_a_task_starts_only_while_the_budget_covers_its_part():
  """The first task of a part always starts with time left; a later one only if the time left exceeds the longest
  of its part so far. A failing task is reported and the others go on."""
  def fail(left):
    raise ValueError("out of memory")

  todo = [({"part": "a"}, lambda left: time.sleep(0.6) or {"x": 1}), ({"part": "a"}, lambda left: {"x": 2}),
          ({"part": "b"}, fail), ({"part": "b"}, lambda left: {"x": 3})]
  rows = accelerator.run_within(todo, budget_s=1.0)
  assert [r["status"].split(":")[0] for r in rows] == ["ok", "skipped", "failed", "ok"]
  assert rows[2]["status"] == "failed: ValueError: out of memory" and rows[3]["x"] == 3
  assert all(r["status"].startswith("skipped") for r in accelerator.run_within(todo, budget_s=0.0))
