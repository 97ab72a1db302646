"""The ``hybrid`` command line: ``hybrid train``, ``sweep``, ``tune``, ``sample``, ``submit``, ``jobs``, ``curvature``.

Bad input ends in one line on stderr, ``error: <problem>; <fix>``, exit status 2, and no
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hybrid.errors import MAX_SEED, InputError, check_number

# Each verb imports its modules (torch, PennyLane, Qiskit behind them) in its handler, after the
# checks that need none of them: --help, a flag argparse refuses, or a bad `hybrid sample` flag
# answers without loading torch.
if TYPE_CHECKING:
    from hybrid.config import Config

# flag -> config key; every flag is also reachable as --set section.key=value
TRAIN_FLAGS = {
    "steps": "train.steps", "data": "data.path", "quantum": "model.quantum",
    "backend": "circuit.backend", "circuit": "circuit.name", "qubits": "circuit.n_qubits",
    "circuit_layers": "circuit.n_layers", "optimizer": "optim.name", "lr": "optim.lr",
    "batch_size": "train.batch_size", "seed": "train.seed", "device": "train.device",
    "gradient": "execution.gradient", "log": "train.log",
}  # fmt: skip
LOG_HELP = "metrics sinks besides metrics.csv, comma-separated: tensorboard, mlflow (into the run folder)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # hybrid train --nproc runs them again under torchrun
    try:
        return args.handler(args)
    except InputError as error:
        if os.environ.get("RANK", "0") == "0":  # data parallel: rank 0 says it, once
            print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a flag it cannot parse refused like every other bad input: one line, exit 2."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="hybrid", description="Train hybrid quantum-classical language models.")
    commands = parser.add_subparsers(dest="command", required=True)  # each verb's parser is a OneLineParser

    train = commands.add_parser("train", help="train a model and write a run folder")
    train.add_argument("--config", type=Path, help="TOML config file (defaults: hybrid.config)")
    train.add_argument("--out", type=Path, help="run folder to create (default: runs/<time>)")
    train.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR from its checkpoint")
    train.add_argument("--steps", type=int, help="optimizer steps")
    train.add_argument("--data", help="markov (the built-in corpus, default), shakespeare, pydoc, or a UTF-8 text file")
    train.add_argument("--quantum", help="where the circuit goes: head, ffn, attn or none")
    train.add_argument("--backend", help="default.qubit, lightning.qubit, ...")
    train.add_argument("--circuit", help="template name, see circuits.TEMPLATES")
    train.add_argument("--qubits", type=int, help="qubits of the circuit")
    train.add_argument("--circuit-layers", type=int, help="variational layers of the circuit")
    train.add_argument("--optimizer", help="optimizer for the whole model")
    train.add_argument("--lr", type=float, help="peak learning rate")
    train.add_argument("--batch-size", type=int, help="sequences per step")
    train.add_argument("--seed", type=int, help="random seed")
    train.add_argument("--device", help="cpu or cuda")
    train.add_argument("--gradient", choices=("parameter-shift", "spsa"),
                       help="sampling backends: parameter-shift (default) or spsa (1 + 2 circuits per input)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any config key, e.g. --set model.n_embd=128 (repeatable)")  # fmt: skip
    train.add_argument("--log", metavar="SINKS", help=LOG_HELP)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--nproc", type=int, metavar="N",
                       help="data-parallel processes on this machine, via torchrun (--batch-size is the global batch)")
    train.set_defaults(handler=run_train)

    sweep = commands.add_parser("sweep", help="train a grid of models on the built-in corpus and fit scaling laws")
    sweep.add_argument("--out", type=Path, required=True, help="sweep folder (rerun the command to resume)")
    sweep.add_argument("--qubits", default="2,4", help="comma-separated qubit counts")
    sweep.add_argument("--circuit-layers", default="1,2", help="comma-separated circuit layer counts")
    sweep.add_argument("--widths", default="32,64", help="comma-separated model widths (n_embd)")
    sweep.add_argument("--optimizers", default="adamw", help="comma-separated optimizer names")
    sweep.add_argument("--tuned", type=Path,
                       help="a hybrid tune study: each optimizer's [optim] from its best-<name>.toml")
    sweep.add_argument("--seeds", default="0", help="comma-separated seeds")
    sweep.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    sweep.add_argument("--workers", type=int, default=0, help="parallel processes (0: one per core)")
    sweep.add_argument("--config", type=Path, help="base TOML config of every run")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="base config key (repeatable)")
    sweep.add_argument("--log", metavar="SINKS", help=f"{LOG_HELP}, of every run")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.set_defaults(handler=run_sweep)

    tune = commands.add_parser(
        "tune", help="tune each optimizer with Optuna, then train its best config on several seeds"
    )
    tune.add_argument("--out", type=Path, required=True, help="study folder (rerun the command to resume)")
    tune.add_argument("--optimizers", default="adamw,kfac,hybrid", help="comma-separated optimizer names")
    tune.add_argument("--trials", type=int, default=8, help="complete + pruned trials per study, all workers")
    tune.add_argument("--studies", type=int, default=1,
                      help="independent studies per optimizer (AlgoPerf: 5); the score is the median of their bests")
    tune.add_argument("--sampler", default="qmc", help="qmc (scrambled Sobol, quasi-random) or tpe (multivariate)")
    tune.add_argument("--keys", default="", help="comma-separated keys: search only these of each optimizer's "
                      "space, the rest at the base config's values (default: the whole space)")
    tune.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    tune.add_argument("--seeds", type=int, default=5,
                      help="fresh seeds of the final runs of each best config and of its defaults")
    tune.add_argument("--select-seeds", type=int, default=10,
                      help="seeds each candidate (the defaults, each study's best) trains on before the finals; "
                      "the lowest mean + standard error is selected")
    tune.add_argument("--storage", help="Optuna storage shared by workers: a database URL "
                      "(postgresql://USER:PASS@HOST/DB, ...) or journal:FILE (default: sqlite:///OUT/study.sqlite3)")
    tune.add_argument("--config", type=Path, help="base TOML config of every run")
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="base config key (repeatable)")
    tune.add_argument("--log", metavar="SINKS", help=f"{LOG_HELP}, of every trial and final run")
    tune.add_argument("--quiet", action="store_true", help="no progress bar")
    tune.set_defaults(handler=run_tune)

    sample = commands.add_parser("sample", help="generate text from a run's checkpoint")
    sample.add_argument("--run", type=Path, required=True, metavar="DIR", help="run folder")
    sample.add_argument("--chars", type=int, default=300, help="characters to generate")
    sample.add_argument("--prompt", default="", help="text to continue")
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(handler=run_sample)

    submit = commands.add_parser("submit", help="train, evaluate or estimate the metric on Qiskit/IBM backends")
    submit.add_argument("--backend", help="qiskit.aer, fake_<device> (local testing mode) or ibm_<device>")
    submit.add_argument(
        "--task",
        choices=("train", "eval", "metric"),
        default="train",
        help="train (default), eval (losses of --from's model) or metric (block-diagonal metric tensor)",
    )
    submit.add_argument(
        "--from", dest="source", type=Path, metavar="DIR", help="run folder whose model eval/metric use"
    )
    submit.add_argument("--out", type=Path, help="run folder to create (default: runs/submit-<time>)")
    submit.add_argument("--resume", type=Path, metavar="DIR", help="continue DIR; journaled jobs are not sent again")
    submit.add_argument("--config", type=Path, help="TOML config file (default: small hardware-sized settings)")
    submit.add_argument("--steps", type=int, help="optimizer steps (one job each)")
    submit.add_argument("--shots", type=int, help="shots per circuit")
    submit.add_argument("--mode", choices=("job", "batch", "session"), help="IBM execution mode")
    submit.add_argument("--noise", help="qiskit.aer only: noise model of a fake device, e.g. fake_manila")
    submit.add_argument("--resilience-level", type=int, choices=(0, 1, 2), help="error mitigation level (hardware)")
    submit.add_argument("--twirling", action="store_const", const="true", help="twirl gates and measurements")
    submit.add_argument("--dd", choices=("XX", "XpXm", "XY4"), help="dynamical decoupling sequence")
    submit.add_argument("--optimization-level", type=int, choices=(0, 1, 2, 3), help="transpiler preset level")
    submit.add_argument("--max-execution-time", type=int, metavar="S", help="QPU seconds one job may use")
    submit.add_argument("--timeout", type=float, metavar="S", help="seconds to wait for one job")
    submit.add_argument("--seed", type=int, help="random seed")
    submit.add_argument("--gradient", choices=("parameter-shift", "spsa"),
                        help="parameter-shift (default: 1 + 2 x angles circuits per input) or spsa (1 + 2)")
    submit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key (repeatable)")
    submit.add_argument("--dry-run", action="store_true", help="print the cost preview and send nothing")
    submit.add_argument("--quiet", action="store_true", help="no progress bar")
    submit.set_defaults(handler=run_submit)

    jobs = commands.add_parser("jobs", help="list, refresh or fetch the journaled jobs of a submit run")
    jobs.add_argument(
        "action", choices=("list", "status", "fetch"), help="list the journal, ask for states, fetch results"
    )
    jobs.add_argument("run", type=Path, metavar="DIR", help="run folder of hybrid submit")
    jobs.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="only these jobs (default: all)")
    jobs.set_defaults(handler=run_jobs)

    curvature = commands.add_parser("curvature", help="write a run's curvature report: curvature.md and curvature.png")
    curvature.add_argument("run", type=Path, metavar="RUN",
                           help="run folder of hybrid train --set train.curvature_every=N")  # fmt: skip
    curvature.add_argument("--tokens", type=int, default=32,
                           help="positions of the tracked batch the three circuit metrics average over")  # fmt: skip
    curvature.set_defaults(handler=run_curvature)
    return parser


def train_overrides(args: argparse.Namespace) -> dict[str, str]:
    """``{"section.key": value}`` from the flags that were given and from ``--set``."""
    overrides = {key: getattr(args, flag) for flag, key in TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    return {**overrides, **set_overrides(args.set)}


def set_overrides(items: list[str]) -> dict[str, str]:
    """``{"section.key": value}`` from ``--set KEY=VALUE`` items."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--set takes KEY=VALUE, got {item!r}; e.g. --set model.n_embd=128")
        overrides[key.strip()] = value
    return overrides


