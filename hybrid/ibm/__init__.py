"""Qiskit Aer, IBM fake devices and IBM Quantum hardware: EstimatorV2 jobs with a journal.

    runtime.py      Runtime: journaled jobs, limits, cost; the active one per run
    shots.py        a QuantumLayer's forward and parameter shifts as one job
    metric.py       the block-diagonal metric tensor from one job
    isa.py          one parameter per gate angle, transpiled once per backend
    jobs.py         IBM's service and local ones behind one interface; execution options
    journal.py      the SQLite job journal of a run folder
    credentials.py  the IBM account, never shown
    devices.py      fake devices and Aer simulators by name
    submit.py       hybrid submit and hybrid jobs

Nothing here imports qiskit at module level, so ``import hybrid`` stays light.
"""

from hybrid.ibm.jobs import ExecutionOptions as ExecutionOptions
from hybrid.ibm.jobs import IBMService as IBMService
from hybrid.ibm.jobs import JobFailed as JobFailed
from hybrid.ibm.jobs import LocalService as LocalService
from hybrid.ibm.journal import Journal as Journal
from hybrid.ibm.metric import MetricEstimate as MetricEstimate
from hybrid.ibm.runtime import Runtime as Runtime

__all__ = ["ExecutionOptions", "IBMService", "JobFailed", "Journal", "LocalService", "MetricEstimate", "Runtime"]
