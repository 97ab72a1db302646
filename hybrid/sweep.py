"""Scaling sweeps: a grid of training runs on the built-in corpus, one table, power-law fits.

    out/
      base.toml      the config every run starts from (a resumed sweep must use the same)
      runs/<key>/    one run folder per grid point (the layout of ``hybrid train``)
      results.csv    one row per finished run: grid point, losses, steps, seconds, sizes, compute
      fits.csv       power laws of the reducible loss against parameters and compute, per optimizer
      scaling.png    those fits

Runs go to parallel worker processes when there are cores for them. A sweep killed midway
resumes with the same command: finished runs are skipped, and a run that was cut off
continues from its own checkpoint.

Compute is an estimate in FLOPs: ``6 * classical_params * tokens`` for the classical layers
(forward and backward of dense layers) plus ``3 * tokens * 8 * 2^n * gates`` for each circuit
(a statevector sweep per gate, forward and backward), with ``tokens`` the training tokens.
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hybrid.config import Config, apply_overrides, config_from_dict, load_config, save_config, validate
from hybrid.corpus import ENTROPY_RATE
from hybrid.errors import InputError, check_number
from hybrid.quantum import QuantumLayer
from hybrid.scaling import PowerLaw, fit_power_law, plot_scaling
from hybrid.tables import read_table, write_table
from hybrid.train import CHECKPOINT, load_run, train

BASE, RESULTS, FITS, PLOT = "base.toml", "results.csv", "fits.csv", "scaling.png"


@dataclass(frozen=True)
class GridPoint:
    n_qubits: int
    circuit_layers: int
    width: int  # model.n_embd
    optimizer: str
    seed: int

    @property
    def key(self) -> str:
        return f"q{self.n_qubits}-l{self.circuit_layers}-w{self.width}-{self.optimizer}-s{self.seed}"

    def overrides(self) -> dict:
        return {
            "circuit.n_qubits": self.n_qubits, "circuit.n_layers": self.circuit_layers,
            "model.n_embd": self.width, "optim.name": self.optimizer, "train.seed": self.seed,
        }  # fmt: skip


def make_grid(qubits, circuit_layers, widths, optimizers, seeds) -> list[GridPoint]:
    """Every combination, in a stable order."""
    return [GridPoint(*p) for p in itertools.product(qubits, circuit_layers, widths, optimizers, seeds)]


def sweep(
    base: Config, grid: list[GridPoint], out: str | Path, workers: int = 0, progress: bool = True,
    tuned: dict[str, Config] | None = None,
) -> list[dict]:  # fmt: skip
    """Train every grid point not yet in ``out/results.csv``, then fit and plot.

    Args:
        base: the config every run starts from; grid points override qubits, circuit
            layers, width, optimizer and seed. Must use the built-in corpus.
        workers: parallel processes; 0 picks one per core (each with one torch thread).
        tuned: ``{optimizer: config}``, e.g. the ``best-<optimizer>.toml`` files of a ``hybrid
            tune`` study: a point of that optimizer takes its whole ``[optim]`` section from there.

    Returns:
        The rows of ``results.csv``.

    Raises:
        InputError: ``workers`` < 0, or a grid point's config is invalid (checked for all before any
            run starts, before anything is written).
    """
    check_number("--workers", workers, low=0, integer=True)
    if base.data.source != "markov":
        raise InputError("sweeps run on the built-in corpus, whose known floor the fits use; drop data.path")
    tuned = tuned or {}

    def base_of(point: GridPoint) -> Config:
        return dataclasses.replace(base, optim=tuned[point.optimizer].optim) if point.optimizer in tuned else base

    for point in grid:
        validate(apply_overrides(base_of(point), point.overrides()))
    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if (out / BASE).exists():
        saved = load_config(out / BASE).to_dict()
        changed = [f"{s}.{k}" for s in saved for k in saved[s] if saved[s][k] != base.to_dict()[s][k]]
        if changed:
            raise InputError(f"{out} holds a sweep with another base config ({', '.join(changed)}); use a new --out")
    save_config(base, out / BASE)
    rows = read_table(out / RESULTS)
    done = {row["key"] for row in rows}
    todo = [p for p in grid if p.key not in done]
    if done and progress:
        print(f"skipping {len(grid) - len(todo)} finished runs")
    cores = os.cpu_count() or 1
    workers = max(1, min(workers or cores, len(todo) or 1))
    threads = max(1, cores // workers)
    bar = tqdm(total=len(grid), initial=len(grid) - len(todo), desc="sweep", unit="run", disable=not progress)
    for name, cfg in tuned.items():  # a resumed sweep must train with the same settings
        path = out / f"tuned-{name}.toml"
        if path.exists() and load_config(path).optim != cfg.optim:
            raise InputError(f"{out} was swept with other tuned settings for {name}; use a new --out")
        save_config(cfg, path)
    jobs = [(base_of(p).to_dict(), p, str(out / "runs" / p.key)) for p in todo]
    if workers == 1:
        finished = (run_point(*job) for job in jobs)
    else:
        context = multiprocessing.get_context("spawn")  # no forked torch thread pools
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,))
        finished = (f.result() for f in as_completed([pool.submit(run_point, *job) for job in jobs]))
    try:
        for row in finished:
            rows.append(row)
            write_table(out / RESULTS, rows)  # after each run: a kill loses at most the runs in flight
            bar.update(1)
    finally:
        if workers > 1:
            pool.shutdown(cancel_futures=True)
        bar.close()
    fits = fit_rows(rows)
    write_fits(out / FITS, fits)
    plot_scaling(rows, ENTROPY_RATE, fits, out / PLOT)
    return rows


def run_point(base: dict, point: GridPoint, run_dir: str) -> dict:
    """Train (or finish training) one grid point and return its results row."""
    cfg = apply_overrides(config_from_dict(base), point.overrides())
    summary = train(cfg, run_dir, resume=(Path(run_dir) / CHECKPOINT).exists(), progress=False)
    model, _, cfg = load_run(run_dir)
    circuits = [m for m in model.modules() if isinstance(m, QuantumLayer)]
    quantum = sum(m.weights.numel() for m in circuits)
    classical = sum(p.numel() for p in model.parameters()) - quantum
    tokens = summary.step * cfg.train.batch_size * cfg.model.block_size
    circuit_flops = sum(8 * 2**m.circuit.n_qubits * _gate_count(m) for m in circuits)
    return {
        "key": point.key, **asdict(point), "steps": summary.step, "val_loss": summary.val_loss,
        "train_loss": summary.train_loss, "seconds": summary.seconds, "params": classical + quantum,
        "quantum_params": quantum, "classical_params": classical,
        "compute_flops": 6 * classical * tokens + 3 * tokens * circuit_flops,
    }  # fmt: skip


def _init_worker(threads: int) -> None:
    """Share the cores among workers, and make each exit when the sweep process dies, even by
    SIGKILL (Linux): an orphan would go on training into a run folder the resumed sweep wants."""
    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


def _gate_count(layer: QuantumLayer) -> int:
    return len(layer.program.gates) if layer.program is not None else layer.circuit.n_qubits * layer.circuit.n_layers


def fit_rows(rows: list[dict]) -> dict[tuple[str, str], PowerLaw]:
    """Power laws of ``val_loss - floor`` against params and compute, per optimizer, where
    there are enough points (three, with two distinct sizes, all above the floor)."""
    fits = {}
    for optimizer in sorted({r["optimizer"] for r in rows}):
        pts = [r for r in rows if r["optimizer"] == optimizer and r["val_loss"] > ENTROPY_RATE]
        for axis in ("params", "compute_flops"):
            try:
                fits[(optimizer, axis)] = fit_power_law(
                    [r[axis] for r in pts], [r["val_loss"] - ENTROPY_RATE for r in pts]
                )
            except ValueError:
                continue  # too few points for this optimizer
    return fits


def write_fits(path: Path, fits: dict[tuple[str, str], PowerLaw]) -> None:
    write_table(path, [
        {"optimizer": opt, "axis": axis, "exponent": f.exponent, "exponent_lo": f.exponent_ci[0],
         "exponent_hi": f.exponent_ci[1], "coefficient": f.coefficient, "coefficient_lo": f.coefficient_ci[0],
         "coefficient_hi": f.coefficient_ci[1], "r2": f.r2, "n": f.n}
        for (opt, axis), f in fits.items()
    ])  # fmt: skip
