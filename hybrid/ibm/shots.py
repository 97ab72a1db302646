r"""A ``QuantumLayer``'s circuits as EstimatorV2 jobs, differentiated by parameter shift.

Every gate angle :math:`\theta_j` is shifted by its gate's rule (``circuits.GATES[name].shift_rule``,
``shift_table``); for RX, RY, RZ and PhaseShift (generators with eigenvalues :math:`c \pm \frac12`)
it is the two-term rule:

.. math:: \partial_{\theta_j} \langle O \rangle = \tfrac12\big(\langle O \rangle_{\theta + \frac\pi2 e_j}
          - \langle O \rangle_{\theta - \frac\pi2 e_j}\big)

so a forward pass over N inputs that autograd records sends one job with two PUBs:

    forward  values (N, 1, P)          -> evs (N, n_outputs)
    shifts   values (N, 2, S, 1, P)    -> evs (N, 2, S, n_outputs)   (+pi/2, -pi/2; S shifted angles)

and the backward pass is a product with the stored Jacobian, no job:
``grad_angles = einsum("no,noa->na", grad_out, J)``; torch carries it to inputs and weights
through ``angles = inputs @ input_coeffs.T + weights @ weight_coeffs.T + offsets``. Only angles
something differentiable depends on are shifted. A forward pass without autograd (evaluation,
sampling) sends the forward PUB alone. Extra PUBs (metric-tensor circuits for QNG) ride in
the same job: see ``ShotExecutor.extras``.

SPSA (Spall 1992; ``execution.gradient = "spsa"``) replaces the S shifted angles by
``R = execution.resamplings`` random directions per input, :math:`\Delta \in \{\pm1\}^S`
over the same angles, drawn from torch's global generator (seeded by ``train.seed``, saved in
every checkpoint, so a resumed run sends the same PUBs and the journal finds its jobs):

.. math:: \hat J = \frac1R \sum_r \frac{\langle O \rangle_{\theta + c\Delta_r}
          - \langle O \rangle_{\theta - c\Delta_r}}{2c}\,\Delta_r^\top

    spsa     values (N, 2, R, 1, P)    -> evs (N, 2, R, n_outputs)   (+c Delta, -c Delta)

:math:`E[\hat J] = J + O(c^2)`: the cubic Taylor term, summed over the S angles that move
at once, biases it by roughly ``-c^2 S / 2`` relative for these trigonometric expectation
values (about -6% at c = 0.1, S = 12; a smaller c trades it for shot noise, which grows as
1/c). The backward pass is the same product with the stored estimate.
A step costs 1 + 2R circuits per input instead of 1 + 2S.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from circuits.gates import GATES
from circuits.program import GateProgram, qiskit_observables
from hybrid.ibm.isa import angle_circuit
from hybrid.ibm.jobs import ExecutionOptions, JobResult
from hybrid.ibm.runtime import Pub, Runtime, current_runtime, measurement_settings


@dataclass(frozen=True)
class Gradient:
    """How a recorded forward pass is differentiated: ``execution.gradient``, ``resamplings``, ``spsa_c``."""

    method: str = "parameter-shift"  # or "spsa"
    resamplings: int = 1  # spsa: directions per input
    c: float = 0.1  # spsa: perturbation size

    @classmethod
    def from_config(cls, execution) -> Gradient:
        """From an ``ExecutionConfig`` (validated there)."""
        return cls(execution.gradient, execution.resamplings, execution.spsa_c)

    def circuits_per_input(self, shifted: int) -> int:
        """Circuits a recorded forward sends per input when ``shifted`` angles are differentiated."""
        if shifted == 0:
            return 1
        return 1 + 2 * (self.resamplings if self.method == "spsa" else shifted)


def spsa_angles(angles: np.ndarray, delta: np.ndarray, c: float) -> np.ndarray:
    """(N, n_angles) angles, (N, R, n_angles) directions -> (N, 2, R, n_angles): theta + c delta, theta - c delta."""
    sign = np.array([1.0, -1.0])[None, :, None, None]  # (1, 2, 1, 1)
    return angles[:, None, None, :] + sign * c * delta[:, None]


def spsa_jacobian(plus: np.ndarray, minus: np.ndarray, delta: np.ndarray, c: float) -> np.ndarray:
    """SPSA's Jacobian estimate (N, n_outputs, n_angles) from the values (N, R, n_outputs) at
    theta +- c delta and the directions (N, R, n_angles): the mean over r of
    (plus - minus) / (2c) delta_r^T (1 / delta = delta for +-1 entries; 0 off the shifted angles)."""
    return np.einsum("nro,nra->noa", (plus - minus) / (2 * c), delta) / delta.shape[1]


def shift_table(program: GateProgram, shifted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each shifted angle's gate's parameter-shift rule (``circuits.GATES[name].shift_rule``) as
    coefficients (T, S) and angle moves (T, S, n_angles): d<O>/d theta_s = sum_t coefficients[t, s]
    <O>(theta + moves[t, s]). T is the longest rule's length; shorter rules pad with zero terms."""
    rule_of = {g.angle: GATES[g.name].shift_rule for g in program.gates if g.angle is not None}
    rules = [rule_of[int(angle)] for angle in shifted]
    terms = max(len(rule) for rule in rules)
    coefficients = np.zeros((terms, len(shifted)))
    moves = np.zeros((terms, len(shifted), program.n_angles))
    for k, (angle, rule) in enumerate(zip(shifted, rules, strict=True)):
        for t, (coefficient, shift) in enumerate(rule):
            coefficients[t, k], moves[t, k, angle] = coefficient, shift
    return coefficients, moves


