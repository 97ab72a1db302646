"""The batched torch statevector simulator: an executor for compiled circuits (``circuits.GateProgram``).

    plan.py         the gate list as a few wide steps (fused unitaries, block GEMMs, gathers)
    statevector.py  runs a plan on N inputs at once, differentiable by autograd

It never imports ``hybrid.ibm``: the two executors are siblings.
"""
