"""Text to token ids and back: characters, or a byte-level BPE trained with Hugging Face ``tokenizers``.

    tokenizer = CharTokenizer.from_text(train_text)            # one id per distinct character
    tokenizer = BpeTokenizer.train(train_text, vocab_size)      # byte-level BPE, offline, seconds
    ids = tokenizer.encode(text)                                # (n_tokens,) int64
    text = tokenizer.decode(ids)

Both have ``vocab``: a string that identifies the tokenizer, stored in checkpoints so a run
resumes only with the tokenizer it was trained with. A character tokenizer's ``vocab`` is its
characters in id order; a BPE tokenizer's is ``"bpe:"`` and the SHA-256 of its JSON file, which
``save`` writes into the run folder (``tokenizer.json``, loadable by ``tokenizers.Tokenizer`` and
``transformers.PreTrainedTokenizerFast(tokenizer_file=...)``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from hybrid.checkpoint import atomic_write
from hybrid.errors import InputError

BYTE_ALPHABET = 256  # a byte-level BPE starts from every byte, so it can encode any text


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


class BpeTokenizer:
    """A byte-level BPE (GPT-2's pre-tokenization): any text encodes, ids decode back to it exactly."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.json = tokenizer.to_str()
        self.vocab = "bpe:" + hashlib.sha256(self.json.encode()).hexdigest()

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BpeTokenizer:
        """Learn ``vocab_size`` tokens (the 256 bytes and merges) from ``text``, deterministically.

        Raises:
            InputError: ``text`` has too few distinct byte pairs for ``vocab_size`` tokens.
        """
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=1, show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )  # fmt: skip
        tokenizer.train_from_iterator(_lines(text), trainer=trainer, length=None)
        if tokenizer.get_vocab_size() < vocab_size:
            raise InputError(
                f"data.vocab_size={vocab_size} is more than the training text allows "
                f"({tokenizer.get_vocab_size()} tokens: it has no more pairs to merge); lower data.vocab_size"
            )
        return cls(tokenizer)

    @classmethod
    def load(cls, path: str | Path) -> BpeTokenizer:
        """The tokenizer saved at ``path`` (a ``tokenizer.json``)."""
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as error:  # tokenizers raises a bare Exception on a malformed file
            raise InputError(f"{path} is not a tokenizer file ({str(error)[:80]}); delete it or restore it") from None

    def save(self, path: str | Path) -> None:
        """Write ``tokenizer.json`` atomically."""
        atomic_write(path, lambda file: file.write(self.json.encode()))

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> torch.Tensor:
        """(n_tokens,) int64 ids."""
        return torch.tensor(self.tokenizer.encode(text).ids, dtype=torch.long)

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


def _lines(text: str, chunk: int = 1 << 16):
    """``text`` in pieces for the trainer, cut after newlines so no word is split."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + chunk)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end
