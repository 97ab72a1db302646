"""``hybrid submit``: runs on Qiskit backends with a cost preview and a journal (``hybrid jobs`` reads it).

    hybrid submit --backend fake_manila --steps 2 --out runs/hw      # train; prints jobs per step
    hybrid submit --backend ibm_brisbane --dry-run                    # cost preview only
    hybrid submit --resume runs/hw                                    # after a crash: no job is sent twice
    hybrid submit --task eval --from runs/sim --backend ibm_brisbane  # a trained model on hardware
    hybrid submit --task metric --backend fake_manila --out runs/g    # block-diagonal metric tensor
    hybrid jobs list runs/hw | hybrid jobs status runs/hw | hybrid jobs fetch runs/hw [JOB_ID ...]

A submit run folder is a ``hybrid train`` run folder plus ``jobs.sqlite`` (the journal),
``submit.json`` (task and source), ``submit.log`` and, for local backends, ``local_jobs/``
(finished results, where IBM's servers would keep them). Training reuses ``hybrid.train``
as is: each step is one forward with its parameter shifts (or SPSA perturbations,
``--gradient spsa``, which every layer's executor applies), so ONE job per step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from circuits import compile_circuit
from hybrid.backends import ExecutionConfig, get_backend
from hybrid.checkpoint import atomic_write, load_checkpoint
from hybrid.config import Config, apply_overrides, load_config, save_config, validate
from hybrid.data import load_dataset
from hybrid.errors import InputError
from hybrid.ibm.credentials import connect, scrub
from hybrid.ibm.devices import check_noise
from hybrid.ibm.jobs import ExecutionOptions, IBMService, LocalService
from hybrid.ibm.journal import JOURNAL, Journal
from hybrid.ibm.metric import MetricEstimate
from hybrid.ibm.runtime import Cost, Runtime
from hybrid.ibm.shots import Gradient
from hybrid.models import HybridGPT
from hybrid.quantum import QuantumLayer
from hybrid.train import CHECKPOINT, evaluate, resume_config, train

TASKS = ("train", "eval", "metric")
RUN_FILE, LOG, LOCAL_JOBS = "submit.json", "submit.log", "local_jobs"
# Every token is one circuit input, and a training step runs each with all its parameter
# shifts: 4 x 8 tokens x (1 + 2 x 12 angles) = 800 circuits per step with these defaults.
SUBMIT_DEFAULTS = {
    "model.block_size": 8, "train.batch_size": 4, "circuit.name": "hardware_efficient",
    "circuit.n_layers": 1, "execution.shots": 1024, "train.steps": 10, "train.eval_every": 10,
    "train.eval_batches": 1, "train.test_batches": 1, "train.sample_chars": 0,
}  # fmt: skip
EXECUTION_KEYS = ("circuit.backend", *(f"execution.{f.name}" for f in dataclasses.fields(ExecutionConfig)))


def resolve_run(args, overrides: dict) -> tuple[Path, Config, str, Path | None]:
    """Run folder, config, task and source run of a ``hybrid submit`` command line."""
    if args.resume:
        if args.out or args.config or args.source:
            raise InputError("--resume continues the run in its own folder; drop --out, --config and --from")
        if not (args.resume / RUN_FILE).exists():
            raise InputError(f"{args.resume} is not a hybrid submit run folder (no {RUN_FILE}); start one with --out")
        run = json.loads((args.resume / RUN_FILE).read_text())
        allowed = {k: v for k, v in overrides.items() if k in ("train.steps", "execution.result_timeout")}
        if allowed != overrides:
            raise InputError(
                "only --steps and --timeout may change on --resume; the journal matches jobs by their options"
            )
        cfg = apply_overrides(resume_config(args.resume), allowed)
        return args.resume, cfg, run["task"], Path(run["source"]) if run["source"] else None
    if args.source is not None:
        if args.config:
            raise InputError("--from takes the model and data config of that run; drop --config")
        cfg = resume_config(args.source)  # model shapes must match its checkpoint
        unknown = sorted(set(overrides) - set(EXECUTION_KEYS) - {"train.seed", "train.eval_batches"})
        if unknown:
            raise InputError(f"--from keeps the run's model and data; these cannot change: {', '.join(unknown)}")
    else:
        cfg = load_config(args.config) if args.config else apply_overrides(Config(), SUBMIT_DEFAULTS)
    cfg = apply_overrides(cfg, overrides)
    out = args.out or Path("runs") / time.strftime("submit-%Y%m%d-%H%M%S")
    if not args.dry_run and any((out / name).exists() for name in (CHECKPOINT, JOURNAL, RUN_FILE)):
        raise InputError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")
    return out, cfg, args.task, args.source


def submit(args, overrides: dict, ibm=None) -> int:
    """``hybrid submit`` (see the module docstring); ``ibm`` injects IBM's service."""
    out, cfg, task, source = resolve_run(args, overrides)
    validate(cfg)
    backend = get_backend(cfg.circuit.backend)
    if not backend.engine.samples:
        raise InputError(f"hybrid submit runs on qiskit.aer, fake_<device> or ibm_<device>, not {backend.name}; "
                         "use hybrid train for simulators")  # fmt: skip
    if cfg.model.quantum == "none":
        raise InputError("model.quantum is none: there is no circuit to submit; use head or ffn")
    if task == "train" and cfg.train.test_batches == 0:
        raise InputError("train.test_batches=0 scores the whole test split, one job per batch; "
                         "set train.test_batches to the number of test batches to pay for (1 or more)")  # fmt: skip
    options = ExecutionOptions.from_config(cfg.execution)
    check_noise(backend, cfg.execution.noise)
    if not args.dry_run:
        out.mkdir(parents=True, exist_ok=True)
    handlers = _start_logging(None if args.dry_run else out / LOG, args.quiet, verbose=backend.service == "ibm")
    try:
        if backend.service == "ibm" and ibm is None:
            logging.getLogger("hybrid.ibm").debug("connecting to IBM Quantum for %s", backend.name)  # file only
            ibm = IBMService(connect())
        # A resumed run previews on its recorded qubits; a new one records them once it starts.
        journal = Journal(out / JOURNAL) if (out / JOURNAL).exists() else None
        runtime = Runtime(options, journal, LocalService(None if args.dry_run else out / LOCAL_JOBS), ibm)
        _print_preview(cfg, backend, task, runtime)  # refuses a job over the limits
        if args.dry_run:
            return 0
        # what --resume needs, written before the first job
        run = {"task": task, "source": str(source or "")}
        atomic_write(out / RUN_FILE, lambda f: f.write(json.dumps(run).encode()))
        save_config(cfg, out / "config.toml")
        runtime.attach(journal or Journal(out / JOURNAL))
        with runtime.active():
            if task == "train":
                _train(cfg, out, bool(args.resume), args.quiet, runtime)
            else:
                _evaluate_or_metric(cfg, out, task, source, runtime)
        print(f"jobs sent: {runtime.submitted}, taken from the journal: {runtime.reused}; journal: {out / JOURNAL}")
        return 0
    except InputError as error:
        logging.getLogger("hybrid.ibm").error("error: %s", error)
        raise
    finally:
        _stop_logging(handlers)


