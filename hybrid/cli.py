"""The ``hybrid`` command line: ``hybrid train``, ``hybrid sample``.

Bad input ends in one line on stderr, ``error: <problem>; <fix>``, exit status 2, and no
traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hybrid.config import Config, apply_overrides, load_config
from hybrid.errors import InputError

# flag -> config key; every flag is also reachable as --set section.key=value
TRAIN_FLAGS = {
    "steps": "train.steps", "data": "data.path", "quantum": "model.quantum",
    "backend": "circuit.backend", "circuit": "circuit.name", "qubits": "circuit.n_qubits",
    "circuit_layers": "circuit.n_layers", "optimizer": "optim.name", "lr": "optim.lr",
    "batch_size": "train.batch_size", "seed": "train.seed", "device": "train.device",
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybrid", description="Train hybrid quantum-classical language models.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model and write a run folder")
    train.add_argument("--config", type=Path, help="TOML config file (defaults: hybrid.config)")
    train.add_argument("--out", type=Path, help="run folder to create (default: runs/<time>)")
    train.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR from its checkpoint")
    train.add_argument("--steps", type=int, help="optimizer steps")
    train.add_argument("--data", help="UTF-8 text file (default: the built-in corpus)")
    train.add_argument("--quantum", help="where the circuit goes: head, ffn or none")
    train.add_argument("--backend", help="default.qubit, lightning.qubit, ...")
    train.add_argument("--circuit", help="template name, see circuits.TEMPLATES")
    train.add_argument("--qubits", type=int, help="qubits of the circuit")
    train.add_argument("--circuit-layers", type=int, help="variational layers of the circuit")
    train.add_argument("--optimizer", help="optimizer for the whole model")
    train.add_argument("--lr", type=float, help="peak learning rate")
    train.add_argument("--batch-size", type=int, help="sequences per step")
    train.add_argument("--seed", type=int, help="random seed")
    train.add_argument("--device", help="cpu or cuda")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any config key, e.g. --set model.n_embd=128 (repeatable)")  # fmt: skip
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=run_train)

    sweep = commands.add_parser("sweep", help="train a grid of models on the built-in corpus and fit scaling laws")
    sweep.add_argument("--out", type=Path, required=True, help="sweep folder (rerun the command to resume)")
    sweep.add_argument("--qubits", default="2,4", help="comma-separated qubit counts")
    sweep.add_argument("--circuit-layers", default="1,2", help="comma-separated circuit layer counts")
    sweep.add_argument("--widths", default="32,64", help="comma-separated model widths (n_embd)")
    sweep.add_argument("--optimizers", default="adamw", help="comma-separated optimizer names")
    sweep.add_argument("--seeds", default="0", help="comma-separated seeds")
    sweep.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    sweep.add_argument("--workers", type=int, default=0, help="parallel processes (0: one per core)")
    sweep.add_argument("--config", type=Path, help="base TOML config of every run")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="base config key (repeatable)")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.set_defaults(handler=run_sweep)

    sample = commands.add_parser("sample", help="generate text from a run's checkpoint")
    sample.add_argument("--run", type=Path, required=True, metavar="DIR", help="run folder")
    sample.add_argument("--chars", type=int, default=300, help="characters to generate")
    sample.add_argument("--prompt", default="", help="text to continue")
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(handler=run_sample)
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
    summary = train(cfg, out, resume=bool(args.resume), progress=not args.quiet)
    floor = f" (entropy floor {summary.floor:.3f}, gap {summary.val_loss - summary.floor:.3f})" if summary.floor else ""
    print(f"step {summary.step}: train loss {summary.train_loss:.4f}, val loss {summary.val_loss:.4f} nats/char{floor}")
    print(f"run folder: {summary.out}")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    from hybrid.sweep import FITS, PLOT, RESULTS, make_grid, sweep

    base = load_config(args.config) if args.config else Config()
    base = apply_overrides(base, {"train.steps": args.steps, "train.sample_chars": 0, **set_overrides(args.set)})
    grid = make_grid(
        _ints(args.qubits, "--qubits"), _ints(args.circuit_layers, "--circuit-layers"),
        _ints(args.widths, "--widths"), args.optimizers.split(","), _ints(args.seeds, "--seeds"),
    )  # fmt: skip
    rows = sweep(base, grid, args.out, workers=args.workers, progress=not args.quiet)
    print(f"{len(rows)} runs: {args.out / RESULTS}, fits: {args.out / FITS}, plot: {args.out / PLOT}")
    return 0


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"{flag} takes comma-separated integers, got {text!r}") from None


def run_sample(args: argparse.Namespace) -> int:
    from hybrid.train import load_run, sample_text

    model, tokenizer, _ = load_run(args.run)
    print(sample_text(model, tokenizer, args.chars, prompt=args.prompt, temperature=args.temperature, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
