"""Selection methods by name: `config.selection.name` picks one; `config.selection.<name>` holds its options."""

from prune4rel_jax.registry import Registry
from prune4rel_jax.selection.base import Method, SelectionInputs, budget_for
from prune4rel_jax.selection.uniform import Uniform

METHODS = Registry("selection method")
for _method in (Uniform,):
  METHODS.register(_method.name)(_method)
