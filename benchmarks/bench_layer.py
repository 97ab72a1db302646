"""How fast is one quantum layer's forward+backward, against PennyLane, TorchQuantum and TensorCircuit-NG?

StronglyEntangling (AngleEmbedding + StronglyEntanglingLayers, 2 layers, <Z_i> readout);
loss = sum of the outputs; gradients to inputs and weights. All simulators run in this one
process, on the same inputs and weights, and must agree with ours to 1e-6 before they are timed.
Beside our time the table prints the roofline limit of our plan on this machine: every pass
the plan makes over the batch of states at the bandwidth measured here, or its GEMM flops at
the complex GEMM rate measured here, whichever is larger (``hybrid.sim.plan.plan_work``).

    python benchmarks/bench_layer.py                               # main venv: PennyLane only
    benchmarks/peers/.venv/bin/python benchmarks/bench_layer.py    # with TorchQuantum, TC-NG
    python benchmarks/bench_layer.py --qubits 4 6 --batch 1024 --out benchmarks/results/layer_cpu.md

TorchQuantum has no complex128 mode (its dtype is fixed to complex64), so it is compared with
ours in float32 as well. Peers too slow for a size (estimated from the previous one) are skipped.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from peers import adapters  # noqa: E402
from timing import median_seconds  # noqa: E402

import circuits  # noqa: E402
from hybrid import QuantumLayer  # noqa: E402
from hybrid.sim.plan import compile_plan, plan_work  # noqa: E402
from hybrid.sim.statevector import COMPLEX, estimate_bytes  # noqa: E402

LAYERS = 2


def machine_limits(dtype: torch.dtype, device: str) -> tuple[float, float]:
    """(bytes/s, flop/s): a copy of 256 MiB, and a complex GEMM of the shape our blocks use."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a = torch.empty(2**28 // 8, dtype=torch.float64, device=device).fill_(1.0)
    b = torch.empty_like(a)

    def copy():
        b.copy_(a)
        sync()

    bandwidth = 2 * a.numel() * 8 / median_seconds(copy, 5)
    m = torch.randn(32, 32, dtype=COMPLEX[dtype], device=device)
    x = torch.randn(32, 2**17, dtype=COMPLEX[dtype], device=device)

    def gemm():
        torch.mm(m, x)
        sync()

    flops = 8 * 32 * 32 * x.shape[1] / median_seconds(gemm, 5)
    return bandwidth, flops


def roofline(n: int, batch: int, dtype: torch.dtype, bandwidth: float, flops: float) -> float:
    program = circuits.compile_circuit(circuits.StronglyEntangling(n, LAYERS))
    itemsize = torch.empty((), dtype=COMPLEX[dtype]).element_size()
    plan = compile_plan(program, 1 << max(0, batch - 1).bit_length(), itemsize)
    return sum(max(f / flops, b / bandwidth) for _, f, b in plan_work(plan, batch, itemsize))


def ours(n: int, x: torch.Tensor, w: torch.Tensor):
    layer = QuantumLayer(circuits.StronglyEntangling(n, LAYERS)).to(device=x.device, dtype=x.dtype)
    with torch.no_grad():
        layer.weights.copy_(w)
    x = x.clone().requires_grad_(True)

    def step():
        out = layer(x)
        out.sum().backward()
        return out

    return step


