r"""Adam in the eigenbasis of the quantum metric: the circuit-weight counterpart of ``eigen_adam``.

    every curvature_every steps:  G = Q diag Q^T, G the (P, P) metric of QNGPreconditioner (float64 eigh);
                                  carry m, v into the new basis
    every step:                   g~ = Q^T grad;  m, v <- Adam moments of g~ (bias-corrected)
                                  grad <- Q (m^ / (sqrt(v^) + eps))

Adam's per-coordinate scaling replaces the damped inverse of the metric's eigenvalues: no
damping, and the lr is Adam's. Circuit weights are angles, so there is no weight decay. The
metric (subsampled inputs, refresh schedule, riding estimates on Qiskit backends) is
``QNGPreconditioner``'s, which this one holds and drives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from hybrid.errors import check_choice, check_number
from hybrid.optim.eigen_adam import carry_moments
from hybrid.optim.kfac_blocks import adam_direction
from hybrid.optim.optimizer import settings_or_keywords
from hybrid.optim.preconditioned import PreconditionedSGD
from hybrid.optim.qng import APPROX, QNGPreconditioner, QNGSettings


@dataclass
class MetricAdamSettings:
    """``[optim.metric_adam]``: the settings ``MetricAdamPreconditioner`` takes, and its SGD step's lr."""

    lr: float = 3e-3  # peak learning rate of the circuit weights, in Adam's units
    beta1: float = 0.9  # Adam's first-moment decay, in the metric's eigenbasis
    beta2: float = 0.99  # Adam's second-moment decay, in the metric's eigenbasis
    eps: float = 1e-8  # added to sqrt(v^) as in Adam
    approx: str = "block-diag"  # metric approximation: diag, block-diag or full (diag: the basis is the identity)
    curvature_every: int = 10  # steps between metric refreshes, each a new eigenbasis
    metric_samples: int = 64  # circuit inputs of the latest batch the metric is averaged over

    def validate(self, prefix: str = "optim.metric_adam.") -> MetricAdamSettings:
        """Raise InputError naming ``prefix + key`` for the first setting out of range."""
        check_number(f"{prefix}lr", self.lr, low=0, low_open=True)
        for key in ("beta1", "beta2"):
            check_number(f"{prefix}{key}", getattr(self, key), low=0, high=1, high_open=True)
        check_number(f"{prefix}eps", self.eps, low=0)
        check_number(f"{prefix}curvature_every", self.curvature_every, low=1, integer=True)
        check_number(f"{prefix}metric_samples", self.metric_samples, low=1, integer=True)
        check_choice(f"{prefix}approx", "full" if self.approx is None else self.approx, APPROX)
        return self


_DEFAULT = MetricAdamSettings()


