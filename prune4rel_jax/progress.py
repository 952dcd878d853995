"""A dependency-free progress line for long loops: steps, rate, ETA and the latest metrics.

On a terminal it redraws one line; in a log (CI, SLURM) it prints a line every `log_seconds`. Only process 0
prints.
"""

import sys
import time
from collections.abc import Callable

import jax


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
  def __init__(self, total: int, desc: str, log_seconds: float = 10.0, stream=sys.stderr):
    self.total, self.desc, self.stream = total, desc, stream
    self.done = 0
    self.start = self.last_print = time.perf_counter()
    self.tty = stream.isatty()
    self.log_seconds = 0.25 if self.tty else log_seconds
    self.enabled = jax.process_index() == 0

  def update(self, steps: int = 1, metrics: Callable[[], dict[str, float]] | None = None) -> None:
    """Advance by `steps`; `metrics` is called only when a line is printed (fetching a device value syncs)."""
    self.done += steps
    now = time.perf_counter()
    if self.enabled and (now - self.last_print >= self.log_seconds or self.done == self.total):
      self.last_print = now
      self._print(now, metrics() if metrics else {})

  def _print(self, now: float, metrics: dict) -> None:
    elapsed = now - self.start
    rate = self.done / elapsed if elapsed > 0 else 0.0
    eta = (self.total - self.done) / rate if rate > 0 else 0.0
    shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    line = (f"{self.desc} {self.done}/{self.total} [{_duration(elapsed)}<{_duration(eta)}, "
            f"{rate:.2f} step/s] {shown}")
    if self.tty:
      end = "\n" if self.done == self.total else ""
      self.stream.write("\r\033[K" + line + end)
    else:
      self.stream.write(line + "\n")
    self.stream.flush()
