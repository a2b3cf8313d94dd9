"""The benchmarks' own machinery: `make bench-smoke` covers every benchmarks/*.py, each of them takes
--smoke, the smoke data stands in for ../shared/data, and the timing helper rotates the order.

The smoke runs themselves are `make bench-smoke` (run by `make test` after this suite); these tests
are what keeps a new benchmark from being left out of it: a script without --smoke, or a Makefile
whose bench-smoke lists scripts by hand and forgets one, fails here.
"""

import ast
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the scripts import each other by module name, as when run


def scripts() -> list[str]:
    """Every benchmark: benchmarks/*.py, except the helpers named _*.py."""
    return sorted(f"benchmarks/{p.name}" for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


def smoke_flag(path) -> bool:
    """Whether the script's argument parser declares --smoke (an add_argument("--smoke", ...) call)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument" and node.args \
                and isinstance(node.args[0], ast.Constant) and node.args[0].value == "--smoke":
            return True
    return False


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_bench_smoke_runs_every_benchmark():
    listed = subprocess.run(["make", "-s", "--no-print-directory", "bench-list"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split()
    assert listed == scripts(), f"make bench-smoke runs {listed}, benchmarks/ holds {scripts()}"
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    recipe = makefile.split("\nbench-smoke:", 1)[1].split("\n\n", 1)[0]
    assert "for script in $(BENCHMARKS)" in recipe and "$$script --smoke" in recipe, recipe
    test_recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "bench-smoke" in test_recipe, f"make test does not run bench-smoke:\n{test_recipe}"


@pytest.mark.parametrize("script", scripts())
def test_every_benchmark_takes_smoke(script):
    assert smoke_flag(REPO / script), f"{script} declares no --smoke option; make bench-smoke runs it with one"


def test_smoke_flag_detection_can_fail(tmp_path):
    (tmp_path / "x.py").write_text('p.add_argument("--smok", action="store_true")\n', encoding="utf-8")
    assert not smoke_flag(tmp_path / "x.py")


def test_smoke_data_without_shared_data(tmp_path, monkeypatch):
    """Without ../shared/data the smoke data comes from the demo set and lessons/fixtures, in the
    public files' formats, with every class present where a classifier needs two."""
    import _smoke

    monkeypatch.setattr(_smoke, "SHARED", tmp_path / "absent")
    minbert = _smoke.minbert(tmp_path / "minbert")
    # SST-5's labels 1 and 3 (negative, positive): few_shot.py's SST-2 mapping keeps both classes
    for name, labels in (("sst", {"1", "3"}), ("cfimdb", {"0", "1"})):
        for split in ("train", "dev"):
            lines = (minbert / f"{name}-{split}.txt").read_text(encoding="utf-8").splitlines()
            assert len(lines) == 24 and all("|||" in line for line in lines)
            assert {line.partition("|||")[0].strip() for line in lines} == labels, (name, split)
    test_labels = {line.partition("|||")[0].strip()
                   for line in (minbert / "cfimdb-test.txt").read_text(encoding="utf-8").splitlines()}
    assert test_labels == {"0"}  # CFIMDB's placeholder test labels, as in the public file
    wnut = _smoke.wnut17(tmp_path / "wnut")
    for split in ("train", "dev", "test"):
        first = (wnut / f"{split}.conll").read_text(encoding="utf-8").splitlines()[0]
        assert len(first.split("\t")) == 2, first
    text = _smoke.text(tmp_path / "text")
    assert len((text / "text" / "tinystories_sample.txt").read_text(encoding="utf-8").splitlines()) == 25
    assert (text / "gpt2" / "merges.txt").is_file() and (text / "gpt2" / "vocab.json").is_file()


def test_every_label_takes_classes_in_turn():
    import _smoke

    lines = [f"{label} ||| t{i}" for i, label in enumerate("2223334410")]
    assert _smoke.every_label(lines, 5) == ["0 ||| t9", "1 ||| t8", "2 ||| t0", "3 ||| t3", "4 ||| t6"]


def test_time_rotated_puts_every_side_first_equally_often():
    from bert_vs_transformers import spread, time_rotated

    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    seconds = time_rotated(fns, steps=6, warmup=1, repeats=3)
    assert {k: len(v) for k, v in seconds.items()} == {"a": 3, "b": 3, "c": 3}  # one median per repeat
    rounds = [calls[i:i + 3] for i in range(3, len(calls), 3)]  # after the warm-up round
    assert len(rounds) == 18 and all(sorted(r) == ["a", "b", "c"] for r in rounds)
    firsts = [r[0] for r in rounds]
    assert {k: firsts.count(k) for k in "abc"} == {"a": 6, "b": 6, "c": 6}
    assert spread([3.0, 1.0, 2.0]) == "2.000 [1.000-3.000]"


def test_machine_line_names_the_cpu():
    import torch
    from bert_vs_transformers import machine_line

    line = machine_line(torch.device("cpu"))
    assert torch.backends.cpu.get_cpu_capability() in line and torch.__version__ in line
    assert f"{torch.get_num_threads()} threads" in line


def _ablation_record(name: str, seed: int, before: float, epochs: list[float], **settings) -> dict:
    import ablation

    return {"row": ablation.ROWS[name].label, "seed": seed, "command": f"cmd {name} {seed}", "lr": 1e-3,
            "trainable": [770, 22_000_000], "steps": 2, "before": before, "epochs": epochs,
            "best": max(epochs), "train_seconds": 1.0, "wall_seconds": 1.0,
            "settings": {"epochs": len(epochs), "max_length": 128, "batch_size": 32, "max_steps": None,
                         "data": "d", **settings}}


def test_ablation_merge_pools_the_runs_of_several_commands(tmp_path, capsys):
    """Rows run by two commands into one folder make one table, rows in the script's order and seeds
    ascending; rows with other seeds or other settings are refused, not averaged together."""
    import json
    import statistics

    import ablation

    for name, seed, before, epochs in [("lora", 43, 0.5, [0.6, 0.7]), ("head-only", 43, 0.4, [0.5, 0.52]),
                                       ("lora", 42, 0.3, [0.62, 0.66]), ("head-only", 42, 0.45, [0.5, 0.55])]:
        record = _ablation_record(name, seed, before, epochs)
        (tmp_path / f"{name}-seed{seed}.json").write_text(json.dumps(record))
    results, seeds, settings = ablation.merge(tmp_path)
    assert seeds == [42, 43] and list(results) == ["head-only", "lora"] and settings["max_length"] == 128
    assert [r["seed"] for r in results["lora"]] == [42, 43]
    ablation.print_table(results, seeds, settings)
    out = capsys.readouterr().out
    lora = next(line for line in out.splitlines() if line.startswith("| LoRA"))
    assert f"{statistics.mean([0.66, 0.7]):.3f} ± {statistics.stdev([0.66, 0.7]):.3f}" in lora  # best epoch
    assert "cmd head-only 42" in out and "n = 2 seeds (42, 43)" in out

    (tmp_path / "lora-seed43.json").unlink()
    with pytest.raises(SystemExit, match="row lora has seeds \\[42\\], another row has \\[42, 43\\]"):
        ablation.merge(tmp_path)
    (tmp_path / "lora-seed43.json").write_text(json.dumps(_ablation_record("lora", 43, 0.5, [0.6, 0.7],
                                                                           max_length=64)))
    with pytest.raises(SystemExit, match="row lora, seed 43, was run with"):
        ablation.merge(tmp_path)
    with pytest.raises(SystemExit, match="no results"):
        ablation.merge(tmp_path / "empty")


def test_real_data_merge_pools_the_libraries_run_apart(tmp_path):
    """`--libs minift` and `--libs transformers` run as two commands make one table per dataset; a library
    missing a seed, or run with other settings, is refused."""
    import json

    import real_data

    def write(lib: str, seed: int, dev: float, epochs: int = 3) -> None:
        record = {"dataset": "cfimdb", "lib": lib, "seed": seed, "before": 0.5, "epochs": [dev] * 2, "test": None,
                  "chosen_epoch": 1, "seconds": 1.0,
                  "settings": {"epochs": epochs, "max_steps": None, "smoke": False, "data": "d"}}
        (tmp_path / f"cfimdb-{lib}-seed{seed}.json").write_text(json.dumps(record))

    for lib, seed, dev in [("transformers", 43, 0.8), ("minift", 43, 0.9), ("transformers", 42, 0.7),
                           ("minift", 42, 0.85)]:
        write(lib, seed, dev)
    rows, seeds, smoke = real_data.merge(tmp_path)["cfimdb"]
    assert seeds == [42, 43] and list(rows) == ["minift", "transformers"] and not smoke
    text = real_data.table("cfimdb", rows, seeds)
    assert "| transformers | 0.500 ± 0.000 | 0.750 ± 0.071 |" in text and "n = 2 seeds (42, 43)" in text
    (tmp_path / "cfimdb-minift-seed43.json").unlink()
    with pytest.raises(SystemExit, match="has seeds \\[42\\], another library has \\[42, 43\\]|has seeds \\[42, 43\\], another library has \\[42\\]"):
        real_data.merge(tmp_path)
    write("minift", 43, 0.9, epochs=2)
    with pytest.raises(SystemExit, match="was run with"):
        real_data.merge(tmp_path)


def test_gpt2_tasks_reruns_into_the_same_folder(tmp_path, monkeypatch, capsys):
    """Every stage's command passes --overwrite with its --out, so the benchmark can be run a second time
    (a rerun used to stop at the causal-LM stage: 'already holds a finished run')."""
    import argparse
    import json

    import gpt2_tasks

    calls = []
    fake = {"dev_perplexity_before": 2.0, "dev_perplexity": 1.0, "dev_accuracy_before": 0.5, "dev_accuracy": 0.6}
    monkeypatch.setattr(gpt2_tasks, "minift", lambda *a: (calls.append([str(x) for x in a]) or fake, 1.0))
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "tinystories_sample.txt").write_text("".join(f"line {i}\n" for i in range(25)))
    args = argparse.Namespace(smoke=False, out=tmp_path / "runs", pretrain_steps=3, lm_epochs=1, cls_epochs=1,
                              cls_max_length=32)
    gpt2_tasks.run_seed(7, args, tmp_path)
    assert len(calls) == 3
    for call in calls:
        assert "--out" in call and "--overwrite" in call, call
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # the per-seed line
    assert line["seed"] == 7 and line["cls_dev_accuracy"] == [0.5, 0.6] and line["seconds"] == [1.0] * 3
