"""Jobs and wall time of one gradient step on a fake IBM device: PennyLane's qiskit.remote
device against hybrid's runtime path, side by side in one process.

    python benchmarks/ibm_jobs_per_step.py [--batch 1 4] [--shots 1024]

Both run the same 12-weight circuit (HardwareEfficient, 2 qubits, 3 layers, <Z> on each
qubit) on FakeManilaV2 in qiskit-ibm-runtime's local testing mode, and both differentiate by
parameter shift. Jobs are counted where local testing mode runs them, so the count is what
IBM hardware would receive. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import pennylane as qml
import qiskit
import qiskit_ibm_runtime
import torch
from qiskit_ibm_runtime.fake_provider import FakeManilaV2
from qiskit_ibm_runtime.fake_provider.local_service import QiskitRuntimeLocalService

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import circuits  # noqa: E402
from hybrid import QuantumLayer  # noqa: E402

JOBS = {"n": 0}
_run = QiskitRuntimeLocalService._run_backend_primitive_v2


def _counted(self, *args, **kwargs):
    JOBS["n"] += 1
    return _run(self, *args, **kwargs)


QiskitRuntimeLocalService._run_backend_primitive_v2 = _counted


def gradient_step(forward, weights, x) -> tuple[int, float]:
    """Jobs and seconds of forward + backward over the batch ``x``."""
    JOBS["n"], start = 0, time.perf_counter()
    out = forward(x)
    out.sum().backward()
    assert weights.grad is not None and weights.grad.abs().sum() > 0
    return JOBS["n"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--shots", type=int, default=1024)
    args = parser.parse_args()
    circuit = circuits.HardwareEfficient(2, 3, measure="Z")
    print(f"{circuit!r}, {circuit.n_outputs} outputs, {args.shots} shots, FakeManilaV2 (local testing mode)")
    print(f"python {platform.python_version()}, torch {torch.__version__}, pennylane {qml.__version__}, "
          f"qiskit {qiskit.__version__}, qiskit-ibm-runtime {qiskit_ibm_runtime.__version__}\n")  # fmt: skip
    print("| inputs | qiskit.remote jobs | hybrid jobs | qiskit.remote s | hybrid s | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    for batch in args.batch:
        x = torch.rand(batch, 2, dtype=torch.float64)

        # peer: PennyLane's qiskit.remote device, parameter-shift through the torch interface
        device = qml.device("qiskit.remote", wires=2, backend=FakeManilaV2())
        qnode = qml.set_shots(qml.QNode(circuit, device, interface="torch", diff_method="parameter-shift"), args.shots)
        w_peer = torch.rand(circuit.weight_shape, dtype=torch.float64, requires_grad=True)
        peer = gradient_step(lambda x: torch.stack(list(qnode(x, w_peer)), -1), w_peer, x)  # noqa: B023

        # ours: the layer sends forward and shifts as one EstimatorV2 job
        layer = QuantumLayer(circuit, "fake_manila", shots=args.shots).double()
        ours = gradient_step(layer, layer.weights, x)
        print(f"| {batch} | {peer[0]} | {ours[0]} | {peer[1]:.1f} | {ours[1]:.1f} | {peer[1] / ours[1]:.0f}x |")


if __name__ == "__main__":
    main()
