"""Stop a run whose loss turned NaN/inf, naming the iteration, the terms and the last checkpoint."""

from __future__ import annotations

import math

import torch


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message says where and what to resume from."""

    def __init__(
        self,
        message: str,
        iteration: int,
        terms: dict[str, float],
        last_checkpoint: str | None,
    ):
        super().__init__(message)
        self.iteration = iteration
        self.terms = terms
        self.last_checkpoint = last_checkpoint


def _values(loss_terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each term as a float (the sum of a non-scalar term), in one device sync."""
    names = list(loss_terms)
    if not names:
        return {}
    stacked = torch.stack([torch.as_tensor(loss_terms[n]).detach().float().sum() for n in names])
    return dict(zip(names, stacked.cpu().tolist(), strict=True))


def is_finite_loss(loss_terms: dict[str, torch.Tensor]) -> bool:
    """True when every term is finite (one device sync)."""
    if not loss_terms:
        return True
    stacked = torch.stack(
        [torch.as_tensor(t).detach().float().isfinite().all() for t in loss_terms.values()]
    )
    return bool(stacked.all())


def check_finite_loss(
    loss_terms: dict[str, torch.Tensor], iteration: int, last_checkpoint: str | None
) -> None:
    """Raise ``NonFiniteLossError`` if any loss term is NaN or infinite.

    Message: ``loss became nan at iteration 123 (cls=nan, box=0.412); last good
    checkpoint: runs/x/checkpoints/iter_0000100.pt`` (or ``none written yet``).
    """
    if is_finite_loss(loss_terms):
        return
    values = _values(loss_terms)
    kind = "inf" if any(math.isinf(v) for v in values.values()) else "nan"
    if any(math.isnan(v) for v in values.values()):
        kind = "nan"
    terms = ", ".join(f"{name}={value:.4g}" for name, value in values.items())
    where = str(last_checkpoint) if last_checkpoint else "none written yet"
    message = (
        f"loss became {kind} at iteration {iteration} ({terms}); last good checkpoint: {where}"
    )
    raise NonFiniteLossError(message, iteration, values, last_checkpoint)
