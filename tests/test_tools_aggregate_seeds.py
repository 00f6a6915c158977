"""tools/aggregate_seeds.py never averages results of different weights: one table per weights
(told apart by the fingerprint each result records, or by MODEL.WEIGHTS / the run folder in
older files); two files with different numbers for one (weights, dataset, K, seed) stop the tool
with one line naming both."""

import json

import pytest

from .common import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("aggregate_seeds")


def _write(root, run, seed, ap, **fields):
    d = root / run / "inference" / "toy_val"
    d.mkdir(parents=True, exist_ok=True)
    record = {"dataset": "toy_val", "k_shot": 3, "seed": seed, "metrics": {"bbox": {"AP": ap}}}
    record.update(fields)
    path = d / f"fsod_metrics_3shot_seed{seed}.json"
    path.write_text(json.dumps(record))
    return path


def test_results_of_different_weights_are_not_merged(tool, tmp_path):
    # two trainings evaluated during training (MODEL.WEIGHTS is the initial weights: "")
    for seed, ap in enumerate([10.0, 12.0]):
        _write(tmp_path, "run_a", seed, ap, weights="", weights_fingerprint="a" * 40)
    for seed, ap in enumerate([30.0, 34.0, 38.0]):
        _write(tmp_path, "run_b", seed, ap, weights="", weights_fingerprint="b" * 40)
    rows = tool.main([str(tmp_path)])
    assert len(rows) == 2
    by_seeds = {len(r["seeds"]): r for r in rows}
    assert by_seeds[2]["AP"]["mean"] == pytest.approx(11.0)
    assert by_seeds[3]["AP"]["mean"] == pytest.approx(34.0)
    assert by_seeds[3]["AP"]["std"] == pytest.approx(4.0)
    assert "run_b" in by_seeds[3]["weights"] and "bbbbbbbbbbbb" in by_seeds[3]["weights"]
    assert all("run_a" in f for f in by_seeds[2]["files"])


def test_one_model_evaluated_into_several_folders_is_one_row(tool, tmp_path):
    """Same fingerprint (or, in files without one, the same MODEL.WEIGHTS) = same weights."""
    for seed, ap in enumerate([10.0, 12.0, 14.0]):
        _write(tmp_path / "fp", f"eval{seed}", seed, ap, weights="w.pth", weights_fingerprint="c")
        _write(tmp_path / "old", f"eval{seed}", seed, ap, weights="w.pth")
    for folder in ("fp", "old"):
        (row,) = tool.main([str(tmp_path / folder)])
        assert row["seeds"] == [0, 1, 2] and row["AP"]["mean"] == pytest.approx(12.0)
    # older files of trainings evaluated in their own run: one row per run folder
    for run in ("x", "y"):
        _write(tmp_path / "legacy", run, 0, 1.0)
    assert len(tool.main([str(tmp_path / "legacy")])) == 2


def test_conflicting_copies_stop_the_tool_naming_both_files(tool, tmp_path):
    first = _write(tmp_path, "a", 0, 10.0, weights="w.pth", weights_fingerprint="d")
    _write(tmp_path, "b", 0, 10.0, weights="w.pth", weights_fingerprint="d")  # same numbers
    (row,) = tool.main([str(tmp_path)])
    assert row["seeds"] == [0]
    second = _write(tmp_path, "c", 0, 11.0, weights="w.pth", weights_fingerprint="d")
    with pytest.raises(SystemExit) as e:
        tool.main([str(tmp_path)])
    msg = e.value.code
    assert msg.startswith("aggregate_seeds.py: error: ") and "\n" not in msg
    assert str(first) in msg and str(second) in msg and "seed 0" in msg


def test_unreadable_or_foreign_files_and_no_files(tool, tmp_path):
    bad = _write(tmp_path, "a", 0, 1.0)
    bad.write_text('{"dataset": ')
    with pytest.raises(SystemExit) as e:
        tool.main([str(tmp_path)])
    assert e.value.code.startswith(f"aggregate_seeds.py: error: {bad}: not valid JSON")
    bad.write_text('{"dataset": "x"}')
    with pytest.raises(SystemExit) as e:
        tool.main([str(bad)])
    assert "is not a result of tools/train_net.py" in e.value.code
    with pytest.raises(SystemExit) as e:
        tool.main([str(tmp_path / "nothing_here")])
    assert e.value.code.startswith("aggregate_seeds.py: error: no fsod_metrics_*shot_seed*.json")
