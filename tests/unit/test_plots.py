from pathlib import Path

import pytest

from fedrec.report.plots import plot_learning_curves

PNG = b"\x89PNG\r\n\x1a\n"


def test_federated_history_gives_one_png_per_curve_and_a_panel(tmp_path: Path) -> None:
    history = [{"round": r, "loss": 1.0 / r} for r in range(1, 11)]
    for r in (5, 10):
        history[r - 1].update({"valid/HR@10": 0.1 * r, "valid/NDCG@10": 0.05 * r})
    written = plot_learning_curves(history, tmp_path, x_key="round")
    names = sorted(p.name for p in written)
    assert names == ["learning_curves.png", "loss.png", "valid_HR10.png", "valid_NDCG10.png"]
    for p in written:
        assert p.read_bytes()[:8] == PNG
    assert not list(tmp_path.glob(".*.tmp"))


def test_centralized_history_uses_epochs_and_skips_absent_curves(tmp_path: Path) -> None:
    history = [{"epoch": e, "train_loss": 0.5, "valid/HR@10": float("nan")} for e in (1, 2)]
    names = sorted(p.name for p in plot_learning_curves(history, tmp_path, x_key="epoch"))
    assert names == ["learning_curves.png", "train_loss.png"]


def test_empty_history_writes_nothing_and_bad_axis_is_refused(tmp_path: Path) -> None:
    assert plot_learning_curves([], tmp_path) == []
    with pytest.raises(ValueError, match="x_key"):
        plot_learning_curves([], tmp_path, x_key="step")