def rademacher(shape: tuple[int, ...], generator=None) -> np.ndarray:
    """Independent +-1 entries, float64, from ``generator`` (torch's global one when None)."""
    return (torch.randint(0, 2, shape, generator=generator, dtype=torch.float64) * 2 - 1).numpy()


class PubProvider(Protocol):
    """Adds PUBs to a layer's next recorded forward job and receives their results."""

    def pubs(self, executor: ShotExecutor, runtime: Runtime, angles: np.ndarray) -> list[Pub]:
        """PUBs for the batch's (N, n_angles) gate angles."""

    def receive(self, result: JobResult) -> None:
        """Their results, in the order ``pubs`` returned them."""


class ShotExecutor:
    """Runs ``program`` on backend row ``backend`` as journaled EstimatorV2 jobs.

    Args:
        program: the compiled circuit.
        backend: a ``hybrid.backends.Backend`` row of engine ``qiskit``.
        options: shots and execution options; ``noise``: Aer noise of a fake device.
        gradient: parameter shift (default) or SPSA; an active ``Runtime`` with a ``gradient``
            (``hybrid submit``) overrides it.

    Attributes:
        extras: providers whose PUBs join the next forward job that autograd records, then
            are removed (``hybrid.executors.QiskitExecutor.queue_metric`` adds QNG's metric circuits here).
        last_result: the latest job's ``JobResult`` (evs and standard errors of each PUB).
    """

    def __init__(self, program: GateProgram, backend, options: ExecutionOptions, noise: str = "",
                 gradient: Gradient | None = None):  # fmt: skip
        self.program = program
        self.gradient = gradient or Gradient()
        self.backend = backend
        self.options = options
        self.noise = noise
        self.label = _program_label(program)
        self.extras: list[PubProvider] = []
        self.last_result: JobResult | None = None

    @functools.cached_property
    def observables(self) -> list:
        """One ``SparsePauliOp`` per output (Qiskit is imported on first use)."""
        return qiskit_observables(self.program)

    def runtime(self) -> Runtime:
        return current_runtime(self.options)

    def isa(self, runtime: Runtime, gates: list[int] | None = None, name: str = "circuit"):
        """The program (or the gate subset ``gates``) transpiled for this backend, on the
        layer's physical qubits."""
        label = f"{self.label}/{name}"
        return runtime.isa(self.backend, self.noise, angle_circuit(self.program, gates), label, self.label)

    def run_angles(
        self, angles: np.ndarray, shift: np.ndarray | None, purpose: str,
    ) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
        """Expectation values (N, n_outputs) at gate angles (N, n_angles) and, when ``shift``
        (n_angles,) bool is given, their Jacobian (N, n_outputs, n_angles) by parameter shift
        or its SPSA estimate (``gradient``), all in one job."""
        runtime = self.runtime()
        gradient = self.gradient
        isa = self.isa(runtime)
        observables = isa.observables(self.observables)
        settings = measurement_settings(observables)
        pubs = [Pub("forward", isa, observables, isa.values(angles)[:, None, :], settings)]
        shifted = np.flatnonzero(shift) if shift is not None else np.zeros(0, dtype=int)
        spsa = gradient.method == "spsa" and len(shifted) > 0
        if spsa:
            delta = np.zeros((angles.shape[0], gradient.resamplings, angles.shape[1]))  # (N, R, n_angles)
            delta[..., shifted] = rademacher((angles.shape[0], gradient.resamplings, len(shifted)))
            values = isa.values(spsa_angles(angles, delta, gradient.c))  # (N, 2, R, P)
            pubs.append(Pub("spsa", isa, observables, values[..., None, :], settings))
        elif len(shifted):
            coefficients, delta = shift_table(self.program, shifted)  # (T, S), (T, S, n_angles)
            values = isa.values(angles[:, None, None, :] + delta)  # (N, T, S, P)
            pubs.append(Pub("shifts", isa, observables, values[..., None, :], settings))
        extras: list[tuple[PubProvider, int]] = []
        if shift is not None:
            providers, self.extras = self.extras, []
            for provider in providers:
                more = provider.pubs(self, runtime, angles)
                extras.append((provider, len(more)))
                pubs += more
        result = runtime.run(self.backend, pubs, purpose, self.noise)
        self.last_result = result
        start = 2 if len(shifted) else 1
        for provider, count in extras:
            provider.receive(JobResult(result.evs[start : start + count], result.stds[start : start + count]))
            start += count
        values = result.evs[0]  # (N, n_outputs)
        if shift is None:
            return values, None
        jacobian = np.zeros((angles.shape[0], len(self.observables), angles.shape[1]))  # (N, n_outputs, n_angles)
        if spsa:
            plus, minus = result.evs[1][:, 0], result.evs[1][:, 1]  # (N, R, n_outputs)
            jacobian = spsa_jacobian(plus, minus, delta, gradient.c)
        elif len(shifted):
            jacobian[:, :, shifted] = np.einsum("ts,ntso->nos", coefficients, result.evs[1])  # evs (N, T, S, n_outputs)
        return values, jacobian