def run_train(args: argparse.Namespace) -> int:
    from hybrid.config import Config, apply_overrides, load_config
    from hybrid.train import CHECKPOINT, resume_config, train

    if args.resume:
        if args.out or args.config:
            raise InputError("--resume continues the run in its own folder; drop --out and --config")
        out = args.resume
        cfg = apply_overrides(resume_config(out), train_overrides(args))
    else:
        cfg = load_config(args.config) if args.config else Config()
        cfg = apply_overrides(cfg, train_overrides(args))
        out = args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
        if (out / CHECKPOINT).exists():
            raise InputError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")
    if cfg.circuit.backend.startswith("ibm_"):
        raise InputError(
            f"hybrid train sends no jobs to IBM hardware; use hybrid submit --backend {cfg.circuit.backend} "
            "(cost preview, job journal, resume without paying twice)"
        )
    if args.nproc is not None and args.nproc != 1:
        return _relaunch(args, cfg, out)
    summary = train(cfg, out, resume=bool(args.resume), progress=not args.quiet)
    if os.environ.get("RANK", "0") != "0":
        return 0  # data parallel: rank 0 reports
    floor = f" (entropy floor {summary.floor:.3f}, gap {summary.val_loss - summary.floor:.3f})" if summary.floor else ""
    unit = "nats/char" if cfg.data.tokenizer == "char" else "nats/token"
    print(f"step {summary.step}: train loss {summary.train_loss:.4f}, val loss {summary.val_loss:.4f} {unit}{floor}; "
          f"test {summary.test_bpc:.4f} bits/char")  # fmt: skip
    print(f"run folder: {summary.out}")
    return 0


