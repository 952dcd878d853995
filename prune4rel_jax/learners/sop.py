"""SOP / SOP+ (Liu et al., "Robust Training under Label Noise by Over-parameterization", ICML 2022).

Every training example i gets a scalar u_i and a vector v_i ∈ ℝ^C, initialised at N(0, init_std²); the network's
*probabilities* are corrected by U_i = clip(u_i²·y_i, 0, 1) and V_i = clip(v_i²⊙(1 − y_i), 0, 1), so u and v absorb
a noisy label instead of the network fitting it. The loss is the original's at HEAD (shengliu66/SOP
`model/loss.py`, copied unchanged into kaist-dmlab/Prune4Rel `robustlearner/sop.py`): CE on the corrected
prediction, MSE between it and the label with the network's hard prediction, and for SOP+ a class-balance term
(`ratio_balance`) and a weak→strong consistency KL (`ratio_consistency`). Plain SOP is `ratio_consistency =
ratio_balance = 0`, which also drops the strong view from the pipeline.

u and v (float32, as is the loss arithmetic) are indexed by `position`, the example's row in
the subset being trained, and live sharded along that axis, P('data'). The step touches only the batch's rows,
in `shard_map`: every device all-gathers the batch's B positions, reads the rows it owns (the others read 0)
and a reduce-scatter hands each device its batch shard's rows; the update is all-gathered (B rows) and each
owner adds it to its own rows. Left to itself, XLA's SPMD partitioner may or may not partition a gather from a
sharded operand like this (it depends on the backend and shapes; falling back means an all-gather of the whole
table every step), so the traffic is spelt out. `tests/test_sop.py` checks that the compiled step's HLO has no
collective of table size (`compiled.as_text()`; on CPU the step's collectives are one s32[B] all-gather of the
positions, f32[B/n, ·] reduce-scatters of the rows, f32[B, ·] all-gathers of the updates).
u and v take plain SGD at their own constant learning rates (no momentum, no weight decay), in the same jitted
step as the network, all from one gradient of the same total loss.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct
from jax.sharding import PartitionSpec as P

from prune4rel_jax import parallel
from prune4rel_jax.errors import UserError
from prune4rel_jax.learners.base import Learner, TrainState, apply_gradients

EPS = 1e-4  # the original's clamp floor and L1-normalisation eps
# u/v rows are padded to a multiple of lcm(#devices, ROW_MULTIPLE): the shape (and a checkpoint's) is the same on
# any power-of-two device count up to ROW_MULTIPLE; padded rows are never read.
ROW_MULTIPLE = 1024


class SOPState(struct.PyTreeNode):
  network: TrainState
  u: jax.Array  # [rows, 1], sharded along rows
  v: jax.Array  # [rows, C]


def sop_loss(logits: jax.Array, logits_strong: jax.Array | None, targets: jax.Array, u: jax.Array, v: jax.Array,
             ratio_consistency: float, ratio_balance: float) -> tuple[jax.Array, jax.Array]:
  """The SOP(+) loss of a batch (mean over its B rows) and the per-example CE term.

  logits, logits_strong: [B, C] of the weak and strong view (float32); targets: one-hot noisy labels [B, C];
  u [B, 1], v [B, C]: the batch's rows. Gradients flow as in the original: CE and the balance term reach θ and u
  (V is stopped inside the corrected prediction), MSE reaches u and v only, the consistency term θ only.
  """
  U = jnp.clip(u**2 * targets, 0.0, 1.0)
  V = jnp.clip(v**2 * (1.0 - targets), 0.0, 1.0)
  corrected = jnp.maximum(jax.nn.softmax(logits) + U - jax.lax.stop_gradient(V), EPS)
  corrected = corrected / jnp.maximum(corrected.sum(-1, keepdims=True), EPS)  # F.normalize(p=1); entries > 0
  corrected = jnp.clip(corrected, EPS, 1.0)
  ce = -(targets * jnp.log(corrected)).sum(-1)
  hard = jax.nn.one_hot(jnp.argmax(logits, -1), targets.shape[-1], dtype=targets.dtype)
  mse = ((hard + U - V - targets)**2).sum(-1)
  loss = ce.mean() + mse.mean()
  if ratio_balance > 0:  # -(1/C) Σ_c log q̄_c: KL(uniform ‖ batch-mean corrected prediction) + log C
    loss += ratio_balance * -jnp.log(jnp.clip(corrected.mean(0), EPS, 1.0)).mean()
  if logits_strong is not None and ratio_consistency > 0:  # KL(sg(p_weak) ‖ p_strong), PyTorch's kl_div
    p_weak = jax.lax.stop_gradient(jax.nn.softmax(logits))
    kl = (jax.scipy.special.xlogy(p_weak, p_weak) - p_weak * jax.nn.log_softmax(logits_strong)).sum(-1)
    loss += ratio_consistency * kl.mean()
  return loss, ce


# ---- the batch's rows of an example-sharded table ----------------------------------------------------------
def _local_rows(positions: jax.Array, shard_rows: int) -> jax.Array:
  """Each global position's row in this device's shard; rows another device owns come out >= `shard_rows`, which
  the callers' out-of-bounds modes (fill 0, drop) ignore. Negative ones are moved there too: JAX would wrap them."""
  local = positions - jax.lax.axis_index(parallel.DATA) * shard_rows
  return jnp.where(local >= 0, local, shard_rows)


