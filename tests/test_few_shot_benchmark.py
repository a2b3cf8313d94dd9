"""benchmarks/few_shot.py's table arithmetic: --merge pools the seeds of several runs (mean and sample std
recomputed, seeds in order) and --timings takes the s / step column from another run, never a loaded one."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def few_shot():
    spec = importlib.util.spec_from_file_location("few_shot_benchmark", REPO / "benchmarks" / "few_shot.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(folder: Path, seeds: str, rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"argv": ["--seeds", seeds], "results": rows}))
    return folder


def _row(method: str, accuracies: list[float], step: float, peak: float) -> dict:
    return {"method": method, "label": method, "trainable_parameters": 10, "test_accuracy": {},
            "per_seed": accuracies, "seconds_per_step": step, "peak_rss_mb": peak}


def test_merge_pools_seeds_and_timings_come_from_the_timing_run(few_shot, tmp_path):
    a = _run(tmp_path / "a", "42,13", [_row("head", [0.7, 0.5], 9.0, 900.0), _row("lora", [0.6, 0.62], 5.0, 600.0)])
    b = _run(tmp_path / "b", "21", [_row("head", [0.6], 11.0, 950.0)])
    rows = {r["method"]: r for r in few_shot.merge([a, b])}
    head = rows["head"]
    assert head["seeds"] == [13, 21, 42] and head["per_seed"] == [0.5, 0.6, 0.7]
    assert head["test_accuracy"]["n"] == 3
    assert head["test_accuracy"]["mean"] == pytest.approx(0.6, abs=1e-12)
    assert head["test_accuracy"]["std"] == pytest.approx(statistics.stdev([0.5, 0.6, 0.7]), abs=1e-12)
    assert head["peak_rss_mb"] == 950.0 and head["seconds_per_step"] == pytest.approx(10.0)

    quiet = _run(tmp_path / "quiet", "13", [_row("head", [0.5], 0.57, 880.0)])
    timed = {r["method"]: r for r in few_shot.with_timings(list(rows.values()), [quiet])}
    assert timed["head"]["seconds_per_step"] == 0.57
    assert timed["lora"]["seconds_per_step"] is None  # not timed quietly: no loaded time shown instead
    table = few_shot.table(list(timed.values()))
    assert "| head | 10 | 0.600 ± 0.100 (3) | 0.500 0.600 0.700 | 950 | 0.57 |" in table
    assert table.splitlines()[-1].endswith("| 600 | – |")


def test_every_method_reruns_into_the_same_folder(few_shot, tmp_path):
    """Each method's command replaces an earlier run in its --out (without --overwrite a second run of
    a README command stopped at its first seed: 'already holds a finished run')."""
    import argparse

    args = argparse.Namespace(mlm_model="m", model="m", shots=16, seeds="13", epochs=1, max_length=64)
    data = {split: tmp_path / f"{split}.jsonl" for split in ("train", "dev", "test")}
    for name, method in few_shot.METHODS.items():
        if name == "zero-shot":
            continue
        cmd = few_shot.command(method, args, data, tmp_path / name)
        assert "--out" in cmd and "--overwrite" in cmd, name
