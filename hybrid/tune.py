"""Hyperparameter studies under one protocol: S studies per optimizer, T full-length trials each,
the shipped defaults as the first trial, finals on fresh seeds compared with tuned AdamW.

    out/
      study.sqlite3            the default storage (``--storage``: any Optuna database URL, or journal:FILE)
      tokenizer.json           with data.tokenizer = "bpe": trained once, given to every run of the study
      trials/<study>/<n>/      trial n of study <optimizer>, <optimizer>-1, ... (``hybrid train``'s layout)
      select/<optimizer>/<candidate>/seed<k>/  the defaults and each study's best on the selection seeds
      best-<optimizer>.toml    the selected config, lowest mean + SE on the selection seeds (``hybrid train --config``)
      final/<optimizer>/<candidate>/seed<k>/  the selected candidate trained with the fresh train.seed = k
      final/<optimizer>/defaults/seed<k>/     the shipped defaults on the same seeds (a candidate too)
      best.md                  tuning, selection, finals against tuned AdamW, search spaces and bracket check
      history-<study>.png, importance-<study>.png, best-so-far.png

The storage holds the tuning trials and, in the study ``finished-runs``, the metrics rows of
every finished selection and final run under its config's fingerprint, so a rerun from the
committed journal alone continues where the last one stopped. Runs are reproducible bitwise
only on the same CPU (float32 kernels round differently on another one: the same seed on an
AMD EPYC and on an Intel Xeon parts by step 100), so a continued study mixes machines' rounding
noise but never re-draws a finished run; its seconds columns are only comparable within one machine.

Each study searches ``search_space(cfg.optim)`` with an explicitly configured sampler
(``sampler_for``: scrambled Sobol points or multivariate TPE) and prunes with a median rule on
the validation loss of every evaluation; no shortened run decides a winner, since only
COMPLETE trials (the whole schedule) can be best. Workers on any number of machines run the
same command against one storage; together they run exactly ``trials`` COMPLETE + PRUNED
trials per study, interleaving the studies so a partial run stays balanced. A trial left
RUNNING by a dead worker (its process is gone, or its heartbeat is older than ``GRACE_S``) is
marked FAIL and enqueued again with the same params.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import socket
import statistics
import time
import warnings
from pathlib import Path

import optuna
import scipy.stats
from matplotlib.figure import Figure
from optuna.trial import TrialState
from tqdm.auto import tqdm

from hybrid.checkpoint import FolderInUse, atomic_write
from hybrid.comparison import bootstrap_ratio, bracket_position, mean_final, time_to_target, upper_mean, welch_p
from hybrid.config import Config, apply_overrides, config_from_dict, save_config, validate
from hybrid.data import prepare_tokenizer
from hybrid.errors import MAX_SEED, InputError
from hybrid.optim.registry import PRESETS, search_space
from hybrid.tables import read_table
from hybrid.train import CHECKPOINT, METRICS, TOKENIZER, Diverged, train

STORAGE, TABLE, BEST_SO_FAR = "study.sqlite3", "best.md", "best-so-far.png"
RECORDS = "finished-runs"  # the study whose user attrs hold every finished selection and final run's rows
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


SAMPLERS = ("qmc", "tpe")
FRESH_SEED = 1000  # finals train with train.seed + FRESH_SEED + k: never a tuning seed (studies < FRESH_SEED)


def study_name(optimizer: str, index: int) -> str:
    """Study ``index`` of ``optimizer``: ``muon``, ``muon-1``, ``muon-2``, ..."""
    return optimizer if index == 0 else f"{optimizer}-{index}"


def tune(
    base: Config, optimizers: list[str], trials: int, seeds: int, out: str | Path, storage: str | None = None,
    progress: bool = True, pruner: optuna.pruners.BasePruner | None = None, studies: int = 1, sampler: str = "qmc",
    keys: tuple[str, ...] = (), select_seeds: int = 10,
) -> list[dict]:  # fmt: skip
    """Run this worker's share of the studies, then the finals on fresh seeds, the table and plots.

    The protocol (AlgoPerf's external tuning ruleset, arXiv 2306.07179): each optimizer has
    ``studies`` independent studies of ``trials`` trials from one declared search space
    (``search_space``); every trial runs the whole schedule of ``base`` (warmup and decay to
    the end), pruned early only when clearly worse than the median; trial 0 of the first study
    is the optimizer's shipped defaults, so tuning never reports a best worse than its start.
    An optimizer's score is the median over its studies of the best trial's final val loss.
    The config for the finals is chosen among the defaults and each study's best by the mean
    plus one standard error over the selection seeds (``_select``); it then trains on ``seeds``
    fresh seeds, and so do its defaults, for the comparison in ``best.md``.

    Args:
        base: the config every trial starts from (``train.steps`` included); a trial sets
            ``optim.name`` and the keys of ``search_space``. Study ``s`` trains with
            ``train.seed + s``; the finals with ``train.seed + FRESH_SEED + k``, k < ``seeds``.
        optimizers: names of ``PRESETS``.
        trials: COMPLETE + PRUNED trials per study, across all workers.
        storage: an Optuna database URL or ``journal:FILE`` (``open_storage``); default
            ``sqlite:///<out>/study.sqlite3``.
        pruner: default ``MedianPruner`` on the validation loss of each evaluation.
        studies: independent studies per optimizer, with different sampler and training seeds.
        sampler: ``qmc`` (scrambled Sobol points, quasi-random as AlgoPerf's) or ``tpe``
            (multivariate TPE with the constant liar); their arguments are written out in
            ``sampler_for``, not left to Optuna's defaults, and stored with each study.
        keys: search only these keys of each optimizer's space, the others staying at the
            base config's values (the circuit arms: the circuit row's keys, the linear layers
            at their tuned best from ``--config``); empty: the whole space.
        select_seeds: seeds each candidate of the selection trains on, ``train.seed + s`` for
            s < max(studies, select_seeds): every study's tuning seed, then more (never a fresh one).
            Default 10: on the default model 5 let through an AdamW that was better on all five
            and then stalled on the plateau on 3 of 5 fresh seeds (protocol round 2, markov).

    Returns:
        One row per optimizer: per-study bests, the best params, the final val losses of the
        tuned and of the default config per seed.

    Raises:
        InputError: unknown optimizer or sampler, bad budget, invalid config (a corner of the
            search space included) or unreachable storage, all before any trial runs.
    """
    out = Path(out)
    configs, spaces = _check(base, optimizers, trials, seeds, studies, sampler, keys, select_seeds)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{out.resolve() / STORAGE}"
    db = open_storage(url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = pruner or optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=base.train.eval_every)
    plan = {(name, s): _load_study(db, study_name(name, s), _tuning_config(cfg, s), pruner, sampler, s, spaces[name],
                                   trials)
            for name, cfg in configs.items() for s in range(studies)}  # fmt: skip
    spaces = {name: searched_space(name, [plan[name, s] for s in range(studies)], spaces[name]) for name in configs}
    tokenizer = prepare_tokenizer(base.data, out / TOKENIZER)  # a BPE is trained once: every run of the study uses it
    finished = sum(_count(st, (TrialState.COMPLETE, TrialState.PRUNED)) for st in plan.values())
    bar = tqdm(total=trials * len(plan), initial=finished, desc="tune", unit="trial", disable=not progress)
    try:
        while True:  # round-robin: one trial per study per round, while there is budget
            ran = [_run_trial(st, _tuning_config(configs[name], s), out / "trials" / st.study_name, trials, bar,
                              tokenizer, s == 0, sampler, spaces[name])
                   for (name, s), st in plan.items()]  # fmt: skip
            if any(ran):
                continue
            if all(_count(st, (TrialState.RUNNING,)) == 0 and _count(st, BUDGET_STATES) >= trials
                   for st in plan.values()):  # fmt: skip
                break
            time.sleep(POLL_S)  # the budget is taken: wait for other workers' trials (or for them to die)
    finally:
        bar.close()
    by_optimizer = {name: [plan[name, s] for s in range(studies)] for name in configs}
    records = optuna.create_study(storage=db, study_name=RECORDS, load_if_exists=True,
                                  sampler=optuna.samplers.RandomSampler(seed=0))  # holds user attrs only, no trials
    rows = [_final(group, configs[name], seeds, max(studies, select_seeds), out, progress, tokenizer, records)
            for name, group in by_optimizer.items()]
    write_report(rows, by_optimizer, configs, spaces, out, trials)
    return rows


def _check(base: Config, optimizers: list[str], trials: int, seeds: int, studies: int, sampler: str,
           keys: tuple[str, ...], select_seeds: int) -> tuple[dict[str, Config], dict[str, dict]]:  # fmt: skip
    unknown = [name for name in optimizers if name not in PRESETS]
    if unknown or not optimizers:
        raise InputError(f"unknown optimizer {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(PRESETS)}")  # fmt: skip
    for flag, value, high in (("trials", trials, None), ("seeds", seeds, None), ("studies", studies, FRESH_SEED),
                              ("select-seeds", select_seeds, FRESH_SEED)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (high and value > high):
            bound = f"between 1 and {high}" if high else ">= 1"
            raise InputError(f"--{flag} must be an integer {bound}, got {value!r}")
    if sampler not in SAMPLERS:
        raise InputError(f"--sampler {sampler!r} is not a sampler; choose one of: {', '.join(SAMPLERS)}")
    configs = {name: validate(apply_overrides(base, {"optim.name": name})) for name in dict.fromkeys(optimizers)}
    if base.train.seed + FRESH_SEED + seeds - 1 > MAX_SEED:
        raise InputError(f"train.seed {base.train.seed} leaves no room for the finals' fresh seeds; use a smaller seed")
    spaces = {name: tuned_space(cfg, keys) for name, cfg in configs.items()}
    for name, cfg in configs.items():  # the corners of the space must be valid configs too
        for corner in (0, 1):
            validate(apply_overrides(cfg, {key: bounds[corner] for key, bounds in spaces[name].items()}))
    return configs, spaces


def tuned_space(cfg: Config, keys: tuple[str, ...] = ()) -> dict[str, tuple[float, float, bool]]:
    """``search_space(cfg.optim)``, or its ``keys`` only.

    Raises:
        InputError: a key the optimizer's space does not search.
    """
    space = search_space(cfg.optim)
    unknown = [key for key in keys if key not in space]
    if unknown:
        raise InputError(f"--keys {', '.join(unknown)}: not searched for {cfg.optim.name}; "
                         f"choose from {', '.join(space)}")  # fmt: skip
    return {key: space[key] for key in keys} if keys else space


def _tuning_config(cfg: Config, index: int) -> Config:
    """The config of study ``index``'s trials: the base with ``train.seed + index``."""
    return apply_overrides(cfg, {"train.seed": cfg.train.seed + index}) if index else cfg


def sampler_for(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler of a study, every argument written out (Optuna 5 changed several defaults).

    ``qmc`` trials take their params from ``sobol_point`` (fixed params), so the study's own
    sampler only draws a key no point covers: a seeded ``RandomSampler``.
    """
    if kind == "qmc":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=10, n_ei_candidates=24, multivariate=True,
                                      group=False, constant_liar=True, warn_independent_sampling=False)  # fmt: skip


def sobol_point(space: dict[str, tuple[float, float, bool]], index: int, seed: int) -> dict[str, float]:
    """Point ``index`` of a scrambled Sobol sequence over ``space`` (log-uniform on log keys).

    Quasi-random search as AlgoPerf's: the trial's number is the index, and the storage hands
    each number out once, so concurrent workers never draw the same point (Optuna's QMCSampler
    counts its points in a study attribute that two workers can read at the same time).
    """
    engine = scipy.stats.qmc.Sobol(len(space), scramble=True, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "balance properties ... power of 2": one point at a time
        if index:
            engine.fast_forward(index)
        u = engine.random(1)[0]
    point = {}
    for x, (key, (low, high, log)) in zip(u, space.items(), strict=True):
        point[key] = math.exp(math.log(low) + x * math.log(high / low)) if log else low + x * (high - low)
    return point


def _sampler_seed(cfg: Config, index: int) -> int:
    return (cfg.train.seed * 7919 + index) % 2**32  # distinct per study; QMCSampler takes 32-bit seeds


def _load_study(db, name: str, cfg: Config, pruner, sampler: str, index: int, space: dict,
                trials: int) -> optuna.Study:  # fmt: skip
    """The study ``name``, created on first use; one made from another base config or sampler is
    refused, and so is one that searched another space and still has ``trials`` to draw (a finished
    one stands as it was searched: ``searched_space``)."""
    seed = _sampler_seed(cfg, index)
    study = optuna.create_study(storage=db, study_name=name, sampler=sampler_for(sampler, seed), pruner=pruner,
                                load_if_exists=True)  # fmt: skip
    base = cfg.to_dict()
    attrs = {"base": base, "sampler": {"kind": sampler, "seed": seed}, "search_space": space}
    saved = study.user_attrs
    if "base" not in saved:
        for key, value in {**attrs, "optuna_version": optuna.__version__}.items():
            study.set_user_attr(key, value)
    elif (then := _read_back(saved["base"])) != base:
        changed = [f"{s}.{k}" for s in base for k in base[s] if then.get(s, {}).get(k) != base[s][k]]
        raise InputError(f"study {name!r} in this storage was made from another config ({', '.join(changed)}); "
                         "rerun with the same --config/--set/--steps or use another --out/--storage")  # fmt: skip
    elif ((then := saved.get("search_space")) is not None and then != _stored(space)
          and _count(study, (TrialState.COMPLETE, TrialState.PRUNED)) < trials):  # fmt: skip
        raise InputError(f"study {name!r} in this storage searched another space ({', '.join(then)}); "
                         "rerun with the same --keys and version, or use another --out/--storage")  # fmt: skip
    elif saved.get("sampler", attrs["sampler"])["kind"] != sampler:
        raise InputError(f"study {name!r} in this storage samples with {saved['sampler']['kind']}; "
                         f"rerun with --sampler {saved['sampler']['kind']} or use another --out/--storage")  # fmt: skip
    return study


def searched_space(optimizer: str, studies: list[optuna.Study], space: dict) -> dict[str, tuple[float, float, bool]]:
    """The space ``optimizer``'s studies searched (stored with each study, ``space`` where none is; a
    finished study keeps the space it was drawn from after a release widens the row's), the same
    for all of them.

    Raises:
        InputError: the studies searched different spaces (some finished before a widening).
    """
    spaces = [st.user_attrs.get("search_space", _stored(space)) for st in studies]
    if any(other != spaces[0] for other in spaces[1:]):
        raise InputError(f"the studies of {optimizer} in this storage searched different spaces (a range was "
                         "widened after some finished); delete them from the storage to tune it again, or use "
                         "another --out/--storage")  # fmt: skip
    return {key: (low, high, bool(log)) for key, (low, high, log) in spaces[0].items()}


def _stored(space: dict) -> dict[str, list]:
    """``space`` as the storage gives it back: JSON turns each ``(low, high, log)`` into a list."""
    return {key: list(bounds) for key, bounds in space.items()}


def _read_back(saved: dict) -> dict:
    """A stored base config as this version writes it: renamed keys under their new names, new keys
    at their defaults (a study outlives a release). Unreadable: as stored, so it compares unequal."""
    try:
        return config_from_dict(saved, source="the stored study").to_dict()
    except InputError:
        return saved


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
        retry = {"retry_of": t.number, **({"defaults": True} if attrs.get("defaults") else {})}
        study.enqueue_trial(t.params, user_attrs=retry)
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


def defaults_of(cfg: Config, space: dict | None = None) -> dict[str, float]:
    """``cfg``'s value of every key of ``space`` (default: all ``hybrid tune`` searches for its optimizer)."""
    return {key: float(functools.reduce(getattr, key.split("."), cfg)) for key in space or search_space(cfg.optim)}


def _run_trial(study: optuna.Study, cfg: Config, folder: Path, budget: int, bar, tokenizer: Path | None,
               first_study: bool, sampler: str, space: dict) -> bool:  # fmt: skip
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
        fixed = trial.storage.get_trial_system_attrs(trial._trial_id)
        if "fixed_params" not in fixed:  # not a dead worker's trial enqueued again with its params
            seed = study.user_attrs["sampler"]["seed"]
            if first_study and trial.number == 0:  # the storage hands out trial 0 once: one worker runs the defaults
                trial.set_user_attr("defaults", True)
                point = defaults_of(cfg, space)
            elif sampler == "qmc":
                point = sobol_point(space, trial.number - first_study, seed)
            else:  # tpe, seeded by the trial's number: workers that start together draw different params
                study.sampler, point = sampler_for("tpe", seed + trial.number), None
            if point is not None:  # fixed params, stored the way enqueue_trial stores them, read by a new handle
                trial.storage.set_trial_system_attr(trial._trial_id, "fixed_params", point)
                trial = optuna.trial.Trial(study, trial._trial_id)
        params = {key: trial.suggest_float(key, low, high, log=log) for key, (low, high, log) in space.items()}
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
    except Diverged as error:  # NaN/Inf loss or gradient
        trial.set_user_attr("diverged", str(error))
        study.tell(trial, math.inf)  # the worst value, not a failure: the sampler learns to avoid the region
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)  # bad input, Ctrl-C or a bug: the slot frees for a rerun
        raise
    else:
        report()
        loss = summary.val_loss if math.isfinite(summary.val_loss) else math.inf  # diverged: worst, not failed
        study.tell(trial, loss)
    bar.update(1)
    return True


def _best(studies: list[optuna.Study]) -> tuple[optuna.Study, optuna.trial.FrozenTrial] | None:
    """The study and trial with the lowest finite final val loss over ``studies``, or None."""
    complete = [(st, t) for st in studies for t in st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if _finite(t.value)]  # fmt: skip
    return min(complete, key=lambda pair: pair[1].value) if complete else None


def _final(studies: list[optuna.Study], cfg: Config, seeds: int, select_seeds: int, out: Path, progress: bool,
           tokenizer: Path | None, records: optuna.Study) -> dict:  # fmt: skip
    """Select the best config on ``select_seeds`` seeds (``_select``), write ``best-<name>.toml``,
    train it and the defaults on the fresh seeds (finished runs are kept, in ``records`` too)."""
    name = cfg.optim.name
    row = {"optimizer": name, "trial": None, "params": {}, "finals": [], "defaults": [], "selection": [],
           "studies": [_study_summary(st) for st in studies]}  # fmt: skip
    if _best(studies) is None:
        return row  # every trial was pruned or failed: nothing to re-run
    row["selection"] = _select(studies, cfg, select_seeds, out / "select" / name, progress, tokenizer, records)
    chosen = min(row["selection"], key=lambda c: c["score"])  # the defaults come first: a tie keeps them
    best_cfg = apply_overrides(cfg, chosen["params"])
    save_config(best_cfg, out / f"best-{name}.toml")
    fresh = [cfg.train.seed + FRESH_SEED + k for k in range(seeds)]
    finals = out / "final" / name  # one folder per candidate: a changed selection never reuses another's runs
    row.update(trial=chosen["label"], params=chosen["params"],
               finals=_train_seeds(best_cfg, finals / _folder(chosen["label"]), fresh, progress, tokenizer, records))
    if chosen["defaults"]:
        row["defaults"] = row["finals"]  # the defaults won: the same runs
    else:
        row["defaults"] = _train_seeds(cfg, finals / "defaults", fresh, progress, tokenizer, records)
    return row


def _select(studies: list[optuna.Study], cfg: Config, n_seeds: int, folder: Path, progress: bool,
            tokenizer: Path | None, records: optuna.Study) -> list[dict]:  # fmt: skip
    """The candidates for the finals, each scored on ``n_seeds`` selection seeds.

    The candidates are the shipped defaults (trial 0 of the first study) and each study's best
    trial; each trains on every selection seed ``train.seed + s``, s < ``n_seeds`` (study s's
    tuning seed for s < S, so a complete trial's own run is reused) under
    ``folder/<label>/seed<k>``. Its score is the mean final val loss plus one standard error
    (``upper_mean``; a diverged run counts as infinite), and the finals take the lowest: the
    selected config never scores worse than the defaults, a best found on lucky seeds must
    hold on the others, and a config that fails on a share of the seeds pays for its spread
    (with one study and one seed: the best trial).

    Returns:
        ``[{"label", "params", "defaults", "losses": [n_seeds floats], "mean", "score"}]``, the
        defaults first.
    """
    first = studies[0].get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    defaults = next((t for t in first if t.user_attrs.get("defaults")), None)
    picks = [(studies[0], defaults)] if defaults is not None else []
    picks += [best for best in (_best([st]) for st in studies) if best is not None]
    candidates: dict[str, dict] = {}
    for study, trial in picks:
        label = "defaults" if trial.user_attrs.get("defaults") else f"{study.study_name}#{trial.number}"
        entry = candidates.setdefault(label, {"label": label, "params": trial.params, "known": {},
                                              "defaults": bool(trial.user_attrs.get("defaults"))})  # fmt: skip
        if trial.state == TrialState.COMPLETE:
            entry["known"][studies.index(study)] = trial.value if _finite(trial.value) else math.inf
    for entry in candidates.values():
        losses = []
        for s in range(n_seeds):
            if s in entry["known"]:
                losses.append(entry["known"][s])
                continue
            run_cfg = apply_overrides(cfg, entry["params"])
            (run,) = _train_seeds(run_cfg, folder / _folder(entry["label"]), [cfg.train.seed + s],
                                  progress, tokenizer, records)  # fmt: skip
            losses.append(run[-1]["val_loss"])
        entry.update(losses=losses, mean=statistics.fmean(losses), score=upper_mean(losses))
        del entry["known"]
    return list(candidates.values())


def _folder(label: str) -> str:
    """The folder name of a candidate: ``defaults`` or ``<study>-<trial number>``."""
    return label.replace("#", "-")


def _train_seeds(cfg: Config, folder: Path, seeds: list[int], progress: bool, tokenizer: Path | None,
                 records: optuna.Study) -> list[list[dict]]:  # fmt: skip
    """Train ``cfg`` once per seed under ``folder/seed<k>``; the metrics rows of each run.

    A finished run's rows are stored in ``records`` under its config's fingerprint and read from
    there first: the study storage (a committed journal) carries the selection and the finals
    too, so a rerun from a clean clone, without the run folders, continues instead of retraining.
    """
    runs = []
    for seed in seeds:
        run_cfg = apply_overrides(cfg, {"train.seed": seed})
        key = fingerprint(run_cfg)
        if (rows := records.user_attrs.get(key)) is not None:
            runs.append(rows)
            continue
        run = folder / f"seed{seed}"
        rows = read_table(run / METRICS)
        if not (rows and rows[-1]["step"] == cfg.train.steps):
            try:
                _train_waiting(run_cfg, run, progress, tokenizer)
            except Diverged as error:
                print(f"{folder.name} seed {seed} diverged: {error}")
            rows = read_table(run / METRICS)
        if not rows or not math.isfinite(rows[-1]["val_loss"]) or rows[-1]["step"] != cfg.train.steps:
            rows = [*rows, {"step": cfg.train.steps, "val_loss": math.inf, "seconds": math.inf}]  # diverged: worst
        rows = [{k: v for k, v in row.items() if k in RECORDED} for row in rows]
        records.set_user_attr(key, rows)
        runs.append(rows)
    return runs


RECORDED = ("step", "train_loss", "val_loss", "seconds")  # the metrics columns a record keeps


def fingerprint(cfg: Config) -> str:
    """sha256 of the resolved config (seed included): the identity of a finished run's result."""
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()


def _study_summary(study: optuna.Study) -> dict:
    best = _best([study])
    return {"name": study.study_name, **_counts(study), "best": best[1].value if best else math.nan}


def _train_waiting(cfg: Config, run: Path, progress: bool, tokenizer: Path | None) -> None:
    """Train (or continue) ``run``; if another worker holds it, wait for that worker to finish it."""
    while True:
        try:
            train(cfg, run, resume=(run / CHECKPOINT).exists(), progress=progress, tokenizer=tokenizer)
            return
        except FolderInUse:
            time.sleep(POLL_S)
            rows = read_table(run / METRICS)
            if rows and rows[-1]["step"] == cfg.train.steps:
                return


def _counts(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    return {s.name.lower(): sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED)}


# -- report ---------------------------------------------------------------------------------------


def write_report(rows: list[dict], studies: dict[str, list[optuna.Study]], configs: dict[str, Config],
                 spaces: dict[str, dict], out: Path, trials: int) -> str:  # fmt: skip
    """``best.md`` (also returned and printed) and the PNG plots: the tuning table, the finals
    on fresh seeds against tuned AdamW, and each search space with its bracket check."""
    first = next(iter(studies.values()))[0]
    sampler, cfg0 = first.user_attrs.get("sampler", {}), next(iter(configs.values()))
    lines = [
        "## Tuning",
        "",
        f"{len(next(iter(studies.values())))} studies x {trials} trials per optimizer; "
        f"sampler {sampler.get('kind', '?')}; every trial the full schedule, "
        f"{cfg0.train.steps} steps ({cfg0.optim.warmup_steps} warmup, cosine to {cfg0.optim.min_lr_ratio:g} x lr); "
        f"median pruning; trial 0 of the first study is the shipped defaults; "
        f"Optuna {first.user_attrs.get('optuna_version', optuna.__version__)}. "
        "Score: the median over studies of the best trial's final val loss (AlgoPerf).",
        "",
        "| optimizer | trials (complete/pruned) | best per study | score | defaults (trial 0) | best trial "
        "| best params |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        params = ", ".join(f"{k.removeprefix('optim.')}={v:.3g}" for k, v in r["params"].items()) or "-"
        counts = f"{sum(st['complete'] for st in r['studies'])}/{sum(st['pruned'] for st in r['studies'])}"
        bests = [st["best"] for st in r["studies"]]
        per_study = ", ".join(f"{b:.4f}" for b in bests)
        finite = [b for b in bests if _finite(b)]
        score = f"{statistics.median(finite):.4f}" if finite else "-"
        if len(finite) > 1:
            score += f" [{min(finite):.4f}, {max(finite):.4f}]"
        defaults = _defaults_value(studies[r["optimizer"]][0])
        lines.append(f"| {r['optimizer']} | {counts} | {per_study} | {score} | {defaults} | {r['trial'] or '-'} "
                     f"| {params} |")  # fmt: skip
    lines += ["", *_selection_table(rows, configs), "", *_finals_table(rows, configs), "",
              *_space_table(rows, configs, spaces), "",
              "Small-scale caveat: matrix optimizers' speedups over tuned AdamW shrink with model size "
              "(Wen et al. 2025, arXiv 2509.02046: 1.4x at 0.1B parameters, 1.1x at 1.2B); "
              "these models are far smaller."]  # fmt: skip
    text = "\n".join(lines) + "\n"
    atomic_write(out / TABLE, lambda f: f.write(text.encode()))
    print(text, end="")
    for group in studies.values():
        for study in group:
            _save(_history(study), out / f"history-{study.study_name}.png")
            figure = _importance(study)
            if figure is not None:
                _save(figure, out / f"importance-{study.study_name}.png")
    _save(_best_so_far([st for group in studies.values() for st in group]), out / BEST_SO_FAR)
    return text


def _defaults_value(study: optuna.Study) -> str:
    trial = next((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
                  if t.user_attrs.get("defaults")), None)  # fmt: skip
    if trial is None:
        return "-"
    return f"{trial.value:.4f}" if trial.state == TrialState.COMPLETE else "pruned"


def _selection_table(rows: list[dict], configs: dict[str, Config]) -> list[str]:
    """The candidates of each optimizer on the selection seeds, the selected one in bold."""
    seed = next(iter(configs.values())).train.seed
    n = max((len(c["losses"]) for r in rows for c in r.get("selection", [])), default=0)
    lines = ["## Selection on the selection seeds", "",
             f"Candidates: the defaults and each study's best trial, each trained on {n} selection seeds "
             f"(train.seed {seed} to {seed + n - 1}: every study's tuning seed first, never a final's); score: "
             "the mean final val loss plus one standard error; the finals take the lowest score, so the "
             "selected config never scores worse than the defaults and pays for spread across seeds.", "",
             "| optimizer | candidate | score | mean | per selection seed | params |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        for c in r.get("selection", []):
            params = ", ".join(f"{k.removeprefix('optim.')}={v:.3g}" for k, v in c["params"].items())
            label = f"**{c['label']}** (selected)" if c["label"] == r["trial"] else c["label"]
            per_seed = ", ".join(f"{v:.4f}" for v in c["losses"])
            lines.append(f"| {r['optimizer']} | {label} | {c['score']:.4f} | {c['mean']:.4f} | {per_seed} "
                         f"| {params} |")  # fmt: skip
    return lines


def _finals_table(rows: list[dict], configs: dict[str, Config]) -> list[str]:
    """Tuned and default configs on fresh seeds; against tuned AdamW when it is in the study."""
    cfg0 = next(iter(configs.values()))
    reference = next((r["finals"] for r in rows if r["optimizer"] == "adamw" and r["finals"]), [])
    target = mean_final(reference)
    n = max((len(r["finals"]) for r in rows), default=0)
    fresh = f"train.seed {cfg0.train.seed + FRESH_SEED} to {cfg0.train.seed + FRESH_SEED + n - 1}"
    lines = [
        f"## Finals on fresh seeds ({fresh}; tuning used train.seed {cfg0.train.seed} + study)",
        "",
        "Final val loss at the fixed budget: mean ± std over seeds. Tuned − defaults: the difference of the "
        "means ± its standard error. "
        + (f"Target: tuned AdamW's mean final val loss, {target:.4f}; steps and seconds to it on the seed-mean "
           "curve, and their ratio to tuned AdamW's with a 95% bootstrap interval over seeds; p: Welch's t-test "
           "of the final losses against tuned AdamW's." if reference else
           "Tuned AdamW is not in this study: no target, ratios or p-values (add adamw to --optimizers)."),
        "",
        "| optimizer | tuned | defaults | tuned − defaults | p vs adamw | steps to target | ratio | "
        "seconds to target | ratio | per seed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    adamw_finals = [run[-1]["val_loss"] for run in reference]
    for r in rows:
        if not r["finals"]:
            lines.append(f"| {r['optimizer']} | no complete trial | | | | | | | | |")
            continue
        tuned, default = ([run[-1]["val_loss"] for run in runs] for runs in (r["finals"], r["defaults"]))
        diff = _difference(tuned, default)
        cells = [_mean_std(tuned), _mean_std(default), diff]
        if reference:
            p = welch_p(tuned, adamw_finals) if r["optimizer"] != "adamw" else math.nan
            hit = time_to_target(r["finals"], target)
            steps_ci, seconds_ci = ("(reference)",) * 2 if r["optimizer"] == "adamw" else (
                _interval(bootstrap_ratio(r["finals"], reference, column)) for column in ("step", "seconds"))
            ref = time_to_target(reference, target)
            cells += [f"{p:.3g}" if _finite(p) else "",
                      f"{hit[0]}" if hit else "never", f"{hit[0] / ref[0]:.2f} {steps_ci}" if hit else "",
                      f"{hit[1]:.1f}" if hit else "never",
                      f"{hit[1] / ref[1]:.2f} {seconds_ci}" if hit else ""]  # fmt: skip
        else:
            cells += ["", "", "", "", ""]
        cells.append(", ".join(f"{v:.4f}" for v in tuned))
        lines.append(f"| {r['optimizer']} | " + " | ".join(cells) + " |")
    return lines


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if not all(map(_finite, values)):
        return f"diverged {sum(not _finite(v) for v in values)}/{len(values)}"
    spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.4f}{spread}"


def _difference(tuned: list[float], defaults: list[float]) -> str:
    """``mean(tuned) - mean(defaults) ± SE``, flagged when tuning lost by more than one SE."""
    if len(tuned) < 2 or len(defaults) < 2 or not all(map(_finite, [*tuned, *defaults])):
        return "-"
    diff = statistics.fmean(tuned) - statistics.fmean(defaults)
    se = math.sqrt(statistics.variance(tuned) / len(tuned) + statistics.variance(defaults) / len(defaults))
    flag = " **tuned worse than defaults**" if diff > se else ""
    return f"{diff:+.4f} ± {se:.4f}{flag}"


def _interval(bounds: tuple[float, float]) -> str:
    low, high = bounds
    return f"[{low:.2f}, {high:.2f}]" if not math.isnan(low) else ""


def bracket_flags(params: dict[str, float], space: dict[str, tuple[float, float, bool]]) -> dict[str, str]:
    """``{key: "low edge" | "high edge"}`` for each key whose best value lies in the outer tenth
    of its range (in log space for log-scaled keys): the optimum may lie outside the space.

    A linear key whose range starts at 0 (a momentum) has nothing below it to search: its low
    edge is the key's floor, not the space's, and is not flagged (``starts_at_floor``)."""
    flags = {}
    for key, value in params.items():
        low, high, log = space[key]
        position = bracket_position(value, low, high, log)
        if position > 0.9 or (position < 0.1 and not starts_at_floor(space[key])):
            flags[key] = "low edge" if position < 0.1 else "high edge"
    return flags


def starts_at_floor(bounds: tuple[float, float, bool]) -> bool:
    """The range ``(low, high, log)`` is linear and starts at 0, the key's own floor."""
    low, _, log = bounds
    return not log and low == 0.0


def _space_table(rows: list[dict], configs: dict[str, Config], spaces: dict[str, dict]) -> list[str]:
    lines = ["## Search spaces and bracket check",
             "",
             "A best value in the outer tenth of its range (log space for log keys) is flagged: widen that range "
             "(the row's space in hybrid/optim/registry.py) and tune again before claiming anything from the row. "
             "A momentum near 0, the floor of its range and of the key itself, is not flagged: nothing lies below.",
             "",
             "| optimizer | key | range | scale | default | best | position | bracket |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        cfg = configs[r["optimizer"]]
        space = spaces[r["optimizer"]]
        defaults = defaults_of(cfg, space)
        flags = bracket_flags(r["params"], space)
        for key, (low, high, log) in space.items():
            best = r["params"].get(key)
            position = bracket_position(best, low, high, log) if best is not None else None
            verdict = ("-" if best is None else f"**{flags[key]}: widen**" if key in flags
                       else "ok (at its floor, 0)" if position < 0.1 else "ok")  # fmt: skip
            lines.append(f"| {r['optimizer']} | {key} | {low:g} to {high:g} | {'log' if log else 'linear'} "
                         f"| {defaults[key]:.3g} | {f'{best:.3g}' if best is not None else '-'} "
                         f"| {f'{position:.2f}' if position is not None else '-'} "
                         f"| {verdict} |")  # fmt: skip
    return lines


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
    fig = Figure(figsize=(6, max(2.0, 0.5 + 0.4 * len(importance))))
    ax = fig.subplots()
    names = list(importance)[::-1]
    ax.barh(names, [importance[n] for n in names])
    ax.set(xlabel="importance (PED-ANOVA)", title=f"{study.study_name}: parameter importances")
    return fig


def _best_so_far(studies: list[optuna.Study]) -> Figure:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for study in studies:
        numbers, best = _running_best(study)
        ax.step(range(1, len(best) + 1), best, where="post", label=study.study_name)
    ax.set(xlabel="finished trials of the study", ylabel="best val loss (nats / char)", title="best so far")
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
