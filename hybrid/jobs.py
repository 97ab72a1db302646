"""``hybrid jobs list|status|fetch RUN [JOB_ID ...]``: the journaled jobs of a ``hybrid submit`` run.

``list`` prints the journal, ``status`` asks the service for the state of unfinished jobs and
journals changes, ``fetch`` waits for results and writes each to ``RUN/results/<job id>.npz``
(atomically); a fetched result is journaled, so fetching again sends nothing.
"""

from __future__ import annotations

from hybrid.checkpoint import atomic_write
from hybrid.errors import InputError
from hybrid.ibm.credentials import connect
from hybrid.ibm.jobs import FINAL_STATES, JobResult, LocalService
from hybrid.ibm.journal import JOURNAL, Journal
from hybrid.submit import LOCAL_JOBS
from hybrid.train import resume_config


def jobs(args, ibm=None) -> int:
    """``hybrid jobs list|status|fetch RUN [JOB_ID ...]``."""
    path = args.run / JOURNAL
    if not path.exists():
        raise InputError(f"{args.run} has no job journal ({JOURNAL}); point at a run folder of hybrid submit")
    journal = Journal(path)
    rows = journal.rows()
    if args.job_ids:
        missing = set(args.job_ids) - {r.job_id for r in rows}
        if missing:
            raise InputError(f"no job {sorted(missing)[0]} in {path}; hybrid jobs list {args.run} shows the ids")
        rows = [r for r in rows if r.job_id in args.job_ids]
    services = {}

    def service(row):
        name = "ibm" if row.backend.startswith("ibm_") else "local"
        if name not in services:
            services[name] = (ibm or connect()) if name == "ibm" else LocalService(args.run / LOCAL_JOBS)
        return services[name]

    if args.action == "status":
        for row in rows:
            if row.job_id and row.state not in FINAL_STATES:
                state = service(row).status(row.job_id)
                if state != row.state:
                    journal.status(row.key, state)
        rows = [journal.find(r.key) for r in rows]
    if args.action == "fetch":
        (args.run / "results").mkdir(exist_ok=True)
        timeout = resume_config(args.run).execution.result_timeout
        for row in rows:
            if row.job_id is None:
                continue
            if row.result is None:
                result = service(row).result(row.job_id, timeout)
                journal.finished(row.key, result.to_bytes())
            else:
                result = JobResult.from_bytes(row.result)
            target = args.run / "results" / f"{row.job_id}.npz"
            atomic_write(target, lambda f, r=result: f.write(r.to_bytes()))
            shapes = ", ".join(f"{p['name']} {tuple(e.shape)}" for p, e in zip(row.pubs, result.evs, strict=True))
            print(f"{row.job_id}: {shapes} -> {target}")
        return 0
    print(f"{'job id':38} {'state':10} {'purpose':8} {'step':>5} {'circuits':>9} {'shots':>6} {'QPU s':>7}  backend")
    for row in rows:
        step = "-" if row.step is None else row.step
        print(f"{row.job_id or '(submitting)':38} {row.state:10} {row.purpose:8} {step:>5} {row.circuits:>9} "
              f"{row.shots:>6} {row.qpu_seconds or 0:>7.0f}  {row.backend}")  # fmt: skip
    return 0
