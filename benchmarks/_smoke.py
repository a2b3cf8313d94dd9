"""What every benchmark's `--smoke` run shares: a folder to write into and a few lines of data.

`--smoke` means the same in every script of benchmarks/: tiny settings, the script's whole path run end
to end (its reference side included) and its table printed, in seconds; the numbers mean nothing. It
writes into `--out` when given, else into a temporary folder, never into the folders README's results
come from, and it needs no ../shared/data: the first lines of the public files when they are there,
else lessons/fixtures/ and the built-in demo set, copied in the same formats. `make bench-smoke` runs
every benchmarks/*.py (this file, whose name starts with "_", is a helper, not a benchmark).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
FIXTURES = REPO / "lessons" / "fixtures"


@contextlib.contextmanager
def out_folder(out: Path | None, name: str) -> Iterator[Path]:
    """`out` when the user gave one (created), else a temporary folder removed afterwards."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        yield out
        return
    with tempfile.TemporaryDirectory(prefix=f"minift-smoke-{name}-") as tmp:
        yield Path(tmp)


def _head(lines: list[str], n: int) -> str:
    return "".join(line + "\n" for line in lines[:n])


def every_label(lines: list[str], n: int) -> list[str]:
    """The first `n` of `lines` ("label ||| text") taken in turn from each label, in file order, so that
    a few lines still hold every class (SST's first 24 lines have labels 2-4 only)."""
    by_label: dict[str, list[str]] = {}
    for line in lines:
        by_label.setdefault(line.partition("|||")[0].strip(), []).append(line)
    queues = [by_label[label] for label in sorted(by_label)]
    picked: list[str] = []
    for i in range(max(map(len, queues), default=0)):
        picked += [q[i] for q in queues if i < len(q)]
    return picked[:n]


def minbert(folder: Path, lines: int = 24) -> Path:
    """sst-{train,dev,test}.txt and cfimdb-{train,dev,test}.txt ("label ||| text" lines, as in
    ../shared/data/minbert) of `lines` lines each, every label present, in `folder`. From the public
    files when present; else from the built-in demo set: CFIMDB's labels 0 (negative) and 1
    (positive), SST-5's 1 and 3 (negative and positive on its 0-4 scale, so that few_shot.py's SST-2
    mapping keeps both classes), with cfimdb-test.txt's placeholder labels (all 0,
    lessons/fixtures/minbert) kept, so that both of the scripts' test-file paths run."""
    folder.mkdir(parents=True, exist_ok=True)
    real = SHARED / "minbert"
    if (real / "sst-train.txt").is_file() and (real / "cfimdb-train.txt").is_file():
        for name in ("sst", "cfimdb"):
            for split in ("train", "dev", "test"):
                text = (real / f"{name}-{split}.txt").read_text(encoding="utf-8").splitlines()
                (folder / f"{name}-{split}.txt").write_text(_head(every_label(text, lines), lines), encoding="utf-8")
        return folder
    from minift.data import demo_path, read_classification

    names = sorted({e.label for e in read_classification(demo_path("train"))})  # negative, positive
    for split, source in (("train", "train"), ("dev", "dev"), ("test", "dev")):
        examples = read_classification(demo_path(source))
        for name, scale in (("sst", ("1", "3")), ("cfimdb", ("0", "1"))):
            text = every_label([f"{scale[names.index(e.label)]} ||| {e.text}" for e in examples], 10 * lines)
            if split == "test":
                text = text[::-1]  # not the dev lines in the dev order
            (folder / f"{name}-{split}.txt").write_text(_head(text, lines), encoding="utf-8")
    placeholder = (FIXTURES / "minbert" / "cfimdb-test.txt").read_text(encoding="utf-8").splitlines()
    (folder / "cfimdb-test.txt").write_text(_head(placeholder, lines), encoding="utf-8")
    return folder


def wnut17(folder: Path, sentences: int = 24) -> Path:
    """train.conll, dev.conll and test.conll of `sentences` sentences each, in `folder`: from
    ../shared/data/wnut17 when present, else lessons/fixtures/wnut17 (its dev file doubles as test)."""
    folder.mkdir(parents=True, exist_ok=True)
    real = SHARED / "wnut17"
    source = real if (real / "test.conll").is_file() else FIXTURES / "wnut17"
    for split in ("train", "dev", "test"):
        path = source / f"{split}.conll"
        if not path.is_file():
            path = source / "dev.conll"
        blocks = path.read_text(encoding="utf-8").strip().split("\n\n")
        (folder / f"{split}.conll").write_text("\n\n".join(blocks[:sentences]) + "\n", encoding="utf-8")
    return folder


def text(folder: Path, lines: int = 60) -> Path:
    """text/corpus.en, text/tinystories_sample.txt (25 lines) and gpt2/{vocab.json,merges.txt} in
    `folder`: from ../shared/data when present, else lessons/fixtures (whose corpus.en stands in for
    the stories; its GPT-2 BPE files are a small vocabulary in GPT-2's format)."""
    (folder / "text").mkdir(parents=True, exist_ok=True)
    (folder / "gpt2").mkdir(parents=True, exist_ok=True)
    corpus = SHARED / "text" / "corpus.en"
    corpus = corpus if corpus.is_file() else FIXTURES / "text" / "corpus.en"
    corpus_lines = corpus.read_text(encoding="utf-8").splitlines()
    (folder / "text" / "corpus.en").write_text(_head(corpus_lines, lines), encoding="utf-8")
    stories = SHARED / "text" / "tinystories_sample.txt"
    story_lines = stories.read_text(encoding="utf-8").splitlines() if stories.is_file() else corpus_lines[-25:]
    (folder / "text" / "tinystories_sample.txt").write_text(_head(story_lines, 25), encoding="utf-8")
    bpe = SHARED / "gpt2" if (SHARED / "gpt2" / "merges.txt").is_file() else FIXTURES / "gpt2"
    for name in ("vocab.json", "merges.txt"):
        (folder / "gpt2" / name).write_bytes((bpe / name).read_bytes())
    return folder
