"""Adversarial robustness: FGSM/PGD examples, adversarial training, accuracy under attack.

- `fgsm`, `pgd`: L-inf adversarial examples (NumPy in, NumPy out) for models ending in logits or
  a softmax.
- `AdversarialModel`: a `keras.Model` whose ``train_step`` trains on clean and adversarial
  batches.
- `robust_accuracy`: accuracy under PGD at ``epsilon``, white-box or transferred from another
  model (how `tfopt.bench` measures exported artifacts, which have no gradients).
"""

from tfopt.robust._attacks import (
    METHODS,
    attack_loss,
    fgsm,
    output_kind,
    perturb,
    pgd,
    robust_accuracy,
)
from tfopt.robust._model import AdversarialModel

__all__ = [
    "METHODS",
    "AdversarialModel",
    "attack_loss",
    "fgsm",
    "output_kind",
    "perturb",
    "pgd",
    "robust_accuracy",
]
