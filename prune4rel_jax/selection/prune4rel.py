"""Prune4ReL (Park et al., NeurIPS 2023): greedy maximisation of the reduced neighbourhood confidence.

Objective: F(S) = Σ_i tanh(NC_i / eta), where NC_i = Σ_{p ∈ S} w(i, p) · conf_p sums the confidence of the selected
examples near i, weighted by their similarity (`cossim`: s = 0.5 + 0.5·cos, w = s·1[s > tau]; `euclidean`:
w = clip(1/(dist + 0.1) − 0.1, 0, 10), no tau). Greedy adds, step by step, the example with the largest gain:
`gain="original"` is the original code's own-term gain tanh((NC_j + conf_j)/eta) − tanh(NC_j/eta);
`gain="exact"` is the true marginal gain Σ_i [tanh((NC_i + w(i, j)·conf_j)/eta) − tanh(NC_i/eta)] (O(N²·d) per
round). Ties go to the lower index. With `balance`, step t draws from one noisy-label class, round-robin
(`class_schedule`, the original's rule).

The greedy runs on device as one jitted `while_loop` over rounds, with embeddings, NC and the selected mask
sharded along the example axis. A round proposes the next few steps' picks at once (each step's best remaining
example of its class, in step order, from one sort per round), keeps the longest prefix in which no proposal's
gain depends on an earlier one's pick (gains only fall after a pick, so this prefix is exactly what the
one-at-a-time greedy picks next, in the same order), and adds the kept picks to NC with one blocked [N, d]×[d, B]
pass. The number of proposals per round adapts to how many the last round kept.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from prune4rel_jax import parallel
from prune4rel_jax.errors import UserError
from prune4rel_jax.selection import similarity
from prune4rel_jax.selection.base import Method, SelectionInputs

METRICS = ("cossim", "euclidean")
UNCERTAINTIES = ("LeastConfidence", "Entropy", "Margin")
GAINS = ("original", "exact")
# Two proposals count as depending on each other when their similarity is within this of the neighbour
# threshold: the check and the NC update compute the same similarity in different matmuls, which may round
# differently. A false alarm only ends a round early; it never changes the result.
NEIGHBOUR_MARGIN = 1e-5


def confidence(probs: np.ndarray, uncertainty: str) -> np.ndarray:
  """Per-example confidence `conf` (≥ 0, larger = more confident) from softmax outputs [N, C].

  LeastConfidence: max_c p (the original's default, despite the name). Margin: p(top 1) − p(top 2).
  Entropy: H_max − H(p), with the original's H = −Σ p log(p + 1e-6); the original uses H itself, which rewards
  uncertain neighbours (its sign bug)."""
  probs = np.asarray(probs, np.float32)
  if uncertainty == "LeastConfidence":
    return probs.max(1)
  if uncertainty == "Margin":
    top2 = np.sort(probs, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]
  entropy = -np.sum(probs * np.log(probs + 1e-6), axis=1)
  uniform = np.full(probs.shape[1], 1.0 / probs.shape[1], np.float32)
  return np.maximum(-np.sum(uniform * np.log(uniform + 1e-6)) - entropy, 0.0)


def class_schedule(labels: np.ndarray, num_classes: int, budget: int) -> np.ndarray:
  """The class each greedy step must pick from under `balance` (−1: any example), as the original's round-robin.

  Step t serves class available[t mod len(available)] over the noisy-label classes that still have unselected
  examples. When the served class is exhausted it leaves the rotation and the step moves on; if the class it
  moves to already has more than 1.5× as many picks as the first class that ran out had examples, every later
  step is unconstrained (global greedy)."""
  remaining = np.bincount(labels, minlength=num_classes)
  initial = remaining.copy()
  available = list(range(num_classes))
  schedule = np.full(budget, -1, np.int32)
  first_exhausted_size, unconstrained = 0, False
  for t in range(budget):
    if unconstrained:
      break
    c = available[t % len(available)]
    while remaining[c] == 0:
      if len(available) == num_classes:
        first_exhausted_size = initial[c]
      available.remove(c)
      c = available[t % len(available)]
      unconstrained = initial[c] - remaining[c] > 1.5 * first_exhausted_size
    schedule[t] = c
    remaining[c] -= 1
  return schedule


def proposal_widths(max_proposals: int, rows_per_device: int) -> tuple[int, ...]:
  """The proposal counts a round can use (powers of 4 up to the cap): each is compiled once."""
  cap = max(1, min(max_proposals, rows_per_device))
  return tuple(sorted({min(4**i, cap) for i in range(1, 12)} | {cap}))


@functools.lru_cache(maxsize=None)
def build_greedy(mesh: jax.sharding.Mesh, metric: str, gain: str, tau: float, eta: float, block: int,
                 widths: tuple[int, ...]):
  """The jitted greedy for one mesh and option set:
  f(embeddings, conf, labels, valid, schedule, budget) -> (order [padded], [rounds, proposals])."""

  def affinity(rows, columns):
    """The similarity a threshold applies to: s = 0.5 + 0.5·cos, or 1/(dist + 0.1) − 0.1 (neighbours: > 0)."""
    if metric == "cossim":
      return 0.5 + 0.5 * similarity.cosine_similarity(rows, columns)
    return 1.0 / (similarity.euclidean_distance(rows, columns) + 0.1) - 0.1

  def weight(a):
    return jnp.where(a > tau, a, 0.0) if metric == "cossim" else jnp.clip(a, 0.0, 10.0)

  def neighbours(a):  # conservative: includes pairs within NEIGHBOUR_MARGIN of the threshold
    return a > (tau if metric == "cossim" else 0.0) - NEIGHBOUR_MARGIN

  def gather(array, index, offset):
    """Rows `index` (global) of a sharded array, on every device."""
    n = array.shape[0]
    local = jnp.clip(index - offset, 0, n - 1)
    mine = (index >= offset) & (index < offset + n)
    rows = jnp.where(mine.reshape(mine.shape + (1,) * (array.ndim - 1)), array[local], 0)
    return jax.lax.psum(rows, parallel.DATA)

  def propose_any(gains, labels, window, offset, width):
    """Unconstrained steps: the `width` largest gains (lowest index on ties), in order."""
    del labels, window
    values, local = jax.lax.top_k(gains, width)
    values = jax.lax.all_gather(values, parallel.DATA, tiled=True)
    where = jax.lax.all_gather(local + offset, parallel.DATA, tiled=True)
    return jax.lax.sort((-values, where), num_keys=2)[1][:width]

  def propose_by_class(gains, labels, window, offset, width):
    """Class-constrained steps: step m takes the r-th best remaining example of its class, r = how many earlier
    steps of the window serve that class (the one-at-a-time "best not proposed yet", with one sort instead of
    `width` argmaxes). Each device offers, for every step, its own r-th best of the step's class: together the
    offers hold every class's global top r, and one sort of them ranks those (lowest index on ties)."""
    n = gains.shape[0]
    by_class, by_gain, by_index = jax.lax.sort((labels, -gains, jnp.arange(n)), num_keys=3)
    steps = jnp.arange(width)
    rank = jnp.sum((window[None, :] == window[:, None]) & (steps[None, :] < steps[:, None]), axis=1)
    at = jnp.minimum(jnp.searchsorted(by_class, window) + rank, n - 1)
    offered = by_class[at] == window  # else this device has fewer than r + 1 examples of the class
    offers = (jnp.where(offered, by_gain[at], jnp.inf), by_index[at] + offset)
    classes, _, where = jax.lax.sort((jax.lax.all_gather(window, parallel.DATA, tiled=True),
                                      *(jax.lax.all_gather(x, parallel.DATA, tiled=True) for x in offers)),
                                     num_keys=3)
    return where[jnp.searchsorted(classes, window) + rank]

  def gains_of(nc, conf, embeddings, everything):
    if gain == "original":
      return jnp.tanh((nc + conf) / eta) - jnp.tanh(nc / eta)
    all_embeddings, all_valid = everything
    all_nc = jax.lax.all_gather(nc, parallel.DATA, tiled=True)

    def column_block(columns, column_conf):
      def row_block(rows, row_nc, row_valid):
        raised = row_nc[:, None] + weight(affinity(rows, columns)) * column_conf[None, :]
        return jnp.sum((jnp.tanh(raised / eta) - jnp.tanh(row_nc / eta)[:, None]) * row_valid[:, None], 0)
      return similarity.sum_row_blocks(row_block, block, all_embeddings, all_nc, all_valid)

    return similarity.map_row_blocks(column_block, block, embeddings, conf)

  def depends_on_earlier(proposals, embeddings, valid):
    """[B] bool: whether proposal m's gain may change when an earlier proposal is picked. Own-term gain: they
    are neighbours. Exact gain: they share a neighbour (itself included)."""
    if gain == "original":
      linked = neighbours(affinity(proposals, proposals))
    else:
      def counts(rows, row_valid):
        near = (neighbours(affinity(rows, proposals)) & row_valid[:, None]).astype(jnp.float32)
        return near.T @ near
      linked = jax.lax.psum(similarity.sum_row_blocks(counts, block, embeddings, valid), parallel.DATA) > 0
    earlier = jnp.arange(proposals.shape[0])[None, :] < jnp.arange(proposals.shape[0])[:, None]
    return jnp.any(linked & earlier, axis=1)

  def make_round(width):
    def one_round(state, data):
      nc, taken, order, t, _, counts = state
      embeddings, conf, labels, valid, schedule, budget, everything = data
      offset = jax.lax.axis_index(parallel.DATA) * nc.shape[0]
      gains = jnp.where(taken, -jnp.inf, gains_of(nc, conf, embeddings, everything))
      window = jax.lax.dynamic_slice_in_dim(schedule, t, width)
      # The round covers the steps that are constrained like the first (class steps, or free ones) and proposes
      # for those alone; a schedule turns free at most once (class_schedule), so this rarely shortens a round.
      constrained = window >= 0
      alike = jnp.where(jnp.all(constrained == constrained[0]), width, jnp.argmax(constrained != constrained[0]))
      proposals = jax.lax.cond(constrained[0], functools.partial(propose_by_class, width=width),
                               functools.partial(propose_any, width=width), gains, labels, window, offset)
      rows, proposal_conf = gather(embeddings, proposals, offset), gather(conf, proposals, offset)
      conflict = depends_on_earlier(rows, embeddings, valid)
      kept = jnp.minimum(jnp.where(jnp.any(conflict), jnp.argmax(conflict), width), jnp.minimum(alike, budget - t))
      accepted = jnp.arange(width) < kept
      added = proposal_conf * accepted
      nc = similarity.map_row_blocks(lambda r, n: n + weight(affinity(r, rows)) @ added, block, embeddings, nc)
      mine = jnp.where(accepted & (proposals >= offset) & (proposals < offset + nc.shape[0]), proposals - offset,
                       nc.shape[0])
      taken = taken.at[mine].set(True, mode="drop")
      order = jax.lax.dynamic_update_slice_in_dim(order, proposals, t, 0)
      return nc, taken, order, t + kept, kept, counts + jnp.array([1, width], jnp.int32)
    return one_round

  rounds_by_width = [make_round(w) for w in widths]
  width_options = np.asarray(widths)

  def greedy(embeddings, conf, labels, valid, schedule, budget):
    everything = None  # the exact gain sums over every example: all of them on every device (O(N·d) each)
    if gain == "exact":
      everything = tuple(jax.lax.all_gather(x, parallel.DATA, tiled=True) for x in (embeddings, valid))
    data = (embeddings, conf, labels, valid, schedule, budget, everything)
    state = (jnp.zeros(conf.shape, jnp.float32), ~valid, jnp.zeros(schedule.shape, jnp.int32), jnp.int32(0),
             jnp.int32(widths[-1]), jnp.zeros(2, jnp.int32))

    def body(state):
      branch = jnp.minimum(jnp.searchsorted(width_options, 2 * state[4]), len(widths) - 1)
      return jax.lax.switch(branch, rounds_by_width, state, data)

    state = jax.lax.while_loop(lambda s: s[3] < budget, body, state)
    return state[2], state[5]

  sharded = P(parallel.DATA)
  mapped = jax.shard_map(greedy, mesh=mesh, in_specs=(sharded, sharded, sharded, sharded, P(), P()),
                         out_specs=(P(), P()), check_vma=False)
  return jax.jit(mapped)


def greedy_select(mesh: jax.sharding.Mesh, embeddings: np.ndarray, conf: np.ndarray, schedule: np.ndarray,
                  labels: np.ndarray, budget: int, *, metric: str, gain: str, tau: float, eta: float,
                  block_size: int, max_proposals: int) -> tuple[np.ndarray, dict[str, int]]:
  """(the `budget` greedy picks in order, {rounds, proposals: columns of the NC updates, kept or not}).
  `schedule[t]` is the class step t must pick from (−1: any), e.g. `class_schedule`; `embeddings` are used as
  given (`unit_rows` them for cossim)."""
  n = len(conf)
  rows_per_device, block = similarity.layout(n, mesh.devices.size, block_size)
  widths = proposal_widths(max_proposals, rows_per_device)
  padded = rows_per_device * mesh.devices.size
  valid = np.arange(padded) < n
  shard = functools.partial(similarity.shard_examples, mesh, rows_per_device=rows_per_device)
  steps = np.full(padded + widths[-1], -1, np.int32)
  steps[:budget] = schedule[:budget]
  greedy = build_greedy(mesh, metric, gain, float(tau), float(eta), block, widths)
  order, counts = greedy(shard(np.asarray(embeddings, np.float32)), shard(np.asarray(conf, np.float32)),
                         shard(np.asarray(labels, np.int32)), shard(valid), steps, np.int32(budget))
  rounds, proposals = parallel.to_host(counts).tolist()
  return parallel.to_host(order)[:budget].astype(np.int64), {"rounds": rounds, "proposals": proposals}


class Prune4ReL(Method):
  """Prune4ReL on the warm-up network's softmax outputs and penultimate embeddings of one scoring view."""
  name = "prune4rel"
  needs = frozenset({"logits", "features"})

  @classmethod
  def defaults(cls) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        metric="cossim",             # cossim | euclidean (the original's scripts never reach euclidean)
        uncertainty="LeastConfidence",  # conf = max softmax (as the scripts) | Entropy | Margin
        tau=0.95,                    # neighbour threshold on s = 0.5 + 0.5·cos (C10N scripts 0.975, C1M 0.8)
        eta=100.0,                   # tanh temperature (argparse default; most scripts pass 1)
        gain="original",             # original (own-term gain, as the code) | exact (true marginal gain)
        view="image_strong",         # the augmentation of the scoring pass (`make_view`); "test": none
        block_size=4096,             # rows per similarity block: memory O(block_size · max_proposals)
        max_proposals=256,           # most greedy steps one round proposes
    ))

  def __init__(self, cfg, mesh, seed):
    super().__init__(cfg, mesh, seed)
    for field, allowed in (("metric", METRICS), ("uncertainty", UNCERTAINTIES), ("gain", GAINS)):
      self.require_choice(field, allowed)
    if self.hp.eta <= 0:
      raise UserError(f"selection.prune4rel.eta={self.hp.eta} must be positive")
    for field in ("block_size", "max_proposals"):
      if self.hp[field] < 1:
        raise UserError(f"selection.prune4rel.{field}={self.hp[field]} must be >= 1")

  @property
  def view(self) -> str:
    return self.hp.view

  def select(self, inputs: SelectionInputs, budget: int) -> np.ndarray:
    if self.cfg.balance:
      schedule = class_schedule(inputs.labels, inputs.num_classes, budget)
    else:
      schedule = np.full(budget, -1, np.int32)
    embeddings = inputs.features
    if self.hp.metric == "cossim":
      embeddings = similarity.unit_rows(embeddings)
    order, _ = greedy_select(self.mesh, embeddings, confidence(inputs.probs, self.hp.uncertainty), schedule,
                             inputs.labels, budget, metric=self.hp.metric, gain=self.hp.gain, tau=self.hp.tau,
                             eta=self.hp.eta, block_size=self.hp.block_size,
                             max_proposals=self.hp.max_proposals)
    return order
