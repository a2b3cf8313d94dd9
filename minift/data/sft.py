"""Instruction-tuning (SFT) data: JSONL records -> templated token ids with the prompt masked -> packed blocks.

Supervised fine-tuning teaches a pretrained causal LM to answer: each example is a prompt and a
response, and the loss is taken on the response only (Ouyang et al. 2022, sec. 3.5; Taori et al. 2023,
Alpaca's train.py; Raschka, "Build a Large Language Model (From Scratch)", ch. 7):

    record (JSONL line)  -> messages [{"role", "content"}, ...]          `read_sft_records`
                         -> one text, the chat template (Jinja) rendered   `render_chat`
                         -> input_ids; labels = -100 on every token that   `build_example`
                            is not an assistant reply (its end-of-text included)
                         -> optional: several examples in one block,       `pack_examples`
                            positions restarting at 0 for each

Two record formats, one per line:
  {"instruction": ..., "input": ..., "output": ...}      Alpaca (Taori et al. 2023); "input" may be empty
  {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}   a conversation

An Alpaca record is the conversation [{"role": "user", "content": instruction, "input": input},
{"role": "assistant", "content": output}], rendered by ALPACA_TEMPLATE, a chat template that writes
Alpaca's prompt text. So every record is a conversation and one Jinja chat template renders it, the
same string that `minift chat` uses and that transformers' `apply_chat_template` reads from the run's
tokenizer_config.json (key "chat_template").

Lesson: the instruction-tuning lesson of the course (lessons/README.md).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from minift.data.readers import DataError, _json_lines, _read_text
from minift.losses import IGNORE_INDEX

ROLES = ("system", "user", "assistant")

# Alpaca's prompt (Taori et al. 2023, github.com/tatsu-lab/stanford_alpaca, train.py PROMPT_DICT), as a
# chat template: the preamble (a system message replaces it), "### Instruction:", the optional
# "### Input:" (the user message's "input" key, empty or absent: no section), and "### Response:". As in
# Raschka's ch. 7, "### Response:" is followed by a newline, so the reply starts a new line and its
# first token never merges with the prompt's last. The end-of-text token ends each reply.
ALPACA_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{%- if loop.first -%}"
    "{{ 'Below is an instruction that describes a task' }}"
    "{{ ', paired with an input that provides further context' if message.get('input') }}"
    "{{ '. Write a response that appropriately completes the request.\\n\\n' }}"
    "{%- elif messages[loop.index0 - 1]['role'] == 'assistant' -%}"
    "{{ '\\n\\n' }}"
    "{%- endif -%}"
    "{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{%- if message.get('input') -%}{{ '### Input:\\n' + message['input'] + '\\n\\n' }}{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ '### Response:\\n' + message['content'] + eos_token }}"
    "{%- else -%}"
    "{{ raise_exception('unknown role ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '### Response:\\n' }}{%- endif -%}"
)

# A chat template with role markers, one turn after another (the layout of Zephyr's template, Tunstall
# et al. 2023): "<|user|>\n" + content + end-of-text, turns separated by a newline written *before*
# the next marker, so that an assistant reply is exactly its content and its end-of-text token (the
# span `build_example` trains on; nothing after the end-of-text token is a target). The markers are
# plain text: a tokenizer without them as special tokens splits them into a few ordinary tokens. An
# Alpaca record's input follows its instruction after a blank line.
# (Every newline is a Jinja string: the whitespace control of the tags, {%- -%}, would strip a bare one.)
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unknown role ' + message['role']) }}"
    "{%- endif -%}"
    "{{ ('' if loop.first else '\\n') + '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{{ '\\n\\n' + message['input'] if message.get('input') }}{{ eos_token }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ ('\\n' if messages else '') + '<|assistant|>\\n' }}{%- endif -%}"
)

TEMPLATES = {"alpaca": ALPACA_TEMPLATE, "chat": DEFAULT_CHAT_TEMPLATE}  # --chat-template's names


# ----------------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------------


def read_sft_records(path: str | Path) -> list[dict]:
    """The records of a JSONL file, each as {"messages": [...], "source": "FILE:LINE", "format": "alpaca" or
    "messages"}.

    An Alpaca record becomes a two-turn conversation (the user message keeps "input"). Every problem
    is a `DataError` naming the file and line: not JSON, not an object, missing fields, a field that
    is not a string, an unknown role, a conversation without an assistant reply (nothing to train on).
    Blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: JSONL file not found")
    records = []
    for number, record in _json_lines(path, _read_text(path)):
        where = f"{path}:{number}"
        kind = "messages" if isinstance(record, dict) and "messages" in record else "alpaca"
        records.append({"messages": _messages(record, where), "source": where, "format": kind})
    if not records:
        raise DataError(f"{path}: no records (the file is empty or holds only blank lines)")
    return records


