"""Where a train step's time goes on this device, JAX (XLA) vs PyTorch, one layer at a time.

  python benchmarks/conv_micro.py --width 16 --batch 64
  XLA_FLAGS=--xla_cpu_use_xnnpack=true python benchmarks/conv_micro.py --sections conv

Sections (`--sections`, comma-separated):
  conv   one 3×3 convolution (and the strided 3×3 that opens a stage) at the shapes of each PreActResNet-18
         stage: JAX forward, input gradient (dx), kernel gradient (dw), all three together (NHWC, Flax's
         layout) and all three with NCHW dimension numbers; PyTorch's forward + backward in NCHW and
         channels_last. GFLOP/s counts 2·MACs per pass.
  bn     BatchNorm (train mode) forward + backward alone at the same shapes: ours (`models/layers.py`, the affine
         form) and Flax's `nn.BatchNorm`, which the models used before.
  step   the whole CE step (forward, backward, SGD) of PreActResNet-18 with our BatchNorm, with Flax's
         nn.BatchNorm and without BatchNorm; and JAX's step with the state not donated, and with the batch passed
         from host memory each step.
Each figure is the median of `--repeats` blocks of `--calls` calls; the frameworks' blocks run in turn, so a
change in the (shared) machine's load hits both alike. Prints Markdown tables.
"""

import argparse
import collections
import contextlib
import functools
import os
import statistics
import sys

# PyTorch's OpenMP threads spin at barriers by default; on a machine shared with other jobs a descheduled
# thread stalls every barrier (measured here: a CE step 8× slower). Passive waiting is the fair setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch_reference  # noqa: E402
from train_step import timed  # noqa: E402
from prune4rel_jax.learners.base import cross_entropy  # noqa: E402
from prune4rel_jax.models import layers, preact_resnet  # noqa: E402


