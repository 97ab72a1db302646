"""``QuantumLayer``: a variational circuit as a torch module, applied to every row of a batch.

    layer = QuantumLayer(circuits.StronglyEntangling(4, 2))   # weights: nn.Parameter (2, 4, 3)
    z = layer(angles)                                         # (..., 4) angles -> (..., 4) <Z_i>

The layer takes rotation angles in radians. Mapping features to angles is the model's job
and is written out there (``HybridGPT`` uses ``pi * tanh(Linear(h))``), so nothing is
rescaled inside the layer.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pennylane as qml
import torch
from torch import nn

from circuits import TEMPLATES, UnsupportedCircuit, compile_circuit, make_circuit
from hybrid.backends import ExecutionConfig, get_backend
from hybrid.errors import InputError, check_choice, check_number
from hybrid.executors import Executor, available_bytes, state_bytes

MEASUREMENTS = ("Z", "ZZ", "all")


@dataclass
class CircuitConfig:
    """``[circuit]``: which template, its size, the backend it runs on, and the ablations."""

    name: str = "strongly_entangling"  # a template in circuits.TEMPLATES
    n_qubits: int = 4  # also the number of angles the model feeds each circuit
    n_layers: int = 2  # variational layers of the template
    measure: str = "all"  # observables: Z (one per qubit), ZZ (+ neighbour pairs), all (2^n - 1 Z strings)
    backend: str = "default.qubit"  # see hybrid.backends.BACKENDS
    entangle: bool = True  # false drops the template's two-qubit gates (product states): the entanglement ablation
    trainable: bool = True  # false freezes the circuit weights at their random initialization

    def validate(self, prefix: str = "circuit.", batch: int = 1) -> CircuitConfig:
        """Names and sizes, and a lower bound on the memory of ``batch`` evaluations (one
        complex64 state each, on the simulator), without compiling anything.

        Raises:
            InputError: naming the key and the fix.
        """
        if self.name not in TEMPLATES:
            raise InputError(f"unknown circuit {self.name!r}; choose one of: {', '.join(sorted(TEMPLATES))}")
        check_number(f"{prefix}n_qubits", self.n_qubits, low=1, integer=True)
        check_number(f"{prefix}n_layers", self.n_layers, low=1, integer=True)
        check_choice(f"{prefix}measure", self.measure, MEASUREMENTS)
        for key in ("entangle", "trainable"):
            if not isinstance(getattr(self, key), bool):
                raise InputError(f"{prefix}{key} must be true or false, got {getattr(self, key)!r}")
        if not self.entangle and not TEMPLATES[self.name].has_entanglers:
            raise InputError(f"{prefix}entangle=false: {self.name} has no two-qubit gates to drop; set "
                             f"{prefix}entangle=true or pick a template with entanglers "
                             f"({', '.join(n for n, t in TEMPLATES.items() if t.has_entanglers)})")  # fmt: skip
        if not self.entangle and self.n_qubits < 2:
            raise InputError(f"{prefix}entangle=false on 1 qubit: there is nothing to entangle; "
                             f"set {prefix}entangle=true or use 2 or more qubits")  # fmt: skip
        get_backend(self.backend)
        try:
            self.template()  # its own limits (outputs of measure="all"); nothing is compiled
        except ValueError as error:
            raise InputError(str(error)) from None
        batch = batch if get_backend(self.backend).engine.batched else 1
        need = state_bytes(self.n_qubits, batch, torch.float32)
        have = available_bytes(torch.device("cpu"))
        if need > have:
            raise InputError(
                f"{self.name} on {batch} inputs needs about {format_bytes(need)} or more for its {self.n_qubits}-qubit "
                f"states but {format_bytes(have)} is free; use fewer qubits or a smaller batch"
            )
        return self

    def template(self):
        """The ``circuits`` template this section describes."""
        return make_circuit(self.name, self.n_qubits, self.n_layers, self.measure, entangle=self.entangle)


class QuantumLayer(nn.Module):
    """Evaluate ``circuit`` on every row of the input with shared trainable ``weights``.

    All leading dimensions (batch, sequence) become one batch of circuit evaluations in a
    single call, run by the layer's ``executor`` (``hybrid.executors``, built by the backend row).
    On ``default.qubit`` the circuit runs on the batched torch simulator
    (``hybrid.sim.statevector``): complex64 when the weights are float32 (or float16,
    bfloat16), complex128 after ``layer.double()``, on whatever device the weights live on;
    the output has the input's dtype. On ``qiskit.aer``,
    ``fake_<device>`` and ``ibm_<device>`` each call is one EstimatorV2 job with ``shots``
    per circuit, differentiated by parameter shift (``hybrid.ibm.shots``). Other backends,
    and circuits the simulator cannot compile, run as a PennyLane QNode.

    Args:
        circuit: a template from ``circuits`` (or any object with ``n_qubits``, ``n_inputs``,
            ``n_outputs``, ``weight_shape`` and ``__call__(inputs, weights)``).
        backend: a name in ``hybrid.backends.BACKENDS``.
        execution: shots, noise and job options of sampling backends (``ExecutionConfig``);
            exact simulators ignore it.
        shots, noise: shortcuts that replace those two keys of ``execution``.
        validated: the circuit section, ``execution`` and the memory of the whole batch were
            checked already (``hybrid.config.validate``; the training loop then checks the
            memory of its batch on the built layer): skip those checks here.

    Attributes:
        weights: ``nn.Parameter`` of shape ``circuit.weight_shape``, uniform in [0, 2pi).
        last_inputs: (N, n_inputs) detached inputs of the latest training-mode forward pass
            with gradients enabled (the samples QNG draws its metric from), or None.

    Raises:
        InputError: the circuit lacks the template attributes, the backend is unknown, an
            execution option is out of range or does not apply to the backend, a sampling
            backend gets a circuit that does not compile to gates, or a single circuit
            evaluation would not fit in memory.
    """

    def __init__(
        self, circuit, backend: str = "default.qubit", execution: ExecutionConfig | None = None, *,
        shots: int | None = None, noise: str | None = None, validated: bool = False,
    ):  # fmt: skip
        super().__init__()
        missing = [a for a in ("n_qubits", "n_inputs", "n_outputs", "weight_shape") if not hasattr(circuit, a)]
        if missing or not callable(circuit):
            raise InputError(
                f"{circuit!r} is not a circuit template: it lacks {', '.join(missing) or '__call__'}; "
                "use one from circuits.TEMPLATES or give yours these attributes"
            )
        execution = execution or ExecutionConfig()
        replace = {k: v for k, v in (("shots", shots), ("noise", noise)) if v is not None}
        execution = dataclasses.replace(execution, **replace)
        self.circuit = circuit
        self.backend = get_backend(backend)
        if not validated:
            execution.validate(self.backend, circuit.n_qubits)
        self.weights = nn.Parameter(torch.empty(tuple(circuit.weight_shape)).uniform_(0, 2 * math.pi))
        self.last_inputs: torch.Tensor | None = None
        self.program = None
        if not validated:
            self.check_memory(batch=1, lower_bound=True)  # before compiling a hopeless circuit
        try:
            self.program = compile_circuit(circuit)
        except UnsupportedCircuit:
            pass  # run through PennyLane instead
        self.executor: Executor = self.backend.build(circuit, self.program, execution)
        if not validated:
            self.check_memory(batch=1)

    @classmethod
    def from_config(cls, circuit: CircuitConfig, execution: ExecutionConfig | None = None) -> QuantumLayer:
        """The layer a ``[circuit]`` and ``[execution]`` section describe."""
        return cls(circuit.validate().template(), circuit.backend, execution)

    @property
    def shots(self) -> int:
        """Shots per circuit on a sampling backend; 0 on exact ones."""
        return self.executor.shots

    @property
    def options(self):
        """The ``hybrid.ibm.jobs.ExecutionOptions`` of a sampling backend; None on exact ones."""
        return self.executor.options

    @property
    def n_inputs(self) -> int:
        return self.circuit.n_inputs

    @property
    def n_outputs(self) -> int:
        return self.circuit.n_outputs

    @property
    def uses_simulator(self) -> bool:
        """True when forward runs on the batched torch statevector simulator."""
        return self.executor.batched and self.program is not None

    @property
    def compute_dtype(self) -> torch.dtype:
        """The real dtype circuits run in: float64 after ``double()``, else float32 (also for
        half-precision weights: the states are complex64 at least)."""
        return torch.float64 if self.weights.dtype == torch.float64 else torch.float32

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """(..., n_inputs) angles in radians -> (..., n_outputs) expectation values in [-1, 1].

        The precision boundary is here: inputs go up to ``compute_dtype`` at least (float16 and
        bfloat16 angles would be off by up to 0.01 rad), the circuit runs with autocast off, and the
        outputs come back in the input's dtype, so the layer fits a ``.half()`` or bfloat16
        model and a ``torch.autocast`` region alike.
        """
        if inputs.shape[-1] != self.n_inputs:
            raise ValueError(
                f"{self.circuit!r} takes {self.n_inputs} input angles per evaluation, "
                f"but the last dimension of the input is {inputs.shape[-1]}"
            )
        lead = inputs.shape[:-1]
        dtype = torch.promote_types(inputs.dtype, self.compute_dtype)  # float64 inputs stay float64 for QNG's metric
        flat = inputs.reshape(-1, self.n_inputs).to(dtype)  # (N, n_inputs)
        if self.training and torch.is_grad_enabled():
            self.last_inputs = flat.detach()
        self.check_memory(batch=flat.shape[0])
        with torch.autocast(flat.device.type, enabled=False):  # autocast would run the simulator's GEMMs in 16 bits
            out = self.executor.run(flat, self.weights)  # (N, n_outputs)
        out = out.to(inputs.dtype if inputs.is_floating_point() else self.weights.dtype)
        return out.reshape(*lead, self.n_outputs)

    def qnode(self) -> qml.QNode:
        """The circuit as a PennyLane QNode on this backend (torch interface)."""
        return self.executor.qnode()

    def run_qnode(self, inputs: torch.Tensor) -> torch.Tensor:
        """(N, n_inputs) -> (N, n_outputs) through PennyLane (broadcast over the rows)."""
        return self.executor.run_qnode(inputs, self.weights)

    def memory_bytes(self, batch: int, lower_bound: bool = False) -> int:
        """Estimated peak bytes of a forward and backward pass over ``batch`` inputs
        (with ``lower_bound``: just one batch of complex64 states)."""
        if lower_bound:
            return state_bytes(self.circuit.n_qubits, batch, torch.float32)
        return self.executor.memory_bytes(batch, self.weights.dtype)

    def check_memory(self, batch: int, lower_bound: bool = False) -> None:
        """Raise InputError if ``batch`` evaluations would not fit in the free memory."""
        need = self.memory_bytes(batch, lower_bound)
        have = available_bytes(self.weights.device)
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
