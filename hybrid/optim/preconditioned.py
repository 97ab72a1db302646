"""One preconditioner, then a stock SGD step: the standalone form of K-FAC and QNG.

    loss.backward()
    optimizer.step():  grad <- P(grad)      (the preconditioner rewrites .grad in place)
                       SGD step             (torch's, with its momentum and weight decay)

``hybrid.optim.HybridOptimizer`` is the same with several preconditioners and AdamW on the
parameters none of them owns.
"""

from __future__ import annotations

from typing import Any

import torch


class PreconditionedSGD(torch.optim.SGD):
    r"""SGD on the parameters of one preconditioner, with the gradients it rewrites.

    .. math:: \theta \leftarrow \mathrm{SGD}\big(\theta,\; P(\nabla_\theta L)\big)

    Args:
        preconditioner: owns ``params`` and rewrites their ``.grad`` in ``precondition(lr)``.
        name: the key of its state in ``state_dict()`` and in ``preconditioners``.
        lr, momentum, weight_decay: of the SGD step.
    """

    def __init__(self, preconditioner, name: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        self.preconditioner = preconditioner
        self.preconditioners = {name: preconditioner}  # as in HybridOptimizer (see sampled_fisher_backward)
        super().__init__(preconditioner.params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    @torch.no_grad()
    def step(self, closure=None):
        """Precondition the gradients, then one SGD step. Returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.preconditioner.precondition(lr=self.param_groups[0]["lr"])
        super().step()
        return loss

    def stats(self) -> dict[str, float]:
        return self.preconditioner.stats()

    def state_dict(self) -> dict[str, Any]:
        (name,) = self.preconditioners
        return {**super().state_dict(), name: self.preconditioner.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        (name,) = self.preconditioners
        state_dict = dict(state_dict)
        self.preconditioner.load_state_dict(state_dict.pop(name))
        super().load_state_dict(state_dict)
