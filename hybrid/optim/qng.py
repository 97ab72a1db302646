"""Quantum natural gradient (Stokes et al., Quantum 4, 269, 2020) for circuit weights in torch training.

    theta <- theta - lr * (G + damping * I)^-1 grad          # per QuantumLayer; G: (P, P) metric

``G`` is the Fubini-Study metric of the layer's weights (``hybrid.optim.metric``, PennyLane's
convention) averaged over a random subsample of the inputs that reached the layer in the
latest training forward pass: a transformer sends a per-token layer B*T inputs per step, and
the metric depends on the input. Several layers give a block-diagonal G, one block each.

``metric`` picks how G is obtained: ``"exact"`` the backend row's default (the state Jacobian
on simulators, generator covariances on Qiskit backends), ``"estimator"`` the latter forced,
``"qnspsa"`` QN-SPSA (Gacon et al., Quantum 5, 567, 2021): an unbiased (to O(step^2)) estimate
of the full metric from four fidelities per sampled input, averaged over the refreshes as the
paper does, ``G_k = (k G_{k-1} + g_k) / (k + 1)``, and used as ``sqrt(G_k G_k)`` (its absolute
value, PSD), the paper's regularization with ``damping`` as its beta; ``"pullback"`` the Fisher
metric of the model's output distribution pulled back to the circuit weights through every
layer after the circuit (``hybrid.optim.circuit_fisher.pullback_metric``: the geometry the loss
sees, not the state's), on ``ceil(metric_samples / T)`` sequences of the latest training batch
of tokens, so it needs the model (``QNGPreconditioner(..., model=model)``; the optimizer rows
pass it) and an exact executor; it is each circuit's full (P, P) metric (``approx`` does not
apply).

``QNGPreconditioner`` rewrites the gradients (the ``Preconditioner`` protocol of
``hybrid.optim``, so ``HybridOptimizer`` steps them with SGD beside AdamW on the rest); ``QNG``
is the same update as a standalone ``torch.optim.Optimizer``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hybrid.errors import InputError, check_choice, check_number
from hybrid.optim.circuit_fisher import pullback_metric
from hybrid.optim.metric import (
    METRICS,
    absolute,
    check_approx,
    layer_labels,
    metric_tensor,
    qnspsa_sample,
)
from hybrid.optim.optimizer import settings_or_keywords
from hybrid.optim.preconditioned import PreconditionedSGD
from hybrid.optim.reduce import row_offset, sum_
from hybrid.quantum import QuantumLayer

APPROX = ("diag", "block-diag", "full")


@dataclass
class QNGSettings:
    """``[optim.qng]``: the settings ``QNGPreconditioner`` takes, and its SGD step's."""

    lr: float = 0.1  # peak learning rate of the circuit weights (the schedule scales it like optim.lr)
    momentum: float = 0.0  # SGD momentum: Momentum-QNG (PennyLane's MomentumQNGOptimizer rho)
    damping: float = 1e-3  # added to the metric's diagonal before the solve (PennyLane's lam)
    approx: str = "block-diag"  # metric approximation: diag, block-diag or full
    curvature_every: int = 1  # steps between metric refreshes; the metric is reused in between
    metric_samples: int = 64  # circuit inputs of the latest batch the metric is averaged over
    metric: str = "exact"  # exact (the backend's default), estimator, qnspsa (averaged over refreshes), or pullback
    fidelity_step: float = 0.01  # qnspsa: weight perturbation in the fidelities (PennyLane's finite_diff_step)

    def validate(self, prefix: str = "optim.qng.") -> QNGSettings:
        """Raise InputError naming ``prefix + key`` for the first setting out of range."""
        check_number(f"{prefix}lr", self.lr, low=0, low_open=True)
        check_number(f"{prefix}momentum", self.momentum, low=0, high=1, high_open=True)
        check_number(f"{prefix}damping", self.damping, low=0, low_open=True)
        check_number(f"{prefix}curvature_every", self.curvature_every, low=1, integer=True)
        check_number(f"{prefix}metric_samples", self.metric_samples, low=1, integer=True)
        check_choice(f"{prefix}approx", "full" if self.approx is None else self.approx, APPROX)
        check_choice(f"{prefix}metric", self.metric, METRICS)
        check_number(f"{prefix}fidelity_step", self.fidelity_step, low=0, low_open=True, high=math.pi)
        return self


