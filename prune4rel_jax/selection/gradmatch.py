"""GradMatch (Killamsetty et al. 2021, as DeepCore codes it): orthogonal matching pursuit that picks the examples
whose last-layer gradients best reconstruct the mean gradient of their group (the noisy-label class under
`balance`, else the whole training set).

OMP runs in kernel form: it only needs the group's gradient Gram matrix G_ij = ⟨g_i, g_j⟩ (built from the
[N, C] and [N, d+1] factors, see submodular.py) and ⟨g_i, b⟩ = mean_j G_ij for the target b. Step t picks the
largest (signed) projection ⟨g_j, b − Σ_S x_s g_s⟩ = ⟨g_j, b⟩ − G_jS x over the unpicked examples, then refits
x by ridge regression (G_SS + λI) x = ⟨g_S, b⟩ through an incrementally extended Cholesky factor (O(k²) per step,
where DeepCore calls `lstsq` afresh); the first coefficient is DeepCore's unregularised ⟨g_p, b⟩ / ‖g_p‖².
Memory: the [n, n] Gram matrix of a group, rows sharded over the mesh, so O(max_c N_c²) under `balance`.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from prune4rel_jax import parallel
from prune4rel_jax.errors import UserError
from prune4rel_jax.selection.base import Method, SelectionInputs
from prune4rel_jax.selection.submodular import (HIGHEST, gradient_factors, gradient_gram, group_similarity, padded,
                                                selection_groups)


@functools.partial(jax.jit, static_argnames=("size",))
def orthogonal_matching_pursuit(gram: jax.Array, target: jax.Array, candidates: jax.Array, count: jax.Array,
                                lam: float, *, size: int) -> jax.Array:
  """The `count` OMP picks among `candidates`, in order (int32 buffer of `size`). `gram` [n, n]: ⟨g_i, g_j⟩;
  `target` [n]: ⟨g_i, b⟩. Ties go to the lower index; once the residual is 0 the projections all tie, so the
  remaining picks fill up in index order."""
  steps = jnp.arange(size)

  def step(t, carry):
    available, order, factor, coefficients = carry
    projections = target - jnp.dot(gram[:, order], coefficients, precision=HIGHEST)
    p = jnp.argmax(jnp.where(available, projections, -jnp.inf))
    order = order.at[t].set(p)
    # Row t of the Cholesky factor of G_SS + λI: the earlier rows are fixed, the padding is the identity.
    cross = jnp.where(steps < t, gram[order, p], 0.0)
    row = jax.scipy.linalg.solve_triangular(factor, cross, lower=True)
    diagonal = jnp.sqrt(jnp.maximum(gram[p, p] + lam - jnp.dot(row, row), 1e-12))
    factor = factor.at[t].set(jnp.where(steps < t, row, 0.0)).at[t, t].set(diagonal)
    ridge = jax.scipy.linalg.cho_solve((factor, True), jnp.where(steps <= t, target[order], 0.0))
    first = jnp.where(gram[p, p] > 0, projections[p] / gram[p, p], 0.0)
    coefficients = jnp.where(t == 0, jnp.zeros(size).at[0].set(first), ridge)
    return available.at[p].set(False), order, factor, coefficients

  start = (candidates, jnp.zeros(size, jnp.int32), jnp.eye(size), jnp.zeros(size))
  return jax.lax.fori_loop(0, count, step, start)[1]


def gram_and_target(residuals, augmented, valid):
  """The group's Gram matrix (zero outside `valid`) and ⟨g_i, mean_{j valid} g_j⟩."""
  gram = jnp.where(valid[:, None] & valid[None, :], gradient_gram(residuals, augmented), 0.0)
  return gram, jnp.sum(gram, 1) / jnp.sum(valid)


class GradMatch(Method):
  name = "gradmatch"
  needs = frozenset({"logits", "features"})

  def __init__(self, cfg, mesh, seed):
    super().__init__(cfg, mesh, seed)
    if not self.hp.lam >= 0:
      raise UserError(f"selection.gradmatch.lam={self.hp.lam} must be >= 0")

  @classmethod
  def defaults(cls):
    return ml_collections.ConfigDict(dict(lam=1.0))  # DeepCore's `lam`

  def select(self, inputs: SelectionInputs, budget: int) -> np.ndarray:
    """DeepCore keeps only the picks with a non-zero final NNLS weight, so it may return fewer than k; here
    all k OMP picks are returned, in pick order."""
    residuals, augmented = gradient_factors(inputs, self.mesh)
    groups = selection_groups(inputs.labels, inputs.num_classes, budget, self.cfg.balance)
    devices = self.mesh.devices.size
    rows = -(-max(len(m) for m, _ in groups) // devices) * devices
    size = max(count for _, count in groups)
    picked = []
    for members, count in groups:
      valid = np.arange(rows) < len(members)
      gram, target = group_similarity(self.mesh, gram_and_target, padded(residuals[members], rows),
                                      padded(augmented[members], rows), valid)
      order = orthogonal_matching_pursuit(gram, target, jnp.asarray(valid), jnp.int32(count),
                                          float(self.hp.lam), size=size)
      picked.append(members[parallel.to_host(order)[:count]])
    return np.concatenate(picked)
