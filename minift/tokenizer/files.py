"""The files of a tokenizer folder: their names, and the settings every tokenizer reads from them.

Lesson: lessons/01-wordpiece.md (the files of a checkpoint's tokenizer) and lessons/14-byte-level-bpe.md.

A tokenizer folder in the public (Hugging Face) layout holds its model's vocabulary -- WordPiece's
vocab.txt, byte-level BPE's vocab.json + merges.txt, or the `tokenizers` package's tokenizer.json for
either -- and the settings shared by all: special_tokens_map.json and tokenizer_config.json (special
tokens, the longest input, the padding side). Each format module (wordpiece.py, bpe.py, fast.py) reads
and writes its own files; `load_tokenizer` picks a tokenizer by which files are present; minift/hub.py
copies TOKENIZER_FILES from a checkpoint source. Writing goes through minift/io.py (`write_texts`).
"""

from __future__ import annotations

from pathlib import Path

from minift.checkpoint.files import CONFIG_NAME
from minift.io import read_json

# The file names of a tokenizer in the public layout, defined once.
VOCAB_TXT = "vocab.txt"  # WordPiece: one token per line, the line number is its id
VOCAB_JSON, MERGES_TXT = "vocab.json", "merges.txt"  # byte-level BPE: {token: id}, the merges by rank
TOKENIZER_JSON = "tokenizer.json"  # the `tokenizers` package's whole pipeline, either model
TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP = "tokenizer_config.json", "special_tokens_map.json"  # settings
TOKENIZER_FILES = (VOCAB_TXT, TOKENIZER_JSON, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, VOCAB_JSON, MERGES_TXT)

SPECIAL_ROLES = ("unk_token", "cls_token", "sep_token", "pad_token", "mask_token", "bos_token", "eos_token")
NO_MAX_LENGTH = int(1e29)  # transformers writes int(1e30) as model_max_length when a model has no limit


def read_tokenizer_settings(folder: Path) -> dict:
    """special_tokens_map.json updated by tokenizer_config.json (either may be absent).

    Special tokens are written either as strings or as {"content": "[CLS]", ...} objects; both
    come back as strings.
    """
    settings = {}
    for name in (SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG):
        path = Path(folder) / name
        if not path.is_file():
            continue
        data = read_json(path)
        if not isinstance(data, dict):
            # A malformed file, not a wrong argument: hence ValueError.
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")  # noqa: TRY004
        for role in SPECIAL_ROLES:
            if isinstance(data.get(role), dict):
                if not isinstance(data[role].get("content"), str):
                    raise ValueError(f"{path}: {role} is an object without a string 'content'")  # noqa: TRY004
                data[role] = data[role]["content"]
        settings.update(data)
    return settings


def read_model_max_length(folder: Path, settings: dict, default: int) -> int:
    """The longest input the model takes: tokenizer_config.json's model_max_length, else the size
    of the position table in config.json, else ``default``."""
    value = settings.get("model_max_length")
    if isinstance(value, int) and 0 < value < NO_MAX_LENGTH:
        return value
    config_path = Path(folder) / CONFIG_NAME
    if config_path.is_file():
        config = read_json(config_path)
        for key in ("max_position_embeddings", "n_positions"):
            if isinstance(config, dict) and isinstance(config.get(key), int):
                return config[key]
    return default


def list_folder(folder: Path) -> str:
    """The file names in ``folder``, for error messages that say what was found instead."""
    return ", ".join(sorted(p.name for p in Path(folder).iterdir())) or "nothing"


def is_roberta_folder(folder: Path) -> bool:
    """A checkpoint folder of RoBERTa (minift/tokenizer/roberta.py): its config.json says model_type
    "roberta", or (a tokenizer folder alone) its tokenizer_config.json names RoBERTa's tokenizer class."""
    for name, key, values in ((CONFIG_NAME, "model_type", ("roberta",)),
                              (TOKENIZER_CONFIG, "tokenizer_class", ("RobertaTokenizer", "RobertaTokenizerFast"))):
        path = Path(folder) / name
        if path.is_file():
            data = read_json(path)
            if isinstance(data, dict) and data.get(key) in values:
                return True
    return False
