"""Three metrics of one circuit's weights, float64, (P, P) in the C-order flattening of ``layer.weights``.

    quantum_fisher(layer, inputs)       QFI = 4 x the Fubini-Study metric (``metric_tensor``, approx=None)
    classical_fisher(layer, inputs)     Fisher information of the computational-basis measurement
    pullback_metric(model, layer, x)    J^T F J: the Fisher of the model's output distribution
                                        pulled back to the circuit weights through the layers after it

Each is averaged over the circuit inputs (rows of ``inputs``) or, for the pullback, over the
tokens of the batch. Conventions (PennyLane's, so ``qml.metric_tensor``, ``qml.gradients.
quantum_fisher`` and ``qml.gradients.classical_fisher`` are their oracles):

    QFI_ij = 4 mean_x [ Re<d_i psi|d_j psi> - Re(<d_i psi|psi><psi|d_j psi>) ]
    CFI_ij = mean_x sum_k  d_i p_k d_j p_k / p_k          (outcomes with p_k = 0 contribute 0)
    PB_ij  = mean_t sum_v  J_tvi (diag(p_t) - p_t p_t^T)_vv' J_tv'j,   J_tvi = d logit_tv / d w_i

Braunstein-Caves: CFI <= QFI as matrices for every measurement. The pullback is the metric the
loss actually sees (the Gauss-Newton matrix of softmax cross-entropy, its expectation over
labels drawn from the model).

On Qiskit backends (``qiskit.aer``, ``fake_*``, ``ibm_*``) only the QFI can be estimated (the
estimator's block-diagonal metric, times 4, ``metric_tensor(method="estimator")``); the full
QFI, the classical Fisher (no probability executor yet) and the pullback (which needs the
Jacobian of the circuit outputs in the weights, a parameter-shift job per weight) are computed
on the ideal state only: ``classical_fisher`` and ``pullback_metric`` raise ``InputError``
there, and ``quantum_fisher`` uses the exact state (as ``hybrid.diagnostics`` does).
"""

from __future__ import annotations

import pennylane as qml
import torch
from torch import nn
from torch.func import functional_call, jacfwd, jacrev

from hybrid.errors import InputError
from hybrid.models import lm_logits
from hybrid.optim.metric import metric_tensor
from hybrid.sim.statevector import final_state


def quantum_fisher(layer, inputs) -> torch.Tensor:
    """The quantum Fisher information of ``layer.weights``, averaged over the rows of ``inputs``.

    .. math:: F^Q = 4\\, g^{FS}

    Args:
        layer: a ``QuantumLayer``.
        inputs: (N, n_inputs) angles in radians.

    Returns:
        (P, P) float64 on the weights' device.

    Raises:
        InputError: as ``metric_tensor``.
    """
    method = "exact" if layer.program is not None and layer.executor.samples else None  # the ideal state
    return 4.0 * metric_tensor(layer, inputs, approx=None, method=method)