def peak_bytes(n: int, batch: int, dtype: str) -> int:
    """Peak memory of our forward+backward: growth of the peak resident size (Linux VmHWM,
    reset just before) in a fresh process."""
    code = (
        "import torch, circuits\n"
        "from hybrid import QuantumLayer\n"
        f"layer = QuantumLayer(circuits.StronglyEntangling({n}, {LAYERS})).to(torch.{dtype})\n"
        f"layer(torch.rand(2, {n}, dtype=torch.{dtype})).sum().backward()\n"
        f"x = torch.rand({batch}, {n}, dtype=torch.{dtype}, requires_grad=True)\n"
        "rss = lambda key: int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1]) * 1024\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"  # reset the peak (VmHWM) to the current size
        "before = rss('VmRSS:')\n"
        "layer(x).sum().backward()\n"
        "print(rss('VmHWM:') - before)\n"
    )
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return int(result.stdout.split()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qubits", type=int, nargs="+", default=[4, 6, 8, 10, 12])
    parser.add_argument("--batch", type=int, nargs="+", default=[1024, 8192])
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peers", nargs="*", default=list(adapters.PEERS))
    parser.add_argument("--repeats", type=int, default=3, help="about this many timed calls per entry")
    parser.add_argument("--budget", type=float, default=300.0, help="skip a peer whose estimated time exceeds this (s)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    bandwidth, flops = machine_limits(dtype, args.device)
    peers = {name: adapters.PEERS[name] for name in args.peers}
    status = {name: adapters.available(name) for name in peers}

    header = ["qubits", "batch", "ours (s)", "limit (s)", "ours/limit", "peak MiB (est.)"]
    for name in peers:
        header += [f"{name} (s)", "speedup"]
    rows, last = [], {}
    for batch in args.batch:
        for n in args.qubits:
            rng = np.random.default_rng(n)
            x = torch.as_tensor(rng.uniform(-np.pi, np.pi, (batch, n)), dtype=dtype, device=args.device)
            w = torch.as_tensor(rng.uniform(0, 2 * np.pi, (LAYERS, n, 3)), dtype=dtype, device=args.device)
            step = ours(n, x, w)
            reference = step().detach().cpu().double()
            mine = median_seconds(step, args.repeats)
            limit = roofline(n, batch, dtype, bandwidth, flops)
            program = circuits.compile_circuit(circuits.StronglyEntangling(n, LAYERS))
            estimate = estimate_bytes(program, batch, dtype)
            peak = peak_bytes(n, batch, args.dtype) if args.device == "cpu" else torch.cuda.max_memory_allocated()
            row = [
                n,
                batch,
                f"{mine:.4f}",
                f"{limit:.4f}",
                f"{mine / limit:.1f}",
                f"{peak / 2**20:.0f} ({estimate / 2**20:.0f})",
            ]
            for name, peer in peers.items():
                if status[name] is not True:
                    row += [status[name], ""]
                    continue
                previous = last.get((name, batch))
                if previous is not None and previous[1] * 4 ** (n - previous[0]) / 2 > args.budget:
                    row += [f"skipped (> {args.budget:.0f} s)", ""]
                    continue
                try:
                    run = peer(n, LAYERS, x, w)
                    check = (
                        run().detach().cpu().double() if torch.is_tensor(run()) else torch.as_tensor(np.asarray(run()))
                    )
                    error = (check.double() - reference).abs().max().item()
                    tolerance = 1e-4 if peer.precision == "float32" or dtype == torch.float32 else 1e-6
                    if error > tolerance:
                        raise AssertionError(f"disagrees with ours by {error:.1e}")
                    seconds = median_seconds(run, args.repeats)
                    last[(name, batch)] = (n, seconds)
                    row += [f"{seconds:.4f}", f"{seconds / mine:.1f}x"]
                except Exception as error:  # noqa: BLE001 - a failing peer is a table entry, not a crash
                    row += [f"failed: {type(error).__name__}: {str(error)[:60]}", ""]
            rows.append(row)
            print(" | ".join(str(c) for c in row), flush=True)

    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    info = describe(args, bandwidth, flops, peers, status)
    text = "\n".join([*info, "", *table, ""])
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")


def describe(args, bandwidth: float, flops: float, peers, status) -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"{cpu}, {os.cpu_count()} cores"
    versions = ", ".join(f"{name} {adapters.version(name)}" for name in peers if status[name] is True)
    return [
        "# Quantum layer forward+backward: ours vs peers",
        "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- machine: {device}; torch {torch.__version__} ({args.threads} threads); {versions}",
        f"- circuit: StronglyEntangling, {LAYERS} layers, <Z_i> readout, {args.dtype} (complex"
        f"{128 if args.dtype == 'float64' else 64}); loss = sum of outputs; gradients to inputs and weights",
        f"- measured here: copy bandwidth {bandwidth / 1e9:.1f} GB/s, complex GEMM {flops / 1e9:.1f} GFLOP/s; "
        "limit = sum over the plan's passes of max(bytes / bandwidth, flops / GEMM rate)",
        "- speedup = peer time / our time; peak MiB = measured growth of the peak resident size of a fresh "
        "process running our step (in brackets: `hybrid.sim.statevector.estimate_bytes`)",
    ]


if __name__ == "__main__":
    main()
