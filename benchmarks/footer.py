"""The footer every committed benchmark table ends with: date, machine, versions, command."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def cpu_name() -> str:
    """The CPU model and how many logical cores this process may use."""
    names = []
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
    name = names[0] if names else platform.processor() or platform.machine()
    return f"{name} ({len(os.sched_getaffinity(0))} cores visible, {torch_threads()} torch threads)"


def torch_threads() -> int:
    import torch  # the footer is also written by benchmarks that have imported torch already

    return torch.get_num_threads()


def footer(packages: tuple[str, ...] = ("torch",)) -> str:
    """Markdown lines: date, machine, CPU, the versions of ``packages``, and this process's command."""
    versions = ", ".join(f"{name} {_version(name)}" for name in packages)
    return "\n".join([
        f"- date: {dt.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {platform.platform()}; CPU: {cpu_name()}",
        f"- versions: python {platform.python_version()}, {versions}",
        f"- command: `{shlex.join(['python', *sys.argv])}`",
        "",
    ])  # fmt: skip


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"
