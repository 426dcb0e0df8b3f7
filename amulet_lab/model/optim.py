"""The optimiser and learning-rate schedule of training: a minimal AdamW and a one-cycle schedule."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["AdamW", "one_cycle"]


class AdamW:
    """Minimal AdamW (decoupled weight decay) over parameter groups.

    Why not ``torch.optim.AdamW``: constructing any ``torch.optim`` optimizer imports ``torch._dynamo``,
    which costs 5-20 s on a busy 2-core machine, once per process (every CLI call, every test run).
    """

    def __init__(self, groups: list[dict[str, Any]], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.groups = [{"params": list(g["params"]), "weight_decay": g.get("weight_decay", 0.0)} for g in groups]
        self.lr, self.betas, self.eps, self.t = lr, betas, eps, 0
        self.state = {id(p): (torch.zeros_like(p), torch.zeros_like(p)) for g in self.groups for p in g["params"]}

    def zero_grad(self) -> None:
        """Drop every parameter's gradient."""
        for g in self.groups:
            for p in g["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One AdamW update of every parameter that has a gradient."""
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for g in self.groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                m, v = self.state[id(p)]
                if g["weight_decay"]:
                    p.mul_(1 - self.lr * g["weight_decay"])
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.addcdiv_(m / c1, (v / c2).sqrt_().add_(self.eps), value=-self.lr)


def one_cycle(step: int, total: int, peak: float, warmup: float = 0.2) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` of the steps, then cosine decay to peak/100."""
    w = max(1, int(total * warmup))
    if step < w:
        return peak * (0.04 + 0.96 * step / w)
    progress = (step - w) / max(1, total - w)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
