"""How long a refusal and a ``--help`` take, on an idle machine and at load 4.

    python benchmarks/cli_refusals.py --repeats 3

Runs each case as a fresh ``hybrid`` process (imports included, as a user meets it) ``--repeats``
times, first idle, then with four busy-looping processes beside it (load 4 on these 2 cores),
and writes ``benchmarks/results/cli_refusals.md``: exit status, lines on stderr, median and
maximum wall seconds. The bars the command line must meet: exit 2 and one line for a refusal,
under 5 s idle and under 15 s at load 4.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from footer import footer  # noqa: E402

RUN = "{tmp}/run"
CASES = [  # (what, argv after "hybrid")
    ("train: a seed beyond 64 bits", ["train", "--out", RUN, "--seed", str(2**64)]),
    ("train: a 26-qubit circuit", ["train", "--out", RUN, "--qubits", "26"]),
    ("train: an unknown dataset", ["train", "--out", RUN, "--data", "shakespear"]),
    ("train: a flag argparse cannot parse", ["train", "--out", RUN, "--steps", "x"]),
    ("sample: a negative character count", ["sample", "--run", RUN, "--chars", "-1"]),
    ("sample: a negative temperature", ["sample", "--run", RUN, "--temperature", "-1"]),
    ("sample: a NaN temperature", ["sample", "--run", RUN, "--temperature", "nan"]),
    ("sweep: --workers -1", ["sweep", "--out", RUN, "--workers", "-1"]),
    ("tune: --trials 0", ["tune", "--out", RUN, "--trials", "0"]),
    ("submit: a negative shot count", ["submit", "--backend", "qiskit.aer", "--out", RUN, "--shots", "-1"]),
    ("jobs: not a submit run", ["jobs", "list", RUN]),
    *[(f"{verb} --help", [verb, "--help"]) for verb in ("train", "sample", "sweep", "tune", "submit", "jobs")],
]


def spin() -> None:
    while True:
        pass


def measure(argv: list[str], repeats: int) -> tuple[int, int, list[float]]:
    times, code, lines = [], 0, 0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            args = [a.replace("{tmp}", tmp) for a in argv]
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "hybrid.cli", *args], capture_output=True, text=True)
            times.append(time.perf_counter() - start)
            code, lines = proc.returncode, proc.stderr.count("\n")
    return code, lines, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cli_refusals.md")
    args = parser.parse_args()
    results = {}
    for load in (0, 4):
        spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(load)]
        for p in spinners:
            p.start()
        try:
            for what, argv in CASES:
                results[what, load] = measure(argv, args.repeats)
                print(what, load, results[what, load], flush=True)
        finally:
            for p in spinners:
                p.terminate()
    lines = [
        "# Refusals and --help: wall time of a fresh `hybrid` process",
        "",
        f"Each case {args.repeats} times as a new process; load 4 = four busy-looping processes beside it on",
        "the machine's cores. Bars: a refusal exits 2 with one line on stderr, in under 5 s idle and 15 s at load 4.",
        "",
        "| case | exit | stderr lines | idle: median / max s | load 4: median / max s |",
        "|---|---:|---:|---:|---:|",
    ]
    for what, _ in CASES:
        code, n, idle = results[what, 0]
        _, _, loaded = results[what, 4]
        lines.append(f"| {what} | {code} | {n} | {statistics.median(idle):.2f} / {max(idle):.2f} | "
                     f"{statistics.median(loaded):.2f} / {max(loaded):.2f} |")  # fmt: skip
    args.out.write_text("\n".join([*lines, "", footer(("torch", "pennylane", "qiskit")), ""]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
