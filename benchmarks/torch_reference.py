"""PyTorch twins of our models and CE step, for `train_step.py` only (torch is a benchmark extra, never a
dependency of the package). Written from the architecture descriptions, to match `prune4rel_jax.models`."""

import torch
from torch import nn
import torch.nn.functional as F


class PreActBlock(nn.Module):
  def __init__(self, cin, cout, stride):
    super().__init__()
    self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.proj = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

  def forward(self, x):
    a = F.relu(self.bn1(x))
    shortcut = self.proj(a) if self.proj is not None else a
    return self.conv2(F.relu(self.bn2(self.conv1(a)))) + shortcut


class PreActResNet18(nn.Module):
  def __init__(self, num_classes, width=64, in_channels=3):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
    blocks, cin = [], width
    for stage, stride in enumerate((1, 2, 2, 2)):
      cout = width * 2**stage
      blocks += [PreActBlock(cin, cout, stride), PreActBlock(cout, cout, 1)]
      cin = cout
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(cin, num_classes)

  def forward(self, x):
    return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class Bottleneck(nn.Module):
  def __init__(self, cin, width, stride):
    super().__init__()
    cout = width * 4
    self.body = nn.Sequential(
        nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
    self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                 if stride != 1 or cin != cout else nn.Identity())

  def forward(self, x):
    return F.relu(self.body(x) + self.down(x))


class ResNet50(nn.Module):
  def __init__(self, num_classes, width=64, in_channels=3):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                              nn.MaxPool2d(3, 2, 1))
    blocks, cin = [], width
    for stage, (n, stride) in enumerate(((3, 1), (4, 2), (6, 2), (3, 2))):
      for b in range(n):
        blocks.append(Bottleneck(cin, width * 2**stage, stride if b == 0 else 1))
        cin = width * 2**stage * 4
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(cin, num_classes)

  def forward(self, x):
    return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


MODELS = {"preact_resnet18": PreActResNet18, "resnet50": ResNet50}


def ce_step_fn(model, lr=0.02, momentum=0.9, weight_decay=5e-4):
  """The original's CE step: SGD(momentum, nesterov, coupled weight decay), BN in train mode."""
  opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)

  def step(images, labels):
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    opt.step()
    return loss

  return step


def sop_plus_step_fn(model, num_examples, num_classes, lr=0.02, momentum=0.9, weight_decay=5e-4, lr_u=10.0,
                     lr_v=100.0, ratio_consistency=0.9, ratio_balance=0.1, init_std=1e-8, eps=1e-4):
  """SOP+ (the HEAD loss of `prune4rel_jax/learners/sop.py`): one train-mode pass over weak‖strong, the
  corrected-prediction CE + MSE + class balance + weak→strong KL; u and v are per-example tables whose batch rows
  take plain SGD from the same backward."""
  opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
  u = init_std * torch.randn(num_examples, 1)
  v = init_std * torch.randn(num_examples, num_classes)

  def step(weak, strong, labels, positions):
    opt.zero_grad(set_to_none=True)
    u_rows, v_rows = u[positions].requires_grad_(), v[positions].requires_grad_()
    logits_weak, logits_strong = model(torch.cat([weak, strong])).chunk(2)
    targets = F.one_hot(labels, num_classes).float()
    big_u = (u_rows**2 * targets).clamp(0, 1)
    big_v = (v_rows**2 * (1 - targets)).clamp(0, 1)
    corrected = (F.softmax(logits_weak, -1) + big_u - big_v.detach()).clamp(min=eps)
    corrected = F.normalize(corrected, p=1, dim=-1, eps=eps).clamp(eps, 1.0)
    ce = -(targets * corrected.log()).sum(-1).mean()
    hard = F.one_hot(logits_weak.argmax(-1), num_classes).float()
    mse = ((hard + big_u - big_v - targets)**2).sum(-1).mean()
    balance = -corrected.mean(0).clamp(eps, 1.0).log().mean()
    consistency = F.kl_div(F.log_softmax(logits_strong, -1), F.softmax(logits_weak, -1).detach(),
                           reduction="batchmean")
    loss = ce + mse + ratio_balance * balance + ratio_consistency * consistency
    loss.backward()
    opt.step()
    with torch.no_grad():
      u.index_add_(0, positions, -lr_u * u_rows.grad)
      v.index_add_(0, positions, -lr_v * v_rows.grad)
    return loss

  return step


