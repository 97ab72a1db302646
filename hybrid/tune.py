"""Hyperparameter studies: one Optuna study per optimizer, a fixed trial budget, multi-seed finals.

    out/
      study.sqlite3            the default storage (``--storage``: any Optuna database URL, or journal:FILE)
      tokenizer.json           with data.tokenizer = "bpe": trained once, given to every run of the study
      trials/<optimizer>/<n>/  the run folder of trial n (the layout of ``hybrid train``)
      best-<optimizer>.toml    the best trial's full config (``hybrid train --config`` runs it)
      final/<optimizer>/seed<k>/  the best config trained with train.seed = k
      best.md                  optimizer, best params, final val loss mean +- std and per seed
      history-<optimizer>.png, importance-<optimizer>.png, best-so-far.png

Each study (named after its optimizer) searches ``search_space(cfg.optim)`` with a seeded TPE
sampler and prunes with a median rule on the validation loss of every evaluation. Workers on
any number of machines run the same command against one storage; together they run exactly
``trials`` COMPLETE + PRUNED trials per optimizer, interleaving the optimizers so a partial
study stays balanced. A trial left RUNNING by a dead worker (its process is gone, or its
heartbeat is older than ``GRACE_S``) is marked FAIL and enqueued again with the same params.
"""

from __future__ import annotations

import math
import os
import re
import socket
import statistics
import time
import warnings
from pathlib import Path

import optuna
from matplotlib.figure import Figure
from optuna.trial import TrialState
from tqdm.auto import tqdm

from hybrid.checkpoint import atomic_write
from hybrid.config import Config, apply_overrides, validate
from hybrid.data import prepare_tokenizer
from hybrid.errors import InputError
from hybrid.optim.registry import PRESETS, search_space
from hybrid.tables import read_table
from hybrid.train import CHECKPOINT, METRICS, TOKENIZER, train

