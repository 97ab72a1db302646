"""``QuantumLayer``: a variational circuit as a torch module, applied to every row of a batch.

    layer = QuantumLayer(circuits.StronglyEntangling(4, 2))   # weights: nn.Parameter (2, 4, 3)
    z = layer(angles)                                         # (..., 4) angles -> (..., 4) <Z_i>

The layer takes rotation angles in radians. Mapping features to angles is the model's job
and is written out there (``HybridGPT`` uses ``pi * tanh(Linear(h))``), so nothing is
rescaled inside the layer.
"""

from __future__ import annotations

import math

import pennylane as qml
import torch
from torch import nn

from circuits import UnsupportedCircuit, compile_circuit
from hybrid.sim import statevector
from hybrid.backends import get_backend
from hybrid.config import CircuitConfig
from hybrid.errors import InputError


class QuantumLayer(nn.Module):
    """Evaluate ``circuit`` on every row of the input with shared trainable ``weights``.

    All leading dimensions (batch, sequence) become one batch of circuit evaluations in a
    single call. On ``default.qubit`` the circuit runs on the batched torch simulator
    (``hybrid.sim.statevector``): complex64 when the weights are float32, complex128 after
    ``layer.double()``, on whatever device the weights live on. On ``qiskit.aer``,
    ``fake_<device>`` and ``ibm_<device>`` each call is one EstimatorV2 job with ``shots``
    per circuit, differentiated by parameter shift (``hybrid.ibm.shots``). Other backends,
    and circuits the simulator cannot compile, run as a PennyLane QNode.

    Args:
        circuit: a template from ``circuits`` (or any object with ``n_qubits``, ``n_inputs``,
            ``n_outputs``, ``weight_shape`` and ``__call__(inputs, weights)``).
        backend: a name in ``hybrid.backends.BACKENDS``.
        shots: shots per circuit on sampling backends (0: 1024); ignored by exact simulators.
        noise: ``qiskit.aer`` only, a fake IBM device whose noise model to simulate.

    Attributes:
        weights: ``nn.Parameter`` of shape ``circuit.weight_shape``, uniform in [0, 2pi).
        last_inputs: (N, n_inputs) detached inputs of the latest training-mode forward pass
            with gradients enabled (the samples QNG draws its metric from), or None.

    Raises:
        InputError: the circuit lacks the template attributes, the backend is unknown, or a
            single circuit evaluation would not fit in memory.
    """

    def __init__(self, circuit, backend: str = "default.qubit", *, shots: int = 0, noise: str = ""):
        super().__init__()
        missing = [a for a in ("n_qubits", "n_inputs", "n_outputs", "weight_shape") if not hasattr(circuit, a)]
        if missing or not callable(circuit):
            raise InputError(
                f"{circuit!r} is not a circuit template: it lacks {', '.join(missing) or '__call__'}; "
                "use one from circuits.TEMPLATES or give yours these attributes"
            )
        self.circuit = circuit
        self.backend = get_backend(backend)
        self.weights = nn.Parameter(torch.empty(tuple(circuit.weight_shape)).uniform_(0, 2 * math.pi))
        self.last_inputs: torch.Tensor | None = None
        self.program = None
        self.check_memory(batch=1, lower_bound=True)  # before compiling a hopeless circuit
        try:
            self.program = compile_circuit(circuit)
        except UnsupportedCircuit:
            pass  # run through PennyLane instead
        self.check_memory(batch=1)
        self.options, self.noise, self._executor = None, "", None
        self.configure(CircuitConfig(backend=backend, shots=shots, noise=noise))

    def configure(self, cfg: CircuitConfig) -> None:
        """Take shots, noise and execution options (mode, mitigation, timeouts) from ``cfg``;
        ``train`` calls this for every layer. Only sampling backends use them.

        Raises:
            InputError: noise on a backend other than qiskit.aer, an unknown noise device, an
                option out of range, or a circuit that does not compile to gates.
        """
        from hybrid.ibm.devices import check_noise

        check_noise(self.backend, cfg.noise)
        if self.backend.engine != "qiskit":
            return
        from hybrid.ibm.jobs import ExecutionOptions

        if self.program is None:
            raise InputError(f"{self.circuit!r} does not compile to gates, so it cannot run on {self.backend.name}; "
                             "use a template from circuits.TEMPLATES")  # fmt: skip
        self.options, self.noise, self._executor = ExecutionOptions.from_config(cfg), cfg.noise, None

    @property
    def shots(self) -> int:
        """Shots per circuit on a sampling backend; 0 on exact ones."""
        return self.options.shots if self.options is not None else 0

    @property
    def executor(self):
        """The ``hybrid.ibm.shots.ShotExecutor`` of a sampling backend (built on first use)."""
        if self._executor is None:
            from hybrid.ibm.shots import ShotExecutor

            self._executor = ShotExecutor(self.program, self.backend, self.options, self.noise)
        return self._executor

    @property
    def n_inputs(self) -> int:
        return self.circuit.n_inputs

    @property
    def n_outputs(self) -> int:
        return self.circuit.n_outputs

    @property
    def uses_simulator(self) -> bool:
        """True when forward runs on the batched torch statevector simulator."""
        return self.backend.engine == "statevector" and self.program is not None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """(..., n_inputs) angles in radians -> (..., n_outputs) expectation values in [-1, 1]."""
        if inputs.shape[-1] != self.n_inputs:
            raise ValueError(
                f"{self.circuit!r} takes {self.n_inputs} input angles per evaluation, "
                f"but the last dimension of the input is {inputs.shape[-1]}"
            )
        lead = inputs.shape[:-1]
        flat = inputs.reshape(-1, self.n_inputs)  # (N, n_inputs)
        if self.training and torch.is_grad_enabled():
            self.last_inputs = flat.detach()
        self.check_memory(batch=flat.shape[0])
        if self.uses_simulator:
            out = statevector.simulate(self.program, flat, self.weights)  # (N, n_outputs)
        elif self.backend.engine == "qiskit":
            from hybrid.ibm.shots import expectation

            out = expectation(self.executor, flat, self.weights)  # (N, n_outputs), one job
        else:
            out = self.run_qnode(flat)  # (N, n_outputs)
        out = out.to(inputs.dtype if inputs.is_floating_point() else self.weights.dtype)
        return out.reshape(*lead, self.n_outputs)

    def qnode(self) -> qml.QNode:
        """The circuit as a PennyLane QNode on this backend (torch interface)."""
        device = qml.device(self.backend.device, wires=self.circuit.n_qubits)
        return qml.QNode(self.circuit, device, interface="torch", diff_method=self.backend.diff_method)

    def run_qnode(self, inputs: torch.Tensor) -> torch.Tensor:
        """(N, n_inputs) -> (N, n_outputs) through PennyLane (broadcast over the rows)."""
        results = self.qnode()(inputs.to(self.weights.dtype), self.weights)
        out = torch.stack([torch.as_tensor(r).reshape(-1) for r in results], dim=-1)  # (N, n_outputs)
        return out.to(self.weights.dtype)

    def memory_bytes(self, batch: int, lower_bound: bool = False) -> int:
        """Estimated peak bytes of a forward and backward pass over ``batch`` inputs
        (with ``lower_bound``: just one batch of complex64 states)."""
        if lower_bound:
            return statevector.state_bytes(self.circuit.n_qubits, batch, torch.float32)
        if self.uses_simulator:
            return statevector.estimate_bytes(self.program, batch, self.weights.dtype)
        # PennyLane keeps a few complex128 states per broadcast row.
        return 4 * statevector.state_bytes(self.circuit.n_qubits, batch, torch.float64)

    def check_memory(self, batch: int, lower_bound: bool = False) -> None:
        """Raise InputError if ``batch`` evaluations would not fit in the free memory."""
        need = self.memory_bytes(batch, lower_bound)
        have = statevector.available_bytes(self.weights.device)
        if need > have:
            raise InputError(
                f"{self.circuit!r} on {batch} inputs needs about {format_bytes(need)} for its "
                f"{self.circuit.n_qubits}-qubit states but {format_bytes(have)} is free; "
                "use fewer qubits or a smaller batch"
            )

    def extra_repr(self) -> str:
        return f"{self.circuit!r}, backend={self.backend.name!r}"


def format_bytes(n: float) -> str:
    """Bytes in binary units: ``format_bytes(3 * 2**30) == '3.0 GiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n < 1024 or unit == "EiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")
