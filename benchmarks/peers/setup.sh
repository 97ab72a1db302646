#!/usr/bin/env bash
# Create benchmarks/peers/.venv: this project plus the simulators we measure ourselves against.
#
#   bash benchmarks/peers/setup.sh            # then: benchmarks/peers/.venv/bin/python benchmarks/bench_layer.py
#
# The peers never become project dependencies. TorchQuantum 0.1.8 pins qiskit<1.0,
# tensorflow, torchvision and pyscf, none of which it needs to simulate a circuit in torch:
# it goes in with --no-deps plus the few packages its import really needs, so that this
# env keeps torch==2.13.0 and the project's qiskit 2.3. TensorCircuit-NG runs on JAX (CPU
# build from PyPI), with jit and vmap.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=benchmarks/peers/.venv

python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
# torch first and pinned, so that nothing later pulls another (CUDA) build.
$PIP install -q "torch==2.13.0"
$PIP install -q -e .
# TorchQuantum: the package without its pins, then what `import torchquantum` needs.
$PIP install -q --no-deps "torchquantum==0.1.8"
$PIP install -q dill pathos pylatexenc opt-einsum
# TensorCircuit-NG on JAX.
$PIP install -q "tensorcircuit-ng==1.10.0" jax jaxlib
$VENV/bin/python - <<'PY'
import importlib
for name in ("torch", "pennylane", "torchquantum", "tensorcircuit", "jax"):
    module = importlib.import_module(name)
    print(f"{name} {getattr(module, '__version__', '?')}")
PY