STORAGE, TABLE, BEST_SO_FAR = "study.sqlite3", "best.md", "best-so-far.png"
HEARTBEAT_S, GRACE_S, POLL_S = 30.0, 600.0, 2.0  # a RUNNING trial silent for GRACE_S belongs to a dead worker
BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Open an Optuna storage shared by workers, with a one-line error that says what to fix.

    ``url`` is a database URL (``sqlite:///FILE``, ``postgresql://USER:PASS@HOST/DB``,
    ``mysql+pymysql://...``; the tables are created on first use) or ``journal:FILE``, an
    append-only file (``JournalStorage`` on a ``JournalFileBackend``) for machines that share a
    file system but no database server. Passwords are masked in errors.
    """
    scheme = url.partition(":")[0].partition("+")[0].lower()
    if scheme == "journal":
        return _open_journal(url)
    if scheme not in RDB_SCHEMES or "://" not in url:
        raise InputError(f"--storage {url!r} is not a storage URL; use an Optuna URL such as sqlite:///study.sqlite3, "
                         "postgresql://user:pass@host/db or journal:study.log")  # fmt: skip
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except ImportError as error:
        raise InputError(
            f"--storage {_masked(url)}: the database driver is not installed ({error}); "
            "pip install it (pip install 'hybrid-qlm[postgres]' for postgresql://, pymysql for mysql+pymysql://)"
        ) from None
    except Exception as error:  # sqlalchemy's ArgumentError (malformed), OperationalError (unreachable), ...
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        reason = reason.replace(url, _masked(url))
        if type(error).__name__ == "ArgumentError" or "parse" in reason.lower():
            fix = "use an Optuna URL such as sqlite:///study.sqlite3 or postgresql://user:pass@host/db"
        elif url.startswith("sqlite"):
            fix = "make sure the database file's folder exists and is writable"
        else:
            fix = "check that the database server runs, is reachable, and the user, password and database exist"
        raise InputError(f"cannot open --storage {_masked(url)} ({type(error).__name__}: {reason}); {fix}") from None


RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql")  # SQLAlchemy dialects


def _open_journal(url: str) -> optuna.storages.JournalStorage:
    path = Path(url.removeprefix("journal:")).expanduser()
    if not url.removeprefix("journal:") or path.is_dir():
        raise InputError(f"--storage {url} names no journal file; use journal:PATH, e.g. journal:study.log")
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise InputError(f"--storage {url}: the folder {path.parent} does not exist or is not writable; create it")
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def _masked(url: str) -> str:
    """``url`` with its password, if any, as ``***``: errors are printed and logged."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _engine_kwargs(url: str) -> dict:
    # SQLite serializes writers: wait for the lock instead of failing when several workers write at once.
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def tune(
    base: Config, optimizers: list[str], trials: int, seeds: int, out: str | Path, storage: str | None = None,
    progress: bool = True, pruner: optuna.pruners.BasePruner | None = None,
) -> list[dict]:  # fmt: skip
    """Run this worker's share of the studies, then the final multi-seed runs, table and plots.

    Args:
        base: the config every trial starts from (``train.steps`` included); a trial sets
            ``optim.name`` and the keys of ``search_space``. ``train.seed`` seeds the trials
            and the sampler; the finals use seeds ``0..seeds-1``.
        optimizers: names of ``PRESETS``, one study each.
        trials: COMPLETE + PRUNED trials per optimizer, across all workers.
        storage: an Optuna database URL or ``journal:FILE`` (``open_storage``); default
            ``sqlite:///<out>/study.sqlite3``.
        pruner: default ``MedianPruner`` on the validation loss of each evaluation.

    Returns:
        One row per optimizer: best params, final val losses per seed, mean and std.

    Raises:
        InputError: unknown optimizer, bad budget, invalid config or unreachable storage,
            all before any trial runs.
    """
    out = Path(out)
    configs = _check(base, optimizers, trials, seeds)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{out.resolve() / STORAGE}"
    db = open_storage(url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = pruner or optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=base.train.eval_every)
    studies = {name: _load_study(db, name, cfg, pruner) for name, cfg in configs.items()}
    tokenizer = prepare_tokenizer(base.data, out / TOKENIZER)  # a BPE is trained once: every run of the study uses it
    finished = sum(_count(s, (TrialState.COMPLETE, TrialState.PRUNED)) for s in studies.values())
    bar = tqdm(total=trials * len(studies), initial=finished, desc="tune", unit="trial", disable=not progress)
    try:
        while True:  # round-robin: one trial per optimizer per round, while there is budget
            ran = [_run_trial(s, configs[n], out / "trials" / n, trials, bar, tokenizer) for n, s in studies.items()]
            if any(ran):
                continue
            if all(_count(s, (TrialState.RUNNING,)) == 0 and _count(s, BUDGET_STATES) >= trials
                   for s in studies.values()):  # fmt: skip
                break
            time.sleep(POLL_S)  # the budget is taken: wait for other workers' trials (or for them to die)
    finally:
        bar.close()
    rows = [_final(s, configs[n], seeds, out, progress, tokenizer) for n, s in studies.items()]
    write_report(rows, studies, out)
    return rows


def _check(base: Config, optimizers: list[str], trials: int, seeds: int) -> dict[str, Config]:
    unknown = [name for name in optimizers if name not in PRESETS]
    if unknown or not optimizers:
        raise InputError(f"unknown optimizer {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(PRESETS)}")  # fmt: skip
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise InputError(f"--trials must be an integer >= 1, got {trials!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise InputError(f"--seeds must be an integer >= 1, got {seeds!r}")
    configs = {name: validate(apply_overrides(base, {"optim.name": name})) for name in dict.fromkeys(optimizers)}
    for cfg in configs.values():  # the corners of the space must be valid configs too
        space = search_space(cfg.optim)
        for corner in (0, 1):
            validate(apply_overrides(cfg, {key: bounds[corner] for key, bounds in space.items()}))
    return configs


def _load_study(db, name: str, cfg: Config, pruner) -> optuna.Study:
    """The study ``name``, created on first use; a study made from another base config is refused."""
    sampler = optuna.samplers.TPESampler(seed=cfg.train.seed)  # reseeded for each trial (_run_trial)
    study = optuna.create_study(storage=db, study_name=name, sampler=sampler, pruner=pruner, load_if_exists=True)
    base = cfg.to_dict()
    saved = study.user_attrs.get("base")
    if saved is None:
        study.set_user_attr("base", base)
    elif saved != base:
        changed = [f"{s}.{k}" for s in base for k in base[s] if saved.get(s, {}).get(k) != base[s][k]]
        raise InputError(f"study {name!r} in this storage was made from another config ({', '.join(changed)}); "
                         "rerun with the same --config/--set/--steps or use another --out/--storage")  # fmt: skip
    return study


def _count(study: optuna.Study, states) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def recover(study: optuna.Study) -> int:
    """Mark FAIL the RUNNING trials of dead workers and enqueue their params again. Returns how many."""
    host, now, n = socket.gethostname(), time.time(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = t.user_attrs
        beat = attrs.get("heartbeat", t.datetime_start.timestamp() if t.datetime_start else now)
        dead = attrs.get("host") == host and not _alive(attrs.get("pid", -1))
        if not dead and now - beat < GRACE_S:
            continue
        try:
            study._storage.set_trial_state_values(  # Study has no public verb to fail another's trial
                t._trial_id, TrialState.FAIL
            )
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker recovered it first
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        n += 1
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return pid > 0


def _run_trial(study: optuna.Study, cfg: Config, folder: Path, budget: int, bar, tokenizer: Path | None) -> bool:
    """Run one trial of ``study`` if its budget has room. Returns whether it ran one."""
    recover(study)
    if _count(study, BUDGET_STATES) >= budget:
        return False
    trial = study.ask()
    try:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("heartbeat", time.time())
        # Another worker may have asked between our count and our ask: the later trial gives way.
        ahead = [t for t in study.get_trials(deepcopy=False, states=BUDGET_STATES) if t.number < trial.number]
        if len(ahead) >= budget:
            study.tell(trial, state=TrialState.FAIL)
            return False
        # Seeded by the trial's number, which the storage hands out once: workers that start together
        # (or a rerun) do not draw the same params, and one worker's study is reproducible.
        study.sampler = optuna.samplers.TPESampler(seed=cfg.train.seed + trial.number)
        params = {key: trial.suggest_float(key, low, high, log=log) for key, (low, high, log) in
                  search_space(cfg.optim).items()}  # fmt: skip
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # SQLite gave this trial to another worker too, which closed it: ask again
    run_cfg = apply_overrides(cfg, params)
    run = folder / str(trial.number)
    reported: set[int] = set()
    last_beat = [time.time()]

    def report() -> None:
        for row in read_table(run / METRICS):
            step = int(row["step"])
            if step not in reported and math.isfinite(row["val_loss"]):
                trial.report(row["val_loss"], step)
                reported.add(step)

    def on_step(step: int) -> None:  # before the evaluation at ``step``: the rows so far are final
        if time.time() - last_beat[0] > HEARTBEAT_S:
            trial.set_user_attr("heartbeat", time.time())
            last_beat[0] = time.time()
        if step > 0 and step % run_cfg.train.eval_every == 0:
            report()
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}")

    try:
        summary = train(run_cfg, run, progress=False, on_step=on_step, tokenizer=tokenizer)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
    except InputError as error:
        if type(error).__name__ != "Diverged":  # hybrid.train.Diverged: NaN/Inf loss or gradient
            study.tell(trial, state=TrialState.FAIL)
            raise
        trial.set_user_attr("diverged", str(error))
        study.tell(trial, math.inf)  # the worst value, not a failure: TPE learns to avoid the region
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)  # Ctrl-C or a bug: the slot frees for a rerun
        raise
    else:
        report()
        loss = summary.val_loss if math.isfinite(summary.val_loss) else math.inf  # diverged: worst, not failed
        study.tell(trial, loss)
    bar.update(1)
    return True


def _final(study: optuna.Study, cfg: Config, seeds: int, out: Path, progress: bool, tokenizer: Path | None) -> dict:
    """Write ``best-<name>.toml`` and train it with seeds 0..seeds-1 (finished seeds are kept)."""
    name = study.study_name
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _finite(t.value)]
    row = {"optimizer": name, "trial": None, "params": {}, "losses": [], "trials": _counts(study)}
    if not complete:
        return row  # every trial was pruned or failed: nothing to re-run
    best = min(complete, key=lambda t: t.value)
    best_cfg = apply_overrides(cfg, best.params)
    atomic_write(out / f"best-{name}.toml", lambda f: f.write(_toml(best_cfg)))
    for seed in range(seeds):
        run = out / "final" / name / f"seed{seed}"
        rows = read_table(run / METRICS)
        if not (rows and rows[-1]["step"] == best_cfg.train.steps):
            try:
                _train_waiting(apply_overrides(best_cfg, {"train.seed": seed}), run, progress, tokenizer)
            except InputError as error:
                if type(error).__name__ != "Diverged":
                    raise
                print(f"{name} seed {seed} diverged: {error}")
                row["losses"].append(math.inf)
                continue
            rows = read_table(run / METRICS)
        row["losses"].append(rows[-1]["val_loss"])
    row.update(trial=best.number, params=best.params)
    return row


