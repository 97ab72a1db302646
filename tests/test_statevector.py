"""Tests for hybrid/sim/statevector.py and hybrid/sim/plan.py against PennyLane's default.qubit (autograd).

Values and gradients (to inputs and weights) of every template with every readout agree with
PennyLane to 1e-10 in complex128 and 1e-5 in complex64; forward mode agrees with finite
differences; the memory estimate agrees with the measured peak of a fresh process.
"""

import subprocess
import sys
from pathlib import Path

import pennylane as qml
import pytest
import torch
from torch.autograd import forward_ad

import circuits
from hybrid import InputError, QuantumLayer
from hybrid.quantum import format_bytes
from hybrid.sim.plan import compile_plan
from hybrid.sim.statevector import estimate_bytes, final_state, simulate
from tests.conftest import ALL_TEMPLATES
from tests.test_program import Custom

MEASURES = ("Z", "ZZ", "all")


def reference(circuit, inputs, weights):
    qnode = qml.QNode(circuit, qml.device("default.qubit"), interface="torch")
    return torch.stack([torch.as_tensor(r) for r in qnode(inputs, weights)], dim=-1)


def values_and_gradients(fn, circuit, inputs, weights, probe):
    """fn's outputs and the gradients of (outputs * probe).sum() to inputs and weights."""
    x = inputs.detach().clone().requires_grad_(True)
    w = weights.detach().clone().requires_grad_(True)
    out = fn(circuit, x, w)
    (out * probe).sum().backward()
    return out.detach(), x.grad, w.grad


def every_gate(x, w):
    """Every gate of circuits.GATE_SET, data-dependent and not, on three wires."""
    qml.RX(x[..., 0], wires=0)
    qml.RY(x[..., 1], wires=1)
    qml.Hadamard(wires=2)
    qml.PhaseShift(w[0], wires=2)
    qml.CNOT(wires=[2, 0])
    qml.RZ(x[..., 2], wires=2)
    qml.S(wires=0)
    qml.T(wires=1)
    qml.SX(wires=2)
    qml.PauliY(wires=0)
    qml.PauliX(wires=1)
    qml.SWAP(wires=[0, 2])
    qml.CZ(wires=[1, 2])
    qml.RY(w[1], wires=0)
    qml.PhaseShift(x[..., 0], wires=1)
    qml.RX(x[..., 1], wires=1)
    qml.PauliZ(wires=2)
    qml.Rot(w[2], w[0], w[1], wires=1)
    qml.CRX(w[2], wires=[0, 1])  # decomposes into RZ/RY/CNOT
    qml.RY(x[..., 2], wires=0)


OBSERVABLES = [
    qml.Z(0), qml.X(1), qml.Y(2), qml.X(0) @ qml.Z(2),
    0.5 * qml.Y(0) @ qml.Y(1) - 0.25 * qml.Z(1) + 0.1 * qml.X(2),
]  # fmt: skip


@pytest.mark.parametrize("batch", [1, 5])
def test_every_gate_and_pauli_observable_matches_pennylane(batch):
    c = Custom(every_gate, n_qubits=3, n_inputs=3, weight_shape=(3,), observables=OBSERVABLES)
    program = circuits.compile_circuit(c)
    x = torch.rand(batch, 3, dtype=torch.float64) * 6
    w = torch.rand(3, dtype=torch.float64) * 6
    probe = torch.randn(batch, len(OBSERVABLES), dtype=torch.float64)
    ours = values_and_gradients(lambda _, a, b: simulate(program, a, b), c, x, w, probe)
    theirs = values_and_gradients(reference, c, x, w, probe)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("name", ALL_TEMPLATES)
@pytest.mark.parametrize("n_qubits", [1, 3, 5])
def test_values_and_gradients_match_pennylane_complex128(name, measure, n_qubits):
    c = circuits.make_circuit(name, n_qubits, 2, measure)
    program = circuits.compile_circuit(c)
    x = torch.rand(4, n_qubits, dtype=torch.float64) * 6 - 3
    w = torch.rand(c.weight_shape, dtype=torch.float64) * 6
    probe = torch.randn(4, c.n_outputs, dtype=torch.float64)
    ours = values_and_gradients(lambda _, a, b: simulate(program, a, b), c, x, w, probe)
    theirs = values_and_gradients(reference, c, x, w, probe)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("name", ALL_TEMPLATES)
def test_values_and_gradients_match_pennylane_complex64(name, measure):
    c = circuits.make_circuit(name, 4, 2, measure)
    program = circuits.compile_circuit(c)
    x = torch.rand(6, 4) * 6 - 3
    w = torch.rand(c.weight_shape) * 6
    probe = torch.randn(6, c.n_outputs)
    ours = values_and_gradients(lambda _, a, b: simulate(program, a, b), c, x, w, probe)
    assert ours[0].dtype == torch.float32
    theirs = values_and_gradients(reference, c, x.double(), w.double(), probe.double())
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch", [1, 512])
def test_fused_and_layered_plans_agree_with_pennylane(batch):
    """Small batches apply the gates step by step; large ones fuse the shared run into one
    unitary (the cost model's choice): both are exact."""
    c = circuits.HardwareEfficient(4, 3, measure="ZZ")
    program = circuits.compile_circuit(c)
    kinds = [s.kind for s in compile_plan(program, batch, 16).steps]
    assert ("fused" in kinds) == (batch > 1)
    x = torch.rand(batch, 4, dtype=torch.float64) * 6
    w = torch.rand(c.weight_shape, dtype=torch.float64) * 6
    torch.testing.assert_close(simulate(program, x, w), reference(c, x, w), atol=1e-10, rtol=0)


