"""The same circuit on each peer simulator: AngleEmbedding(RX) + StronglyEntanglingLayers, <Z_i>.

Each adapter takes (n_qubits, n_layers, x (N, n) tensor, w (n_layers, n, 3) tensor) and returns
a step: a function running forward and backward (loss = sum of outputs, gradients to inputs and
weights) that returns the (N, n) outputs. Peers that are not installed report so.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import torch


def pennylane(n: int, layers: int, x: torch.Tensor, w: torch.Tensor):
    """PennyLane ``TorchLayer`` on ``default.qubit`` with backprop, broadcasting over the batch."""
    import pennylane as qml

    import circuits

    circuit = circuits.StronglyEntangling(n, layers)
    qnode = qml.QNode(circuit, qml.device("default.qubit", wires=n), interface="torch", diff_method="backprop")
    layer = qml.qnn.TorchLayer(qnode, {"weights": circuit.weight_shape}).to(x.dtype)
    with torch.no_grad():
        layer.weights.copy_(w)
    inputs = x.clone().requires_grad_(True)

    def step():
        out = layer(inputs)
        out.sum().backward()
        return out

    return step


pennylane.precision = "same"


def torchquantum(n: int, layers: int, x: torch.Tensor, w: torch.Tensor):
    """TorchQuantum's functional API on a batched ``QuantumDevice`` (complex64 only)."""
    import torchquantum as tq
    import torchquantum.functional as tqf

    inputs = x.float().clone().requires_grad_(True)
    weights = w.float().clone().requires_grad_(True)
    ranges = [(layer % (n - 1)) + 1 for layer in range(layers)] if n > 1 else [0]

    def step():
        qdev = tq.QuantumDevice(n_wires=n, bsz=inputs.shape[0], device=inputs.device)
        for i in range(n):
            tqf.rx(qdev, wires=i, params=inputs[:, i])
        for layer in range(layers):
            for i in range(n):
                tqf.rot(qdev, wires=i, params=weights[layer, i].unsqueeze(0))
            for i in range(n):
                tqf.cnot(qdev, wires=[i, (i + ranges[layer]) % n])
        out = tq.measurements.expval(qdev, list(range(n)), [tq.PauliZ()] * n)
        out.sum().backward()
        return out

    return step


torchquantum.precision = "float32"


def tensorcircuit(n: int, layers: int, x: torch.Tensor, w: torch.Tensor):
    """TensorCircuit-NG on JAX: one circuit, ``jax.vmap`` over the batch, ``jax.jit`` of value and grad."""
    import jax
    import jax.numpy as jnp
    import tensorcircuit as tc

    double = x.dtype == torch.float64
    jax.config.update("jax_enable_x64", double)
    tc.set_backend("jax")
    tc.set_dtype("complex128" if double else "complex64")
    ranges = [(layer % (n - 1)) + 1 for layer in range(layers)] if n > 1 else [0]

    def circuit(xs, ws):
        c = tc.Circuit(n)
        for i in range(n):
            c.rx(i, theta=xs[i])
        for layer in range(layers):
            for i in range(n):
                c.rz(i, theta=ws[layer, i, 0])
                c.ry(i, theta=ws[layer, i, 1])
                c.rz(i, theta=ws[layer, i, 2])
            for i in range(n):
                c.cnot(i, (i + ranges[layer]) % n)
        return jnp.stack([jnp.real(c.expectation_ps(z=[i])) for i in range(n)])

    def loss(xs, ws):
        out = jax.vmap(circuit, in_axes=(0, None))(xs, ws)
        return jnp.sum(out), out

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    xs, ws = jnp.asarray(x.cpu().numpy()), jnp.asarray(w.cpu().numpy())

    def step():
        (_, out), grads = grad(xs, ws)
        jax.block_until_ready(grads)
        return torch.as_tensor(np.asarray(out))

    return step


tensorcircuit.precision = "same"

PEERS = {"PennyLane": pennylane, "TorchQuantum": torchquantum, "TC-NG": tensorcircuit}
MODULES = {"PennyLane": "pennylane", "TorchQuantum": "torchquantum", "TC-NG": "tensorcircuit"}


def available(name: str):
    """True, or a short reason why the peer cannot run here."""
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    try:
        importlib.import_module(MODULES[name])
    except ImportError as error:
        missing = getattr(error, "name", None) or MODULES[name]
        if missing == MODULES[name]:
            return "not installed"
        return f"import fails (needs {missing})"
    except Exception as error:  # noqa: BLE001 - e.g. a peer built for another qiskit
        return f"import fails ({type(error).__name__})"
    return True


def version(name: str) -> str:
    return getattr(importlib.import_module(MODULES[name]), "__version__", "?")
