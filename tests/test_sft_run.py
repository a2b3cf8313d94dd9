"""`minift finetune --task sft` and `minift chat`: one optimisation step against a hand-written transformers
loop with the same masking (packed and not), the chat template saved where transformers reads it, the chat
command (scripted stdin, one-shot) against `generate` on the rendered prompt, and bad input at the command."""

import io
import json
import math
import subprocess
import sys

import pytest
import torch
import transformers
from tests_support import write_byte_bpe

from minift.chat import ChatSession
from minift.cli import main
from minift.data.sft import DEFAULT_CHAT_TEMPLATE, build_example, read_sft_records
from minift.models.gpt2 import GPT2LMHeadModel
from minift.tokenizer import load_tokenizer
from minift.train.config import FinetuneConfig
from minift.train.finetune import finetune

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py
transformers.logging.set_verbosity_error()

EOS = 256
# Adam's first step moves a weight by lr * g / (|g| + eps): for a gradient entry near eps = 1e-8, float32
# rounding of g (the packed batch multiplies other shapes) changes the step by up to ~lr * 1e-3, so lr 1e-3
# keeps that rounding below the 1e-5 tolerance (at lr 1e-2 one weight of the packed run is 1.7e-5 off).
LR, WEIGHT_DECAY, MAX_NORM = 1e-3, 0.01, 1.0
RECORDS = [
    {"instruction": "Reverse", "input": "cat dog", "output": "dog cat"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Sort: b a"},
                  {"role": "assistant", "content": "a b"}]},
    {"instruction": "Count the words", "output": "2", "input": "sun tree"},
    {"messages": [{"role": "user", "content": "Say yes"}, {"role": "assistant", "content": "yes"}]},
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny random GPT-2 saved by transformers, with a byte-level tokenizer (one token per byte), and a
    JSONL of both record formats."""
    folder = write_byte_bpe(tmp_path_factory.mktemp("base"))
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=EOS + 1, n_positions=128, n_embd=32, n_layer=2, n_head=4, bos_token_id=EOS, eos_token_id=EOS,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).save_pretrained(folder)
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    return folder, data


def reference_step(base_dir, data) -> transformers.GPT2LMHeadModel:
    """One step of a plain transformers + torch loop: the conversations tokenized by transformers'
    apply_chat_template, -100 on every token outside an assistant reply, one padded batch, the model's own
    loss, clipping, torch's AdamW without decay on biases and LayerNorm weights."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(base_dir)
    rows = []
    for line in data.read_text().splitlines():
        record = json.loads(line)
        messages = record.get("messages") or [{"role": "user", "content": record["instruction"],
                                               "input": record["input"]},
                                              {"role": "assistant", "content": record["output"]}]
        ids = tokenizer.apply_chat_template(messages, chat_template=DEFAULT_CHAT_TEMPLATE, tokenize=True)["input_ids"]
        labels = [-100] * len(ids)
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                start = len(tokenizer.apply_chat_template(messages[:i], chat_template=DEFAULT_CHAT_TEMPLATE,
                                                          add_generation_prompt=True, tokenize=True)["input_ids"])
                end = len(tokenizer.apply_chat_template(messages[: i + 1], chat_template=DEFAULT_CHAT_TEMPLATE,
                                                        tokenize=True)["input_ids"])
                labels[start:end] = ids[start:end]
        rows.append((ids, labels))
    length = max(len(ids) for ids, _ in rows)
    batch = {"input_ids": torch.tensor([ids + [EOS] * (length - len(ids)) for ids, _ in rows]),
             "attention_mask": torch.tensor([[1] * len(ids) + [0] * (length - len(ids)) for ids, _ in rows]),
             "labels": torch.tensor([labels + [-100] * (length - len(labels)) for _, labels in rows])}
    model = transformers.GPT2LMHeadModel.from_pretrained(base_dir).train()
    decay = [p for n, p in model.named_parameters() if "bias" not in n and ".ln_" not in n and "ln_f" not in n]
    keep = [p for n, p in model.named_parameters() if "bias" in n or ".ln_" in n or "ln_f" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": keep, "weight_decay": 0.0}], lr=LR, foreach=False)
    model(**batch, use_cache=False).loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
    optimizer.step()
    return model


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_one_step_equals_the_transformers_loop(base, tmp_path, packing):
    """All four examples in one batch, one step: every parameter within 1e-5 of the reference loop's
    (float32). Packed, the four examples share blocks and the step is still the padded one's."""
    folder, data = base
    finetune(FinetuneConfig(task="sft", model=str(folder), train=data, out=tmp_path / "run", max_length=128,
                            batch_size=len(RECORDS), max_steps=1, lr=LR, weight_decay=WEIGHT_DECAY, warmup_ratio=0.0,
                            max_grad_norm=MAX_NORM, chat_template="chat", packing=packing, device="cpu",
                            progress=False))
    ours = dict(transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "run").named_parameters())
    before = dict(transformers.GPT2LMHeadModel.from_pretrained(folder).named_parameters())
    for name, p in reference_step(folder, data).named_parameters():
        assert (ours[name] - p).abs().max().item() <= 1e-5, name
        assert (before[name] - p).abs().max().item() > 1e-4, name  # the step moved it: the test can fail


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    """A --task sft run (default template: the file mixes formats, so "chat")."""
    folder, data = base
    out = tmp_path_factory.mktemp("sft") / "run"
    result = finetune(FinetuneConfig(task="sft", model=str(folder), train=data, dev=data, out=out, max_length=128,
                                     batch_size=2, max_steps=2, lr=LR, device="cpu", progress=False))
    return out, result