def stage_shapes(width: int, image: int):
  """(name, spatial size, in channels, out channels, stride) of PreActResNet-18's 3×3 convolutions."""
  return [("stem", image, 3, width, 1), ("stage1", image, width, width, 1),
          ("stage2 s2", image, width, 2 * width, 2), ("stage2", image // 2, 2 * width, 2 * width, 1),
          ("stage3", image // 4, 4 * width, 4 * width, 1), ("stage4", image // 8, 8 * width, 8 * width, 1)]


def block_timer(fn, calls: int):
  """`train_step.timed` after one call that compiles and warms `fn`."""
  fn()
  return timed(fn, calls)


def medians(runners: dict, repeats: int) -> dict[str, float]:
  runs = {k: [] for k in runners}
  for _ in range(repeats):
    for k, run in runners.items():
      runs[k].append(run())
  return {k: statistics.median(r) for k, r in runs.items()}


# ---- one convolution ---------------------------------------------------------------------------------------
def jax_conv_fns(batch, size, cin, cout, stride, layout):
  rng = np.random.default_rng(0)
  out = size // stride
  if layout == "NHWC":
    x, g, w = (rng.standard_normal(s, np.float32) for s in ((batch, size, size, cin), (batch, out, out, cout),
                                                             (3, 3, cin, cout)))
    dims = ("NHWC", "HWIO", "NHWC")
  else:
    x, g, w = (rng.standard_normal(s, np.float32) for s in ((batch, cin, size, size), (batch, cout, out, out),
                                                             (cout, cin, 3, 3)))
    dims = ("NCHW", "OIHW", "NCHW")
  x, g, w = jnp.asarray(x), jnp.asarray(g), jnp.asarray(w)
  conv = functools.partial(jax.lax.conv_general_dilated, window_strides=(stride, stride), padding=((1, 1), (1, 1)),
                           dimension_numbers=dims)

  def pieces(x, w, g):
    y, vjp = jax.vjp(conv, x, w)
    dx, dw = vjp(g)
    return y, dx, dw

  fwd = jax.jit(conv)
  dx = jax.jit(lambda x, w, g: pieces(x, w, g)[1])
  dw = jax.jit(lambda x, w, g: pieces(x, w, g)[2])
  everything = jax.jit(pieces)
  return {"fwd": lambda: fwd(x, w).block_until_ready(),
          "dx": lambda: dx(x, w, g).block_until_ready(),
          "dw": lambda: dw(x, w, g).block_until_ready(),
          "all": lambda: jax.block_until_ready(everything(x, w, g))}


def torch_conv_fn(batch, size, cin, cout, stride, channels_last):
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  x = torch.randn(batch, cin, size, size).contiguous(memory_format=fmt).requires_grad_()
  w = torch.randn(cout, cin, 3, 3).contiguous(memory_format=fmt).requires_grad_()
  g = torch.randn(batch, cout, size // stride, size // stride).contiguous(memory_format=fmt)

  def run():
    x.grad = w.grad = None
    F.conv2d(x, w, stride=stride, padding=1).backward(g)
  return run


def conv_section(args):
  print("\n### One 3×3 convolution: ms per call (GFLOP/s)\n")
  print("| layer | shape (N,H,W,Cin→Cout) | GFLOP fwd | JAX fwd | JAX dx | JAX dw | JAX fwd+dx+dw NHWC "
        "| JAX fwd+dx+dw NCHW | PyTorch fwd+bwd NCHW | PyTorch fwd+bwd channels_last | JAX ms / best PyTorch ms "
        "| load |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for name, size, cin, cout, stride in stage_shapes(args.width, args.image):
    jax_fns = jax_conv_fns(args.batch, size, cin, cout, stride, "NHWC")
    runners = {k: block_timer(f, args.calls) for k, f in jax_fns.items()}
    runners["nchw_all"] = block_timer(jax_conv_fns(args.batch, size, cin, cout, stride, "NCHW")["all"], args.calls)
    runners["torch"] = block_timer(torch_conv_fn(args.batch, size, cin, cout, stride, False), args.calls)
    runners["torch_cl"] = block_timer(torch_conv_fn(args.batch, size, cin, cout, stride, True), args.calls)
    t = medians(runners, args.repeats)
    out = size // stride
    gflop = 2 * args.batch * out * out * cout * cin * 9 / 1e9
    cell = lambda k, passes: f"{1e3 * t[k]:.2f} ({passes * gflop / t[k]:.0f})"  # noqa: E731
    print(f"| {name} | {args.batch},{size},{size},{cin}→{cout} | {gflop:.3f} | {cell('fwd', 1)} | {cell('dx', 1)} "
          f"| {cell('dw', 1)} | {cell('all', 3)} | {cell('nchw_all', 3)} | {cell('torch', 3)} | "
          f"{cell('torch_cl', 3)} | {t['all'] / min(t['torch'], t['torch_cl']):.2f} | {os.getloadavg()[0]:.2f} |",
          flush=True)


# ---- BatchNorm alone -------------------------------------------------------------------------------------
def jax_bn_fn(batch, size, channels, bn):
  x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, channels), np.float32))
  variables = bn.init(jax.random.key(0), x)

  @jax.jit
  def fwd_bwd(variables, x):
    def f(params, x):
      return bn.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, mutable=["batch_stats"])
    (y, stats), vjp = jax.vjp(f, variables["params"], x)
    return y, stats, vjp((x, jax.tree.map(jnp.zeros_like, stats)))

  return lambda: jax.block_until_ready(fwd_bwd(variables, x))


def torch_bn_fn(batch, size, channels, channels_last):
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  bn = torch.nn.BatchNorm2d(channels).train()
  x = torch.randn(batch, channels, size, size).contiguous(memory_format=fmt).requires_grad_()

  def run():
    x.grad = None
    bn.zero_grad(set_to_none=True)
    y = bn(x)
    y.backward(x.detach())
  return run


def bn_section(args):
  print("\n### BatchNorm (train mode) forward + backward: ms per call\n")
  print("| shape (N,H,W,C) | JAX, ours (affine form) | JAX, nn.BatchNorm | PyTorch NCHW | PyTorch channels_last "
        "| ours ms / best PyTorch ms | load |")
  print("|---|---|---|---|---|---|---|")
  for size, channels in sorted({(size, cout) for _, size, _, cout, stride in stage_shapes(args.width, args.image)
                                 if stride == 1}, reverse=True):
    flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    runners = {"jax": block_timer(jax_bn_fn(args.batch, size, channels, layers.batch_norm(train=True)), args.calls),
               "flax": block_timer(jax_bn_fn(args.batch, size, channels, flax_bn), args.calls),
               "torch": block_timer(torch_bn_fn(args.batch, size, channels, False), args.calls),
               "torch_cl": block_timer(torch_bn_fn(args.batch, size, channels, True), args.calls)}
    t = medians(runners, args.repeats)
    print(f"| {args.batch},{size},{size},{channels} | {1e3 * t['jax']:.2f} | {1e3 * t['flax']:.2f} | "
          f"{1e3 * t['torch']:.2f} | "
          f"{1e3 * t['torch_cl']:.2f} | {t['jax'] / min(t['torch'], t['torch_cl']):.2f} | "
          f"{os.getloadavg()[0]:.2f} |", flush=True)


# ---- the whole step --------------------------------------------------------------------------------------
NORMS = {"ours": layers.batch_norm,
         "nn.BatchNorm": lambda train: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5),
         "none": lambda train: (lambda x: x)}


