"""One preconditioner, then a stock SGD step: the standalone form of K-FAC and QNG.

    loss.backward()
    optimizer.step():  grad <- P(grad)      (the preconditioner rewrites .grad in place)
                       SGD step             (torch's, with its momentum and weight decay)

It is ``hybrid.optim.HybridOptimizer`` with one preconditioner and nothing else to train.
"""

from __future__ import annotations

from typing import Any

from hybrid.optim.optimizer import HybridOptimizer


class PreconditionedSGD(HybridOptimizer):
    r"""SGD on the parameters of one preconditioner, with the gradients it rewrites.

    .. math:: \theta \leftarrow \mathrm{SGD}\big(\theta,\; P(\nabla_\theta L)\big)

    Args:
        preconditioner: owns ``params`` and rewrites their ``.grad`` in ``precondition(lr)``.
        name: the key of its state in ``state_dict()`` and in ``preconditioners``.
        lr, momentum, weight_decay: of the SGD step.
    """

    def __init__(self, preconditioner, name: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        self.preconditioner = preconditioner
        group = {"momentum": momentum, "weight_decay": weight_decay}
        super().__init__(None, [(name, preconditioner, lr, group)], lr=lr, train_rest=False)

    def state_dict(self) -> dict[str, Any]:
        (name,) = self.preconditioners
        return {**self.sgd.state_dict(), name: self.preconditioner.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        (name,) = self.preconditioners
        state_dict = dict(state_dict)
        self.preconditioner.load_state_dict(state_dict.pop(name))
        self.sgd.load_state_dict(state_dict)
        self._share_param_groups()