# --- tasks ---------------------------------------------------------------------------------


def _train(cfg: Config, out: Path, resume: bool, quiet: bool, runtime: Runtime) -> None:
    # Killed before the first checkpoint: start again; the journal still has every job.
    resume = resume and (out / CHECKPOINT).exists()
    summary = train(cfg, out, resume=resume, progress=not quiet, on_step=runtime.at_step)
    per_step = {}
    for row in runtime.journal.rows():
        if row.purpose in ("train", "metric") and "#" not in row.key:
            per_step[row.step] = per_step.get(row.step, 0) + 1
    counts = sorted(set(per_step.values()))
    print(f"step {summary.step}: train loss {summary.train_loss:.4f}, val loss {summary.val_loss:.4f} nats/char")
    print(f"jobs per step: {'-'.join(map(str, counts)) or 0} (measured over {len(per_step)} steps in the journal)")
    print(f"run folder: {out}")


def _model(cfg: Config, source: Path | None):
    """The model to evaluate: ``source``'s checkpoint on this run's backend, or a fresh one.

    ``cfg`` was validated by ``submit`` before any job was priced or sent.
    """
    torch.manual_seed(cfg.train.seed)
    dataset = load_dataset(cfg.data, cfg.model.block_size)
    model = HybridGPT(cfg.model, len(dataset.tokenizer), cfg.circuit, cfg.execution, validated=True)
    step = 0
    if source is not None:
        state = load_checkpoint(source / CHECKPOINT)
        if state["vocab"] != dataset.tokenizer.vocab:
            raise InputError(f"{source} was trained on other data; evaluate it with its own data config")
        model.load_state_dict(state["model"])
        step = int(state["step"])
    layers = [m for m in model.modules() if isinstance(m, QuantumLayer)]
    return model.eval(), dataset, layers[0], step


