"""CIFAR-10N (CIFAR-10 images + human labels), the original's `scripts/sop_CF10.sh` and `dividemix_CF10.sh`.

  prune4rel --config configs/cifar10n.py:sop_plus --config.data.dir=/path/to/cifar10 --config.data.noise_type=worst

`data.dir` holds cifar-10-batches-py/ and CIFAR-10_human.pt (README, Datasets). The argument picks the learner:
ce | sop_plus (default) | dividemix. `data.noise_type`: aggre | rand1 | rand2 | rand3 | worst (the scripts loop
over worst, rand2, rand3), or sym | asym with `data.noise_rate` for synthetic noise. The scripts loop
`selection.fraction` over 0.2, 0.4, 0.6, 0.8.
"""

from prune4rel_jax.config import default_config


def get_config(learner: str = "sop_plus"):
  c = default_config()
  c.data.name = "cifar10"
  c.data.noise_type = "worst"
  c.model.name = "preact_resnet18"
  c.epochs = 300
  c.batch_size = 128
  c.optim.update(lr=0.02, weight_decay=5e-4, schedule="cosine")
  c.selection.name = "prune4rel"
  c.selection.update(fraction=0.2, balance=True, warmup_epochs=10)  # -se 10
  c.selection.prune4rel.update(tau=0.975, eta=1.0)
  c.learner.name = learner
  if learner == "sop_plus":
    c.learner.sop_plus.update(lr_u=10.0, lr_v=100.0, ratio_consistency=0.9, ratio_balance=0.1)
  elif learner == "dividemix":
    c.selection.prune4rel.eta = 100.0  # dividemix_CF10.sh does not pass --eta: the argparse default
    # lambda_u and alpha as the script passes them (λu 1); the rest: DivideMix's own CIFAR-10 settings.
    c.learner.dividemix.update(warmup_epochs=10, p_threshold=0.5, temperature=0.5, alpha=4.0, lambda_u=1.0,
                               rampup_epochs=16, gmm_reg_covar=5e-4, loss_history=1, confidence_penalty="auto",
                               mix_unlabelled="all")
  return c
