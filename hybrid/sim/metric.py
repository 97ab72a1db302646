"""The exact Fubini-Study metric of a gate program's weights, from states of the batched torch
simulator (``statevector.final_state``): PennyLane's convention, a quarter of the quantum Fisher
information, averaged over inputs (see ``hybrid.optim.metric`` for the public entry point).
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache

import numpy as np
import torch

from circuits import GATES, GateProgram
from hybrid.errors import InputError
from hybrid.sim.statevector import final_state

APPROXIMATIONS = ("diag", "block-diag", None)
MAX_CHUNK_AMPLITUDES = 2**24  # states held at once by the exact method (256 MiB of complex128)


def check_approx(approx: str | None) -> str | None:
    """``approx`` in PennyLane's spelling (``"full"`` becomes None).

    Raises:
        InputError: it is none of ``"diag"``, ``"block-diag"``, ``"full"``, None.
    """
    approx = None if approx == "full" else approx
    if approx not in APPROXIMATIONS:
        raise InputError(f"approx must be 'diag', 'block-diag' or None (full), got {approx!r}")
    return approx


# --- exact: the state Jacobian on the statevector simulator ------------------------------


def exact_metric(program: GateProgram, inputs: torch.Tensor, weights: torch.Tensor, approx: str | None) -> torch.Tensor:
    """The metric from exact states: (N, n_inputs) inputs, ``weight_shape`` weights -> (P, P).

    Each weight-dependent gate R(theta) = exp(-i theta G), G = P/2 + c I (``circuits.GATES``), has
    R(theta + pi) = -i e^{-i pi c} P R(theta), so d/dtheta R = -i G R = e^{i pi c} R(theta + pi) / 2 - i c R
    (R(theta + pi) / 2 for Pauli rotations, i (R - R(theta + pi)) / 2 for PhaseShift), so the
    Jacobian over gate angles is a combination of shifted states; all N * (K + 1) of them run as
    one batch. The metric over angles maps to the weights through the affine map's Jacobian C:
    g_w = C^T g_theta C. Computed in complex128.
    """
    approx = check_approx(approx)
    device = weights.device
    trainable, shifted, phase, labels = _shift_program(program)
    K, N = len(trainable), inputs.shape[0]
    if K == 0:  # no gate depends on the weights
        return torch.zeros(program.n_weights, program.n_weights, dtype=torch.float64, device=device)
    g = torch.zeros(K, K, dtype=torch.float64, device=device)
    shifts = torch.zeros(K + 1, K, dtype=torch.float64, device=device)
    shifts[1:] = math.pi * torch.eye(K, dtype=torch.float64, device=device)  # row 0: no shift
    phase = torch.as_tensor(phase, dtype=torch.complex128, device=device)  # (K,) c of each generator
    rotate = torch.exp(1j * math.pi * phase)  # (K,) e^{i pi c}
    chunk = max(1, MAX_CHUNK_AMPLITUDES // ((K + 1) * 2**program.n_qubits))
    for rows in inputs.to(device, torch.float64).split(chunk):  # chunks of samples, each one batch
        n = rows.shape[0]
        batch = torch.cat([rows[:, None, :].expand(n, K + 1, -1), shifts.expand(n, -1, -1)], dim=-1)
        states = final_state(shifted, batch.reshape(n * (K + 1), -1), weights.to(torch.float64))
        states = states.reshape(n, K + 1, -1)  # (n, 1 + K, 2^n_qubits)
        psi, moved = states[:, 0], states[:, 1:]  # (n, D), (n, K, D)
        dpsi = 0.5 * rotate[:, None] * moved - 1j * phase[:, None] * psi[:, None]  # (n, K, D)
        overlap = torch.einsum("nkd,nd->nk", dpsi.conj(), psi)  # <d_k psi|psi>
        gram = torch.einsum("nkd,nld->kl", dpsi.conj(), dpsi)  # sum_n <d_k psi|d_l psi>
        g += (gram - torch.einsum("nk,nl->kl", overlap, overlap.conj())).real
    g /= N
    if approx == "diag":
        g = torch.diag(torch.diagonal(g))
    elif approx == "block-diag":
        # PennyLane computes a block as the covariance of the layer's generators on the state
        # before the layer; the gates of a layer commute, so that is this block of the full metric.
        same = torch.as_tensor(labels[:, None] == labels[None, :], device=device)
        g = torch.where(same, g, torch.zeros_like(g))
    C = torch.as_tensor(program.weight_coeffs[trainable], dtype=torch.float64, device=device)  # (K, P)
    return C.T @ g @ C


@lru_cache(maxsize=64)
def _shift_program(program: GateProgram):
    """The program with one extra input per weight-dependent angle (the shift), and facts about
    those angles: (angle indices (K,), shifted program, generator phases c (K,), layer labels (K,)).
    """
    trainable = np.flatnonzero(program.weight_angles)
    K = len(trainable)
    select = np.zeros((program.n_angles, K))
    select[trainable, np.arange(K)] = 1.0
    shifted = dataclasses.replace(
        program,
        n_inputs=program.n_inputs + K,
        input_coeffs=np.hstack([program.input_coeffs, select]),
        observables=(),
    )
    phase_of = {g.angle: GATES[g.name].phase for g in program.gates if g.angle is not None}
    phases = np.array([phase_of[a] for a in trainable], dtype=float)
    return trainable, shifted, phases, layer_labels(program, trainable)


def layer_labels(program: GateProgram, trainable: np.ndarray) -> np.ndarray:
    """PennyLane's parametrized layers (``GateProgram.layers``, grouped at compile time): the
    label (K,) of each of the weight-dependent angles ``trainable`` (K,), in gate order.

    Gates of one layer act on disjoint wires, so their generators commute and their block of
    the metric is a covariance on the state before the layer.
    """
    label_of = {program.gates[i].angle: k for k, layer in enumerate(program.layers) for i in layer.gates}
    return np.array([label_of[int(angle)] for angle in trainable], dtype=int)