def _relaunch(args: argparse.Namespace, cfg: Config, out: Path) -> int:
    """``hybrid train --nproc N``: check what the ranks would refuse, then run this command
    again as N torchrun processes (the run folder fixed here, so that all ranks share it)."""
    from hybrid.config import validate
    from hybrid.parallel import check_world, launched_size, relaunch

    if args.nproc < 1:
        raise InputError(f"--nproc takes the number of processes (1 or more), got {args.nproc}")
    if launched_size() > 1:
        raise InputError("--nproc starts torchrun itself; drop it when launching with torchrun")
    validate(cfg)
    check_world(cfg, args.nproc)
    argv, rest = [], iter(args.argv)
    for arg in rest:
        if arg == "--nproc":
            next(rest)  # and its value
        elif not arg.startswith("--nproc="):
            argv.append(arg)
    if not args.resume and not args.out:
        argv += ["--out", str(out)]
    return relaunch(argv, args.nproc)


def run_sweep(args: argparse.Namespace) -> int:
    from hybrid.config import load_config
    from hybrid.sweep import FITS, PLOT, RESULTS, make_grid, sweep

    base = _base_config(args)
    grid = make_grid(
        _ints(args.qubits, "--qubits"), _ints(args.circuit_layers, "--circuit-layers"),
        _ints(args.widths, "--widths"), args.optimizers.split(","), _ints(args.seeds, "--seeds"),
    )  # fmt: skip
    tuned = {}
    if args.tuned:
        for name in dict.fromkeys(point.optimizer for point in grid):
            path = args.tuned / f"best-{name}.toml"
            if not path.is_file():
                raise InputError(f"{args.tuned} has no {path.name}; tune {name} there (hybrid tune) or drop --tuned")
            tuned[name] = load_config(path)
    rows = sweep(base, grid, args.out, workers=args.workers, progress=not args.quiet, tuned=tuned)
    print(f"{len(rows)} runs: {args.out / RESULTS}, fits: {args.out / FITS}, plot: {args.out / PLOT}")
    return 0


