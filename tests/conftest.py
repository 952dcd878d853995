"""Every test runs on CPU with 8 simulated devices; this must happen before JAX initialises a backend."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture(scope="module")
def fast_compilation():
  """Tiny models: XLA's optimisation passes cost more than they save. A module opts in with
  `pytestmark = pytest.mark.usefixtures("fast_compilation")`; its subprocesses get `FAST_COMPILATION_ENV`."""
  previous = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
