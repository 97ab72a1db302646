"""The curvature block of one ``nn.Linear`` under K-FAC: its factors, their decompositions, and
the damped inverse applied to a gradient. Plain functions on tensors, batched over layers of
equal shape; ``hybrid.optim.kfac`` decides when to call them.

    A, G = batch_factors(inputs, grads, "expand", bias=True)     # (d_in + 1)^2, d_out^2
    (QA, lA), (QG, lG) = decompose([A, G], "eigh")               # float64
    update = eigen_precondition(grad, QG, QA, 1 / (lG[:, None] * lA[None, :] + damping))
"""

from __future__ import annotations

import math

import torch


def batch_factors(
    inputs: list[torch.Tensor], grads: list[torch.Tensor], approx: str, bias: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One layer's factors from the rows one step captured (Eschenhagen et al. 2023, sec. 3).

    The loss is a mean over the M rows of the layer's input (M = B*T tokens of an LM, B
    examples of an MLP), and ``g = dL/d(output)``, so ``M g`` is the gradient of the summed loss:

        expand:  A = 1/M sum_i x~_i x~_i^T,            G = 1/M sum_i (M g_i)(M g_i)^T
        reduce:  A = 1/B sum_b xbar_b xbar_b^T,        G = 1/M sum_b (M sum_t g_bt)(M sum_t g_bt)^T

    with x~ = [x, 1] (bias) and xbar_b = [mean_t x_bt, 1]. ``kron(G, A)`` then approximates the
    Fisher of one loss term, (1/M) sum_i grad l_i grad l_i^T: curvlinops' ``KFACLinearOperator``
    with ``CrossEntropyLoss(reduction="mean")``. kfac-pytorch's G is M^2 smaller, so its damping
    values do not transfer. Several calls in one step (shared weights, gradient accumulation)
    pool their rows.

    Args:
        inputs: per call, the layer's input (B, ..., d_in).
        grads: per call, the gradient of the loss w.r.t. the layer's output (B, ..., d_out).
        approx: ``"expand"`` (every position a sample) or ``"reduce"`` (sum over positions first).
        bias: append the column of ones.

    Returns:
        A (d_in + bias, d_in + bias) and G (d_out, d_out).
    """
    A = G = 0.0
    n_a = n_g = 0
    for x, g in zip(inputs, grads, strict=True):
        m = x.shape[:-1].numel()  # loss terms of this call
        if approx == "expand" or x.dim() == 2:
            x, g = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])  # (M, d_in), (M, d_out)
        else:
            x = x.reshape(x.shape[0], -1, x.shape[-1]).mean(1)  # (B, d_in)
            g = g.reshape(g.shape[0], -1, g.shape[-1]).sum(1)  # (B, d_out)
        if bias:
            x = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)  # (rows, d_in + 1)
        A = A + x.T @ x
        G = G + (m * m) * (g.T @ g)
        n_a, n_g = n_a + x.shape[0], n_g + m
    return A / n_a, G / n_g


def eigen_precondition(grad: torch.Tensor, QG, QA, scale) -> torch.Tensor:
    """(..., d_out, d_a) -> (G (x) A + damping I)^-1 grad, with A = QA diag(lA) QA^T, likewise G,
    and ``scale = 1 / (lG lA^T + damping)`` (..., d_out, d_a): exact Tikhonov damping."""
    return QG @ ((QG.mT @ grad @ QA) * scale) @ QA.mT


def inverse_precondition(grad: torch.Tensor, G_inv, A_inv) -> torch.Tensor:
    """(..., d_out, d_a) -> (G + dG I)^-1 grad (A + dA I)^-1, the factored damping of ``cholesky``."""
    return G_inv @ grad @ A_inv


def factored_damping(A: torch.Tensor, G: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A + pi sqrt(damping) I, G + sqrt(damping) / pi I)`` with pi = sqrt((tr A / d_A) / (tr G / d_G)),
    which balances the two factors (Martens & Grosse 2015, sec. 6.3)."""
    pi = ((A.trace() / A.shape[0]) / (G.trace() / G.shape[0])).sqrt().nan_to_num(1.0).clamp(1e-6, 1e6)
    root = math.sqrt(damping)
    eye_a = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    eye_g = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    return A + pi * root * eye_a, G + root / pi * eye_g