_DEFAULT = QNGSettings()


def damped_solve(metric: torch.Tensor, grad: torch.Tensor, damping: float) -> torch.Tensor:
    """x = (metric + damping * I)^-1 grad by a linear solve: (P, P), (P,) -> (P,), in their dtype.

    Cholesky first: the damped metric is symmetric positive definite for damping > 0. When
    rounding makes it fail (an eigenvalue at or below zero) or the answer overflows, an
    eigendecomposition solves on the eigenvalues that are safely positive only, the
    pseudo-inverse answer (PennyLane's ``pinv``). The result is finite for any singular or
    ill-conditioned metric and any finite ``grad`` below ~1e150 (float64).
    """
    A = metric + damping * torch.eye(metric.shape[0], dtype=metric.dtype, device=metric.device)
    factor, info = torch.linalg.cholesky_ex(A)
    if info.item() == 0:
        x = torch.cholesky_solve(grad[:, None], factor)[:, 0]
        if torch.isfinite(x).all():
            return x
    eigenvalues, vectors = torch.linalg.eigh(A)
    finfo = torch.finfo(A.dtype)
    # relative cutoff as numpy's pinv; absolute floor sqrt(tiny) so that 1 / eigenvalue stays finite
    cutoff = max(float(eigenvalues.abs().max()) * A.shape[0] * finfo.eps, finfo.tiny**0.5)
    keep = eigenvalues > cutoff
    vectors = vectors[:, keep]
    return vectors @ ((vectors.T @ grad) / eigenvalues[keep])


