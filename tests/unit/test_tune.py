"""``fedrec tune``: search spaces, validation-only objective (a spy on every evaluation),
pruning, resume, parallel workers, outputs and MLflow nesting."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

import fedrec.simulation.training as sim_training
import fedrec.training.centralized as central_training
from fedrec.config import ConfigError, RunConfig, load_config
from fedrec.tune import study as tune_study
from fedrec.tune.space import Dim, apply_params, default_space, load_space
from fedrec.tune.study import tune
from tests.synthetic import tiny_config, two_taste_csv


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    return two_taste_csv(tmp_path / "syn.csv")


def _cfg(csv: Path, **top: Any) -> RunConfig:
    return RunConfig.model_validate({**tiny_config(csv, rounds=4), **top})


def _small_space() -> dict[str, Dim]:
    return {
        "federated.local.lr": Dim(low=0.05, high=1.0, log=True),
        "model.dim": Dim(choices=(4, 8)),
    }


def test_default_spaces_follow_mode_model_and_optimizer() -> None:
    fed = default_space(load_config(None, ['mode="federated"']))
    assert fed["federated.local.lr"] == Dim(low=0.5, high=32.0, log=True)  # SGD on batch means
    assert fed["federated.server_lr"] == Dim(low=0.5, high=4.0, log=True)
    assert {"federated.local.negatives", "federated.local.weight_decay", "model.dim"} <= set(fed)
    assert fed["federated.local.epochs"] == Dim(low=1, high=3, integer=True)
    adam = default_space(
        load_config(None, ['mode="federated"', 'federated.local.optimizer="adam"',
                           'federated.strategy="fedadam"'])
    )  # fmt: skip
    assert adam["federated.local.lr"] == Dim(low=1e-4, high=0.1, log=True)
    assert adam["federated.server_lr"].high == 0.3
    central = default_space(load_config(None, []))
    assert "train.lr" in central and "federated.local.lr" not in central
    dp = default_space(
        load_config(None, ['mode="federated"', 'federated.weighting="uniform"',
                           "privacy.dp.enabled=true", "privacy.dp.noise_multiplier=1.0"])
    )  # fmt: skip
    assert "privacy.dp.clip" in dp
    with pytest.raises(ConfigError, match="popularity"):
        default_space(load_config(None, ['model.name="popularity"']))


def test_space_file_overrides_extends_and_drops(tmp_path: Path) -> None:
    cfg = load_config(None, ['mode="federated"'])
    path = tmp_path / "space.toml"
    path.write_text(
        "[params]\n"
        '"federated.local.lr" = { low = 1.0, high = 16.0, log = true }\n'
        "federated.local.batch_size = { choices = [32, 64] }\n"  # unquoted dotted key
        '"federated.local.weight_decay" = false\n'
    )
    space = load_space(cfg, path)
    assert space["federated.local.lr"] == Dim(low=1.0, high=16.0, log=True)
    assert space["federated.local.batch_size"] == Dim(choices=(32, 64))
    assert "federated.local.weight_decay" not in space
    assert "model.dim" in space  # defaults kept
    path.write_text('defaults = false\n[params]\n"federated.eval_every" = { low = 1, high = 4 }\n')
    assert load_space(cfg, path) == {"federated.eval_every": Dim(low=1, high=4, integer=True)}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('"federated.local.learning_rate" = { low = 1.0, high = 2.0 }', "learning_rate"),
        ('"federated.local.lr" = { low = 2.0, high = 1.0 }', "below high"),
        ('"federated.local.lr" = { low = 0.0, high = 1.0, log = true }', "log range"),
        ('"model.dim" = { choices = [] }', "choices"),
        ('"federated.local.lr" = { low = -1.0, high = 1.0 }', "federated.local.lr"),
    ],
)
def test_bad_space_entries_name_the_key(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "space.toml"
    path.write_text(f"[params]\n{line}\n")
    with pytest.raises(ConfigError, match=message):
        load_space(load_config(None, ['mode="federated"']), path)


def test_trial_values_apply_exactly_as_set() -> None:
    base = load_config(None, ['mode="federated"'])
    params: dict[str, Any] = {"federated.local.lr": 2.5, "model.dim": 16, "data.split": "ncf"}
    with pytest.raises(ConfigError):  # validated like any config: ncf needs ml-1m
        apply_params(base, params)
    params["data.split"] = "loo-random"
    expected = load_config(
        None,
        ['mode="federated"', "federated.local.lr=2.5", "model.dim=16", 'data.split="loo-random"'],
    )
    assert apply_params(base, params) == expected


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every evaluation either trainer makes, by which rows it reads."""
    calls: list[str] = []
    for module in (sim_training, central_training):
        real: Callable[..., Any] = module.evaluate

        def spy(*a: Any, _real: Callable[..., Any] = real, **kw: Any) -> Any:
            calls.append(str(kw.get("which")))
            return _real(*a, **kw)

        monkeypatch.setattr(module, "evaluate", spy)
    return calls


