"""The runtime of a run: where its jobs go, how they are journaled, what they cost.

    runtime = Runtime(options, journal=Journal(run / "jobs.sqlite"), local=LocalService(run / "local_jobs"))
    with runtime.active():                  # layers on qiskit backends send their jobs here
        train(cfg, run, on_step=runtime.at_step)

A ``QuantumLayer`` on ``qiskit.aer``, ``fake_<device>`` or ``ibm_<device>`` hands its PUBs
to the active runtime (or to a default one without a journal), which sends them as ONE
EstimatorV2 job:

    key = purpose/step/fingerprint          # fingerprint: sha256 of backend, options, circuits, values
    journal has key with a result  -> return it               (a resumed run replays its steps)
    journal has key with a job id  -> wait for that job        (submitted before a crash)
    else: check limits -> journal.begin -> submit -> journal.submitted -> wait -> journal.finished

Everything is committed before the process waits on the job, so a crash at any moment loses
no job that was paid for. Local jobs are seeded from the fingerprint, so a replay and an
uninterrupted run see the same shots.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from hybrid.errors import InputError
from hybrid.ibm.credentials import ServiceError, connect, describe
from hybrid.ibm.isa import IsaCircuit, transpile
from hybrid.ibm.jobs import (
    FINAL_STATES,
    MAX_CIRCUIT_SHOTS,
    MAX_EXECUTION_TIME,
    ExecutionOptions,
    IBMService,
    JobFailed,
    JobResult,
    LocalService,
    open_mode,
    submit,
)
from hybrid.ibm.journal import Journal

log = logging.getLogger("hybrid.ibm")
POLL_SECONDS = 5.0  # at most, between status queries while an IBM job waits (0.1 s doubling up to this)


@dataclass
class Pub:
    """One EstimatorV2 PUB and what it means.

    Attributes:
        name: what it computes, e.g. ``forward``, ``shifts``, ``metric/2``.
        isa: the transpiled circuit.
        observables: ``SparsePauliOp``s on the ISA circuit's qubits, (n_obs,).
        values: (*shape, 1, n_parameters) parameter values; results have shape (*shape, n_obs).
        settings: measurement settings the observables need (qubit-wise commuting groups).
    """

    name: str
    isa: IsaCircuit
    observables: list
    values: np.ndarray
    settings: int = 1

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape[:-2])

    @property
    def circuits(self) -> int:
        """Circuit executions: parameter sets times measurement settings."""
        return math.prod(self.shape) * self.settings

    def estimator_pub(self) -> tuple:
        return (self.isa.circuit, self.observables, self.values)

    def describe(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "observables": len(self.observables),
                "circuits": self.circuits}  # fmt: skip


def measurement_settings(observables: list) -> int:
    """How many measurement bases the estimator needs for ``observables`` (qubit-wise
    commuting groups of all their Pauli terms): 1 for any set of Z strings."""
    from qiskit.quantum_info import PauliList

    paulis = PauliList([p for op in observables for p in op.paulis])
    return max(1, len(paulis.group_qubit_wise_commuting()))


@dataclass
class Cost:
    """What a job or a run costs before it is sent."""

    circuits: int  # circuit executions
    shots: int  # per circuit
    qpu_seconds: float  # estimated from gate durations, readout and repetition delay; 0 on simulators

    @property
    def circuit_shots(self) -> int:
        return self.circuits * self.shots


_ACTIVE: contextvars.ContextVar[Runtime | None] = contextvars.ContextVar("hybrid_ibm_runtime", default=None)
_DEFAULTS: dict[tuple, Runtime] = {}


def current_runtime(options: ExecutionOptions) -> Runtime:
    """The active runtime (``with runtime.active():``), else a shared one per option set,
    without a journal, whose IBM service is built from the saved account on first use."""
    runtime = _ACTIVE.get()
    if runtime is not None:
        return runtime
    key = tuple(sorted(vars(options).items()))
    if key not in _DEFAULTS:
        _DEFAULTS[key] = Runtime(options)
    return _DEFAULTS[key]


@dataclass
class Runtime:
    """Sends PUBs as journaled EstimatorV2 jobs (see the module docstring).

    Args:
        options: shots, execution mode, mitigation, timeouts.
        journal: where every job is recorded; None records nothing (plain ``hybrid train``).
        local: the service for ``qiskit.aer`` and ``fake_<device>`` backends.
        ibm: the service for ``ibm_<device>``; None builds one from the saved account on
            first use (``hybrid.ibm.credentials.connect``). Inject one in tests.
    """

    options: ExecutionOptions = field(default_factory=ExecutionOptions)
    journal: Journal | None = None
    local: LocalService = field(default_factory=LocalService)
    ibm: IBMService | None = None
    step: int | None = None
    submitted: int = 0  # jobs this process sent
    reused: int = 0  # jobs this process took from the journal (their results, or their ids)
    _backends: dict = field(default_factory=dict)
    _modes: dict = field(default_factory=dict)
    _isa: dict = field(default_factory=dict)
    _layouts: dict | None = None
    _noted_local: bool = False

    # --- context -------------------------------------------------------------------------

    @contextlib.contextmanager
    def active(self):
        """Make this the runtime of every qiskit-backed layer inside the block; closes any
        Batch or Session it opened when the block ends."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)
            self.close()

    def attach(self, journal) -> None:
        """Record this runtime's jobs in ``journal`` from now on, with the layouts chosen so far."""
        self.journal = journal
        for meta, layout in (self._layouts or {}).items():
            if journal.get_meta(meta) is None:
                journal.set_meta(meta, json.dumps(list(layout)))

    def at_step(self, step: int) -> None:
        """Label the following jobs with the optimizer ``step`` (``train``'s ``on_step``)."""
        self.step = step

    def close(self) -> None:
        for mode in self._modes.values():
            close = getattr(mode, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
        self._modes.clear()

    # --- backends and circuits -----------------------------------------------------------

    def service(self, backend):
        """The service that runs jobs for backend row ``backend``."""
        if backend.service != "ibm":
            return self.local
        if self.ibm is None:
            self.ibm = IBMService(connect())
        return self.ibm

    def device(self, backend, noise: str = ""):
        """The ``BackendV2`` of row ``backend`` (built once per run)."""
        key = (backend.name, noise)
        if key not in self._backends:
            self._backends[key] = self.service(backend).backend(backend.name, noise)
        return self._backends[key]

    def isa(self, backend, noise: str, circuit, label: str, layout_of: str) -> IsaCircuit:
        """``circuit`` transpiled once for ``backend``; circuits sharing ``layout_of`` share
        the physical qubits of the first one, recorded in the journal for resumed runs."""
        key = (backend.name, noise, label)
        if key not in self._isa:
            device = self.device(backend, noise)
            meta = f"layout/{backend.name}/{noise}/{layout_of}"
            if self._layouts is None:
                self._layouts = {}
            if meta not in self._layouts and self.journal is not None and (saved := self.journal.get_meta(meta)):
                self._layouts[meta] = tuple(json.loads(saved))
            isa = transpile(circuit, device, self._layouts.get(meta), self.options.optimization_level)
            if meta not in self._layouts:
                self._layouts[meta] = isa.layout
                if self.journal is not None:
                    self.journal.set_meta(meta, json.dumps(list(isa.layout)))
            self._isa[key] = isa
        return self._isa[key]

    # --- cost and limits -----------------------------------------------------------------

    def cost(self, pubs: list[Pub]) -> Cost:
        circuits = sum(p.circuits for p in pubs)
        seconds = sum(p.circuits * p.isa.shot_seconds for p in pubs) * self.options.shots
        return Cost(circuits, self.options.shots, seconds)

    def check_limits(self, backend, cost: Cost) -> None:
        """Refuse a job IBM would refuse or cut off (also on fake devices, which stand in for it).

        Raises:
            InputError: over 5 million circuit-shots, or over the execution-time budget.
        """
        if backend.service == "aer":
            return
        if cost.circuit_shots > MAX_CIRCUIT_SHOTS:
            raise InputError(
                f"one job would run {cost.circuits} circuits x {cost.shots} shots = {cost.circuit_shots:,} "
                f"circuit-shots, over IBM's {MAX_CIRCUIT_SHOTS:,} per job; lower execution.shots, "
                "train.batch_size or model.block_size"
            )
        budget = self.options.max_execution_time or MAX_EXECUTION_TIME
        if cost.qpu_seconds > budget:
            raise InputError(
                f"one job needs about {cost.qpu_seconds:.0f} QPU seconds, over the {budget} s of "
                "execution.max_execution_time (IBM's cap is 10800); lower execution.shots or train.batch_size"
            )

    # --- execution -----------------------------------------------------------------------

    def run(self, backend, pubs: list[Pub], purpose: str, noise: str = "") -> JobResult:
        """Send ``pubs`` as one job on ``backend`` (with Aer ``noise``), or take the journal's
        job for them, and return its result.

        Raises:
            InputError: the job breaks a limit (before anything is sent), or the service fails.
            JobFailed: the job ended in ERROR or CANCELLED, or outlived ``options.timeout``.
        """
        cost = self.cost(pubs)
        self.check_limits(backend, cost)
        service = self.service(backend)
        fingerprint = self.fingerprint(backend, pubs)
        step = "-" if self.step is None else str(self.step)
        key, tag = f"{purpose}/{step}/{fingerprint[:24]}", f"hybrid-{fingerprint[:32]}"
        journal = self.journal

        if journal is not None and (row := journal.find(key)) is not None:
            if row.state == "DONE" and row.result is not None:
                journal.note(key, "reused")
                self.reused += 1
                return JobResult.from_bytes(row.result)
            if row.state in ("ERROR", "CANCELLED"):
                journal.retire(key)  # a failed job computed nothing: this one is sent anew
            elif (job_id := row.job_id or service.find(row.tag)) is not None:
                if row.job_id is None:
                    journal.submitted(key, job_id, event="adopted")  # sent just before a crash
                journal.note(key, "retrieved", job_id)
                self.reused += 1
                return self._wait(service, key, job_id)
            else:
                journal.forget(key, "no job with its tag reached the service")

        if journal is not None:
            journal.begin(key, purpose, self.step, backend.name, tag, [p.describe() for p in pubs],
                          cost.circuits, cost.shots, cost.qpu_seconds)  # fmt: skip
        job_id = self._submit(backend, noise, service, pubs, tag, seed=int(fingerprint[:8], 16))
        if journal is not None:
            journal.submitted(key, job_id)
        self.submitted += 1
        log.info("job %s on %s: %s, %d circuits x %d shots", job_id, backend.name, key, cost.circuits, cost.shots)
        return self._wait(service, key, job_id)

    def fingerprint(self, backend, pubs: list[Pub]) -> str:
        """sha256 of everything that decides a job's result (not mode or timeouts)."""
        o = self.options
        digest = hashlib.sha256()
        digest.update(json.dumps([backend.name, o.shots, o.resilience_level, o.twirling, o.dd]).encode())
        for pub in pubs:
            digest.update(pub.name.encode())
            digest.update(repr(pub.isa.layout).encode())
            digest.update(pub.isa.columns.tobytes())
            digest.update(str([op.to_list() for op in pub.observables]).encode())
            digest.update(str(pub.values.shape).encode())
            digest.update(np.ascontiguousarray(pub.values, dtype=np.float64).tobytes())
        return digest.hexdigest()

    def _submit(self, backend, noise: str, service, pubs: list[Pub], tag: str, seed: int) -> str:
        runtime = backend.service != "aer"
        if service.local and runtime and not self._noted_local:
            log.info("%s runs in local testing mode: resilience, twirling and dynamical decoupling "
                     "apply on IBM hardware only", backend.name)  # fmt: skip
            self._noted_local = True
        estimator_pubs = [p.estimator_pub() for p in pubs]
        for attempt in (0, 1):
            mode = self._mode(backend, noise, runtime)
            try:
                job = submit(mode, estimator_pubs, self.options, tag, seed, runtime=runtime, local=service.local)
                break
            except Exception as error:
                # A session can expire mid-training (max_time, idle timeout): open a new one, once.
                if attempt or self.options.mode == "job" or not _session_closed(error):
                    if service.local:
                        raise

                    raise ServiceError(describe(error, f"submit a job to {backend.name}")) from None
                log.info("%s closed; opening a new one", self.options.mode)
                self._modes.pop((backend.name, noise), None)
        return service.track(job, tag)

    def _mode(self, backend, noise: str, runtime: bool):
        key = (backend.name, noise)
        if key not in self._modes:
            self._modes[key] = open_mode(self.device(backend, noise), self.options.mode, runtime)
        return self._modes[key]

    def _wait(self, service, key: str, job_id: str) -> JobResult:
        deadline = time.monotonic() + self.options.timeout
        state, delay = service.status(job_id), 0.1
        while state not in FINAL_STATES and time.monotonic() < deadline:
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(2 * delay, POLL_SECONDS)
            new = service.status(job_id)
            if new != state:
                log.info("job %s: %s", job_id, new)
                if self.journal is not None:
                    self.journal.status(key, new)
            state = new
        try:
            result = service.result(job_id, max(1.0, deadline - time.monotonic()))
        except JobFailed as error:
            state = service.status(job_id)
            if self.journal is not None:
                self.journal.failed(key, state, str(error))
            again = "sends it again" if state in ("ERROR", "CANCELLED") else "waits for it again"
            raise JobFailed(f"{error}; it stays in the journal (hybrid jobs status DIR), "
                            f"hybrid submit --resume DIR {again}") from None  # fmt: skip
        if self.journal is not None:
            self.journal.finished(key, result.to_bytes())
        return result


def _session_closed(error: BaseException) -> bool:
    text = str(error).lower()
    return "session" in text and any(w in text for w in ("closed", "expired", "not active", "inactive"))