class _ShiftExpectation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, angles, executor, shift, purpose):
        values, jacobian = executor.run_angles(angles.detach().cpu().numpy().astype(np.float64), shift, purpose)
        ctx.save_for_backward(torch.as_tensor(jacobian if jacobian is not None else np.zeros(0)))
        return torch.as_tensor(values, dtype=angles.dtype, device=angles.device)

    @staticmethod
    def backward(ctx, grad_out):
        (jacobian,) = ctx.saved_tensors  # always filled: autograd records only when shifts were sent
        jacobian = jacobian.to(grad_out.device, grad_out.dtype)
        return torch.einsum("no,noa->na", grad_out, jacobian), None, None, None


def expectation(executor: ShotExecutor, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N, n_inputs) angles -> (N, n_outputs) sampled expectation values, differentiable
    by parameter shift or SPSA (see the module docstring). Runs in float64, returns ``weights.dtype``."""
    program = executor.program
    input_coeffs = torch.as_tensor(program.input_coeffs, dtype=torch.float64, device=inputs.device)
    weight_coeffs = torch.as_tensor(program.weight_coeffs, dtype=torch.float64, device=inputs.device)
    offsets = torch.as_tensor(program.offsets, dtype=torch.float64, device=inputs.device)
    x, w = inputs.to(torch.float64), weights.reshape(-1).to(torch.float64)
    angles = x @ input_coeffs.T + w @ weight_coeffs.T + offsets  # (N, n_angles)
    shift = None
    if torch.is_grad_enabled() and angles.requires_grad:
        shift = (program.input_coeffs != 0).any(axis=1) & inputs.requires_grad
        shift |= (program.weight_coeffs != 0).any(axis=1) & weights.requires_grad
    purpose = "train" if shift is not None else "eval"
    return _ShiftExpectation.apply(angles, executor, shift, purpose).to(weights.dtype)


def _program_label(program: GateProgram) -> str:
    text = repr((program.n_qubits, program.gates, [sorted(o.items()) for o in program.observables]))
    return hashlib.sha256(text.encode()).hexdigest()[:12]
