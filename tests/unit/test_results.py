import json
from pathlib import Path

from fedrec.report.results import merge_rows, write_results


def test_write_results_puts_the_machine_beside_the_figures(tmp_path: Path) -> None:
    write_results(tmp_path / "r", "bench", {"x": 1}, "| a |\n", {"cpu": "test"})
    assert json.loads((tmp_path / "r" / "bench.json").read_text()) == {
        "x": 1,
        "machine": {"cpu": "test"},
    }
    assert (tmp_path / "r" / "bench.md").read_text() == "| a |\n"


def test_merge_rows_updates_measured_rows_and_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    assert merge_rows(path, [{"k": "b", "v": 1}], lambda r: r["k"], ["a", "b"]) == [
        {"k": "b", "v": 1}
    ]
    path.write_text(json.dumps({"rows": [{"k": "a", "v": 0}, {"k": "b", "v": 1}]}))
    merged = merge_rows(
        path, [{"k": "b", "v": 2}, {"k": "z", "v": 9}], lambda r: r["k"], ["b", "a"]
    )
    assert merged == [{"k": "b", "v": 2}, {"k": "a", "v": 0}]  # order given; unknown keys out
