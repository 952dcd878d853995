"""Every test runs on CPU with 8 simulated devices; this must happen before JAX initialises a backend.

Each test process (one per pytest-xdist worker) and every CLI it starts share one persistent compilation cache, new
for each run: many tests build the same jitted computation from fresh objects (a new learner, a new run), which the
in-memory cache keyed by Python function cannot recognise, and the persistent cache keyed by the compiled program
can. It roughly halves the suite's CPU time, and no test depends on another run's entries.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_COMPILATION_CACHE = tempfile.mkdtemp(prefix="prune4rel-tests-xla-cache-")
atexit.register(shutil.rmtree, _COMPILATION_CACHE, ignore_errors=True)
os.environ.update(JAX_COMPILATION_CACHE_DIR=_COMPILATION_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


# pytest-xdist hands whole files (setup.cfg: --dist loadfile) to its workers in collection order, so the files
# that take longest go first and neither worker is left alone with a long one at the end. Measured CPU seconds per
# file, 2026-12-04: prune4rel 238, resume 130, sweep 107, datasets 106, baselines 91, dividemix 87, benchmarks 86,
# sop 76, submodular 74, models 67; the rest below 50, in their usual order.
LONGEST_FIRST = ("test_prune4rel.py", "test_resume.py", "test_sweep.py", "test_datasets.py", "test_baselines.py",
                 "test_dividemix.py", "test_benchmarks.py", "test_sop.py", "test_submodular.py", "test_models.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


@pytest.fixture(scope="module")
def fast_compilation():
  """Tiny models: XLA's optimisation passes cost more than they save. A module opts in with
  `pytestmark = pytest.mark.usefixtures("fast_compilation")`; its subprocesses get `FAST_COMPILATION_ENV`."""
  previous = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