def _probs(layer, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Computational-basis probabilities (N, 2^n), wire 0 = most significant bit, differentiable in weights."""
    # MERGE: becomes layer.executor.probs
    if layer.program is not None:
        return final_state(layer.program, inputs, weights).abs() ** 2  # (N, 2^n)
    n = layer.circuit.n_qubits

    def circuit(x, w):
        for op in qml.tape.make_qscript(layer.circuit)(x, w).operations:  # the gates, not its measurements
            qml.apply(op)
        return qml.probs(wires=range(n))

    qnode = qml.QNode(circuit, qml.device("default.qubit", wires=n), interface="torch")
    return torch.stack([qnode(x, weights) for x in inputs]).to(torch.float64)


def classical_fisher(layer, inputs) -> torch.Tensor:
    """The Fisher information of the computational-basis measurement in ``layer.weights``, averaged over inputs.

    .. math:: F^C_{ij} = \\mathrm{mean}_x \\sum_k \\partial_i p_k\\, \\partial_j p_k / p_k

    Args:
        layer: a ``QuantumLayer`` on an exact backend.
        inputs: (N, n_inputs) angles in radians.

    Returns:
        (P, P) float64 on the weights' device.

    Raises:
        InputError: a sampling (Qiskit) backend, or inputs of the wrong shape.
    """
    if layer.executor.samples:
        raise InputError(
            f"the classical Fisher needs measurement probabilities, which {layer.backend.name} only samples; "
            "compute it on default.qubit (the ideal state)"
        )
    inputs = _check_inputs(layer, inputs)
    weights = layer.weights.detach().to(torch.float64).requires_grad_()
    p = _probs(layer, inputs, weights)  # (N, K): one execution, its graph reused for every row of the Jacobian
    rows = [torch.autograd.grad(pk, weights, retain_graph=True)[0].reshape(-1) for pk in p.reshape(-1)]
    jac = torch.stack(rows).reshape(*p.shape, weights.numel())  # (N, K, P)
    p = p.detach()
    inv = torch.where(p > 1e-14, 1.0 / p.clamp_min(1e-300), torch.zeros_like(p))
    return torch.einsum("nki,nk,nkj->ij", jac, inv, jac) / inputs.shape[0]  # (P, P)


def _check_inputs(layer, inputs) -> torch.Tensor:
    inputs = torch.as_tensor(inputs).detach().to(device=layer.weights.device, dtype=torch.float64)
    if inputs.dim() != 2 or inputs.shape[0] < 1 or inputs.shape[1] != layer.n_inputs:
        raise InputError(f"inputs must have shape (N, {layer.n_inputs}) with N >= 1, got {tuple(inputs.shape)}")
    return inputs


def pullback_metric(model: nn.Module, layer, x: torch.Tensor, logits_fn=None) -> torch.Tensor:
    """The Fisher metric of the model's output distribution pulled back to ``layer.weights``.

    .. math:: G = \\frac{1}{N} \\sum_t J_t^\\top (\\mathrm{diag}(p_t) - p_t p_t^\\top) J_t,
              \\quad J_t = \\partial\\, \\mathrm{logits}_t / \\partial w

    One Jacobian of all logits in the weights, no loop over tokens, its forward pass also giving the
    probabilities: forward mode (``torch.func.jacfwd``, P tangents) on the torch simulator, reverse mode
    (``jacrev``, N*V cotangents, ~30x slower at the default size) through a PennyLane QNode; N = number of
    tokens (B*T). Undamped and PSD: QNG adds its damping to it.

    Args:
        model: the model that holds ``layer`` (e.g. ``HybridGPT``); not changed.
        layer: a ``QuantumLayer`` inside ``model``, on an exact backend.
        x: (B, T) token ids (or what ``logits_fn`` takes).
        logits_fn: ``(model, x) -> (..., V)`` logits; default ``lm_logits``.

    Returns:
        (P, P) float64.

    Raises:
        InputError: ``layer`` is not in ``model``, or it runs on a sampling backend.
    """
    name = next((n for n, m in model.named_modules() if m is layer), None)
    if name is None:
        raise InputError("the layer is not a module of the model; pass the QuantumLayer the model holds")
    if layer.executor.samples:
        raise InputError(f"the pullback metric needs the exact circuit Jacobian, not {layer.backend.name}'s samples")
    logits_fn = logits_fn or lm_logits
    key = f"{name}.weights" if name else "weights"
    training, last = model.training, layer.last_inputs
    model.eval()  # no dropout: the metric of the deterministic map
    try:

        def logits(w):  # the logits as the Jacobian's output and, detached, as its aux: one forward pass
            out = logits_fn(_Swapped(model, {key: w}), x).double()  # (..., V)
            out = out.reshape(-1, out.shape[-1])  # (N, V)
            return out, out.detach()

        w = layer.weights.detach().clone()
        jacobian = jacfwd if layer.executor.default_metric == "exact" else jacrev  # exact: the torch simulator
        jac, out = jacobian(logits, has_aux=True)(w)
        probs = torch.softmax(out, dim=-1)  # (N, V)
        jac = jac.reshape(*probs.shape, -1).double()  # (N, V, P)
    finally:
        model.train(training)
        layer.last_inputs = last
    jp = torch.einsum("nv,nvi->ni", probs, jac)  # (N, P): J^T p per token
    return (torch.einsum("nvi,nv,nvj->ij", jac, probs, jac) - jp.T @ jp) / probs.shape[0]  # (P, P)


class _Swapped(nn.Module):
    """``model`` called with some parameters replaced (``functional_call``), as a module ``lm_logits`` can take."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor]):
        super().__init__()
        self._call = lambda *a: functional_call(model, params, a)

    def forward(self, *args):
        return self._call(*args)