def gather_rows(mesh: jax.sharding.Mesh, table: jax.Array, positions: jax.Array) -> jax.Array:
  """`table[positions]` for a table and a batch both sharded on 'data'; moves B rows, never the table."""

  def local(shard, positions):
    everyone = jax.lax.all_gather(positions, parallel.DATA, tiled=True)
    rows = shard.at[_local_rows(everyone, shard.shape[0])].get(mode="fill", fill_value=0)
    return jax.lax.psum_scatter(rows, parallel.DATA, scatter_dimension=0, tiled=True)  # exactly one owner ≠ 0

  return jax.shard_map(local, mesh=mesh, in_specs=(P(parallel.DATA),) * 2, out_specs=P(parallel.DATA))(
      table, positions)


def add_rows(mesh: jax.sharding.Mesh, table: jax.Array, positions: jax.Array, deltas: jax.Array) -> jax.Array:
  """`table.at[positions].add(deltas)` (duplicates accumulate, as PyTorch's gradient of `u[index]` does), each
  device updating only the rows it owns."""

  def local(shard, positions, deltas):
    everyone = jax.lax.all_gather(positions, parallel.DATA, tiled=True)
    deltas = jax.lax.all_gather(deltas, parallel.DATA, tiled=True)
    return shard.at[_local_rows(everyone, shard.shape[0])].add(deltas, mode="drop")

  return jax.shard_map(local, mesh=mesh, in_specs=(P(parallel.DATA),) * 3, out_specs=P(parallel.DATA))(
      table, positions, deltas)