@contextlib.contextmanager
def norm_layer(factory):
  """PreActResNet-18 with `factory(train)` as its BatchNorm while inside (the modules look the name up when
  they run, so initialise and trace inside)."""
  preact_resnet.batch_norm = factory
  try:
    yield
  finally:
    preact_resnet.batch_norm = layers.batch_norm


def jax_step_fns(args, norm: str):
  """Timed calls of the CE step of PreActResNet-18 (the learner's loss and optimiser) with the BatchNorm `norm`:
  state donated and batch on device (as `Learner.jitted_train_step`), state not donated, batch from host memory."""
  model = preact_resnet.PreActResNet18(num_classes=10, width=args.width)
  images = np.random.default_rng(0).standard_normal((args.batch, args.image, args.image, 3), np.float32)
  labels = np.random.default_rng(1).integers(0, 10, args.batch).astype(np.int32)
  tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.02, momentum=0.9, nesterov=True))

  def step(state, images, labels):
    params, stats, opt_state = state

    def loss_fn(params):
      (logits, _), updates = model.apply({"params": params, "batch_stats": stats}, images, train=True,
                                         mutable=["batch_stats"])
      return cross_entropy(logits, labels).mean(), updates.get("batch_stats", {})

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), stats, opt_state), loss

  donated, kept = jax.jit(step, donate_argnums=0), jax.jit(step)
  device_batch = (jnp.asarray(images), jnp.asarray(labels))
  calls, states = {}, {}
  with norm_layer(NORMS[norm]):
    variables = model.init(jax.random.key(0), jnp.asarray(images[:1]), train=False)
    for kind, fn, batch in (("donated", donated, device_batch), ("kept", kept, device_batch),
                            ("host", donated, (images, labels))):
      if kind not in args.step_variants.split(","):
        continue
      states[kind] = jax.tree.map(jnp.copy, (variables["params"], variables.get("batch_stats", {}),
                                             tx.init(variables["params"])))  # own buffers: donation frees them

      def call(kind=kind, fn=fn, batch=batch):
        states[kind], loss = fn(states[kind], *batch)
        loss.block_until_ready()
      call()  # traced here, with this BatchNorm
      calls[kind] = call
  return calls


def torch_step_fn(args, norm: str, channels_last: bool):
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  torch.manual_seed(0)
  model = torch_reference.PreActResNet18(10, args.width)
  if norm == "none":
    for module in list(model.modules()):
      for child_name, child in list(module.named_children()):
        if isinstance(child, torch.nn.BatchNorm2d):
          setattr(module, child_name, torch.nn.Identity())
  model = model.train().to(memory_format=fmt)
  step = torch_reference.ce_step_fn(model)
  images = torch.randn(args.batch, 3, args.image, args.image).contiguous(memory_format=fmt)
  labels = torch.randint(0, 10, (args.batch,))
  return lambda: step(images, labels)


def step_section(args):
  print("\n### Whole CE step of PreActResNet-18: img/s\n")
  print("| JAX BatchNorm | JAX donated, device batch | JAX not donated | JAX host batch | PyTorch NCHW "
        "| PyTorch channels_last | JAX img/s / best PyTorch img/s | load |")
  print("|---|---|---|---|---|---|---|---|")
  for norm in args.step_norms.split(","):
    runners = {k: block_timer(f, args.calls) for k, f in jax_step_fns(args, norm).items()}
    runners["torch"] = block_timer(torch_step_fn(args, norm, False), args.calls)
    runners["torch_cl"] = block_timer(torch_step_fn(args, norm, True), args.calls)
    ips = collections.defaultdict(lambda: float("nan"))
    ips.update({k: args.batch / s for k, s in medians(runners, args.repeats).items()})
    print(f"| {norm} | {ips['donated']:.1f} | {ips['kept']:.1f} | {ips['host']:.1f} | {ips['torch']:.1f} | "
          f"{ips['torch_cl']:.1f} | {ips['donated'] / max(ips['torch'], ips['torch_cl']):.2f} "
          f"| {os.getloadavg()[0]:.2f} |", flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--width", type=int, default=16)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--image", type=int, default=32)
  p.add_argument("--calls", type=int, default=3)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--sections", default="conv,bn,step")
  p.add_argument("--step-norms", default="ours,nn.BatchNorm,none",
                 help="step section: the BatchNorms to time (PyTorch: none = without, else with BatchNorm2d)")
  p.add_argument("--step-variants", default="donated,kept,host", help="step section: JAX variants to time")
  args = p.parse_args()
  print(f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads, "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}); {os.cpu_count()} CPUs; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; width {args.width}, batch {args.batch}; "
        f"load average {os.getloadavg()[0]:.2f}", flush=True)
  sections = {"conv": conv_section, "bn": bn_section, "step": step_section}
  for name in args.sections.split(","):
    sections[name](args)


if __name__ == "__main__":
  main()
