"""`minift finetune --peft ...` end to end: every method resumes bit-exactly after SIGKILL, every task
(classification, ner, causal-lm) takes the flags, RUN_DIR holds the merged model or base + adapter as
documented, and `--adapter DIR` puts an adapter on a base model for predict and generate."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file
from tests_support import write_byte_bpe, write_tiny_bert, write_tiny_dataset

from minift.cli import main
from minift.models import BertForTokenClassification, GPT2LMHeadModel
from minift.peft import active_method, load_peft_adapter
from minift.train import state
from minift.train.finetune import pretrain

REPO = Path(__file__).resolve().parents[1]
transformers.logging.set_verbosity_error()

METHOD_FLAGS = {
    "lora": ["--lora-r", "4"],
    "dora": ["--peft", "dora", "--lora-r", "2", "--use-rslora", "--lora-dropout", "0.1"],
    "ia3": ["--peft", "ia3"],
    "prompt": ["--peft", "prompt", "--num-virtual-tokens", "3", "--prompt-init", "vocab"],
    "prefix": ["--peft", "prefix", "--num-virtual-tokens", "2", "--prefix-projection"],
    "adapter": ["--peft", "adapter", "--adapter-reduction", "4", "--adapter-kind", "houlsby"],
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft_runs")
    write_tiny_bert(root / "model", dropout=0.1)  # dropout on: the RNG state must be restored too
    write_tiny_dataset(root / "train.tsv", 40, 0)
    write_tiny_dataset(root / "dev.tsv", 12, 1)
    return root


def finetune_cmd(root: Path, out: Path, method: str, *extra: str) -> list[str]:
    # No --dev: the evaluations would only slow the runs; 60 steps, a checkpoint every 7, killed after two.
    return [sys.executable, "-m", "minift", "finetune", "--model", str(root / "model"), "--train",
            str(root / "train.tsv"), "--out", str(out), "--epochs", "6",
            "--batch-size", "4", "--lr", "1e-3", "--save-every", "7", "--keep", "2", "--quiet", "--device", "cpu",
            *METHOD_FLAGS[method], *extra]


def run(cmd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, timeout=600)


def same_files(a: Path, b: Path, name: str) -> None:
    wa, wb = load_file(str(a / name)), load_file(str(b / name))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{name}: {key} differs after resume"  # bit-identical


@pytest.mark.parametrize("method", list(METHOD_FLAGS))
def test_sigkill_then_resume_is_bit_identical_for_every_method(setup, method):
    reference = setup / f"{method}-alone"
    proc = run(finetune_cmd(setup, reference, method))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["peft"] == method and result["trainable_parameters"] > 0
    assert f"trainable params: {result['trainable_parameters']:,} / " in proc.stderr  # printed, and in the JSON

    out = setup / f"{method}-killed"
    killed = subprocess.Popen(finetune_cmd(setup, out, method), cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while len(state.checkpoint_dirs(out)) < 2 and killed.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert killed.poll() is None, "the run ended before it could be killed: make it longer"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (out / "model.safetensors").exists()
    resumed = run(finetune_cmd(setup, out, method, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    same_files(reference, out, "model.safetensors")
    same_files(reference / "adapter", out / "adapter", "adapter_model.safetensors")


def test_run_dir_layouts(setup):
    """Merged where merging is defined; base + adapter (named in config.json) for the others."""
    for method in METHOD_FLAGS:
        run_dir = setup / f"{method}-alone"
        config = json.loads((run_dir / "config.json").read_text())
        adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
        weights = load_file(str(run_dir / "model.safetensors"))
        if method in ("lora", "dora", "ia3"):
            assert "peft_adapter" not in config
            assert not any("lora" in k or "ia3" in k for k in weights)  # a plain checkpoint
            assert adapter["peft_type"] == ("IA3" if method == "ia3" else "LORA")
        else:
            assert config["peft_adapter"] == {"method": method, "folder": "adapter"}
            assert not any("prompt" in k or "prefix" in k or ".adapter." in k for k in weights)
            assert adapter.get("peft_type", adapter.get("method")) in ("PROMPT_TUNING", "PREFIX_TUNING", "bottleneck")


def _ner_file(root: Path) -> Path:
    words = ["alice", "bob", "went", "to", "paris", "london", "with", "carol", "and"]
    tags = {"alice": "B-PER", "bob": "B-PER", "carol": "B-PER", "paris": "B-LOC", "london": "B-LOC"}
    g = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(16):
        for i in torch.randint(0, len(words), (6,), generator=g).tolist():
            lines.append(f"{words[i]}\t{tags.get(words[i], 'O')}")
        lines.append("")
    (root / "ner.conll").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "ner.conll"


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("method", ["prompt", "prefix", "ia3", "adapter"])
def test_ner_takes_the_flags_and_predict_loads_run_dir_or_base_plus_adapter(setup, method, tmp_path, capsys):
    conll = _ner_file(tmp_path)
    out = tmp_path / "ner"
    assert main(["finetune", "--task", "ner", "--model", str(setup / "model"), "--train", str(conll), "--out",
                 str(out), "--max-steps", "3", "--batch-size", "8", "--lr", "1e-2", "--quiet", "--device", "cpu",
                 *METHOD_FLAGS[method]]) == 0
    assert _json(capsys)["peft"] == method
    assert main(["predict", "--task", "ner", "--model", str(out), "alice went to paris"]) == 0
    from_run = _json(capsys)
    assert main(["predict", "--task", "ner", "--model", str(setup / "model"), "--adapter", str(out / "adapter"),
                 "alice went to paris"]) == 0
    assert _json(capsys) == from_run
    model = BertForTokenClassification.from_pretrained(out)  # base + adapter, never the bare base
    assert active_method(model) == (None if method == "ia3" else method)


@pytest.mark.parametrize("method", ["prompt", "prefix", "lora"])
def test_causal_lm_takes_the_flags_and_generate_uses_the_adapter(method, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("\n".join(f"the film was great and the food was fine {i}" for i in range(40)) + "\n")
    gpt2 = tmp_path / "gpt2"
    pretrain(text, gpt2, arch="gpt2", size="nano", tokenizer=write_byte_bpe(tmp_path / "bpe"), max_steps=2,
             block_size=16, device="cpu", progress=False)
    capsys.readouterr()
    flags = METHOD_FLAGS[method] + (["--lora-targets", "c_attn"] if method == "lora" else [])
    out = tmp_path / "lm"
    assert main(["finetune", "--task", "causal-lm", "--model", str(gpt2), "--train", str(text), "--out", str(out),
                 "--max-steps", "3", "--batch-size", "4", "--max-length", "16", "--lr", "1e-2", "--quiet",
                 "--device", "cpu", *flags]) == 0
    assert _json(capsys)["peft"] == method
    assert main(["generate", "--model", str(out), "the film", "--max-new-tokens", "5"]) == 0
    from_run = _json(capsys)
    assert main(["generate", "--model", str(gpt2), "--adapter", str(out / "adapter"), "the film",
                 "--max-new-tokens", "5"]) == 0
    assert _json(capsys) == from_run
    bare = GPT2LMHeadModel.from_pretrained(gpt2)
    load_peft_adapter(bare, out / "adapter")
    assert active_method(bare) == method


@pytest.mark.parametrize("flags,message", [
    (["--peft", "lora", "--num-virtual-tokens", "4"], ("--num-virtual-tokens is an option of --peft prompt/prefix, "
                                                      "not of --peft lora")),
    (["--peft", "ia3", "--lora-r", "4"], "--lora-r is an option of --peft lora/dora, not of --peft ia3"),
    (["--adapter-reduction", "8"], "--adapter-reduction is an option of --peft adapter, not of no --peft method"),
    (["--peft", "prompt", "--prompt-init-text", "hello"], "--prompt-init-text goes with --prompt-init text"),
    (["--peft", "prefix", "--freeze", "embeddings"], "--peft prefix cannot be combined with --freeze embeddings"),
])
def test_flag_errors_before_any_training(setup, flags, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["finetune", "--model", str(setup / "model"), "--train", str(setup / "train.tsv"), "--out", str(out),
                 "--quiet", *flags]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()  # before any work: nothing written


def test_unknown_method_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--peft", "loha"])
    assert "invalid choice: 'loha'" in capsys.readouterr().err
