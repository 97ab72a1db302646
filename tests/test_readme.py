"""Every ```python block of README.md runs as written: each in a fresh namespace, in a temporary
working directory. A block is skipped when it needs IBM credentials (``QiskitRuntimeService``)
or the line before its fence is ``<!-- readme: no-test -->``."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP_MARK = "<!-- readme: no-test -->"
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[tuple[int, str, bool]]:
    """``(line number, code, skipped)`` of each ```python block."""
    text = README.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1].strip()
        code = match.group(1)
        blocks.append((line, code, before == SKIP_MARK or "QiskitRuntimeService" in code))
    return blocks


BLOCKS = python_blocks()


def test_readme_has_python_blocks():
    assert len([b for b in BLOCKS if not b[2]]) >= 4


@pytest.mark.parametrize(("line", "code", "skipped"), BLOCKS, ids=[f"line{b[0]}" for b in BLOCKS])
def test_readme_block_runs(line, code, skipped, tmp_path, monkeypatch, one_thread):
    if skipped:
        pytest.skip("needs IBM credentials or is marked no-test")
    if "hybrid.hf" in code or "transformers" in code:
        pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": f"readme_line{line}"})