def _toml(cfg: Config) -> bytes:
    import tomli_w

    return tomli_w.dumps(cfg.to_dict()).encode()


def _train_waiting(cfg: Config, run: Path, progress: bool, tokenizer: Path | None) -> None:
    """Train (or continue) ``run``; if another worker holds it, wait for that worker to finish it."""
    while True:
        try:
            train(cfg, run, resume=(run / CHECKPOINT).exists(), progress=progress, tokenizer=tokenizer)
            return
        except InputError as error:
            if "in use by another process" not in str(error):
                raise
            time.sleep(POLL_S)
            rows = read_table(run / METRICS)
            if rows and rows[-1]["step"] == cfg.train.steps:
                return


def _counts(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    return {s.name.lower(): sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED)}


# -- report ---------------------------------------------------------------------------------------


def write_report(rows: list[dict], studies: dict[str, optuna.Study], out: Path) -> str:
    """``best.md`` (also returned and printed) and the PNG plots."""
    lines = ["| optimizer | trials (complete/pruned) | best trial | best params | final val loss | per seed |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        params = ", ".join(f"{k.removeprefix('optim.')}={v:.3g}" for k, v in r["params"].items()) or "-"
        losses = r["losses"]
        spread = f" ± {statistics.stdev(losses):.4f}" if len(losses) > 1 and all(map(_finite, losses)) else ""
        mean = f"{statistics.fmean(losses):.4f}{spread}" if losses else "-"
        per_seed = ", ".join(f"{v:.4f}" for v in losses) or "-"
        counts = f"{r['trials']['complete']}/{r['trials']['pruned']}"
        lines.append(f"| {r['optimizer']} | {counts} | {r['trial']} | {params} | {mean} | {per_seed} |")
    text = "\n".join(lines) + "\n"
    atomic_write(out / TABLE, lambda f: f.write(text.encode()))
    print(text, end="")
    for name, study in studies.items():
        _save(_history(study), out / f"history-{name}.png")
        figure = _importance(study)
        if figure is not None:
            _save(figure, out / f"importance-{name}.png")
    _save(_best_so_far(studies), out / BEST_SO_FAR)
    return text


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))


