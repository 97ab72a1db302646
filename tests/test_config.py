"""Tests for hybrid/config.py: TOML round trip, overrides, and errors that name the key."""

import pytest

from hybrid.config import Config, apply_overrides, load_config, save_config, validate
from hybrid.errors import InputError


def test_toml_round_trip(tmp_path):
    cfg = apply_overrides(Config(), {"model.n_embd": 48, "circuit.name": "data_reuploading", "optim.lr": 1e-3})
    save_config(cfg, tmp_path / "c.toml")
    assert load_config(tmp_path / "c.toml") == cfg


def test_overrides_parse_text_by_field_type():
    cfg = apply_overrides(
        Config(), {"train.steps": "60", "optim.lr": "2e-3", "model.quantum": "none", "optim.grad_clip": 0}
    )
    assert cfg.train.steps == 60 and cfg.optim.lr == 2e-3 and cfg.model.quantum == "none"
    assert isinstance(cfg.optim.grad_clip, float)
    assert Config().train.steps != 60  # the defaults are untouched


def test_unknown_key_lists_the_section_keys(tmp_path):
    (tmp_path / "c.toml").write_text("[model]\nn_embed = 3\n")
    with pytest.raises(
        InputError, match=r"unknown config key 'model.n_embed' in .*c.toml; keys of \[model\]: block_size"
    ):
        load_config(tmp_path / "c.toml")


def test_unknown_section(tmp_path):
    (tmp_path / "c.toml").write_text("[modle]\nn_embd = 3\n")
    with pytest.raises(InputError, match=r"unknown config section \[modle\]"):
        load_config(tmp_path / "c.toml")


@pytest.mark.parametrize(
    "key, value", [("train.steps", "ten"), ("train.steps", 2.5), ("model.quantum", 3), ("train.seed", True)]
)
def test_wrong_types_name_the_key(key, value):
    with pytest.raises(InputError, match=f"{key} in overrides must be"):
        apply_overrides(Config(), {key: value})


def test_invalid_toml_and_missing_file(tmp_path):
    (tmp_path / "bad.toml").write_text("[model\n")
    with pytest.raises(InputError, match="is not valid TOML"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.n_embd": 30, "model.n_head": 4}, "must be a multiple of model.n_head"),
        ({"model.quantum": "tail"}, "model.quantum must be one of head, ffn, none"),
        ({"train.steps": 0}, "train.steps must be at least 1"),
        ({"data.val_fraction": 1.0}, "strictly between 0 and 1"),
        ({"train.device": "tpu"}, "train.device must be cpu, cuda or cuda:N"),
    ],
)
def test_validate_names_the_problem(overrides, message):
    with pytest.raises(InputError, match=message):
        validate(apply_overrides(Config(), overrides))