@pytest.mark.parametrize("mode", ["federated", "centralized"])
def test_trials_never_read_test(
    tmp_path: Path, csv: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    calls = _spy(monkeypatch)
    cfg = _cfg(csv, mode=mode)
    space = _small_space() if mode == "federated" else {"train.lr": Dim(low=1e-3, high=0.05)}
    out = tmp_path / "study"
    summary = tune(cfg, out, trials=3, space=space, echo=lambda _: None)
    # All trials ran before the retrain of the best; test is read once, by that retrain, last.
    assert calls.count("test") == 1 and calls[-1] == "test"
    assert set(calls[:-1]) == {"valid"}
    assert summary["trials"]["total"] == 3
    for trial_dir in sorted((out / "trials").iterdir()):
        assert not (trial_dir / "per_user_test.csv").exists()
        assert "test" not in json.loads((trial_dir / "trial.json").read_text())
    best = json.loads((out / "best" / "summary.json").read_text())
    assert summary["retrained"]["test"] == best["test"]
    chosen = load_config(out / "best.toml")
    assert chosen == apply_params(cfg, summary["best"]["params"])
    frame = pd.read_csv(out / "trials.csv")
    assert summary["best"]["valid"] == pytest.approx(frame["best_valid"].max())
    assert list(frame["trial"]) == [0, 1, 2]


class _PruneTrialOne(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == 1


def test_pruned_trials_stop_at_their_first_validation(
    tmp_path: Path, csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tune_study, "_pruner", lambda cfg: _PruneTrialOne())
    cfg = _cfg(csv, mode="federated")
    tune(cfg, tmp_path / "s", trials=3, space=_small_space(), echo=lambda _: None)
    frame = pd.read_csv(tmp_path / "s" / "trials.csv").set_index("trial")
    assert list(frame["pruned"]) == [False, True, False]
    assert frame.loc[1, "steps"] == cfg.federated.eval_every  # stopped at the first evaluation
    assert frame.loc[0, "steps"] == cfg.federated.rounds
    records = (tmp_path / "s" / "trials" / "0001" / "metrics.jsonl").read_text().splitlines()
    assert len(records) == cfg.federated.eval_every


def test_resume_continues_and_nests_trials_in_mlflow(
    tmp_path: Path, csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _cfg(csv, mode="federated", tracking={"mlflow": True, "experiment": "tune-test"})
    out = tmp_path / "study"
    tune(cfg, out, trials=2, space=_small_space(), echo=lambda _: None)
    lines: list[str] = []
    summary = tune(cfg, out, trials=3, space=_small_space(), echo=lines.append)
    assert "2 of 3 trials finished" in lines[0]
    assert summary["trials"]["total"] == 3
    study = optuna.load_study(study_name=tune_study.STUDY, storage=tune_study.storage_url(out))
    points = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(points)) == 3  # the resumed sampler does not replay the first session
    for name in ("plots/optimisation_history.png", "plots/param_importances.png", "trials.md"):
        assert (out / name).stat().st_size > 1000 or name == "trials.md", name
    with pytest.raises(ConfigError, match="another configuration"):
        tune(_cfg(csv, mode="federated", seed=5), out, trials=4, space=_small_space())
    info = json.loads((out / "mlflow.json").read_text())
    client = MlflowClient(info["tracking_uri"])
    runs = client.search_runs([info["experiment_id"]])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == info["run_id"]]
    trials = sorted(r.info.run_name for r in children if r.info.run_name != "best")
    assert trials == ["trial 0", "trial 1", "trial 2"]
    best = [r for r in children if r.info.run_name == "best"]  # one per session that retrained
    assert 1 <= len(best) <= 2 and all("test/HR_at_5" in r.data.metrics for r in best)
    parent = client.get_run(info["run_id"])
    assert parent.data.metrics["trials"] == 3
    assert {"tune.json", "trials.csv", "best.toml"} <= {
        a.path for a in client.list_artifacts(info["run_id"])
    }


@pytest.mark.slow
def test_parallel_workers_share_one_study(tmp_path: Path, csv: Path) -> None:
    cfg = _cfg(csv, mode="federated", threads=2)
    summary = tune(cfg, tmp_path / "s", trials=2, space=_small_space(), jobs=2)
    assert summary["trials"]["total"] == 2 and summary["jobs"] == 2
    assert load_config(tmp_path / "s" / "trials" / "0000" / "config.toml").threads == 1


def test_dp_study_reports_its_trial_count(tmp_path: Path, csv: Path) -> None:
    raw = tiny_config(csv, rounds=4)
    raw["federated"]["weighting"] = "uniform"
    raw["privacy"] = {"dp": {"enabled": True, "noise_multiplier": 0.5, "clip": 1.0}}
    cfg = RunConfig.model_validate(raw)
    summary = tune(cfg, tmp_path / "s", trials=2, space=_small_space(), echo=lambda _: None)
    assert summary["privacy"]["trials_on_private_data"] == 2
    assert "Papernot" in summary["privacy"]["note"]
    assert summary["privacy"]["epsilon_of_best_run"] > 0


def test_cli_tune_with_a_space_file(tmp_path: Path, csv: Path) -> None:
    import tomli_w
    from typer.testing import CliRunner

    from fedrec.cli.main import app

    config = tmp_path / "c.toml"
    config.write_text(tomli_w.dumps(tiny_config(csv, rounds=2)))
    space = tmp_path / "space.toml"
    space.write_text('defaults = false\n[params]\n"model.dim" = { choices = [4, 8] }\n')
    args = ["tune", str(config), "--trials", "2", "--space", str(space), "--out"]
    result = CliRunner().invoke(app, [*args, str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "trial 0" in text and "trial 1" in text and "best trial" in text
    assert set(pd.read_csv(tmp_path / "s" / "trials.csv")["param:model.dim"]) <= {4, 8}
    space.write_text('[params]\n"model.size" = { choices = [4, 8] }\n')
    result = CliRunner().invoke(app, [*args, str(tmp_path / "t")])
    assert result.exit_code == 2 and "model.size" in result.output
