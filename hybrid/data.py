"""Text in, batches of character ids out.

text     = read_text(path)  or  corpus.generate(n)       # str
dataset  = Dataset.from_text(text, val_fraction, floor)  # train / val id tensors + vocabulary
x, y     = dataset.batch("train", B, T, generator)       # (B, T) ids; y is x shifted by one
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from hybrid import corpus
from hybrid.errors import InputError, check_number


@dataclass
class DataConfig:
    """``[data]``: what text the model trains on."""

    path: str = ""  # a UTF-8 text file; "" uses the built-in corpus (hybrid.corpus)
    corpus_chars: int = 150_000  # size of the built-in corpus in characters
    val_fraction: float = 0.1  # the last part of the text, held out for validation

    def validate(self, prefix: str = "data.") -> DataConfig:
        check_number(f"{prefix}corpus_chars", self.corpus_chars, low=1, integer=True)
        check_number(f"{prefix}val_fraction", self.val_fraction, low=0, high=1, low_open=True, high_open=True)
        return self


class CharTokenizer:
    """Maps each character of a fixed vocabulary to an id (sorted order) and back."""

    def __init__(self, vocab: str):
        self.vocab = vocab
        self.ids = {ch: i for i, ch in enumerate(vocab)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> torch.Tensor:
        """(len(text),) int64 ids; characters outside the vocabulary raise InputError."""
        unknown = sorted(set(text) - self.ids.keys())
        if unknown:
            raise InputError(f"characters {unknown[:10]} are not in the model's vocabulary; use only {self.vocab!r}")
        return torch.tensor([self.ids[ch] for ch in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.vocab[int(i)] for i in ids)


@dataclass
class Dataset:
    """Character ids split into a training head and a validation tail."""

    tokenizer: CharTokenizer
    train: torch.Tensor  # (n_train,) int64
    val: torch.Tensor  # (n_val,) int64
    floor: float | None  # entropy rate of the source in nats/char, when known

    @classmethod
    def from_text(cls, text: str, val_fraction: float, floor: float | None = None) -> Dataset:
        tokenizer = CharTokenizer.from_text(text)
        ids = tokenizer.encode(text)
        n_val = max(1, int(round(len(ids) * val_fraction)))
        return cls(tokenizer, ids[:-n_val], ids[-n_val:], floor)

    def check_block_size(self, block_size: int, source: str) -> None:
        """Both splits must hold at least one window of ``block_size + 1`` characters."""
        shortest = min(len(self.train), len(self.val))
        if shortest < block_size + 1:
            raise InputError(
                f"{source} is too short: its smaller split has {shortest} characters but "
                f"model.block_size={block_size} needs {block_size + 1}; use a longer text or a smaller block size"
            )

    def batch(self, split: str, batch_size: int, block_size: int, generator: torch.Generator):
        """Random windows: x (B, T) ids and y (B, T), the next character of each position."""
        ids = self.train if split == "train" else self.val
        starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)  # (B,)
        offsets = torch.arange(block_size + 1)  # (T + 1,)
        windows = ids[starts[:, None] + offsets]  # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]


def read_text(path: str | Path) -> str:
    """Read a UTF-8 text file, or raise an InputError that says what is wrong with it."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"data file not found: {path}; pass an existing UTF-8 text file to --data")
    if not path.is_file():
        raise InputError(f"data path {path} is not a file; pass a UTF-8 text file to --data")
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


def load_dataset(cfg: DataConfig, block_size: int) -> Dataset:
    """The dataset a config asks for: ``cfg.path`` or, when empty, the built-in corpus."""
    if cfg.path:
        dataset = Dataset.from_text(read_text(cfg.path), cfg.val_fraction)
        source = f"data file {cfg.path}"
    else:
        text = corpus.generate(cfg.corpus_chars)
        dataset = Dataset.from_text(text, cfg.val_fraction, floor=corpus.ENTROPY_RATE)
        source = f"the built-in corpus ({cfg.corpus_chars} characters)"
    dataset.check_block_size(block_size, source)
    return dataset