def test_dev_loss_is_per_reply_token(trained, base):
    """The dev evaluation scores the replies only: its token count is the number of reply tokens (each
    reply's content and end-of-text token, as bytes here), and perplexity is exp of the mean loss."""
    _, result = trained
    replies = [m["content"] for r in read_sft_records(base[1]) for m in r["messages"] if m["role"] == "assistant"]
    assert result["dev_tokens"] == sum(len(text.encode()) + 1 for text in replies)
    assert result["dev_perplexity"] == pytest.approx(math.exp(result["dev_loss"]), rel=1e-12)
    assert result["dev_loss"] < result["dev_loss_before"]


@pytest.fixture(scope="module")
def run(trained):
    return trained[0]


def test_chat_template_saved_where_transformers_reads_it(run, base):
    config = json.loads((run / "tokenizer_config.json").read_text())
    assert config["chat_template"] == DEFAULT_CHAT_TEMPLATE
    ref = transformers.AutoTokenizer.from_pretrained(run)  # no chat_template= argument: the saved one
    ours = load_tokenizer(run)
    assert ours.chat_template == DEFAULT_CHAT_TEMPLATE
    for record in read_sft_records(base[1]):
        messages = [{k: v for k, v in m.items()} for m in record["messages"]]
        assert build_example(record, ours)["input_ids"] == ref.apply_chat_template(messages, tokenize=True)["input_ids"]
        session = ChatSession(GPT2LMHeadModel.from_pretrained(run), ours)
        session.messages = messages[:-1]
        assert session.prompt_ids() == ref.apply_chat_template(messages[:-1], add_generation_prompt=True,
                                                               tokenize=True)["input_ids"]


def _generate_reply(run, messages, max_new_tokens):
    """The reply as `generate` gives it on the conversation rendered by transformers."""
    ref = transformers.AutoTokenizer.from_pretrained(run)
    ids = torch.tensor([ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]])
    out = GPT2LMHeadModel.from_pretrained(run).generate(ids, max_new_tokens)[0, ids.shape[1]:].tolist()
    return ref.decode(out[: out.index(EOS)] if EOS in out else out)


def test_chat_one_shot_is_generate_on_the_rendered_prompt(run, capsys):
    assert main(["chat", "--model", str(run), "--system", "Be brief.", "--message", "Sort: b a",
                 "--max-new-tokens", "9", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort: b a"}]
    assert result["reply"] and result["reply"] == _generate_reply(run, messages, 9)
    assert result["messages"] == [*messages, {"role": "assistant", "content": result["reply"]}]


def test_chat_interactive_keeps_the_conversation(run, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\n\nSay yes\n/exit\nnever read\n"))
    assert main(["chat", "--model", str(run), "--max-new-tokens", "6", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    messages = json.loads(captured.out.strip().splitlines()[-1])["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[1]["content"] and messages[1]["content"] == _generate_reply(run, messages[:1], 6)
    assert messages[3]["content"] == _generate_reply(run, messages[:3], 6)  # the second turn sees the first
    assert captured.err.count("assistant> ") == 2 and messages[3]["content"] in captured.err  # streamed


def test_chat_command_reads_stdin_until_end(run):
    """The installed command, as a user runs it: lines on stdin, the replies on stderr, one JSON line."""
    out = subprocess.run([sys.executable, "-m", "minift", "chat", "--model", str(run), "--max-new-tokens", "4",
                          "--device", "cpu"], input="Hi\nSay yes\n", capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr
    messages = json.loads(out.stdout.strip().splitlines()[-1])["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == ["Hi", "Say yes"]


def test_chat_refuses_a_checkpoint_without_a_template(base, capsys):
    assert main(["chat", "--model", str(base[0]), "--message", "Hi", "--device", "cpu"]) == 1
    assert "no chat template" in capsys.readouterr().err


@pytest.mark.parametrize("line, message", [
    ('{"instruction": "x", "input": ""}', "missing 'output'"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant message"),
    ('{"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}', "unknown role 'bot'"),
])
def test_finetune_names_the_bad_line(base, tmp_path, capsys, line, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(RECORDS[0]) + "\n" + line + "\n", encoding="utf-8")
    code = main(["finetune", "--task", "sft", "--model", str(base[0]), "--train", str(data), "--out",
                 str(tmp_path / "run"), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and f"{data}:2: " in err and message in err, err


def test_sft_flags_belong_to_sft(tmp_path, capsys):
    assert main(["finetune", "--task", "causal-lm", "--train", str(tmp_path / "x.txt"), "--packing"]) == 1
    assert "--packing is not used by --task causal-lm; it applies to --task sft" in capsys.readouterr().err


def test_packing_refuses_virtual_tokens(base, tmp_path, capsys):
    code = main(["finetune", "--task", "sft", "--model", str(base[0]), "--train", str(base[1]), "--packing",
                 "--peft", "prompt", "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert code == 1 and "--packing cannot be combined with --peft prompt" in capsys.readouterr().err