def _history(study: optuna.Study) -> Figure:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for state, color in ((TrialState.COMPLETE, "C0"), (TrialState.PRUNED, "C7")):
        trials = [t for t in study.get_trials(deepcopy=False, states=(state,)) if _finite(t.value)]
        ax.scatter([t.number for t in trials], [t.value for t in trials], s=14, color=color, label=state.name.lower())
    numbers, best = _running_best(study)
    ax.step(numbers, best, where="post", color="C3", label="best so far")
    ax.set(xlabel="trial", ylabel="val loss (nats / char)", title=f"{study.study_name}: optimization history")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def _importance(study: optuna.Study) -> Figure | None:
    """Parameter importances (PED-ANOVA: no scikit-learn needed), or None with fewer than 2 complete trials."""
    if sum(_finite(t.value) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "too few trials: importances will be equal" is no plot
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            importance = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ImportError, RuntimeError, ValueError, Warning):
        return None  # e.g. all complete trials have the same value
    fig = Figure(figsize=(6, 0.5 + 0.4 * len(importance)))
    ax = fig.subplots()
    names = list(importance)[::-1]
    ax.barh(names, [importance[n] for n in names])
    ax.set(xlabel="importance (PED-ANOVA)", title=f"{study.study_name}: parameter importances")
    return fig


def _best_so_far(studies: dict[str, optuna.Study]) -> Figure:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, study in studies.items():
        numbers, best = _running_best(study)
        ax.step(range(1, len(best) + 1), best, where="post", label=name)
    ax.set(xlabel="finished trials of the optimizer", ylabel="best val loss (nats / char)", title="best so far")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def _running_best(study: optuna.Study) -> tuple[list[int], list[float]]:
    trials = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    numbers, best, low = [], [], math.inf
    for t in trials:
        low = min(low, t.value)
        numbers.append(t.number)
        best.append(low)
    return numbers, best


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)
