"""Tests for hybrid/corpus.py and hybrid/data.py."""

import numpy as np
import pytest
import torch

from hybrid import corpus
from hybrid.config import DataConfig
from hybrid.data import CharTokenizer, Dataset, load_dataset, read_text
from hybrid.errors import InputError


def test_corpus_is_deterministic_and_starts_sentences():
    a, b = corpus.generate(5000), corpus.generate(5000)
    assert a == b and len(a) == 5000
    assert corpus.generate(5000, seed=1) != a
    assert a.split(" ")[0] in corpus.WORDS["DET"][0]


def test_entropy_rate_matches_the_empirical_code_length():
    """-log P(text) / len(text) under the true source converges to the analytic rate."""
    text = corpus.generate(300_000, seed=11)
    words = text.replace(".\n", ". ").split(" ")[:-1]
    category = {w: c for c, (ws, _) in corpus.WORDS.items() for w in ws}
    emit = {w: p for _, (ws, ps) in corpus.WORDS.items() for w, p in zip(ws, ps, strict=True)}
    pairs = zip(words, words[1:], strict=False)
    log_p = sum(np.log(corpus.TRANSITIONS[category[a]][category[b]] * emit[b]) for a, b in pairs)
    n_chars = sum(len(corpus.spell(w)) for w in words[1:])
    assert abs(-log_p / n_chars - corpus.ENTROPY_RATE) < 0.005
    assert 0.4 < corpus.ENTROPY_RATE < 0.5


def test_tokenizer_round_trip_and_unknown_characters():
    tok = CharTokenizer.from_text("hello world")
    assert tok.decode(tok.encode("low droll")) == "low droll"
    with pytest.raises(InputError, match=r"characters \['z'\] are not in the model's vocabulary"):
        tok.encode("lozz")


def test_batches_are_next_character_windows():
    ds = Dataset.from_text("abcdefghijklmnopqrstuvwxyz" * 4, val_fraction=0.25)
    x, y = ds.batch("train", 5, 6, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 6)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal((y - x) % 26, torch.ones_like(x))


def test_builtin_dataset_knows_its_floor():
    ds = load_dataset(DataConfig(corpus_chars=10_000), block_size=16)
    assert ds.floor == corpus.ENTROPY_RATE
    assert len(ds.val) == 1000 and len(ds.train) == 9000


def test_text_file_dataset(tmp_path):
    (tmp_path / "t.txt").write_text("to be or not to be, that is the question\n" * 20, encoding="utf-8")
    ds = load_dataset(DataConfig(path=str(tmp_path / "t.txt")), block_size=16)
    assert ds.floor is None and "q" in ds.tokenizer.ids


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "data file not found: .*; pass an existing UTF-8 text file to --data"),
        (b"", "is empty; pass a file with some text in it"),
        (b"  \n\n ", "is empty"),
        (b"caf\xe9 latin-1", r"is not UTF-8 text \(byte 0xe9 at offset 3\); convert it to UTF-8"),
        (b"\x00\x01\x02binary", "looks binary"),
    ],
)
def test_bad_data_files_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_text(path)


def test_too_short_for_the_block_size(tmp_path):
    (tmp_path / "t.txt").write_text("short text")
    with pytest.raises(InputError, match="is too short: .* model.block_size=32 needs 33"):
        load_dataset(DataConfig(path=str(tmp_path / "t.txt")), block_size=32)