def _evaluate_or_metric(cfg: Config, out: Path, task: str, source: Path | None, runtime: Runtime) -> None:
    model, dataset, layer, step = _model(cfg, source)
    runtime.at_step(step)
    rng = torch.Generator().manual_seed(cfg.train.seed + 1)  # the batches hybrid train evaluates on
    batches = {split: [dataset.batch(split, cfg.train.batch_size, cfg.model.block_size, rng)
                       for _ in range(cfg.train.eval_batches)] for split in ("train", "val")}  # fmt: skip
    if task == "eval":
        losses = {f"{split}_loss": evaluate(model, b) for split, b in batches.items()}
        report = {"step": step, "backend": cfg.circuit.backend, **losses}
        atomic_write(out / "eval.json", lambda f: f.write(json.dumps(report, indent=1).encode()))
        print(f"step {step} on {cfg.circuit.backend}: train loss {losses['train_loss']:.4f}, "
              f"val loss {losses['val_loss']:.4f} nats/char; {out / 'eval.json'}")  # fmt: skip
        return
    inputs = _layer_inputs(model, layer, batches["train"][0][0])  # (N, n_inputs)
    angles = layer.program.angles(inputs.double().numpy(), layer.weights.detach().double().numpy())
    estimate = MetricEstimate(layer.program)
    estimate.estimate(layer.executor, angles)
    eig = np.linalg.eigvalsh(estimate.metric)
    atomic_write(out / "metric.npz", lambda f: np.savez(f, metric=estimate.metric, stderr=estimate.stderr,
                                                         eigenvalues=eig, inputs=inputs.numpy()))  # fmt: skip
    _plot_metric(estimate.metric, out / "metric.png", f"{cfg.circuit.backend}, {len(angles)} inputs")
    print(
        f"metric of {estimate.metric.shape[0]} weights from {len(angles)} inputs, {len(estimate.layers)} layers: "
        f"trace {np.trace(estimate.metric):.4f}, eigenvalues {eig[0]:.2e} .. {eig[-1]:.2e}; {out / 'metric.npz'}"
    )


class _Captured(Exception):
    pass


def _layer_inputs(model, layer, x: torch.Tensor) -> torch.Tensor:
    """The (N, n_inputs) angles ``layer`` receives on batch ``x``, without running any circuit."""
    seen = []

    def grab(module, args):
        seen.append(args[0].detach().reshape(-1, module.n_inputs))
        raise _Captured

    handle = layer.register_forward_pre_hook(grab)
    try:
        with torch.no_grad():
            model(x)
    except _Captured:
        pass
    finally:
        handle.remove()
    return seen[0]


