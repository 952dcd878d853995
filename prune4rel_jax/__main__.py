"""`python -m prune4rel_jax --config configs/quickstart.py`."""

from prune4rel_jax.main import run

run()