def table_rows(num_examples: int, mesh: jax.sharding.Mesh) -> int:
  step = math.lcm(mesh.devices.size, ROW_MULTIPLE)
  return -(-num_examples // step) * step


def train_step(state: SOPState, batch, key, *, model: nn.Module, tx: optax.GradientTransformation,
               hp: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, num_classes: int, two_views: bool):
  """One step of the network, u and v on the batch from one gradient of the total loss (`sop_loss`): SGD on the
  batch's u/v rows (`gather_rows`/`add_rows`), the optimiser on the network. `two_views`: SOP+ (weak and strong)."""
  del key
  net = state.network
  labels, positions = batch["label"], batch["position"]
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  images = batch["image"]
  if two_views:  # one pass over weak‖strong, so BatchNorm sees both; rows interleaved to stay on their device
    images = jnp.stack([images, batch["image_strong"]], axis=1).reshape(-1, *images.shape[1:])

  def loss_fn(params, u, v):
    (logits, _), updates = model.apply({"params": params, "batch_stats": net.batch_stats}, images, train=True,
                                       mutable=["batch_stats"])
    logits = logits.astype(jnp.float32)
    if two_views:
      pairs = logits.reshape(-1, 2, logits.shape[-1])
      weak, strong = pairs[:, 0], pairs[:, 1]
    else:
      weak, strong = logits, None
    loss, ce = sop_loss(weak, strong, targets, u, v, hp.ratio_consistency, hp.ratio_balance)
    return loss, (updates["batch_stats"], weak, ce)

  u_rows, v_rows = gather_rows(mesh, state.u, positions), gather_rows(mesh, state.v, positions)
  (loss, (batch_stats, logits, ce)), (grads, grad_u, grad_v) = jax.value_and_grad(
      loss_fn, argnums=(0, 1, 2), has_aux=True)(net.params, u_rows, v_rows)
  state = state.replace(network=apply_gradients(tx, net, grads, batch_stats),
                        u=add_rows(mesh, state.u, positions, -hp.lr_u * grad_u),
                        v=add_rows(mesh, state.v, positions, -hp.lr_v * grad_v))
  correct = jnp.argmax(logits, -1) == labels
  metrics = {"loss": loss, "accuracy": correct.mean()}
  return state, metrics, {"index": batch["index"], "correct": correct, "loss": ce}


class SOPPlus(Learner):
  name = "sop_plus"
  views = ("image", "image_strong")

  def __init__(self, config, model, num_classes, mesh):
    super().__init__(config, model, num_classes, mesh)
    for field in ("lr_u", "lr_v", "ratio_consistency", "ratio_balance", "init_std"):
      if not self.hp[field] >= 0:
        raise UserError(f"learner.{self.name}.{field}={self.hp[field]} must be >= 0")
    if self.hp.ratio_consistency == 0:  # plain SOP: the strong view would never be read
      self.views = ("image",)

  @classmethod
  def defaults(cls) -> ml_collections.ConfigDict:
    """lr_u, lr_v: Prune4Rel's argparse defaults; init_std: the 1e-8 its code fixes. Its argparse leaves `-rc`/`-rb`
    at 0 (plain SOP); the SOP+ values here are what its CIFAR scripts pass (`-rc 0.9 -rb 0.1`)."""
    return ml_collections.ConfigDict(dict(
        lr_u=10.0,               # SGD lr of u (constant; no momentum, no weight decay)
        lr_v=100.0,              # SGD lr of v
        ratio_consistency=0.9,   # `-rc`: weight of KL(weak ‖ strong); 0 = no strong view
        ratio_balance=0.1,       # `-rb`: weight of the class-balance term
        init_std=1e-8,           # u, v ~ N(0, init_std²)
    ))

  # ---- state ----------------------------------------------------------------------------------------------
  def init(self, rng: jax.Array, image_shape: tuple[int, ...], num_examples: int) -> SOPState:
    network = self.network_state(rng, image_shape)
    rows = table_rows(num_examples, self.mesh)

    def create(key):
      ku, kv = jax.random.split(key)
      pad = ((0, rows - num_examples), (0, 0))
      u = self.hp.init_std * jax.random.normal(ku, (num_examples, 1), jnp.float32)
      v = self.hp.init_std * jax.random.normal(kv, (num_examples, self.num_classes), jnp.float32)
      return jnp.pad(u, pad), jnp.pad(v, pad)

    u, v = jax.jit(create, out_shardings=parallel.example_sharded(self.mesh))(jax.random.fold_in(rng, 1))
    return SOPState(network=network, u=u, v=v)

  def with_learning_rate(self, state: SOPState, lr: float) -> SOPState:
    return state.replace(network=super().with_learning_rate(state.network, lr))

  def step_count(self, state: SOPState) -> jax.Array:
    return state.network.step

  # ---- training -------------------------------------------------------------------------------------------
  def step_function(self):
    return functools.partial(train_step, model=self.model, tx=self.tx, hp=self.hp, mesh=self.mesh,
                             num_classes=self.num_classes, two_views=len(self.views) == 2)

  # ---- prediction: the network alone (u and v are training-time only) -------------------------------------
  def predict(self, state: SOPState, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    return super().predict(state.network, images)