class QNGPreconditioner:
    r"""Replaces each owned layer's ``weights.grad`` by :math:`(G + \lambda I)^{-1} \nabla_\theta L`.

    Every ``curvature_every`` calls, the metric G of each layer is recomputed from
    ``metric_samples`` rows of its ``last_inputs`` drawn without replacement (all rows when
    it has fewer) by this preconditioner's own ``torch.Generator``, and cached; in between the
    cached one is reused. G averages the per-input metrics, so it does not depend on how the
    loss is normalized; ``lr`` carries the scale. Metrics and solves are float64 whatever the
    weights' dtype.

    Args:
        layers: the ``QuantumLayer`` modules whose ``weights`` this preconditioner owns.
        settings: a ``QNGSettings`` already validated (``validate(cfg)`` checks ``[optim.qng]``);
            its ``lr`` and ``momentum`` are the SGD step's. ``damping`` is :math:`\lambda > 0`
            (PennyLane's ``lam``), ``approx`` ``"diag"``, ``"block-diag"`` or ``None``/``"full"``
            (see ``hybrid.metric_tensor``), ``metric`` ``"exact"`` (``method``'s choice),
            ``"estimator"`` or ``"qnspsa"`` (see the module docstring).
        seed: seeds the subsampling generator (default: ``torch.initial_seed()``).
        method: how ``hybrid.metric_tensor`` computes G (None: exact where possible).
        model: the model holding the layers, needed by ``metric="pullback"`` only: a forward
            pre-hook keeps the (B, T) tokens of its latest training-mode forward pass.
        **keywords: ``QNGSettings`` fields instead of (or over) ``settings``, validated here.

    Raises:
        InputError: no layers, a module that is not a ``QuantumLayer``, a layer given twice, or
            a keyword out of range.
    """

    def __init__(
        self, layers, settings: QNGSettings | None = None, *, seed: int | None = None, method: str | None = None,
        model: torch.nn.Module | None = None, **keywords,
    ):  # fmt: skip
        self.layers = list(layers)
        if not self.layers or not all(isinstance(layer, QuantumLayer) for layer in self.layers):
            raise InputError("QNG needs one or more QuantumLayer modules; pass the model's circuits")
        if len({id(layer) for layer in self.layers}) != len(self.layers):
            raise InputError("a QuantumLayer is given twice to QNG; pass each layer once")
        s = self.settings = settings_or_keywords(QNGSettings, settings, keywords)
        self.approx = check_approx(s.approx)
        self.damping = float(s.damping)
        self.curvature_every = s.curvature_every
        self.metric_samples = s.metric_samples
        self.metric, self.fidelity_step = s.metric, float(s.fidelity_step)
        metric = s.metric
        # each layer's executor says which metric method this setting uses there, or refuses it
        self.methods = [layer.executor.qng_method(metric, method, self.approx) for layer in self.layers]
        if metric == "qnspsa" and any(layer.program is None for layer in self.layers):
            raise InputError("optim.qng.metric='qnspsa' needs circuits that compile to gates (circuits.TEMPLATES); "
                             "use metric='exact'")  # fmt: skip
        self.model, self.tokens = model, None  # pullback: the model and its latest training batch, (B, T)
        if metric == "pullback":
            if model is None or not any(m is layer for m in model.modules() for layer in self.layers):
                raise InputError("optim.qng.metric='pullback' needs the model that holds the circuits: "
                                 "QNGPreconditioner(layers, settings, model=model)")  # fmt: skip
            model.register_forward_pre_hook(self._keep_tokens, with_kwargs=True)
        self.average: list[torch.Tensor] = []  # qnspsa: the running average of the raw estimates, per layer
        self.refreshes = 0  # qnspsa: estimates in that average
        self.params = [layer.weights for layer in self.layers]
        self.generator = torch.Generator().manual_seed(torch.initial_seed() if seed is None else seed)
        self.calls = 0
        self.metrics: list[torch.Tensor] = []  # one (P, P) float64 metric per layer, once computed
        if metric == "qnspsa":  # the first refresh rides in the first training job too
            self.queue_estimates()

    def _keep_tokens(self, module, args, kwargs) -> None:
        """Forward pre-hook (pullback): keep the token ids of a training forward pass, not the metric's own."""
        if module.training and torch.is_grad_enabled():
            self.tokens = (args[0] if args else kwargs["input_ids"]).detach()

    def before_backward(self, logits: torch.Tensor) -> None:
        """Nothing: the metric needs only the inputs the layers keep in the forward pass."""

    def precondition(self, lr: float) -> None:
        """Refresh the metrics when due, then rewrite every owned ``.grad`` in place (``lr`` unused).

        On a Qiskit backend the metric circuits of the next refresh ride in the training job
        before it (``executor.queue_metric``; a no-op on exact executors), so a QNG step sends
        one job, not two; a refresh that finds no such estimate (the first one, or after a resume) sends its own job.
        """
        if self.calls % self.curvature_every == 0:
            self.metrics = self.update_metrics()
        self.calls += 1
        for layer, metric in zip(self.layers, self.metrics, strict=True):
            grad = layer.weights.grad
            if grad is None:
                continue
            step = damped_solve(metric, grad.reshape(-1).to(metric.dtype), self.damping)
            grad.copy_(step.view_as(grad))
        if self.calls % self.curvature_every == 0:
            self.queue_estimates()

    def queue_estimates(self) -> None:
        """Queue the metric circuits (block-diagonal, or QN-SPSA's fidelities) of every layer
        on a Qiskit backend on its next training job, at ``metric_samples`` of that job's inputs."""
        step = self.fidelity_step if self.metric == "qnspsa" else None
        for layer in self._estimated():
            layer.executor.queue_metric(self.metric_samples, self.generator, fidelity_step=step)

    def _estimated(self) -> list:
        """The layers whose metric is estimated on their (Qiskit) backend."""
        return [layer for layer, method in zip(self.layers, self.methods, strict=True)
                if layer.executor.estimates(self.metric, method)]  # fmt: skip

    def update_metrics(self) -> list[torch.Tensor]:
        """The metric of every layer on a fresh subsample of its latest inputs: [(P, P), ...].

        The one place curvature statistics are computed. Data parallel (the ``exact`` and
        ``estimator`` metrics computed here): every rank draws the same subsample of all ranks'
        inputs, as one process would of the global batch, computes the metric of its own
        rows weighted by their share, and one all-reduce sums the shares.
        """
        metrics, shared = [], []
        estimated = self._estimated()
        for layer, method in zip(self.layers, self.methods, strict=True):
            inputs = layer.last_inputs
            if inputs is None:
                raise RuntimeError(
                    f"QNG has no inputs for {layer.circuit!r}: run a forward pass in training mode with "
                    "gradients enabled (model.train()) before optimizer.step()"
                )
            if not (torch.isfinite(inputs).all() and torch.isfinite(layer.weights).all()):
                raise FloatingPointError(
                    f"the inputs or weights of {layer.circuit!r} are NaN or Inf, so its metric is undefined; "
                    "training diverged: lower the learning rates"
                )
            rode = layer.executor.take_metric() if layer in estimated else None
            if self.metric == "pullback":
                metric = self._pullback(layer)
                metrics.append(metric)
                shared.append(metric)
                continue
            if self.metric == "qnspsa":
                metrics.append(self._qnspsa(len(metrics), layer, inputs, rode, layer in estimated))
                continue
            if rode is not None:  # it rode in this step's job; else this refresh sends its own job
                metric = torch.from_numpy(rode).to(layer.weights.device)
                metrics.append(metric.diag().diag() if self.approx == "diag" else metric)
                continue
            rows, share = self._draw(inputs.shape[0], self.metric_samples, inputs.device)
            n = layer.weights.numel()
            metric = torch.zeros(n, n, dtype=torch.float64, device=layer.weights.device)  # no rows drawn here
            if rows.numel():  # inputs[rows]: (this rank's of the min(N, metric_samples) drawn, n_inputs)
                metric = metric_tensor(layer, inputs[rows], self.approx, method=method) * share
            metrics.append(metric)
            shared.append(metric)
        sum_(shared)
        if self.metric == "qnspsa":
            self.refreshes += 1
        return metrics

    def _pullback(self, layer) -> torch.Tensor:
        """This rank's share of the pullback metric of ``layer`` on sequences drawn from all ranks' batches."""
        if self.tokens is None:
            raise RuntimeError("QNG's pullback metric has no tokens: run the model's forward pass in training "
                               "mode with gradients enabled before optimizer.step()")  # fmt: skip
        tokens = self.tokens  # (B, T)
        sequences = math.ceil(self.metric_samples / tokens.shape[1])  # about metric_samples tokens
        rows, share = self._draw(tokens.shape[0], sequences, tokens.device)
        n = layer.weights.numel()
        if not rows.numel():
            return torch.zeros(n, n, dtype=torch.float64, device=layer.weights.device)
        return pullback_metric(self.model, layer, tokens[rows]) * share

    def _draw(self, local: int, count: int, device) -> tuple[torch.Tensor, float]:
        """``count`` rows drawn without replacement from all ranks' rows (as one process would from
        the global batch; ``local`` of them are this rank's): this rank's drawn rows as local indices
        on ``device``, and their share of all drawn."""
        start, total = row_offset(local, device)
        rows = torch.randperm(total, generator=self.generator)[:count]
        drawn, rows = rows.numel(), rows[(rows >= start) & (rows < start + local)] - start
        return rows.to(device), rows.numel() / drawn

    def _qnspsa(self, index: int, layer, inputs: torch.Tensor, rode, on_backend: bool) -> torch.Tensor:
        """Fold layer ``index``'s new QN-SPSA estimate (``rode`` in the training job, else
        measured now) into its running average; return |average| with ``approx``'s structure."""
        if rode is not None:
            raw = torch.from_numpy(rode).to(layer.weights.device)
        else:
            rows = torch.randperm(inputs.shape[0], generator=self.generator)[: self.metric_samples]
            sample = inputs[rows.to(inputs.device)]  # (min(N, metric_samples), n_inputs)
            weights = layer.weights.detach().to(torch.float64)
            if on_backend:  # a resumed run whose queued estimate was not replayed: one job of its own
                angles = layer.program.angles(sample.double().cpu().numpy(), weights.cpu().numpy())
                raw = layer.executor.fidelity_metric(angles, self.fidelity_step, self.generator)
                raw = torch.from_numpy(raw).to(layer.weights.device)
            else:
                raw, _ = qnspsa_sample(layer.program, sample, weights, self.fidelity_step, self.generator)
        k = self.refreshes
        average = raw if k == 0 or index >= len(self.average) else (k * self.average[index] + raw) / (k + 1)
        if index < len(self.average):
            self.average[index] = average
        else:
            self.average.append(average)
        if self.approx == "diag":
            return average.diag().abs().diag()
        if self.approx == "block-diag":
            trainable = torch.as_tensor(layer.program.weight_coeffs != 0)  # (n_angles, P)
            labels = layer_labels(layer.program, np.flatnonzero(layer.program.weight_angles))
            return absolute(average * _same_block(trainable, labels).to(average))
        return absolute(average)

    def stats(self) -> dict[str, float]:
        """``metric_cond``: the largest damped condition proxy ``lambda_1 / (lambda_P + damping)`` of the
        cached metrics, the spread the damped solve sees (an undamped one is rounding noise on a singular G)."""
        if not self.metrics:
            return {"metric_cond": math.nan}
        spectra = [torch.linalg.eigvalsh(metric) for metric in self.metrics]  # ascending
        return {"metric_cond": max(float(e[-1] / (e[0].clamp(min=0) + self.damping)) for e in spectra)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "metrics": [m.clone() for m in self.metrics],
            "generator": self.generator.get_state(),
            "qnspsa": {"average": [a.clone() for a in self.average], "refreshes": self.refreshes},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        metrics = list(state["metrics"])
        sizes = [layer.weights.numel() for layer in self.layers]
        if metrics and [tuple(m.shape) for m in metrics] != [(p, p) for p in sizes]:
            raise ValueError(
                f"QNG state has metrics of shapes {[tuple(m.shape) for m in metrics]}, "
                f"this optimizer's layers have {sizes} weights"
            )
        self.calls = int(state["calls"])
        devices = [layer.weights.device for layer in self.layers][: len(metrics)]
        self.metrics = [m.to(device, torch.float64) for m, device in zip(metrics, devices, strict=True)]
        self.generator.set_state(state["generator"])
        qnspsa = state.get("qnspsa", {"average": [], "refreshes": 0})
        self.average = [a.to(layer.weights.device, torch.float64)
                        for a, layer in zip(qnspsa["average"], self.layers, strict=False)]  # fmt: skip
        self.refreshes = int(qnspsa["refreshes"])
        for layer in self._estimated():  # queued by the state this one replaces
            layer.executor.drop_metric()
        if self.calls % self.curvature_every == 0 and (self.calls or self.metric == "qnspsa"):
            self.queue_estimates()  # as the saved run did after its last step: its next job is the same


def _same_block(trainable: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """(P, P) bool: weights i and j share a parametrized layer (PennyLane's block-diag blocks),
    from the weights' angles ``trainable`` (n_angles, P) and the layer ``labels`` of the
    weight-dependent angles, in angle order."""
    angle_rows = trainable[trainable.any(dim=1)].to(torch.float64)  # (K, P)
    one_hot = torch.nn.functional.one_hot(torch.as_tensor(labels)).to(torch.float64)  # (K, n_layers)
    member = (angle_rows.T @ one_hot) > 0  # (P, n_layers): weight i feeds layer l
    return (member.to(torch.float64) @ member.T.to(torch.float64)) > 0


class QNG(PreconditionedSGD):
    r"""Quantum natural gradient descent on the weights of ``QuantumLayer`` modules.

    .. math:: \theta \leftarrow \theta - \mathrm{lr}\,(G + \lambda I)^{-1} \nabla_\theta L

    With one layer, a circuit without data inputs and ``curvature_every=1``, this is PennyLane's
    ``QNGOptimizer(stepsize=lr, lam=damping, approx=approx)``. Call it after ``loss.backward()``
    on a training-mode forward pass: the layers keep the inputs the metric is averaged over.
    ``settings`` (damping, approx, curvature_every, metric_samples, seed, method) are those of
    ``QNGPreconditioner``. With ``momentum`` rho it is Momentum-QNG (Borysenko et al., arXiv
    2409.01978; PennyLane's ``MomentumQNGOptimizer(stepsize=lr, momentum=rho)``): torch's SGD
    momentum ``b <- rho b + P(grad)``, ``theta <- theta - lr b`` is the same recursion with
    ``a = lr b``.
    """

    def __init__(self, layers, lr: float, momentum: float = 0.0, *, seed: int | None = None,
                 method: str | None = None, model: torch.nn.Module | None = None, **settings):  # fmt: skip
        checked = QNGSettings(lr=lr, momentum=momentum, **settings).validate(prefix="")
        preconditioner = QNGPreconditioner(layers, checked, seed=seed, method=method, model=model)
        super().__init__(preconditioner, "qng", lr=lr, momentum=momentum)