def run_tune(args: argparse.Namespace) -> int:
    from hybrid.tune import TABLE, tune

    base = _base_config(args)
    optimizers = [name.strip() for name in args.optimizers.split(",") if name.strip()]
    tune(base, optimizers, args.trials, args.seeds, args.out, storage=args.storage, progress=not args.quiet,
         studies=args.studies, sampler=args.sampler, select_seeds=args.select_seeds,
         keys=tuple(k.strip() for k in args.keys.split(",") if k.strip()))
    print(f"table: {args.out / TABLE}, best configs: {args.out}/best-<optimizer>.toml")
    return 0


def _base_config(args: argparse.Namespace) -> Config:
    from hybrid.config import Config, apply_overrides, load_config

    """The config every run of a sweep or study starts from: --config, --steps, --log, --set."""
    base = load_config(args.config) if args.config else Config()
    flags = {"train.steps": args.steps, "train.sample_chars": 0, **({"train.log": args.log} if args.log else {})}
    return apply_overrides(base, {**flags, **set_overrides(args.set)})


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"{flag} takes comma-separated integers, got {text!r}") from None


SUBMIT_FLAGS = {
    "backend": "circuit.backend", "steps": "train.steps", "shots": "execution.shots", "mode": "execution.mode",
    "noise": "execution.noise", "resilience_level": "execution.resilience_level", "twirling": "execution.twirling",
    "dd": "execution.dd", "optimization_level": "execution.optimization_level",
    "max_execution_time": "execution.max_execution_time", "timeout": "execution.result_timeout", "seed": "train.seed",
    "gradient": "execution.gradient",
}  # fmt: skip


def run_submit(args: argparse.Namespace) -> int:
    from hybrid.submit import submit

    overrides = {key: getattr(args, flag) for flag, key in SUBMIT_FLAGS.items() if getattr(args, flag) is not None}
    return submit(args, {**overrides, **set_overrides(args.set)})


def run_jobs(args: argparse.Namespace) -> int:
    from hybrid.jobs import jobs

    return jobs(args)


def run_curvature(args: argparse.Namespace) -> int:
    from hybrid.curvature import FIGURE, curvature_report

    report = curvature_report(args.run, tokens=args.tokens)
    print(f"curvature report: {report}, figure: {report.parent / FIGURE}")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    check_number("--chars", args.chars, low=0, integer=True)
    check_number("--temperature", args.temperature, low=0, low_open=True)
    check_number("--seed", args.seed, low=0, high=MAX_SEED, integer=True)
    if not (args.run / "checkpoint.pt").is_file():
        raise InputError(f"{args.run} holds no checkpoint.pt; point --run at a run folder of hybrid train")
    from hybrid.train import load_run, sample_text

    model, tokenizer, _ = load_run(args.run)
    print(sample_text(model, tokenizer, args.chars, prompt=args.prompt, temperature=args.temperature, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