def decompose(matrices: list[torch.Tensor], inverse: str) -> list:
    """Decompose symmetric (d, d) matrices of one size in one batched call.

    Returns, per matrix, ``(Q, eigenvalues clamped at 0)`` for ``inverse="eigh"`` or the
    inverse for ``"cholesky"``, and None where the matrix is not finite or the decomposition
    fails (a failed batch is retried one matrix at a time to find the culprit).
    """
    finite = [bool(torch.isfinite(M).all()) for M in matrices]
    ok = [M for M, f in zip(matrices, finite, strict=True) if f]
    results = []
    if ok:
        stack = torch.stack(ok)  # (k, d, d)
        try:
            if inverse == "eigh":
                lam, Q = torch.linalg.eigh(stack)
                results = [(q, ev.clamp(min=0)) for q, ev in zip(Q, lam, strict=True)]
            else:
                L, info = torch.linalg.cholesky_ex(stack)
                inv = torch.cholesky_inverse(L)
                results = [i if code == 0 else None for i, code in zip(inv, info.tolist(), strict=True)]
        except torch.linalg.LinAlgError:
            results = [r for M in ok for r in decompose([M], inverse)] if len(ok) > 1 else [None]
    it = iter(results)
    return [next(it) if f else None for f in finite]


def adam_direction(
    grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: int, beta1: float, beta2: float, eps: float
) -> torch.Tensor:
    r"""One Adam step's direction, updating the moments ``m`` and ``v`` in place (Kingma & Ba 2015, alg. 1):

    .. math:: m \leftarrow \beta_1 m + (1 - \beta_1) g, \quad v \leftarrow \beta_2 v + (1 - \beta_2) g^2, \quad
              d = \frac{m / (1 - \beta_1^t)}{\sqrt{v / (1 - \beta_2^t)} + \epsilon}

    ``step`` is t, counted from 1. ``p -= lr * d`` is ``torch.optim.Adam``'s step (AdamW's
    without the decay), so the grafted K-FAC and eigenbasis-Adam updates share AdamW's lr.
    """
    m.lerp_(grad, 1 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    return (m / (1 - beta1**step)) / ((v / (1 - beta2**step)).sqrt() + eps)


# -- the two block types: how a layer's factors are inverted and applied -----------------------------


class EighBlocks:
    """Exact damping: A = QA diag(lA) QA^T and G likewise (float64 ``eigh``), then
    ``(G (x) A + damping I)^-1 grad`` in their eigenbasis (``eigen_precondition``)."""

    name = "eigh"
    keys = ("QA", "lA", "QG", "lG")  # what one layer's entry holds once both factors are decomposed

    def damped(self, A: torch.Tensor, G: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The matrices to decompose: the factors as they are (the damping enters in ``operators``)."""
        return A, G

    def decompose(self, matrices: list[torch.Tensor]) -> list[tuple | None]:
        """Per (d, d) matrix ``(Q, eigenvalues clamped at 0)``, None where it failed."""
        return decompose(matrices, "eigh")

    def like(self, d: int, **f64) -> tuple[torch.Tensor, ...]:
        """Empty tensors shaped as one result (data parallel: what a broadcast receives)."""
        return torch.empty(d, d, **f64), torch.empty(d, **f64)

    def entry(self, key: str, result: tuple, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Factor ``key``'s ("A" or "G") part of the layer's entry: Q in the factors' dtype, eigenvalues float64."""
        return {f"Q{key}": result[0].to(dtype), f"l{key}": result[1]}

    def operators(self, entries: list[dict[str, torch.Tensor]], damping: float) -> tuple[torch.Tensor, ...]:
        """``(QG, QA, 1 / (lG lA^T + damping))`` stacked over layers of one shape, (k, ...) each."""
        QG, QA = torch.stack([e["QG"] for e in entries]), torch.stack([e["QA"] for e in entries])
        lam = torch.stack([e["lG"][:, None] * e["lA"][None, :] for e in entries])  # (k, d_out, d_a), float64
        return QG, QA, (1 / (lam + damping)).to(QG.dtype)

    apply = staticmethod(eigen_precondition)


class CholeskyBlocks:
    """Factored damping, cheaper on large factors: invert ``A + pi sqrt(damping) I`` and
    ``G + sqrt(damping) / pi I`` (``factored_damping``) by Cholesky, then ``G_inv grad A_inv``."""

    name = "cholesky"
    keys = ("A_inv", "G_inv")

    def damped(self, A: torch.Tensor, G: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
        return factored_damping(A, G, damping)

    def decompose(self, matrices: list[torch.Tensor]) -> list[tuple | None]:
        """Per (d, d) matrix ``(inverse,)``, None where it failed."""
        return [None if inverse is None else (inverse,) for inverse in decompose(matrices, "cholesky")]

    def like(self, d: int, **f64) -> tuple[torch.Tensor, ...]:
        return (torch.empty(d, d, **f64),)

    def entry(self, key: str, result: tuple, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return {f"{key}_inv": result[0].to(dtype)}

    def operators(self, entries: list[dict[str, torch.Tensor]], damping: float) -> tuple[torch.Tensor, ...]:
        """``(G_inv, A_inv)`` stacked over layers of one shape (damped when decomposed)."""
        return torch.stack([e["G_inv"] for e in entries]), torch.stack([e["A_inv"] for e in entries])

    apply = staticmethod(inverse_precondition)


BLOCKS = {"eigh": EighBlocks(), "cholesky": CholeskyBlocks()}  # KFACSettings.inverse -> block type
