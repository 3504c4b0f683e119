from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedrec.config import ConfigError, RunConfig, apply_overrides, dump_config, load_config


def test_defaults_round_trip_through_toml(tmp_path: Path) -> None:
    cfg = RunConfig()
    path = tmp_path / "c.toml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_overrides_parse_toml_values() -> None:
    raw = apply_overrides(
        {}, ["train.lr=0.01", "model.mlp_layers=[64, 32]", "data.name=ml-1m", "data.implicit=false"]
    )
    assert raw == {
        "train": {"lr": 0.01},
        "model": {"mlp_layers": [64, 32]},
        "data": {"name": "ml-1m", "implicit": False},
    }


def test_override_replaces_file_value(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("seed = 3\n[train]\nepochs = 7\n")
    cfg = load_config(path, ["train.epochs=2"])
    assert cfg.seed == 3 and cfg.train.epochs == 2


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[train]\nepoch = 3\n", "epoch"),  # typo'd key is refused, not ignored
        ("[train]\nlr = -1\n", "lr"),
        ("[model]\nname = 'transformer'\n", "model.name"),
        ("[data]\nname = 'ml-100k'\nsplit = 'ncf'\n", "ncf"),
        ("[data]\nimplicit = false\n", "mse"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_config(path)


def test_missing_file_and_malformed_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(None, ["seed=1", "seed.x=2"])


def test_dump_is_valid_toml_without_nulls() -> None:
    parsed = tomllib.loads(dump_config(RunConfig()))
    assert "dir" not in parsed["data"]  # None is omitted rather than written as a string
    assert parsed["train"]["loss"] == "bce"


def test_shipped_configs_are_valid() -> None:
    configs = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.toml"))
    assert configs, "configs/ is empty"
    for path in configs:
        load_config(path)


def test_protected_uploads_carry_per_row_counts_only_for_per_row_averaging() -> None:
    dp = ["mode='federated'", "privacy.dp.enabled=true", "privacy.dp.noise_multiplier=1.0"]
    dp += ["federated.weighting='uniform'", "privacy.dp.count_scale=0.25"]
    per_row = RunConfig.model_validate(apply_overrides({}, dp))
    assert per_row.upload_count_scale == 0.25
    public = RunConfig.model_validate(
        apply_overrides({}, [*dp, "federated.item_aggregation='fedavg'"])
    )
    assert public.upload_count_scale is None
