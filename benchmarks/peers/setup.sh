#!/usr/bin/env bash
# Create benchmarks/peers/.venv: this project beside the simulators we measure ourselves against.
#
#   bash benchmarks/peers/setup.sh            # then: benchmarks/peers/.venv/bin/python benchmarks/bench_layer.py
#
# The peers never become project dependencies, and this env is separate from the project's:
# - TorchQuantum 0.1.8 imports torchvision (its datasets), qiskit < 1.0 (qiskit.providers.aer),
#   qiskit-ibm-runtime and torchpack at import time. PyPI's torchvision does not import beside
#   torch 2.13, so this env takes torch 2.14.1 with torchvision 0.29.1 (a CUDA build that runs
#   on the CPU; on the project's machines both wheels lie on local disk), and the qiskit 0.46
#   stack TorchQuantum pins. TorchQuantum and torchpack go in with --no-deps (they pin
#   tensorflow and pyscf, which a circuit simulation never touches) plus what their import needs.
# - This project goes in with --no-deps: the benchmarks import pennylane, never qiskit (the
#   project's Qiskit 2.3 stack would clash with TorchQuantum's).
# - TensorCircuit-NG runs on JAX (CPU build from PyPI), with jit and vmap.
# Every peer and ours then run in one process on one torch, so their ratios are comparable.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=benchmarks/peers/.venv
python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q "torch==2.14.1" "torchvision==0.29.1"
$PIP install -q --no-deps -e .
$PIP install -q "pennylane==0.45.1" "pennylane-lightning==0.45.0" tomli-w tqdm matplotlib scipy
$PIP install -q "qiskit==0.46.3" "qiskit-aer==0.13.3" "qiskit-ibm-runtime==0.20.0" "setuptools<70"
$PIP install -q --no-deps "torchquantum==0.1.8" "torchpack==0.3.1" "torchdiffeq==0.2.5"
$PIP install -q dill pathos pylatexenc opt-einsum loguru multimethod pyyaml toml h5py
$PIP install -q "tensorcircuit-ng==1.10.0" jax jaxlib
# SOAP (Vyas et al. 2024), the peer of Adam in K-FAC's eigenbasis (benchmarks/bench_soap.py)
$PIP install -q --no-deps "pytorch-optimizer==4.1.0"
$VENV/bin/python - <<'PY'
import importlib
for name in ("torch", "pennylane", "torchquantum", "tensorcircuit", "jax", "pytorch_optimizer"):
    module = importlib.import_module(name)
    print(f"{name} {getattr(module, '__version__', '?')}")
PY
