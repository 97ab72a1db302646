"""Curvature diagnostics: the spectra of the quantum metric, the K-FAC blocks and AdamW's second moment.

    spectra = curvature_spectra(model, batch, optimizer)   # [Spectrum], one per block
    summarize(spectra, damping)                            # {name/stat: value}: trace, top-k, damped condition, ...

Conventions (the numbers a plot shows):
- quantum blocks: eigenvalues of the Fubini-Study metric of each ``QuantumLayer``'s weights,
  PennyLane's convention (``hybrid.metric_tensor``, full metric, averaged over the circuit
  inputs of the batch); the quantum Fisher information is 4x this.
- classical blocks: eigenvalues of each K-FAC block ``A (x) G`` in ``hybrid.optim.kfac``'s
  normalization. The spectrum of a Kronecker product is every product of an eigenvalue of A
  with one of G, so no (d_in d_out)^2 matrix is ever formed.
- the adamw block (a reference): AdamW's bias-corrected second moment ``v_hat = exp_avg_sq /
  (1 - beta2^t)`` of every parameter it trains, a diagonal (empirical Fisher) estimate whose
  eigenvalues are its entries. AdamW divides by ``sqrt(v_hat) + eps``, so its damping in these
  units is ``eps^2`` (below it a direction is not preconditioned).
- damped condition proxy: ``lambda_1 / (lambda_k + damping)`` with ``k = min(top_k, size)``, the
  damping the preconditioner adds to that block (K-FAC's to every eigenvalue of ``A (x) G``,
  QNG's to the metric): the spread of the top-k directions the update actually sees. Never an
  undamped condition number (``lambda_1 / lambda_min`` is float noise for these rank-deficient
  blocks).
- effective rank: ``exp(-sum_i p_i log p_i)`` with ``p = lambda / sum(lambda)`` (Roy and Vetterli
  2007); effective dimension: ``sum_i lambda_i / (lambda_i + damping)``, the directions resolved
  above the damping (MacKay 1992); participation ratio: ``(sum_i lambda_i)^2 / sum_i lambda_i^2``;
  rank: eigenvalues above ``RTOL`` times the largest.

Every function here leaves the model, its gradients and the optimizer as it found them
(parameters, ``.grad``, train/eval mode, the global RNG, ``QuantumLayer.last_inputs`` and the
state of every preconditioner passed in), so diagnostics never change a training trajectory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from hybrid.errors import InputError
from hybrid.models import lm_logits, next_token_loss
from hybrid.optim.eigen_adam import EigenAdamPreconditioner
from hybrid.optim.kfac import KFACPreconditioner
from hybrid.optim.metric import metric_tensor
from hybrid.optim.optimizer import HybridOptimizer
from hybrid.optim.qng import QNGPreconditioner
from hybrid.quantum import QuantumLayer

RTOL = 1e-10  # eigenvalues below RTOL * largest count as zero
TOP_K = 5  # top eigenvalues recorded per block; the damped condition proxy is lambda_1 / (lambda_k + damping)
KINDS = ("classical", "quantum", "adamw")  # K-FAC blocks, circuit metrics, AdamW's second moment

LossFn = Callable[[nn.Module, tuple], torch.Tensor]  # (model, batch) -> scalar loss


@dataclass
class Spectrum:
    """The eigenvalues of one curvature block, descending, float64."""

    name: str  # module name in the model ("adamw" for AdamW's second moment)
    kind: str  # one of KINDS: "quantum" (Fubini-Study metric), "classical" (K-FAC block), "adamw" (v_hat)
    eigenvalues: torch.Tensor  # (P,)
    factors: tuple[torch.Tensor, torch.Tensor] | None = None  # classical: eigenvalues of A (a,) and G (g,)
    damping: float | None = None  # the damping the block carries when its optimizer fixes it (adamw: eps ** 2)

    def summary(self, damping: float, top_k: int = TOP_K) -> dict[str, float]:
        """Size, trace, top-k eigenvalues, the damped condition proxy, ranks and dimensions.

        Keys: ``size``, ``trace``, ``max``, ``top_1`` .. ``top_k`` (k = min(top_k, size)), ``k``,
        ``damping``, ``damped_condition`` = lambda_1 / (lambda_k + damping), ``rank``,
        ``effective_rank``, ``effective_dim``, ``participation`` (see the module docstring).
        """
        lam = self.eigenvalues.double().clamp_min(0)
        top = float(lam[0]) if lam.numel() else 0.0
        k = min(top_k, lam.numel())
        nonzero = lam[lam > RTOL * top] if top > 0 else lam[:0]
        total = float(lam.sum())
        p = nonzero / total if total > 0 else nonzero
        return {
            "size": float(lam.numel()),
            "trace": total,
            "max": top,
            **{f"top_{i + 1}": float(lam[i]) for i in range(k)},
            "k": float(k),
            "damping": float(damping),
            "damped_condition": top / (float(lam[k - 1]) + damping) if k and top + damping > 0 else math.nan,
            "rank": float(nonzero.numel()),
            "effective_rank": math.exp(float(-(p * p.log()).sum())) if nonzero.numel() else 0.0,
            "effective_dim": float((lam / (lam + damping)).sum()) if damping > 0 else float(nonzero.numel()),
            "participation": float(lam.sum() ** 2 / (lam**2).sum()) if top > 0 else 0.0,
        }


def kronecker_spectrum(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of ``A (x) G`` (A: (a, a), G: (g, g) symmetric PSD), descending: (a * g,)."""
    return outer_spectrum(metric_spectrum(A), metric_spectrum(G))


