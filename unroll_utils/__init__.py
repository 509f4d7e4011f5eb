"""unroll_utils: the tested helper module behind the unrolling-sgd notebooks.

Reference: A. Thudi, G. Deza, V. Chandrasekaran, N. Papernot, "Unrolling SGD: Understanding
Factors Influencing Machine Unlearning", IEEE EuroS&P 2022 (arXiv:2109.13398).

Modules are named by the paper's nouns: ``data`` (datasets, forget sets), ``models``,
``losses`` (SD loss), ``hessian`` (top Hessian eigenvalue, sigma), ``unlearning``
(single gradient unlearning), ``propagated`` (its Hessian-propagated variant, beyond the paper), ``training`` (data order, augmentation, SGD steps),
``trajectory`` (the lock-step run of M, M' and M''),
``distances`` (weight distances, paired by name), ``metrics`` (verification error, unlearning
error), ``statistics`` (intervals over seeds), ``results`` (atomic tables, checkpoints), ``plot``
(the one plotting helper), ``params`` (validation of notebook parameters). Above them, for running the paper as a baseline: ``privacy`` (membership inference,
privacy risk score), ``baselines`` (forget-benchmark methods and runner), ``sisa`` (SISA training).
"""

__version__ = "0.1.0"
