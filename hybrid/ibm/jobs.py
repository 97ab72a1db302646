"""Where EstimatorV2 jobs run, behind one small interface for IBM's service and local ones.

    service.backend(name)           -> BackendV2 to transpile for and submit to
    service.track(job, tag)         -> job id; the job is durable from here on
    service.status(job_id)          -> "QUEUED" | "RUNNING" | "DONE" | "ERROR" | "CANCELLED" | ...
    service.result(job_id, timeout) -> JobResult (evs, stds per PUB)
    service.find(tag)               -> job id of a job sent with that tag, or None

Both services submit through the same call, ``submit(mode, pubs, options)``: IBM's
``EstimatorV2`` for fake and real devices (a fake device's ``BackendV2`` puts it in local
testing mode), qiskit's ``BackendEstimatorV2`` for a plain Aer simulator. The differences
between IBM's service and local testing mode are normalized here: local job status is an
enum where the service returns a string, local mode has no ``service.job(id)``, and
``PrimitiveJob.result`` takes no timeout. ``LocalService`` keeps finished results in a
folder, as IBM's servers keep them, so a process that crashed can still fetch them.
"""

from __future__ import annotations

import io
import json
import math
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hybrid.checkpoint import atomic_write
from hybrid.errors import InputError
from hybrid.ibm import devices
from hybrid.ibm.credentials import ServiceError, describe, ibm_call, reason

MODES = ("job", "batch", "session")
DD_SEQUENCES = ("", "XX", "XpXm", "XY4")
MAX_CIRCUIT_SHOTS = 5_000_000  # IBM's limit per job: circuits x shots
MAX_EXECUTION_TIME = 10_800  # QPU seconds, IBM's cap on max_execution_time (3 h)
FINAL_STATES = ("DONE", "ERROR", "CANCELLED", "UNKNOWN")  # UNKNOWN: a local job nobody kept


class JobFailed(InputError):
    """A job ended in ERROR or CANCELLED, or did not finish in time. The message says which
    and how to continue; as an ``InputError`` the command line prints it in one line."""


