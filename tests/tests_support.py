"""Small fixtures shared by the CLI, resume and pretraining tests: a tiny random BERT written by transformers,
with a vocabulary made here, a keyword sentiment dataset it can learn in a few steps, and two tokenizers
small enough that a language model trains in seconds; and the check, shared by the BERT and RoBERTa tests,
that a classifier's evaluation runs the last layer for the first position alone."""

import contextlib
import json
import string
from pathlib import Path

import torch
import transformers

from minift.tokenizer.bpe import ByteLevelBPETokenizer, bytes_to_unicode

GOOD = ["great", "lovely", "superb", "fun", "brilliant", "warm"]
BAD = ["awful", "boring", "dull", "broken", "rude", "bland"]
FILLER = ["the", "film", "was", "food", "service", "really", "quite", "and", "a", "book"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + GOOD + BAD + FILLER


@contextlib.contextmanager
def threads(n: int):
    """torch's intra-op thread count set to n inside the block: the fast decoding path cuts weights into
    one slab per thread, so its tests choose the count (a machine with fewer cores still runs them)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def grad_tolerance(ref: torch.Tensor) -> float:
    """1e-5 absolute for gradients up to 1; larger ones are sums over batch and positions whose fp32
    rounding grows with their size, so the bound is 1e-5 relative to the largest entry."""
    return 1e-5 * max(1.0, ref.abs().max().item())


def last_layer_shapes(encoder, run) -> list[tuple]:
    """The output shapes of the encoder's last layer during `run()`."""
    shapes = []
    handle = encoder.layer[-1].register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    try:
        run()
    finally:
        handle.remove()
    return shapes


def check_first_token_only(ours, ref, inputs: dict, encoder) -> None:
    """`ours`, a sequence classifier on sdpa in eval mode: under no_grad the encoder's last layer runs
    position 0 alone, with transformers' logits; with autograd on, or in train mode, every position (the
    readable path, which always runs every position, is checked by the callers)."""
    batch, length = inputs["input_ids"].shape
    with torch.no_grad():
        want = ref(**inputs).logits
        shapes = last_layer_shapes(encoder, lambda: ours(**inputs))
        got = ours(**inputs).logits
    assert shapes == [(batch, 1, ours.config.hidden_size)]
    assert max_diff(got, want) <= 1e-5  # fp32 activations
    full = ours(**inputs).logits.detach()  # autograd on: every position
    assert last_layer_shapes(encoder, lambda: ours(**inputs))[0][1] == length
    assert max_diff(got, full) <= 1e-5
    ours.train()
    with torch.no_grad():
        assert last_layer_shapes(encoder, lambda: ours(**inputs))[0][1] == length
    ours.eval()


def write_tiny_bert(folder: Path, dropout: float = 0.1, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}), encoding="utf-8")
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    transformers.BertModel(config).save_pretrained(folder)
    return folder


def write_tiny_dataset(path: Path, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    rows = ["text\tlabel"]
    for i in range(n):
        positive = i % 2 == 0
        words = [FILLER[int(j)] for j in torch.randint(0, len(FILLER), (4,), generator=g)]
        words.insert(int(torch.randint(0, 4, (1,), generator=g)), (GOOD if positive else BAD)[i % 6])
        rows.append(" ".join(words) + "\t" + ("positive" if positive else "negative"))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def write_byte_bpe(folder: Path) -> Path:
    """A GPT-2 tokenizer folder with no merges: one token per byte, plus <|endoftext|> (id 256). Tiny LMs
    train in seconds with it; the code path is the one GPT-2's real vocabulary takes."""
    ByteLevelBPETokenizer({ch: i for i, ch in enumerate(bytes_to_unicode().values())}, []).save_pretrained(folder)
    return folder


def write_char_wordpiece(folder: Path) -> Path:
    """A BERT vocab.txt of the five special tokens and single characters (word-initial and ##)."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + string.punctuation
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars)]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return folder


def run_test_module(module, tmp_dir: Path) -> dict[str, str]:
    """Call every test function of an imported test module, as pytest would, and say how each ended:
    ``{"test_name[params]": "passed" | "failed: <error>" | "skipped"}``.

    For the course's answers (lessons/solutions/): an exercise that says "change X and run
    tests/test_Y.py" patches X in the imported module and runs its tests in the same process, without
    starting a second pytest. It expands ``@pytest.mark.parametrize`` (ids as pytest writes them for
    plain values), honours ``skipif``, and provides the fixtures ``tmp_path`` and ``monkeypatch``; a
    test that needs any other fixture is reported as "skipped".
    """
    import inspect
    import itertools

    import pytest

    results = {}
    for name, function in vars(module).items():
        if not (name.startswith("test_") and inspect.isfunction(function)):
            continue
        marks = getattr(function, "pytestmark", [])
        if any(m.name == "skipif" and m.args and m.args[0] for m in marks):
            results[name] = "skipped"
            continue
        grids = []
        for mark in reversed([m for m in marks if m.name == "parametrize"]):  # innermost decorator first
            names, values = mark.args[0], mark.args[1]
            names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
            rows = [v.values if hasattr(v, "values") and hasattr(v, "marks") else v for v in values]
            grids.append([dict(zip(names, row if len(names) > 1 else (row,))) for row in rows])
        for combination in itertools.product(*grids) if grids else [()]:
            kwargs = {k: v for part in combination for k, v in part.items()}
            test_id = name + (f"[{'-'.join(str(v) for v in kwargs.values())}]" if kwargs else "")
            wanted = [p for p in inspect.signature(function).parameters if p not in kwargs]
            if set(wanted) - {"tmp_path", "monkeypatch"}:
                results[test_id] = "skipped"
                continue
            with pytest.MonkeyPatch.context() as monkeypatch:
                fixtures = {"tmp_path": Path(tmp_dir) / f"{len(results)}", "monkeypatch": monkeypatch}
                fixtures["tmp_path"].mkdir(parents=True, exist_ok=True)
                try:
                    function(**kwargs, **{k: fixtures[k] for k in wanted})
                    results[test_id] = "passed"
                except pytest.skip.Exception:
                    results[test_id] = "skipped"
                except Exception as err:  # an assertion, or any error the change provokes
                    results[test_id] = f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return results