def _messages(record, where: str) -> list[dict]:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        return check_messages(record["messages"], where)
    missing = [key for key in ("instruction", "output") if key not in record]
    if missing:
        raise DataError(f"{where}: missing {' and '.join(repr(k) for k in missing)}; a record is "
                        '{"instruction", "input", "output"} (Alpaca; "input" may be empty) or '
                        '{"messages": [{"role", "content"}, ...]}')
    for key in ("instruction", "input", "output"):
        if key in record and not isinstance(record[key], str):
            raise DataError(f"{where}: {key!r} must be a string, got {type(record[key]).__name__}")
    return [{"role": "user", "content": record["instruction"], "input": record.get("input", "")},
            {"role": "assistant", "content": record["output"]}]


def check_messages(messages, where: str, *, need_reply: bool = True) -> list[dict]:
    """A conversation as the templates expect it: a list of {"role", "content"} with a known role and
    string content; with ``need_reply``, at least one assistant message. ``where`` names it in errors."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}} objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"{where}: message {i} must be an object with 'role' and 'content', got {message!r}")
        if message["role"] not in ROLES:
            raise DataError(f"{where}: message {i} has unknown role {message['role']!r}; expected one of "
                            f"{', '.join(ROLES)}")
        if not isinstance(message["content"], str):
            raise DataError(f"{where}: message {i}'s content must be a string, got "
                            f"{type(message['content']).__name__}")
    if need_reply and not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the conversation has no assistant message, so nothing to train on "
                        "(the loss is taken on the assistant's replies)")
    return messages


# ----------------------------------------------------------------------------------------------------
# Templates
# ----------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _compile(chat_template: str):
    """The template compiled as transformers compiles it (utils/chat_template_utils.py): a sandboxed,
    immutable Jinja environment (a template from a checkpoint is untrusted code), trim_blocks and
    lstrip_blocks, loop controls, `raise_exception`, and a `tojson` that does not escape HTML."""
    import jinja2  # a runtime dependency, needed only here
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(chat_template)
    except jinja2.exceptions.TemplateSyntaxError as err:
        raise ValueError(f"chat template: {err.message} (template line {err.lineno})") from None


def render_chat(messages: Sequence[dict], chat_template: str, *, add_generation_prompt: bool = False,
                **variables) -> str:
    """The conversation as one text, as transformers' ``apply_chat_template(tokenize=False)`` renders it.

    ``variables`` are what transformers also passes: the tokenizer's special tokens (eos_token, ...).
    ``add_generation_prompt`` ends the text with the start of an assistant turn, for generation.
    """
    import jinja2

    try:
        return _compile(chat_template).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                              **variables)
    except jinja2.exceptions.TemplateError as err:
        raise ValueError(f"chat template: {err}") from None


def template_variables(tokenizer) -> dict[str, str]:
    """The special tokens a template may use ({{ eos_token }}, ...), as transformers passes them."""
    return {role: token for role, token in tokenizer.special_tokens_map.items() if isinstance(token, str)}


def resolve_template(template: str | None) -> str:
    """A chat template: None -> DEFAULT_CHAT_TEMPLATE, "alpaca" / "chat" -> TEMPLATES, else the string."""
    if template is None:
        return DEFAULT_CHAT_TEMPLATE
    return TEMPLATES.get(template, template)


def load_template(option: str, flag: str = "--chat-template") -> str:
    """A template named on the command line: "alpaca" or "chat" (TEMPLATES), or a file holding a Jinja
    chat template (checked by compiling it); ``flag`` names the option in errors."""
    if option in TEMPLATES:
        return TEMPLATES[option]
    path = Path(option)
    if not path.is_file():
        raise ValueError(f"{flag} {option!r}: neither {' nor '.join(TEMPLATES)} nor a file")
    text = path.read_text(encoding="utf-8")
    try:
        _compile(text)
    except ValueError as err:
        raise ValueError(f"{flag} {path}: {err}") from None
    return text


# ----------------------------------------------------------------------------------------------------
# Examples: ids, labels, truncation
# ----------------------------------------------------------------------------------------------------


def build_example(record: dict, tokenizer, *, template: str | None = None, train_on_prompt: bool = False,
                  max_length: int | None = None) -> dict[str, list[int]]:
    """{"input_ids", "labels"} of one record (`read_sft_records`'s, or a bare {"messages": [...]}).

    The text is rendered in pieces: for the i-th message, an assistant reply, the conversation up to it
    with the generation prompt (everything before the reply), then the conversation including it. Each
    piece is encoded on its own; the reply's tokens (content and end-of-text token, as the template
    writes them) keep their ids as labels, every other token gets -100 (not scored) — unless
    ``train_on_prompt``, which scores every token (the ablation of Alpaca's masking). The template must
    render each shorter conversation as a prefix of the longer one (both bundled ones do); the joined
    pieces are checked against the whole text encoded at once, which is what `minift chat` and
    transformers' ``apply_chat_template`` give.

    ``max_length``: an example longer than that is cut on the right, keeping the prompt and the start
    of the reply (the model must see the question to learn the answer), and warned about with its
    line; the cut reply loses its end-of-text token, so this example does not teach stopping. If not
    one reply token fits, it is a `DataError`.
    """
    template = resolve_template(template)
    where = record.get("source", "record")
    messages = check_messages(record.get("messages"), where)
    variables = template_variables(tokenizer)
    pieces: list[tuple[str, bool]] = []  # (text, is a reply)
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render_chat(messages[:i], template, add_generation_prompt=True, **variables)
        through = render_chat(messages[: i + 1], template, **variables)
        if not before.startswith(done) or not through.startswith(before):
            raise ValueError(f"{where}: the chat template does not render a conversation as a prefix of its "
                             "continuation, so the reply's tokens cannot be told from the prompt's")
        pieces += [(before[len(done):], False), (through[len(before):], True)]
        done = through
    whole = render_chat(messages, template, **variables)
    if not whole.startswith(done):
        raise ValueError(f"{where}: the chat template does not render a conversation as a prefix of its continuation")
    pieces.append((whole[len(done):], False))
    input_ids, labels = [], []
    for text, is_reply in pieces:
        ids = tokenizer.encode(text, add_special_tokens=False, truncation=False) if text else []
        input_ids += ids
        labels += ids if is_reply or train_on_prompt else [IGNORE_INDEX] * len(ids)
    joined = tokenizer.encode(whole, add_special_tokens=False, truncation=False)
    if joined != input_ids:
        warnings.warn(f"{where}: the template's pieces encode to other ids than the whole text (a token "
                      "merges across the end of the prompt); training uses the pieces' ids", stacklevel=2)
    if max_length is not None and len(input_ids) > max_length:
        input_ids, labels = _truncate(input_ids, labels, max_length, where, train_on_prompt)
    return {"input_ids": input_ids, "labels": labels}


def _truncate(input_ids: list[int], labels: list[int], max_length: int, where: str,
              train_on_prompt: bool) -> tuple[list[int], list[int]]:
    kept = labels[1:max_length]  # the first token is never a target (nothing predicts it)
    if not train_on_prompt and all(label == IGNORE_INDEX for label in kept):
        raise DataError(f"{where}: the prompt alone is {sum(1 for x in labels if x == IGNORE_INDEX)} tokens, and "
                        f"with --max-length {max_length} not one reply token would be left to train on; "
                        "raise --max-length or shorten the prompt")
    warnings.warn(f"{where}: {len(input_ids)} tokens, more than --max-length {max_length}: cut on the right "
                  f"(the last {len(input_ids) - max_length} tokens dropped), keeping the prompt and the start "
                  "of the reply; the reply loses its end-of-text token, so this example does not teach "
                  "the model to stop", stacklevel=3)
    return input_ids[:max_length], labels[:max_length]


def build_examples(records: Sequence[dict], tokenizer, **options) -> list[dict[str, list[int]]]:
    """`build_example` for every record (same options)."""
    return [build_example(record, tokenizer, **options) for record in records]


# ----------------------------------------------------------------------------------------------------
# Packing and batches
# ----------------------------------------------------------------------------------------------------


def pack_examples(examples: Sequence[dict], block_size: int) -> list[dict[str, list[int]]]:
    """Several examples in one block of at most ``block_size`` tokens, in their order: a block is
    closed when the next example does not fit. Each block is {"input_ids", "labels", "position_ids"};
    position_ids restart at 0 at each example, which is how the model (minift's GPT-2, and
    transformers' masking_utils.find_packed_sequence_indices) knows where one example ends: attention
    stays inside each example, so an example packed is computed exactly as it is alone.

    The first token of each example is labelled -100, as transformers' DataCollatorWithFlattening
    does: alone, nothing predicts it; packed, the previous example's last token would, across the border.
    So the packed loss is the unpacked loss (the same scored tokens, the same mean over them).
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"block_size must be an int >= 2, got {block_size!r}")
    blocks: list[dict[str, list[int]]] = []
    current = {"input_ids": [], "labels": [], "position_ids": []}
    for i, example in enumerate(examples):
        n = len(example["input_ids"])
        if n > block_size:
            raise ValueError(f"example {i} has {n} tokens, more than block_size={block_size}; build it with "
                             "max_length=block_size")
        if len(current["input_ids"]) + n > block_size:
            blocks.append(current)
            current = {"input_ids": [], "labels": [], "position_ids": []}
        current["input_ids"] += example["input_ids"]
        current["labels"] += [IGNORE_INDEX] + list(example["labels"][1:])
        current["position_ids"] += list(range(n))
    if current["input_ids"]:
        blocks.append(current)
    return blocks


def sft_collate(examples: Sequence[dict], pad_token_id: int) -> dict:
    """Examples (or packed blocks) -> (B, T) tensors, padded on the right to the longest row.

    Unpacked rows get an attention_mask (1 = token, 0 = padding). Packed rows (with position_ids) get
    none: the padding is one more segment, positions from 0, which no real token attends (it comes
    after them) and which is not scored (labels -100).
    """
    import torch

    if len(examples) == 0:
        raise ValueError("cannot collate an empty batch")
    length = max(len(e["input_ids"]) for e in examples)
    packed = "position_ids" in examples[0]
    rows = {"input_ids": [], "labels": [], "attention_mask" if not packed else "position_ids": []}
    for e in examples:
        pad = length - len(e["input_ids"])
        rows["input_ids"].append(list(e["input_ids"]) + [pad_token_id] * pad)
        rows["labels"].append(list(e["labels"]) + [IGNORE_INDEX] * pad)
        if packed:
            rows["position_ids"].append(list(e["position_ids"]) + list(range(pad)))
        else:
            rows["attention_mask"].append([1] * len(e["input_ids"]) + [0] * pad)
    return {key: torch.tensor(value, dtype=torch.long) for key, value in rows.items()}


def generation_prompt(record: dict, tokenizer, template: str | None = None) -> str:
    """The text a model continues to answer a record: the conversation before its last assistant reply,
    with the start of an assistant turn (as `minift chat` renders it). For exact-match evaluation on
    held-out records (minift/generation/answers.py)."""
    messages = check_messages(record.get("messages"), record.get("source", "record"))
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return render_chat(messages[:last], resolve_template(template), add_generation_prompt=True,
                       **template_variables(tokenizer))
