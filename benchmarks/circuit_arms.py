"""Does QNG on the circuit help when the rest of the model is at its best? The circuit arms.

    python benchmarks/circuit_arms.py --base benchmarks/results/protocol/markov/best-muon.toml --workload markov

The linear layers stay on Muon at its tuned best (``--base``, a ``best-muon.toml`` of a
``hybrid tune`` protocol study); only the circuit's optimizer changes, and each arm is tuned on
its own keys with the same budget (``hybrid tune --keys``: 3 studies x 5 quasi-random trials,
the arm's defaults as trial 0, selection by mean + SE on 10 seeds, finals on 5 fresh seeds):

    adamw         the circuit weights on AdamW (preset muon): AdamW's lr, beta2, weight decay
    qng           QNG, no momentum (muon_qng): its lr and damping
    momentum_qng  QNG with heavy-ball momentum (muon_qng, momentum 0.9 as PennyLane's
                  MomentumQNGOptimizer): lr, damping, momentum
    metric_adam   Adam in the eigenbasis of the circuit's metric (muon_metric_adam): its lr
    pullback_qng  QNG in the metric the loss sees (optim.qng.metric=pullback: the output
                  distribution's Fisher pulled back to the circuit weights): lr, damping

Each arm is its own study (a journal under ``benchmarks/results/circuit_arms/<workload>/<arm>/``,
committed, so a rerun continues it; runs under ``runs/circuit_arms``). The table
(``circuit_arms/<workload>.md``) gives each arm's final val loss on the fresh seeds, Welch's p
against the AdamW arm, and steps and seconds to the AdamW arm's mean final loss with 95%
bootstrap intervals of the ratio, and Welch's p against the base itself (the AdamW arm's
defaults), the comparison that changes the circuit's optimizer alone.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from footer import footer  # noqa: E402

from hybrid.checkpoint import atomic_write  # noqa: E402
from hybrid.comparison import bootstrap_ratio, mean_final, time_to_target, welch_p  # noqa: E402
from hybrid.config import apply_overrides, load_config  # noqa: E402
from hybrid.tune import tune  # noqa: E402

ARMS = {  # arm -> (preset, base overrides, the keys it tunes)
    "adamw": ("muon", {}, ("optim.lr", "optim.beta2", "optim.weight_decay")),
    "qng": ("muon_qng", {"optim.qng.momentum": 0.0}, ("optim.qng.lr", "optim.qng.damping")),
    "momentum_qng": ("muon_qng", {"optim.qng.momentum": 0.9},
                     ("optim.qng.lr", "optim.qng.damping", "optim.qng.momentum")),
    "metric_adam": ("muon_metric_adam", {}, ("optim.metric_adam.lr",)),
    "pullback_qng": ("muon_qng", {"optim.qng.momentum": 0.0, "optim.qng.metric": "pullback"},
                     ("optim.qng.lr", "optim.qng.damping")),
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="best-muon.toml of a protocol study")
    parser.add_argument("--workload", default="markov", help="a name for the tables (data.path is in --base)")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms")
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = load_config(args.base)
    results = ROOT / "benchmarks" / "results" / "circuit_arms"
    rows = {}
    for arm in args.arms.split(","):
        preset, overrides, keys = ARMS[arm]
        journal = results / args.workload / arm / "study.log"
        journal.parent.mkdir(parents=True, exist_ok=True)
        print(f"arm {arm}: {preset}, tuning {', '.join(keys)}", flush=True)
        out = ROOT / "runs" / "circuit_arms" / args.workload / arm
        (rows[arm],) = tune(apply_overrides(base, overrides), [preset], args.trials, args.seeds, out,
                            storage=f"journal:{journal}", progress=False, studies=args.studies, keys=keys)  # fmt: skip
        shutil.copyfile(out / "best.md", journal.parent / "best.md")  # the arm's protocol table, beside its journal
    text = report(rows, args)
    atomic_write(results / f"{args.workload}.md", lambda f: f.write(text.encode()))
    print(text)


def report(rows: dict[str, dict], args) -> str:
    reference = rows.get("adamw", {}).get("finals", [])
    target = mean_final(reference) if reference else float("nan")
    lines = [f"# The circuit arms on {args.workload}: the linear layers on tuned Muon, the circuit's optimizer varied",
             "",
             f"Base: `{args.base}` (Muon and AdamW at their tuned best). Each arm tuned on its own keys only "
             f"(`hybrid tune --keys`), {args.studies} studies x {args.trials} trials, the arm's defaults as "
             f"trial 0, then {args.seeds} fresh seeds. Target: the AdamW arm's mean final val loss "
             f"({target:.4f}); p: Welch's t-test against the AdamW arm; ratios with 95% bootstrap intervals. "
             "Each arm's full protocol table and journal: `<workload>/<arm>/best.md` and `study.log` beside "
             "this table.", "",
             "The AdamW arm's keys set the one AdamW that trains the circuit *and* the embeddings, norms "
             "and readouts, while the other arms keep that AdamW at the base's values: its gain over the "
             "base is not the circuit's alone. The circuit-only comparison is `p vs base`: Welch's test "
             "against the base itself on the same fresh seeds (the AdamW arm's defaults: the circuit on "
             "AdamW at the base's settings, everything else as in every arm), the first row.", "",
             footer(("torch", "optuna", "pennylane")), "",
             "| arm (circuit optimizer) | keys tuned | final val loss | p vs adamw | p vs base | steps to target "
             "| ratio | seconds to target | ratio | best params |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    adamw_finals = [run[-1]["val_loss"] for run in reference]
    base_finals = [run[-1]["val_loss"] for run in rows.get("adamw", {}).get("defaults", [])]
    if base_finals:
        lines.append(f"| base (circuit on AdamW, untuned) | | {statistics.fmean(base_finals):.4f} ± "
                     f"{statistics.stdev(base_finals) if len(base_finals) > 1 else 0.0:.4f} | "
                     f"{welch_p(base_finals, adamw_finals):.3g} | (reference) | | | | | |")  # fmt: skip
    ref = time_to_target(reference, target) if reference else None
    for arm, row in rows.items():
        if not row["finals"]:
            lines.append(f"| {arm} | | no complete trial | | | | | | | |")
            continue
        finals = [run[-1]["val_loss"] for run in row["finals"]]
        mean, spread = statistics.fmean(finals), statistics.stdev(finals) if len(finals) > 1 else 0.0
        hit = time_to_target(row["finals"], target) if reference else None
        is_ref = arm == "adamw"
        p = "" if is_ref or not reference else f"{welch_p(finals, adamw_finals):.3g}"
        p_base = f"{welch_p(finals, base_finals):.3g}" if base_finals else ""
        ratio = {column: "(reference)" if is_ref else interval(bootstrap_ratio(row["finals"], reference, column))
                 for column in ("step", "seconds")} if reference else {"step": "", "seconds": ""}  # fmt: skip
        params = ", ".join(f"{k.removeprefix('optim.')}={v:.3g}" for k, v in row["params"].items())
        keys = ", ".join(k.removeprefix("optim.") for k in ARMS[arm][2])
        cells = [keys, f"{mean:.4f} ± {spread:.4f}", p, p_base,
                 f"{hit[0]}" if hit else "never", f"{hit[0] / ref[0]:.2f} {ratio['step']}" if hit and ref else "",
                 f"{hit[1]:.1f}" if hit else "never",
                 f"{hit[1] / ref[1]:.2f} {ratio['seconds']}" if hit and ref else "", params]  # fmt: skip
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def interval(bounds: tuple[float, float]) -> str:
    return f"[{bounds[0]:.2f}, {bounds[1]:.2f}]"


if __name__ == "__main__":
    main()
