"""Knowledge distillation (Hinton et al. 2015) of classification outputs.

Softmax heads, student logits ``z``, teacher logits ``r``, temperature ``T``:

    L = CE(p, softmax(z)) + T²·KL(softmax(r/T) ‖ softmax(z/T))

``T²`` keeps the soft term's gradient magnitude independent of ``T``. Sigmoid heads
(focal, BCE) are ``C`` independent binary classifiers; the analogue is the per-class
binary KL between ``sigmoid(r/T)`` and ``sigmoid(z/T)``, times ``T²``. It equals the
per-class BCE with the teacher's soft targets minus the teacher's (constant) binary
entropy: the same gradient, and exactly 0 when student and teacher agree.
Everything is computed from logits (``log_softmax``, ``logsigmoid``), never as the log
of a probability that may have rounded to 0.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from tunedet.losses.cross_entropy import softmax_cross_entropy
from tunedet.losses.reduction import Reduction, reduce_loss


def softmax_distillation(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    reduction: Reduction = "none",
) -> Tensor:
    """``T²·KL(softmax(r/T) ‖ softmax(z/T))`` per row: (N, K), (N, K) → (N,)."""
    if temperature <= 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    log_q = F.log_softmax(teacher_logits.detach().to(student_logits.dtype) / temperature, -1)
    log_p = F.log_softmax(student_logits / temperature, dim=-1)
    kl = (log_q.exp() * (log_q - log_p)).sum(dim=-1)
    return reduce_loss(kl * temperature**2, reduction)


def sigmoid_distillation(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    reduction: Reduction = "none",
) -> Tensor:
    """``T²·KL(Bernoulli(σ(r/T)) ‖ Bernoulli(σ(z/T)))`` element-wise: (N, C), (N, C) → (N, C)."""
    if temperature <= 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    r = teacher_logits.detach().to(student_logits.dtype) / temperature
    z = student_logits / temperature
    q = r.sigmoid()
    # q·(log q − log p) + (1 − q)·(log(1 − q) − log(1 − p)), with log σ(x) = logsigmoid(x)
    # and log(1 − σ(x)) = logsigmoid(−x)
    kl = q * (F.logsigmoid(r) - F.logsigmoid(z)) + (1 - q) * (F.logsigmoid(-r) - F.logsigmoid(-z))
    return reduce_loss(kl * temperature**2, reduction)


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float = 1.0,
    weight: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """The full softmax objective ``CE(p, softmax(z)) + weight·T²·KL(...)`` per row.

    student_logits, teacher_logits: (N, K); labels: (N,) long, or (N, K) soft targets.
    """
    if labels.dim() == student_logits.dim() - 1:
        hard = F.one_hot(labels.long(), student_logits.shape[-1]).to(student_logits.dtype)
    else:
        hard = labels.to(student_logits.dtype)
    ce = softmax_cross_entropy(student_logits, hard)
    soft = softmax_distillation(student_logits, teacher_logits, temperature)
    return reduce_loss(ce + weight * soft, reduction)