@dataclass(frozen=True)
class ExecutionOptions:
    """How jobs run; the fields mirror ``ExecutionConfig``'s keys (see there)."""

    shots: int = 1024
    mode: str = "job"
    resilience_level: int = 1
    twirling: bool = False
    dd: str = ""
    optimization_level: int = 1
    max_execution_time: int = 0
    timeout: float = 3600.0

    @classmethod
    def from_config(cls, execution) -> ExecutionOptions:
        """From an ``ExecutionConfig`` (``hybrid.backends``); shots 0 becomes the sampling default, 1024.

        Raises:
            InputError: a value out of range (the message names the key and the choices).
        """
        options = cls(
            shots=execution.shots or cls.shots, mode=execution.mode, resilience_level=execution.resilience_level,
            twirling=execution.twirling, dd=execution.dd, optimization_level=execution.optimization_level,
            max_execution_time=execution.max_execution_time, timeout=execution.result_timeout,
        )  # fmt: skip
        options.validate()
        return options

    def validate(self) -> None:
        checks = [
            (self.mode in MODES, f"execution.mode must be one of {', '.join(MODES)}, got {self.mode!r}"),
            (self.resilience_level in (0, 1, 2),
             f"execution.resilience_level must be 0, 1 or 2, got {self.resilience_level}"),
            (self.dd in DD_SEQUENCES, f"execution.dd must be '' (off), XX, XpXm or XY4, got {self.dd!r}"),
            (self.optimization_level in (0, 1, 2, 3),
             f"execution.optimization_level must be 0-3, got {self.optimization_level}"),
            (0 <= self.max_execution_time <= MAX_EXECUTION_TIME,
             f"execution.max_execution_time must lie in [0, {MAX_EXECUTION_TIME}] QPU seconds "
             f"(0: the service's default), got {self.max_execution_time}"),
            (self.timeout > 0, f"execution.result_timeout must be > 0 seconds, got {self.timeout}"),
            (self.shots > 0, f"execution.shots must be > 0 on a sampling backend, got {self.shots}"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def runtime_options(self, tag: str, seed: int | None) -> dict:
        """qiskit-ibm-runtime ``EstimatorOptions`` as a dict; ``seed`` seeds local simulation."""
        options = {"default_shots": self.shots, "resilience_level": self.resilience_level,
                   "environment": {"job_tags": [tag]}}  # fmt: skip
        # Unset keys keep the service's defaults (resilience level 1 twirls measurements itself).
        if self.twirling:
            options["twirling"] = {"enable_gates": True, "enable_measure": True}
        if self.dd:
            options["dynamical_decoupling"] = {"enable": True, "sequence_type": self.dd}
        if self.max_execution_time:
            options["max_execution_time"] = self.max_execution_time
        if seed is not None:
            options["simulator"] = {"seed_simulator": seed}
        return options


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobResult:
    """Expectation values and their standard errors, one ``(evs, stds)`` pair per PUB, each
    of the PUB's broadcast shape."""

    evs: tuple[np.ndarray, ...]
    stds: tuple[np.ndarray, ...]

    @classmethod
    def from_primitive(cls, result) -> JobResult:
        return cls(
            tuple(np.asarray(r.data.evs, dtype=np.float64) for r in result),
            tuple(np.asarray(r.data.stds, dtype=np.float64) for r in result),
        )

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        arrays = {f"evs_{i}": e for i, e in enumerate(self.evs)} | {f"stds_{i}": s for i, s in enumerate(self.stds)}
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> JobResult:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            n = len(z.files) // 2
            return cls(tuple(z[f"evs_{i}"] for i in range(n)), tuple(z[f"stds_{i}"] for i in range(n)))


def normalize_status(status) -> str:
    """The job status as an upper-case string: local jobs give an enum, the service a string."""
    return str(getattr(status, "name", status)).upper()


def wait_result(job, timeout: float):
    """``job.result()`` that gives up after ``timeout`` seconds: IBM's jobs take a timeout,
    local ``PrimitiveJob``s do not, but their future does.

    Raises:
        JobFailed: no result within ``timeout``.
    """
    import concurrent.futures
    import inspect

    if "timeout" in inspect.signature(job.result).parameters:
        return job.result(timeout=timeout)
    future = getattr(job, "_future", None)
    if future is None:
        return job.result()
    try:
        return future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise JobFailed(f"job {job.job_id()} did not finish within {timeout:.0f} s") from None


# --- submission: the one call both services use --------------------------------------------


def submit(mode, pubs: list, options: ExecutionOptions, tag: str, seed: int | None, runtime: bool, local: bool):
    """Send ``pubs`` as one EstimatorV2 job on ``mode`` (a backend, a Batch or a Session):
    through qiskit-ibm-runtime when ``runtime`` (IBM and fake devices), else through qiskit's
    ``BackendEstimatorV2`` (Aer). ``seed`` seeds the simulation when ``local``."""
    if runtime:
        from qiskit_ibm_runtime import EstimatorV2

        estimator = EstimatorV2(mode=mode, options=options.runtime_options(tag, seed if local else None))
        with warnings.catch_warnings():
            # Local testing mode cannot mitigate, twirl or decouple and says so on every job;
            # the Runtime prints one note instead.
            warnings.filterwarnings("ignore", message=".*(no effect|not supported) in local testing mode")
            return estimator.run(pubs)
    from qiskit.primitives import BackendEstimatorV2

    # precision -> shots is ceil(1 / precision**2); the factor keeps rounding from adding a shot
    precision = (1 - 1e-9) / math.sqrt(options.shots)
    estimator = BackendEstimatorV2(backend=mode, options={"default_precision": precision, "seed_simulator": seed})
    return estimator.run(pubs)


def open_mode(backend, mode: str, runtime: bool, max_time: int | None = None):
    """The execution mode to submit to: the backend itself (job, and always for Aer), or a
    new Batch or Session on it."""
    if mode == "job" or not runtime:
        return backend
    from qiskit_ibm_runtime import Batch, Session

    return (Batch if mode == "batch" else Session)(backend=backend, max_time=max_time or None)


# --- services ------------------------------------------------------------------------------


class LocalService:
    """Fake IBM devices (runtime local testing mode) and Aer simulators, in this process.

    Args:
        store: folder for finished results (``<job id>.npz`` plus ``tags.json``); None keeps
            them in memory only.
        noiseless_devices: run fake devices on an ideal simulator with their target (shot
            noise only), e.g. to check gradients against an exact simulator.
    """

    local = True

    def __init__(self, store: str | Path | None = None, noiseless_devices: bool = False):
        self.store = Path(store) if store is not None else None
        self.noiseless_devices = noiseless_devices
        self.results: dict[str, JobResult] = {}
        self.tags: dict[str, str] = {}
        if self.store is not None and (self.store / "tags.json").exists():
            self.tags = json.loads((self.store / "tags.json").read_text())

    def backend(self, name: str, noise: str = ""):
        if name == "qiskit.aer":
            return devices.aer_simulator(noise)
        backend = devices.fake_backend(name)
        return devices.noiseless(backend) if self.noiseless_devices else backend

    def track(self, job, tag: str) -> str:
        """Run ``job`` to completion and keep its result, as IBM's servers would."""
        job_id = job.job_id() if callable(getattr(job, "job_id", None)) else str(uuid.uuid4())
        result = JobResult.from_primitive(job.result())
        self.results[job_id] = result
        self.tags[tag] = job_id
        if self.store is not None:
            self.store.mkdir(parents=True, exist_ok=True)
            atomic_write(self.store / f"{job_id}.npz", lambda f: f.write(result.to_bytes()))
            atomic_write(self.store / "tags.json", lambda f: f.write(json.dumps(self.tags).encode()))
        return job_id

    def _load(self, job_id: str) -> JobResult | None:
        if job_id not in self.results and self.store is not None and (self.store / f"{job_id}.npz").exists():
            self.results[job_id] = JobResult.from_bytes((self.store / f"{job_id}.npz").read_bytes())
        return self.results.get(job_id)

    def status(self, job_id: str) -> str:
        return "DONE" if self._load(job_id) is not None else "UNKNOWN"

    def result(self, job_id: str, timeout: float) -> JobResult:
        result = self._load(job_id)
        if result is None:
            raise JobFailed(f"local job {job_id} was lost with the process that ran it")
        return result

    def find(self, tag: str) -> str | None:
        return self.tags.get(tag)

    def cancel(self, job_id: str) -> None:
        raise InputError(f"local job {job_id} has already run; only jobs on IBM hardware can be cancelled")


class IBMService:
    """IBM Quantum through a ``QiskitRuntimeService`` (or any object with its ``backend``,
    ``job`` and ``jobs`` methods: tests inject one). Build it with
    ``hybrid.ibm.credentials.connect()``, which turns account problems into one-line errors."""

    local = False

    def __init__(self, service):
        self.service = service
        self.live: dict[str, object] = {}  # job handles of this process, saving a lookup

    def backend(self, name: str, noise: str = ""):
        if noise:
            raise InputError(f"execution.noise applies to qiskit.aer only; {name} has its own noise")

        return ibm_call(lambda: self.service.backend(name), f"look up backend {name}")

    def track(self, job, tag: str) -> str:
        job_id = job.job_id()
        self.live[job_id] = job
        return job_id

    def job(self, job_id: str):

        if job_id not in self.live:
            self.live[job_id] = ibm_call(lambda: self.service.job(job_id), f"retrieve job {job_id}")
        return self.live[job_id]

    def status(self, job_id: str) -> str:

        return normalize_status(ibm_call(self.job(job_id).status, f"ask for the status of job {job_id}"))

    def result(self, job_id: str, timeout: float) -> JobResult:
        from qiskit_ibm_runtime.exceptions import RuntimeJobFailureError, RuntimeJobTimeoutError


        job = self.job(job_id)
        try:
            return JobResult.from_primitive(wait_result(job, timeout))
        except RuntimeJobTimeoutError:
            raise JobFailed(f"job {job_id} did not finish within {timeout:.0f} s") from None
        except RuntimeJobFailureError as error:
            raise JobFailed(f"job {job_id} failed ({reason(error)})") from None
        except InputError:
            raise
        except Exception as error:
            raise ServiceError(describe(error, f"fetch job {job_id}")) from None

    def find(self, tag: str) -> str | None:

        jobs = ibm_call(lambda: self.service.jobs(job_tags=[tag], limit=1), f"search jobs tagged {tag}")
        return jobs[0].job_id() if jobs else None

    def cancel(self, job_id: str) -> None:

        ibm_call(self.job(job_id).cancel, f"cancel job {job_id}")
