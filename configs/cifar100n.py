"""CIFAR-100N (CIFAR-100 images + human fine labels), the original's `scripts/sop_CF100.sh` and
`dividemix_CF100.sh`.

  prune4rel --config configs/cifar100n.py:sop_plus --config.data.dir=/path/to/cifar100

`data.dir` holds cifar-100-python/ and CIFAR-100_human.pt (README, Datasets). The argument picks the learner:
ce | sop_plus (default) | dividemix. `data.noise_type`: noisy (the human labels; the original's `real`), or
sym | asym with `data.noise_rate`. The scripts loop `selection.fraction` over 0.2, 0.4, 0.6, 0.8.
"""

from prune4rel_jax.config import default_config


def get_config(learner: str = "sop_plus"):
  c = default_config()
  c.data.name = "cifar100"
  c.data.noise_type = "noisy"
  c.model.name = "preact_resnet18"
  c.epochs = 300
  c.batch_size = 128
  c.optim.update(lr=0.02, weight_decay=5e-4, schedule="cosine")
  c.selection.name = "prune4rel"
  c.selection.update(fraction=0.2, balance=True, warmup_epochs=30)  # -se 30
  c.selection.prune4rel.update(tau=0.95, eta=1.0)
  c.learner.name = learner
  if learner == "sop_plus":
    c.learner.sop_plus.update(lr_u=1.0, lr_v=100.0, ratio_consistency=0.9, ratio_balance=0.1)
  elif learner == "dividemix":
    # lambda_u and alpha as the script passes them (λu 1); the rest: DivideMix's own CIFAR-100 settings.
    c.learner.dividemix.update(warmup_epochs=30, p_threshold=0.5, temperature=0.5, alpha=4.0, lambda_u=1.0,
                               rampup_epochs=16, gmm_reg_covar=5e-4, loss_history=1, confidence_penalty="auto",
                               mix_unlabelled="all")
  return c