def metric_spectrum(metric: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a symmetric metric (P, P), descending: (P,)."""
    return torch.sort(torch.linalg.eigvalsh(metric.double()).clamp_min(0), descending=True).values


def outer_spectrum(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Every product of an eigenvalue in a (a,) with one in g (g,), descending: (a * g,)."""
    return torch.sort(torch.outer(a, g).reshape(-1), descending=True).values  # (a * g,)


def summarize(spectra: list[Spectrum], damping: float | dict[str, float], top_k: int = TOP_K) -> dict[str, float]:
    """``{"<name>/<stat>": value}`` for every block and statistic of ``Spectrum.summary``.

    ``damping`` is one number for every block, or one per kind: ``{"quantum": qng_damping,
    "classical": kfac_damping}`` (the damping each preconditioner adds, so the effective dimension
    counts what it resolves and the condition proxy is the one the update sees); a kind it does
    not name takes the block's own ``Spectrum.damping`` (the adamw block's ``eps ** 2``).

    Raises:
        InputError: a block has neither.
    """
    per_kind = damping if isinstance(damping, dict) else {s.kind: damping for s in spectra}
    missing = sorted({s.kind for s in spectra if s.kind not in per_kind and s.damping is None})
    if missing:
        raise InputError(f"no damping for the {', '.join(missing)} blocks; pass damping={{kind: value}} for each kind")
    return {f"{s.name}/{k}": v for s in spectra for k, v in s.summary(per_kind.get(s.kind, s.damping), top_k).items()}


def adamw_spectrum(optimizer) -> Spectrum | None:
    """AdamW's bias-corrected second moment ``v_hat`` (the ``adamw`` reference block, with damping
    ``eps ** 2``), or None when ``optimizer`` trains nothing with AdamW. A parameter AdamW has not
    stepped yet counts 0.

    Args:
        optimizer: a ``HybridOptimizer`` (``adamw``, ``muon``, ``hybrid``, ... all are), or None.

    Raises:
        TypeError: ``optimizer`` is something else.
    """
    adamw = _check_optimizer(optimizer).adamw if optimizer is not None else None
    if adamw is None:
        return None
    v = []
    for group in adamw.param_groups:
        for p in group["params"]:
            state = adamw.state.get(p, {})
            if "exp_avg_sq" in state:
                correction = 1 - group["betas"][1] ** float(state["step"])
                v.append(state["exp_avg_sq"].detach().reshape(-1).double().cpu() / correction)  # (p.numel(),)
            else:
                v.append(torch.zeros(p.numel(), dtype=torch.float64))
    eps = float(adamw.param_groups[0]["eps"])  # AdamW divides by sqrt(v_hat) + eps: eps ** 2 in v_hat's units
    return Spectrum("adamw", "adamw", torch.sort(torch.cat(v).clamp_min(0), descending=True).values, damping=eps**2)


# --- spectra of a model on a batch ---------------------------------------------------------


def curvature_spectra(
    model: nn.Module, batch, optimizer=None, *, loss_fn: LossFn | None = None, metric_samples: int = 64, seed: int = 0
) -> list[Spectrum]:
    """The spectrum of every curvature block of ``model`` on ``batch``, in module order.

    Quantum: for each ``QuantumLayer``, the full metric ``hybrid.metric_tensor(layer, inputs,
    approx=None)`` averaged over ``metric_samples`` of the inputs (all when fewer) that a
    training-mode forward pass of ``batch`` sends to it, computed exactly on the statevector
    simulator (the ideal state, also for layers on Qiskit backends) when the circuit compiles.
    Classical: for each ``nn.Linear`` K-FAC preconditions, ``kronecker_spectrum(A, G)`` of the
    factors of ``optimizer``'s K-FAC (its running averages) when it has any; else (adamw, muon,
    no optimizer, no factors yet) of factors computed on this batch by a fresh
    ``KFACPreconditioner`` (empirical Fisher, no running average). AdamW: the ``adamw`` reference
    block of ``adamw_spectrum(optimizer)`` last, when ``optimizer`` trains anything with AdamW.

    Args:
        model: e.g. ``HybridGPT``; nothing of it is changed.
        batch: ``(x, y)`` token ids (B, T) of a language model, or what ``loss_fn`` takes.
        optimizer: a ``HybridOptimizer``, a ``KFACPreconditioner`` or None; pass the optimizer
            whose K-FAC is hooked to the model, so that its statistics ignore this forward pass.
        loss_fn: ``(model, batch) -> loss``; default: mean next-token cross-entropy.
        metric_samples: circuit inputs per layer the metric is averaged over.
        seed: seeds the choice of those inputs.

    Returns:
        ``[Spectrum]``: kind "classical" (with ``factors``), "quantum" or "adamw", eigenvalues descending.

    Raises:
        InputError: ``metric_samples`` below 1.
        TypeError: ``optimizer`` is none of the above.
    """
    if metric_samples < 1:
        raise InputError(f"metric_samples must be at least 1, got {metric_samples}")
    given = next((pc for pc in preconditioners_of(optimizer) if isinstance(pc, KFACPreconditioner)), None)
    factors = {name: (A.clone(), G.clone()) for name, (A, G) in given.factors().items()} if given else {}
    fresh = not factors and any(isinstance(m, nn.Linear) and m.weight.requires_grad for m in model.modules())
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantumLayer)}
    inputs = {}
    with untouched(model, [pc for pc in preconditioners_of(optimizer) if isinstance(pc, CAPTURING)]):
        model.train()  # QuantumLayer keeps its inputs, K-FAC hooks capture, as in a training step
        # Cholesky: the fresh preconditioner decomposes its factors once; that is cheaper than eigh.
        counter = KFACPreconditioner(model, curvature_every=1, curvature_ema=0.0, inverse="cholesky") if fresh else None
        try:
            if counter is not None or layers:  # the forward pass fresh factors and circuit inputs come from
                loss = batch_loss(model, batch, loss_fn)
            if counter is not None:
                torch.autograd.grad(loss, counter.params, allow_unused=True)  # hooks see dL/d(output); .grad untouched
                counter.precondition(lr=0.0)  # the first update takes this batch's factors as they are
                keep = given.layers if given else counter.layers
                factors = {n: (A.clone(), G.clone()) for n, (A, G) in counter.factors().items() if n in keep}
        finally:
            if counter is not None:
                counter.remove()
        inputs = {name: layer.last_inputs for name, layer in layers.items() if layer.last_inputs is not None}
    generator = torch.Generator().manual_seed(seed)
    spectra = []
    for name, module in model.named_modules():
        if name in factors:
            a, g = (metric_spectrum(factor).cpu() for factor in factors[name])
            spectra.append(Spectrum(name, "classical", outer_spectrum(a, g), (a, g)))
        elif name in inputs:
            rows = inputs[name]  # (N, n_inputs)
            if rows.shape[0] > metric_samples:
                rows = rows[torch.randperm(rows.shape[0], generator=generator)[:metric_samples].to(rows.device)]
            method = "exact" if module.program is not None else None  # the ideal state's metric, on any backend
            metric = metric_tensor(module, rows, approx=None, method=method)  # (P, P)
            spectra.append(Spectrum(name, "quantum", metric_spectrum(metric).cpu()))
    reference = adamw_spectrum(optimizer) if isinstance(optimizer, HybridOptimizer) else None
    return spectra + ([reference] if reference is not None else [])


