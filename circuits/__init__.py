"""Variational circuit templates as PennyLane quantum functions (no torch here).

>>> import circuits
>>> c = circuits.StronglyEntangling(n_qubits=4, n_layers=2)
>>> c.n_inputs, c.weight_shape, c.n_outputs
(4, (2, 4, 3), 4)
"""

from circuits.gates import (
    GATES as GATES,
)
from circuits.gates import (
    GateSpec as GateSpec,
)
from circuits.program import (
    GATE_SET as GATE_SET,
)
from circuits.program import (
    Gate as Gate,
)
from circuits.program import (
    GateProgram as GateProgram,
)
from circuits.program import (
    Layer as Layer,
)
from circuits.program import (
    UnsupportedCircuit as UnsupportedCircuit,
)
from circuits.program import (
    compile_circuit as compile_circuit,
)
from circuits.program import (
    qiskit_circuit as qiskit_circuit,
)
from circuits.program import (
    qiskit_observables as qiskit_observables,
)
from circuits.program import (
    to_qiskit as to_qiskit,
)
from circuits.templates import (
    TEMPLATES as TEMPLATES,
)
from circuits.templates import (
    Circuit as Circuit,
)
from circuits.templates import (
    DataReuploading as DataReuploading,
)
from circuits.templates import (
    HardwareEfficient as HardwareEfficient,
)
from circuits.templates import (
    StronglyEntangling as StronglyEntangling,
)
from circuits.templates import (
    make_circuit as make_circuit,
)
