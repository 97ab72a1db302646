"""Text in, batches of token ids out.

splits   = text_splits(cfg)                              # Splits(train, val, test) of str
dataset  = load_dataset(cfg, block_size)                 # the splits as id tensors + tokenizer
x, y     = dataset.batch("train", B, T, generator)       # (B, T) ids; y is x shifted by one

``data.path`` names the text: ``markov`` (the built-in corpus, the default), ``shakespeare`` or
``pydoc`` (``hybrid.texts``, split by work and by topic), or a UTF-8 file, split into a head for
training and tails for validation and test. ``data.tokenizer`` is ``char`` or ``bpe`` (trained on
the training split only, ``hybrid.tokenizer``). Losses are in nats per token; ``bits_per_char``
converts a split's loss to bits per character whatever the tokenizer.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from hybrid import corpus
from hybrid.errors import InputError, check_choice, check_number
from hybrid.texts import NAMES, Splits, check_available, corpus_splits
from hybrid.tokenizer import BYTE_ALPHABET, BpeTokenizer, CharTokenizer

MARKOV = "markov"
DATASETS = (MARKOV, *NAMES)


@dataclass
class DataConfig:
    """``[data]``: what text the model trains on, and how it becomes tokens."""

    path: str = MARKOV  # markov (built-in corpus), shakespeare, pydoc, or a UTF-8 text file
    tokenizer: str = "char"  # char: one token per character; bpe: byte-level BPE trained on the training split
    vocab_size: int = 1024  # tokens of the BPE tokenizer (256 bytes + merges); unused by char
    corpus_chars: int = 150_000  # size of the built-in corpus's training + validation text in characters
    val_fraction: float = 0.1  # markov and files: the part after the training text held out for validation
    test_fraction: float = 0.1  # files: the last part, held out for the test (markov: its continuation)

    def validate(self, prefix: str = "data.") -> DataConfig:
        check_number(f"{prefix}corpus_chars", self.corpus_chars, low=1, integer=True)
        check_number(f"{prefix}val_fraction", self.val_fraction, low=0, high=1, low_open=True, high_open=True)
        check_number(f"{prefix}test_fraction", self.test_fraction, low=0, high=1, low_open=True, high_open=True)
        if self.val_fraction + self.test_fraction >= 1:
            raise InputError(f"{prefix}val_fraction + {prefix}test_fraction must be below 1, got "
                             f"{self.val_fraction} + {self.test_fraction}; leave some text for training")  # fmt: skip
        check_choice(f"{prefix}tokenizer", self.tokenizer, ("char", "bpe"))
        check_number(f"{prefix}vocab_size", self.vocab_size, low=BYTE_ALPHABET, high=1 << 20, integer=True)
        if self.path in NAMES:
            check_available(self.path)
        elif self.path not in ("", MARKOV):
            _check_file(Path(self.path))
        return self

    @property
    def source(self) -> str:
        """The dataset's name, or the file's path."""
        return self.path or MARKOV


class Dataset:
    """Token ids of the three splits, the tokenizer, and what a loss in nats/token means per character.

    Attributes:
        tokenizer: ``CharTokenizer`` or ``BpeTokenizer``.
        train, val, test: (n_tokens,) int64 ids of each split.
        tokens_per_char: split -> tokens / characters of that split's text (1 for characters).
        floor: entropy rate of the source in nats/char, when known (the Markov corpus).
        val_entropy: (unigram, bigram) character entropies of the validation text in bits/char
            (``char_entropies``): where a model stands on a corpus with no known floor.
    """

    def __init__(self, splits: Splits, tokenizer, floor: float | None = None):
        self.tokenizer, self.floor = tokenizer, floor
        self.val_entropy = char_entropies(splits.val)
        self.tokens_per_char = {}
        for split in ("train", "val", "test"):
            text = getattr(splits, split)
            ids = tokenizer.encode(text)
            setattr(self, split, ids)
            self.tokens_per_char[split] = len(ids) / max(1, len(text))

    @classmethod
    def from_text(cls, text: str, val_fraction: float, floor: float | None = None, test_fraction: float = 0.1):
        """Characters of one text: its head for training, then ``val_fraction`` and ``test_fraction`` tails."""
        splits = split_text(text, val_fraction, test_fraction)
        return cls(splits, CharTokenizer.from_text(text), floor)

    def bits_per_char(self, split: str, loss: float) -> float:
        """A loss in nats per token on ``split`` as bits per character."""
        return loss * self.tokens_per_char[split] / math.log(2)

    def check_block_size(self, block_size: int, source: str) -> None:
        """Every split must hold at least one window of ``block_size + 1`` tokens."""
        shortest = min(len(self.train), len(self.val), len(self.test))
        if shortest < block_size + 1:
            raise InputError(
                f"{source} is too short: its smallest split has {shortest} tokens but "
                f"model.block_size={block_size} needs {block_size + 1}; use a longer text or a smaller block size"
            )

    def batch(self, split: str, batch_size: int, block_size: int, generator: torch.Generator):
        """Random windows: x (B, T) ids and y (B, T), the next token of each position."""
        ids = getattr(self, split)
        starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)  # (B,)
        offsets = torch.arange(block_size + 1)  # (T + 1,)
        windows = ids[starts[:, None] + offsets]  # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]

    def windows(self, split: str, block_size: int, batch_size: int):
        """The whole of ``split`` in consecutive windows: yields x (b, T), y (b, T), b <= batch_size.

        Every token after the first is a target once (the last partial window is dropped).
        """
        ids = getattr(self, split)
        n = (len(ids) - 1) // block_size
        x = ids[: n * block_size].view(n, block_size)  # (n, T)
        y = ids[1 : n * block_size + 1].view(n, block_size)  # (n, T)
        for start in range(0, n, batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]


def char_entropies(text: str) -> tuple[float, float]:
    """The unigram entropy H(c) and the bigram conditional entropy H(c_t | c_{t-1}) of ``text``, in bits/char."""
    unigrams, bigrams = Counter(text), Counter(zip(text, text[1:], strict=False))
    n, n_pairs = len(text), max(1, len(text) - 1)
    h1 = -sum(k / n * math.log2(k / n) for k in unigrams.values())
    firsts = Counter(a for a, _ in zip(text, text[1:], strict=False))
    h2 = -sum(k / n_pairs * math.log2(k / firsts[a]) for (a, _), k in bigrams.items())
    return h1, h2


def read_text(path: str | Path) -> str:
    """Read a UTF-8 text file, or raise an InputError that says what is wrong with it."""
    path = Path(path)
    _check_file(path)
    raw = path.read_bytes()
    if not raw.strip():
        raise InputError(f"data file {path} is empty; pass a file with some text in it to --data")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(
            f"data file {path} is not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start}); "
            "convert it to UTF-8 or pass a text file to --data"
        ) from None
    if "\x00" in text:
        raise InputError(f"data file {path} looks binary (it contains NUL bytes); pass a text file to --data")
    return text


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"data file not found: {path}; pass an existing UTF-8 text file to --data, "
                         f"or a dataset name: {', '.join(DATASETS)}")
    if not path.is_file():
        raise InputError(f"data path {path} is not a file; pass a UTF-8 text file to --data")


def text_splits(cfg: DataConfig) -> tuple[Splits, float | None]:
    """The training, validation and test text ``cfg`` names, and its entropy floor in nats/char when known.

    The Markov corpus's training and validation text is its first ``corpus_chars`` characters (the
    last ``val_fraction`` for validation) and its test text the ``n_val`` characters that follow.
    """
    if cfg.source == MARKOV:
        n_val = _n_held_out(cfg.corpus_chars, cfg.val_fraction)
        text = corpus.generate(cfg.corpus_chars + n_val)
        head, test = text[: cfg.corpus_chars], text[cfg.corpus_chars :]
        return Splits(head[:-n_val], head[-n_val:], test), corpus.ENTROPY_RATE
    if cfg.source in NAMES:
        return corpus_splits(cfg.source), None
    return split_text(read_text(cfg.path), cfg.val_fraction, cfg.test_fraction), None


def split_text(text: str, val_fraction: float, test_fraction: float) -> Splits:
    """One text as its head (training), then a ``val_fraction`` and a ``test_fraction`` tail."""
    n_val, n_test = _n_held_out(len(text), val_fraction), _n_held_out(len(text), test_fraction)
    return Splits(text[: -n_val - n_test], text[-n_val - n_test : -n_test], text[-n_test:])


def _n_held_out(n: int, fraction: float) -> int:
    return max(1, int(round(n * fraction)))


def build_tokenizer(cfg: DataConfig, splits: Splits, saved: str | Path | None = None):
    """The tokenizer of ``cfg``: the characters of all three splits (a test character unseen in
    training can still be scored), or a BPE loaded from ``saved`` or trained on the training split."""
    if cfg.tokenizer == "char":
        return CharTokenizer.from_text(splits.train + splits.val + splits.test)
    if saved is not None and Path(saved).exists():
        tokenizer = BpeTokenizer.load(saved)
        if len(tokenizer) != cfg.vocab_size:
            raise InputError(f"{saved} has {len(tokenizer)} tokens but data.vocab_size={cfg.vocab_size}; "
                             "resume with the run's own config or start a new run")  # fmt: skip
        return tokenizer
    return BpeTokenizer.train(splits.train, cfg.vocab_size)


def prepare_tokenizer(cfg: DataConfig, path: str | Path) -> Path | None:
    """With ``cfg.tokenizer = "bpe"``, the BPE of ``cfg`` at ``path``, trained there unless it is there
    already (``hybrid tune``: one tokenizer for every run of a study); None for characters."""
    if cfg.tokenizer != "bpe":
        return None
    path = Path(path)
    if not path.exists():
        splits, _ = text_splits(cfg)
        build_tokenizer(cfg, splits).save(path)
    return path


def load_dataset(cfg: DataConfig, block_size: int, tokenizer_file: str | Path | None = None) -> Dataset:
    """The dataset ``cfg`` asks for, tokenized; a BPE is read from ``tokenizer_file`` when it exists."""
    splits, floor = text_splits(cfg)
    dataset = Dataset(splits, build_tokenizer(cfg, splits, tokenizer_file), floor)
    source = f"the built-in corpus ({cfg.corpus_chars} characters)" if cfg.source == MARKOV else f"--data {cfg.source}"
    dataset.check_block_size(block_size, source)
    return dataset
