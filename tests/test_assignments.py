"""minift/assignments: every starter fails every item, the reference passes every item, and seeded bugs
fail the right item with a message that names the mistake. Grading reads only the fixtures."""

import importlib
import inspect
import json
import shutil
import sys

import pytest

from minift.assignments import ASSIGNMENTS, check, make
from minift.assignments.starter import module_path

REQUIRED = ("functional", "attention", "bert-layer", "cross-entropy", "adamw", "schedules", "wordpiece", "bpe",
            "lora", "sampling")


def test_the_assignments_the_course_promises():
    assert set(REQUIRED) <= set(ASSIGNMENTS)


@pytest.mark.parametrize("name", sorted(ASSIGNMENTS))
def test_each_assignment_is_handed_out_from_its_lesson(name):
    """The lesson that teaches an assignment says how to make and check it, under '## Assignment'."""
    from conftest import REPO
    text = (REPO / ASSIGNMENTS[name].lesson).read_text(encoding="utf-8")
    assert "\n## Assignment\n" in text, f"{ASSIGNMENTS[name].lesson} has no '## Assignment' section"
    section = text.split("\n## Assignment\n", 1)[1].split("\n## ", 1)[0]
    for command in (f"minift assignment make {name} ", f"minift assignment check hw-{name}"):
        assert command in section, f"{ASSIGNMENTS[name].lesson}: its Assignment section lacks {command!r}"


def _solution(name, out):
    """Put the installed (reference) files where the student's go."""
    for dotted in ASSIGNMENTS[name].modules:
        shutil.copy(inspect.getsourcefile(importlib.import_module(dotted)), out / module_path(dotted))


@pytest.mark.parametrize("name", REQUIRED)
def test_starter_fails_every_item_and_the_reference_passes_every_item(tmp_path, name):
    out = tmp_path / name
    make(name, out)
    assignment = ASSIGNMENTS[name]
    files = json.loads((out / "assignment.json").read_text())["files"]
    assert files == [str(module_path(m)) for m in assignment.modules]
    for f in files:  # each body to write is gone, and says what to write
        text = (out / f).read_text()
        assert text.count("raise NotImplementedError(") >= sum(t.module.replace(".", "/") + ".py" == f
                                                              for t in assignment.targets)
        assert "# TODO: " in text
    results = check(out)
    assert [r.item for r in results] == [i.name for i in assignment.items]
    assert not any(r.ok for r in results), [r.line() for r in results]
    _solution(name, out)
    results = check(out)
    assert all(r.ok for r in results), [r.line() for r in results if not r.ok]


def _seed(tmp_path, name, old, new):
    out = tmp_path / name
    make(name, out)
    _solution(name, out)
    (path,) = [out / module_path(m) for m in ASSIGNMENTS[name].modules]
    text = path.read_text()
    assert old in text, f"the seeded bug's anchor is gone from {path.name}"
    path.write_text(text.replace(old, new))
    return {r.item: r for r in check(out)}


def test_missing_sqrt_d_fails_attention_and_says_so(tmp_path):
    results = _seed(tmp_path, "attention", "(q * (1.0 / math.sqrt(q.shape[-1])))", "q")
    assert results["heads"].ok and results["padding-mask"].ok and results["causal-mask"].ok
    for item in ("attention", "attention-causal"):
        assert not results[item].ok
        assert "1/sqrt(d)" in results[item].message, results[item].line()
    assert not results["attention-backward"].ok


def test_coupled_weight_decay_fails_adamw_and_says_so(tmp_path):
    results = _seed(tmp_path, "adamw", "        if wd != 0:\n            p.mul_(1 - lr * wd)\n",
                    "        if wd != 0:\n            grad = grad + wd * p\n")
    assert results["adam"].ok  # without weight decay the two are the same
    assert not results["decoupled-decay"].ok
    assert "coupled" in results["decoupled-decay"].message, results["decoupled-decay"].line()


def test_warmup_off_by_one_fails_schedules_and_says_so(tmp_path):
    results = _seed(tmp_path, "schedules", "return max_lr * step / warmup_steps",
                    "return max_lr * (step + 1) / warmup_steps")
    for item in ("linear", "cosine"):
        assert not results[item].ok
        assert "off by one" in results[item].message, results[item].line()


def test_missing_lora_scaling_says_so(tmp_path):
    results = _seed(tmp_path, "lora", "return y + self.scaling * update", "return y + update")
    assert not results["forward"].ok and "alpha / r" in results["forward"].message


def test_a_file_that_does_not_import_fails_its_items_with_the_reason(tmp_path):
    out = tmp_path / "sampling"
    make("sampling", out)
    (out / "minift" / "generate.py").write_text("def top_k_filter(:\n")
    results = check(out)
    assert not any(r.ok for r in results)
    assert "does not import: SyntaxError" in results[0].message


def test_grading_needs_no_transformers(tmp_path, monkeypatch):
    out = tmp_path / "functional"
    make("functional", out)
    _solution("functional", out)
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert all(r.ok for r in check(out))


def test_make_refuses_to_overwrite_and_regenerates_fixtures(tmp_path):
    out = tmp_path / "bpe"
    make("bpe", out)
    (out / "fixtures" / "bpe.json").unlink()
    with pytest.raises(FileExistsError, match="already exists"):
        make("bpe", out)
    with pytest.raises(FileNotFoundError, match="--fixtures-only"):
        check(out)
    make("bpe", out, fixtures_only=True)
    assert len(check(out)) == 3


def test_cli_list_make_check(tmp_path, capsys):
    from minift.cli import main

    assert main(["assignment", "list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(ASSIGNMENTS)
    out = tmp_path / "hw"
    assert main(["assignment", "make", "schedules", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["assignment"] == "schedules"
    assert main(["assignment", "check", str(out)]) == 1
    text = capsys.readouterr().out
    assert "FAIL  linear" in text and "not implemented yet" in text and "0 of 2 items pass" in text
    _solution("schedules", out)
    assert main(["assignment", "check", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == {"assignment": "schedules", "ok": True, "passed": 2, "failed": 0, "items": data["items"]}
    assert [i["item"] for i in data["items"]] == ["linear", "cosine"] and all(i["ok"] for i in data["items"])
    assert main(["assignment", "check", str(tmp_path / "empty")]) == 2
    assert main(["assignment", "make", "schedules", str(out)]) == 1  # a student's file is never overwritten
    assert "already exists" in capsys.readouterr().err
