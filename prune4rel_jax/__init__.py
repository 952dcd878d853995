"""prune4rel-jax: robust data pruning under label noise (Prune4ReL) in JAX/Flax.

The pipeline, in module order: `data` (noisy labels, grain input) → `models` (Flax) → `learners` (CE, SOP+,
DivideMix) → `selection` (Prune4ReL and baselines) → `train` (warm-up, select, re-train, evaluate).
"""

__version__ = "0.1.0"