def dividemix_step_fn(net, peer, num_examples, num_classes, lr=0.02, momentum=0.9, weight_decay=5e-4,
                      temperature=0.5, alpha=4.0, lambda_u=25.0, memory_format=torch.contiguous_format):
  """DivideMix's co-training step (`prune4rel_jax/learners/dividemix.py`): four no-grad train-mode passes of the
  trained net and two eval-mode passes of its peer guess the targets, which are sharpened; MixMatch mixes the 4B
  rows with one λ and one permutation; one gradient pass over them minimises L_x + λ_u·L_u + L_reg."""
  opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
  clean_prob = torch.rand(num_examples)
  beta = torch.distributions.Beta(alpha, alpha)

  def sharpen(p):
    p = p ** (1 / temperature)
    return p / p.sum(-1, keepdim=True)

  def step(x1, x2, u1, u2, labels, positions):
    rows = labels.shape[0]
    with torch.no_grad():
      net.train()
      net_u1, net_u2, net_x1, net_x2 = (F.softmax(net(x), -1) for x in (u1, u2, x1, x2))
      peer.eval()
      peer_u1, peer_u2 = (F.softmax(peer(x), -1) for x in (u1, u2))
      w = clean_prob[positions][:, None]
      targets_x = sharpen(w * F.one_hot(labels, num_classes) + (1 - w) * (net_x1 + net_x2) / 2)
      targets_u = sharpen((net_u1 + net_u2 + peer_u1 + peer_u2) / 4)
    lam = beta.sample().item()
    lam = max(lam, 1 - lam)
    inputs = torch.cat([x1, x2, u1, u2])
    targets = torch.cat([targets_x, targets_x, targets_u, targets_u])
    perm = torch.randperm(4 * rows)
    mixed = (lam * inputs + (1 - lam) * inputs[perm]).contiguous(memory_format=memory_format)
    mixed_targets = lam * targets + (1 - lam) * targets[perm]
    opt.zero_grad(set_to_none=True)
    logits = net(mixed)
    log_probs = F.log_softmax(logits, -1)
    probs = log_probs.exp()
    loss_x = -(mixed_targets[:2 * rows] * log_probs[:2 * rows]).sum(-1).mean()
    loss_u = ((probs[2 * rows:] - mixed_targets[2 * rows:])**2).mean()
    prior = 1.0 / num_classes
    loss_reg = (prior * (prior / probs.mean(0)).log()).sum()
    loss = loss_x + lambda_u * loss_u + loss_reg
    loss.backward()
    opt.step()
    return loss

  return step


def make_step(learner, model_name, width, batch, image_shape, num_classes, channels_last=False, seed=0):
  """A no-argument closure running one `learner` step on a fixed synthetic batch of `batch` examples, with the
  batch shapes of our JAX step (DivideMix: batch // 2 labelled + batch // 2 unlabelled examples)."""
  torch.manual_seed(seed)
  h, w, c = image_shape
  fmt = torch.channels_last if channels_last else torch.contiguous_format

  def network():
    return MODELS[model_name](num_classes, width, in_channels=c).train().to(memory_format=fmt)

  def images(rows):
    return torch.randn(rows, c, h, w).contiguous(memory_format=fmt)

  rows = batch // 2 if learner == "dividemix" else batch
  labels, positions = torch.randint(0, num_classes, (rows,)), torch.arange(rows)
  if learner == "ce":
    step, args = ce_step_fn(network()), (images(rows), labels)
  elif learner == "sop_plus":
    step, args = sop_plus_step_fn(network(), rows, num_classes), (images(rows), images(rows), labels, positions)
  elif learner == "dividemix":
    step = dividemix_step_fn(network(), network(), rows, num_classes, memory_format=fmt)
    args = (images(rows), images(rows), images(rows), images(rows), labels, positions)
  else:
    raise ValueError(f"no PyTorch step for learner {learner!r}")
  return lambda: step(*args)
