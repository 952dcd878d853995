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
