"""One preconditioner, then a stock SGD step: the standalone form of K-FAC and QNG.

    loss.backward()
    optimizer.step():  grad <- P(grad)      (the preconditioner rewrites .grad in place)
                       SGD step             (torch's, with its momentum and weight decay)

It is ``hybrid.optim.HybridOptimizer`` with one part and nothing else to train: the same
``state_dict`` layout, the same ``before_backward``.
"""

from __future__ import annotations

from hybrid.optim.optimizer import HybridOptimizer, preconditioned_sgd


class PreconditionedSGD(HybridOptimizer):
    r"""SGD on the parameters of one preconditioner, with the gradients it rewrites.

    .. math:: \theta \leftarrow \mathrm{SGD}\big(\theta,\; P(\nabla_\theta L)\big)

    Args:
        preconditioner: owns ``params`` and rewrites their ``.grad`` in ``precondition(lr)``.
        name: the name of its part (its key in ``state_dict()`` and ``preconditioners``).
        lr, momentum, weight_decay: of the SGD step.
    """

    def __init__(self, preconditioner, name: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        self.preconditioner = preconditioner
        part = preconditioned_sgd(name, preconditioner, lr, momentum=momentum, weight_decay=weight_decay)
        super().__init__(None, [part], lr=lr, train_rest=False)