def _plot_metric(metric: np.ndarray, path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4.2))
    ax = fig.subplots()
    bound = float(np.abs(metric).max()) or 1.0
    image = ax.imshow(metric, cmap="RdBu_r", vmin=-bound, vmax=bound)
    fig.colorbar(image, ax=ax, label="metric entry")
    ax.set_title(f"block-diagonal metric tensor\n{title}", fontsize=10)
    ax.set_xlabel("weight index")
    ax.set_ylabel("weight index")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))


# --- cost preview --------------------------------------------------------------------------


def _print_preview(cfg: Config, backend, task: str, runtime: Runtime) -> None:
    """Print what the run will send, and refuse it if one job breaks IBM's limits."""
    try:
        program = compile_circuit(cfg.circuit.template())
    except ValueError as error:
        raise InputError(str(error)) from None
    executor = backend.build(cfg.circuit.template(), program, cfg.execution)  # a QiskitExecutor
    isa = executor.isa(runtime)
    tokens = cfg.train.batch_size * cfg.model.block_size
    shifted = int(((program.input_coeffs != 0).any(axis=1) | (program.weight_coeffs != 0).any(axis=1)).sum())
    gradient = Gradient.from_config(cfg.execution)
    qng = task == "train" and cfg.optim.roles()["circuit"] == "qng" and cfg.model.quantum != "none"
    metric_kind = ("qnspsa" if cfg.optim.qng.metric == "qnspsa" else "estimator") if qng else "none"
    first_alone = qng and metric_kind != "qnspsa"  # the block-diagonal metric's first refresh goes alone

    def cost(pubs: list) -> Cost:
        estimate = runtime.cost(pubs)
        runtime.check_limits(backend, estimate)
        return estimate

    def batch_job(per_input: int) -> Cost:
        estimate = executor.job_cost(runtime, tokens, per_input)  # (tokens, per_input) parameter sets
        runtime.check_limits(backend, estimate)
        return estimate

    def metric_cost(kind: str) -> Cost:
        """The circuits one metric refresh adds (QNG averages it over metric_samples inputs)."""
        if kind == "none":
            return Cost(0, runtime.options.shots, 0.0)
        step = cfg.optim.qng.fidelity_step if kind == "qnspsa" else None
        return executor.metric_cost(runtime, min(tokens, cfg.optim.qng.metric_samples), step)

    rows = []  # (what, jobs, circuits per job)
    metric_note, refresh = "", Cost(0, runtime.options.shots, 0.0)
    if task == "train":
        evaluations = len(set(range(0, cfg.train.steps, cfg.train.eval_every)) | {cfg.train.steps})
        step_job = executor.step_cost(runtime, tokens, gradient)
        runtime.check_limits(backend, step_job)
        rows.append(("training step", cfg.train.steps, step_job))
        if qng:
            refresh, step = metric_cost(metric_kind), rows[-1][2]
            runtime.check_limits(backend, Cost(step.circuits + refresh.circuits, step.shots,
                                               step.qpu_seconds + refresh.qpu_seconds))  # a step's job with its metric
            refreshes = -(-cfg.train.steps // cfg.optim.qng.curvature_every)
            if first_alone:
                first = metric_cost(metric_kind)
                runtime.check_limits(backend, first)
                rows.append(("QNG metric, first refresh", 1, first))
                refreshes -= 1
            metric_note = (f"; {refreshes} {'later ' * first_alone}metric refreshes add "
                           f"{refresh.circuits:,} circuits to their step's job")  # fmt: skip
        rows.append(("evaluation batch", 2 * cfg.train.eval_batches * evaluations, batch_job(1)))
        rows.append(("test batch, at the end", cfg.train.test_batches, batch_job(1)))
    elif task == "eval":
        rows.append(("evaluation batch", 2 * cfg.train.eval_batches, batch_job(1)))
    else:
        zeros = np.zeros((tokens, program.n_angles))
        rows.append(("metric tensor", 1, cost(MetricEstimate(program).pubs(executor, runtime, zeros))))
    where = {"aer": "Aer, in this process", "local": "local testing mode", "ibm": "IBM Quantum"}[backend.service]
    print(f"{task} on {backend.name} ({where}), {runtime.options.shots} shots, mode {runtime.options.mode}, "
          f"{tokens} circuit inputs per batch, qubits {list(isa.layout)}")  # fmt: skip
    total_jobs = total_seconds = 0
    for what, count, job in rows:
        print(f"  {what}: {count} x 1 job of {job.circuits:,} circuits, {job.circuit_shots:,} circuit-shots, "
              f"~{job.qpu_seconds:,.0f} s QPU")  # fmt: skip
        total_jobs, total_seconds = total_jobs + count, total_seconds + count * job.qpu_seconds
    if metric_note:
        refreshes = -(-cfg.train.steps // cfg.optim.qng.curvature_every) - first_alone
        total_seconds += refreshes * refresh.qpu_seconds
    qpu = f"~{total_seconds / 60:,.1f} QPU minutes on the device" if total_seconds else "no QPU time (simulator)"
    print(f"  in all: {total_jobs} job{'s' * (total_jobs != 1)}, {qpu} (gates, readout and repetition delay; "
          f"mitigation adds to it){metric_note}")  # fmt: skip
    if task != "train":
        return
    first = ", 2 at the first step (its QNG metric goes alone)" if first_alone else ""
    what = "parameter shifts" if gradient.method == "parameter-shift" else "SPSA perturbations"
    print(f"jobs per step: 1{first} (forward, {what} and QNG metric of the batch in one job)")
    # one step's job for every gradient and metric choice, this run's marked with *
    print(f"  per training step, {tokens} inputs ({shifted} differentiated angles; QNG metric at "
          f"{min(tokens, cfg.optim.qng.metric_samples)} inputs, spsa with {gradient.resamplings} resampling"
          f"{'s' * (gradient.resamplings != 1)}):")  # fmt: skip
    print(f"    {'gradient':16} {'metric':10} {'circuits':>9} {'circuit-shots':>14} {'QPU s':>8}")
    for method in ("parameter-shift", "spsa"):
        per_input = Gradient(method, gradient.resamplings, gradient.c).circuits_per_input(shifted)
        for kind in ("none", "estimator", "qnspsa"):
            step = executor.job_cost(runtime, tokens, per_input)
            extra = metric_cost(kind)
            mark = "*" if (method, kind) == (gradient.method, metric_kind) else " "
            print(f"  {mark} {method:16} {kind:10} {step.circuits + extra.circuits:>9,} "
                  f"{step.circuit_shots + extra.circuit_shots:>14,} {step.qpu_seconds + extra.qpu_seconds:>8,.0f}")


# --- hybrid jobs ---------------------------------------------------------------------------


# --- logging -------------------------------------------------------------------------------


class _Scrub(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub(record.getMessage()), None
        return True


def _start_logging(path: Path | None, quiet: bool, verbose: bool) -> list[logging.Handler]:
    """Log jobs to ``path``; on stderr too (job states, when ``verbose``: hardware queues are
    long), but never errors there: the command line prints those once."""
    logger = logging.getLogger("hybrid.ibm")
    logger.setLevel(logging.DEBUG)
    handlers: list[logging.Handler] = []
    if path is not None:
        handlers.append(logging.FileHandler(path, encoding="utf-8"))
        handlers[-1].setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    if not quiet:  # the file takes DEBUG too
        handlers.append(logging.StreamHandler())
        handlers[-1].setLevel(logging.INFO if verbose else logging.WARNING)
        handlers[-1].addFilter(lambda record: record.levelno < logging.ERROR)
    for handler in handlers:
        handler.addFilter(_Scrub())
        logger.addHandler(handler)
    return handlers


def _stop_logging(handlers: list[logging.Handler]) -> None:
    logger = logging.getLogger("hybrid.ibm")
    for handler in handlers:
        logger.removeHandler(handler)
        handler.close()