def test_walsh_hadamard_readout_for_all_z_strings():
    """measure='all' at 8 qubits reads 255 outputs from one Walsh-Hadamard transform."""
    c = circuits.StronglyEntangling(8, 1, measure="all")
    program = circuits.compile_circuit(c)
    x, w = torch.rand(3, 8, dtype=torch.float64) * 6, torch.rand(c.weight_shape, dtype=torch.float64) * 6
    torch.testing.assert_close(simulate(program, x, w), reference(c, x, w), atol=1e-10, rtol=0)


# torch 2.13 loads its forward-mode decompositions through the deprecated torch.jit.script
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_final_state_matches_pennylane_and_forward_mode_matches_finite_differences():
    c = circuits.DataReuploading(3, 2)
    program = circuits.compile_circuit(c)
    x = torch.rand(2, 3, dtype=torch.float64) * 6
    w = torch.rand(c.weight_shape, dtype=torch.float64) * 6
    qnode = qml.QNode(lambda a, b: (c.gates(a, b), qml.state())[1], qml.device("default.qubit"), interface="torch")
    torch.testing.assert_close(final_state(program, x, w), qnode(x, w), atol=1e-12, rtol=0)

    dx, dw = torch.randn_like(x), torch.randn_like(w)
    h = 1e-6
    for fn in (final_state, simulate):
        with forward_ad.dual_level():
            out = fn(program, forward_ad.make_dual(x, dx), forward_ad.make_dual(w, dw))
            tangent = forward_ad.unpack_dual(out).tangent
        fd = (fn(program, x + h * dx, w + h * dw) - fn(program, x - h * dx, w - h * dw)) / (2 * h)
        torch.testing.assert_close(tangent, fd, atol=1e-8, rtol=0)


PEAK_SCRIPT = """
import sys, torch, circuits
from hybrid.sim.statevector import simulate
torch.set_num_threads(1)
rss = lambda key: int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
for config in sys.argv[1:]:
    name, n, batch, dtype, measure = config.split(",")
    n, batch, dtype = int(n), int(batch), getattr(torch, dtype)
    c = circuits.make_circuit(name, n, 2, measure)
    program = circuits.compile_circuit(c)
    w = torch.rand(c.weight_shape, dtype=dtype, requires_grad=True)
    simulate(program, torch.rand(2, n, dtype=dtype), w).sum().backward()  # warm caches
    x = torch.rand(batch, n, dtype=dtype, requires_grad=True)
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current size
    before = rss("VmRSS:")
    simulate(program, x, w).sum().backward()
    print(rss("VmHWM:") - before)
    del x
"""
MEMORY_CONFIGS = [("strongly_entangling", 10, 2048, "float64", "Z"), ("data_reuploading", 9, 4096, "float32", "all")]


def test_memory_estimate_matches_the_measured_peak():
    """Peak resident memory of a fresh process (Linux: VmHWM after resetting it) against the
    estimate, for a fused-free 10-qubit plan and a plan with Diag steps and a WHT readout."""
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", "PATH": "/usr/bin:/bin"}  # freed states go back to the OS
    configs = [",".join(map(str, config)) for config in MEMORY_CONFIGS]
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, *configs], capture_output=True, text=True, cwd=root, env=env, check=True
    )
    for (name, n_qubits, batch, dtype, measure), measured in zip(MEMORY_CONFIGS, result.stdout.split(), strict=True):
        program = circuits.compile_circuit(circuits.make_circuit(name, n_qubits, 2, measure))
        estimate = estimate_bytes(program, batch, getattr(torch, dtype))
        assert 0.7 * int(measured) < estimate < 1.4 * int(measured), (name, estimate, measured)


def test_memory_guard_refuses_before_running_and_gives_the_estimate():
    layer = QuantumLayer(circuits.StronglyEntangling(14, 2))
    need = estimate_bytes(layer.program, 10**7, torch.float32)
    with pytest.raises(InputError) as error:
        layer.check_memory(10**7)
    message = str(error.value)
    assert "\n" not in message
    assert f"needs about {format_bytes(need)} for its 14-qubit states" in message
    assert message.endswith("use fewer qubits or a smaller batch")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ALL_TEMPLATES)
def test_cuda_matches_cpu_values_gradients_and_memory_estimate(name):
    c = circuits.make_circuit(name, 8, 2, "all")
    cpu = QuantumLayer(c).double()
    gpu = QuantumLayer(c).double().to("cuda")
    gpu.load_state_dict(cpu.state_dict())
    x = torch.rand(4096, 8, dtype=torch.float64) * 6
    xg = x.cuda().requires_grad_(True)
    x.requires_grad_(True)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = gpu(xg)
    out.sum().backward()
    peak = torch.cuda.max_memory_allocated() - before
    cpu(x).sum().backward()
    assert out.device.type == "cuda" and gpu.weights.grad.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), cpu(x).detach(), atol=1e-10, rtol=0)
    torch.testing.assert_close(xg.grad.cpu(), x.grad, atol=1e-10, rtol=0)
    torch.testing.assert_close(gpu.weights.grad.cpu(), cpu.weights.grad, atol=1e-10, rtol=0)
    assert 0.5 * peak < estimate_bytes(gpu.program, 4096, torch.float64) < 2 * peak