class MetricAdamPreconditioner:
    r"""Adam on each ``QuantumLayer``'s flattened weights in the eigenbasis of its metric.

    .. math:: \nabla_\theta \leftarrow Q \frac{\hat m}{\sqrt{\hat v} + \epsilon}, \qquad
              m, v = \mathrm{Adam\ moments\ of\ } Q^T \nabla_\theta, \quad G = Q \Lambda Q^T

    An SGD step (momentum 0) at Adam's lr then makes this Adam on the rotated weights
    ``Q^T theta``. The basis is refreshed with the metric (every ``curvature_every`` steps, the
    first on the first step); the moments follow it (``carry_moments``). A metric whose ``eigh``
    fails keeps the previous basis.

    Args:
        layers: the ``QuantumLayer`` modules whose ``weights`` it owns.
        settings: a ``MetricAdamSettings`` already validated (``validate(cfg)``); its ``lr`` is the SGD step's.
        seed, method: ``QNGPreconditioner``'s.
        **keywords: ``MetricAdamSettings`` fields instead of (or over) ``settings``, validated here.

    Raises:
        InputError: as ``QNGPreconditioner``, or a keyword out of range.
    """

    def __init__(
        self, layers, settings: MetricAdamSettings | None = None, *, seed: int | None = None,
        method: str | None = None, **keywords,
    ):  # fmt: skip
        s = self.settings = settings_or_keywords(MetricAdamSettings, settings, keywords)
        metric = QNGSettings(approx=s.approx, curvature_every=s.curvature_every, metric_samples=s.metric_samples)
        self.qng = QNGPreconditioner(layers, metric, seed=seed, method=method)  # its metric and schedule
        self.params = self.qng.params
        self.beta1, self.beta2, self.eps = s.beta1, s.beta2, s.eps
        self.bases: list[torch.Tensor | None] = [None] * len(self.params)  # (P, P) per layer, in the weights' dtype
        self.moments: list[tuple[torch.Tensor, torch.Tensor, int] | None] = [None] * len(self.params)  # m, v, steps
        self.fallbacks = 0

    def before_backward(self, logits: torch.Tensor) -> None:
        """Nothing, as QNG."""

    @torch.no_grad()
    def precondition(self, lr: float) -> None:
        """Refresh the metrics and bases when due, then write each owned ``.grad``'s Adam
        direction in the metric's eigenbasis (``lr`` unused)."""
        qng = self.qng
        if qng.calls % qng.curvature_every == 0:
            qng.metrics = qng.update_metrics()
            for i, metric in enumerate(qng.metrics):
                self.set_basis(i, self._eigenbasis(i, metric))
        qng.calls += 1
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            Q = self.bases[i]
            rotated = Q.mT @ p.grad.reshape(-1, 1)  # (P, 1)
            m, v, t = self.moments[i] or (torch.zeros_like(rotated), torch.zeros_like(rotated), 0)
            self.moments[i] = (m, v, t + 1)
            direction = adam_direction(rotated, m, v, t + 1, self.beta1, self.beta2, self.eps)  # (P, 1)
            p.grad.copy_((Q @ direction).view_as(p.grad))
        if qng.calls % qng.curvature_every == 0:
            qng.queue_estimates()

    def _eigenbasis(self, i: int, metric: torch.Tensor) -> torch.Tensor:
        dtype = self.params[i].dtype
        if torch.isfinite(metric).all():
            try:
                return torch.linalg.eigh(metric.double())[1].to(dtype)
            except torch.linalg.LinAlgError:
                pass
        self.fallbacks += 1
        old = self.bases[i]
        return old if old is not None else torch.eye(metric.shape[0], dtype=dtype, device=metric.device)

    def set_basis(self, i: int, Q: torch.Tensor) -> None:
        """Make the orthogonal (P, P) ``Q`` layer ``i``'s basis, carrying its Adam moments."""
        if self.moments[i] is not None:
            old = self.bases[i]
            R = Q.mT @ old  # (P, P)
            m, v, t = self.moments[i]
            eye = torch.ones(1, 1, dtype=R.dtype, device=R.device)
            self.moments[i] = (*carry_moments(m, v, R, eye), t)
        self.bases[i] = Q

    def stats(self) -> dict[str, float]:
        """QNG's ``metric_cond`` and ``metric_adam_fallbacks``: eigendecompositions that failed."""
        return {**self.qng.stats(), "metric_adam_fallbacks": float(self.fallbacks)}

    def state_dict(self) -> dict[str, Any]:
        return {"qng": self.qng.state_dict(), "bases": list(self.bases), "moments": list(self.moments),
                "fallbacks": self.fallbacks}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["bases"]) != len(self.params):
            raise ValueError(f"metric-Adam state has {len(state['bases'])} layers, this one {len(self.params)}")
        self.qng.load_state_dict(state["qng"])
        devices = [p.device for p in self.params]
        self.bases = [None if Q is None else Q.to(d, copy=True) for Q, d in zip(state["bases"], devices, strict=True)]
        self.moments = [None if s is None else (s[0].to(d, copy=True), s[1].to(d, copy=True), int(s[2]))
                        for s, d in zip(state["moments"], devices, strict=True)]  # fmt: skip
        self.fallbacks = int(state["fallbacks"])


class MetricAdam(PreconditionedSGD):
    r"""Adam in the quantum metric's eigenbasis on the weights of ``QuantumLayer`` modules.

    .. math:: \theta \leftarrow \theta - \mathrm{lr}\, Q \frac{\hat m}{\sqrt{\hat v} + \epsilon}

    Args:
        layers: the ``QuantumLayer`` modules.
        lr: Adam's learning rate.
        seed, method: ``MetricAdamPreconditioner``'s.
        **settings: the other ``MetricAdamSettings`` fields (beta1, approx, curvature_every, ...).
    """

    def __init__(self, layers, lr: float = _DEFAULT.lr, *, seed: int | None = None, method: str | None = None,
                 **settings):  # fmt: skip
        checked = MetricAdamSettings(lr=lr, **settings).validate(prefix="")
        self.metric_adam = MetricAdamPreconditioner(layers, checked, seed=seed, method=method)
        super().__init__(self.metric_adam, "metric_adam", lr=lr)