def batch_loss(model: nn.Module, batch, loss_fn: LossFn | None, logits_out: list | None = None) -> torch.Tensor:
    """``loss_fn(model, batch)``, or the mean next-token cross-entropy of ``batch = (x, y)``."""
    if loss_fn is not None:
        return loss_fn(model, batch)
    x, y = batch
    logits = lm_logits(model, x)  # (B, T, V)
    if logits_out is not None:
        logits_out.append(logits)
    return next_token_loss(logits, y)


def preconditioners_of(optimizer) -> list:
    """The preconditioners of a ``HybridOptimizer`` (every preset is one; ``KFAC`` and ``QNG`` too),
    ``[pc]`` for a lone ``KFACPreconditioner`` or ``QNGPreconditioner``, ``[]`` for None.

    Raises:
        TypeError: anything else.
    """
    if optimizer is None:
        return []
    if isinstance(optimizer, (KFACPreconditioner, QNGPreconditioner)):
        return [optimizer]
    return list(_check_optimizer(optimizer).preconditioners.values())


def _check_optimizer(optimizer) -> HybridOptimizer:
    if not isinstance(optimizer, HybridOptimizer):
        raise TypeError(
            f"{type(optimizer).__name__} has no preconditioners; pass a HybridOptimizer (hybrid.optim.build_optimizer, "
            "KFAC, QNG) or a KFACPreconditioner or QNGPreconditioner"
        )
    return optimizer


CAPTURING = (KFACPreconditioner, EigenAdamPreconditioner)  # the preconditioners whose hooks capture passes


@contextmanager
def untouched(model: nn.Module, kfacs: list) -> Iterator[None]:
    """Put back what a diagnostic forward and backward pass changes: train/eval mode, the global
    RNG (dropout), every ``.grad`` (set to None inside), ``QuantumLayer.last_inputs``, and what
    the hooks of ``kfacs`` capture."""
    params = list(model.parameters())
    grads = [p.grad for p in params]
    layers = [m for m in model.modules() if isinstance(m, QuantumLayer)]
    last_inputs = [layer.last_inputs for layer in layers]
    training = model.training
    cuda = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda), ExitStack() as kept:
        for pc in kfacs:  # the next real step must see what K-FAC's hooks held before our pass
            kept.enter_context(pc.captures_kept())
        try:
            for p in params:
                p.grad = None
            yield
        finally:
            for p, grad in zip(params, grads, strict=True):
                p.grad = grad
            for layer, last in zip(layers, last_inputs, strict=True):
                layer.last_inputs = last
            model.train(training)
