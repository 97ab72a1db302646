"""How does our forward+backward time grow with qubits and batch? A log-log plot.

StronglyEntangling, 2 layers, <Z_i> readout; time against state size 2^n for each batch and
against batch for each n, both on log axes (slope 1 = linear in the amplitudes).

    python benchmarks/plot_scaling.py --out benchmarks/results/scaling.png
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from bench_layer import ours  # noqa: E402
from timing import median_seconds  # noqa: E402
from tqdm import tqdm  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qubits", type=int, nargs="+", default=[2, 4, 6, 8, 10, 12])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 512, 4096, 8192])
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scaling.png"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    seconds = {}
    for batch in tqdm(args.batch, desc="batch"):
        for n in args.qubits:
            x, w = torch.rand(batch, n, dtype=dtype) * 6, torch.rand(2, n, 3, dtype=dtype) * 6
            seconds[n, batch] = median_seconds(ours(n, x, w), args.repeats)

    fig, (by_size, by_batch) = plt.subplots(1, 2, figsize=(11, 4.2))
    for batch in args.batch:
        by_size.loglog(
            [2**n for n in args.qubits], [seconds[n, batch] for n in args.qubits], "o-", label=f"batch {batch}"
        )
    by_size.set(xlabel="state size 2^n (n = qubits)", ylabel="forward+backward (s)", title="time vs qubits")
    by_size.set_xticks([2**n for n in args.qubits], [f"2^{n}" for n in args.qubits])
    for n in args.qubits:
        by_batch.loglog(args.batch, [seconds[n, b] for b in args.batch], "o-", label=f"{n} qubits")
    by_batch.set(xlabel="batch (circuits per call)", ylabel="forward+backward (s)", title="time vs batch")
    for ax in (by_size, by_batch):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"hybrid.sim.statevector, StronglyEntangling 2 layers, {args.dtype}, {args.threads} threads")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    rows = [f"| {n} | {b} | {seconds[n, b]:.4f} |" for b in args.batch for n in args.qubits]
    table = "\n".join(["| qubits | batch | seconds |", "|---|---|---|", *rows])
    command = f"python {' '.join(sys.argv)}"
    machine = (
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({args.threads} threads), "
        f"{args.dtype}, load average {os.getloadavg()[0]:.1f} at the end"
    )
    text = (
        f"# Scaling of forward+backward time\n\n- command: `{command}`\n{machine}\n\n![]({args.out.name})\n\n{table}\n"
    )
    args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
