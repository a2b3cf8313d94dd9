"""RoBERTa's tokenizer: GPT-2's byte-level BPE (minift/tokenizer/bpe.py) with fairseq's special
tokens around every text.

Lesson: lessons/34-roberta.md.

RoBERTa replaced BERT's 30k WordPiece vocabulary by GPT-2's 50k byte-level BPE (Liu et al. 2019,
sec. 4.4): any text is encoded without [UNK]. What it adds to GPT-2's tokenizer:

- five special tokens at fairseq's ids: `<s>` 0 (also the classifier's token), `<pad>` 1, `</s>` 2,
  `<unk>` 3, and `<mask>` at the end of the vocabulary;
- the template ``<s> A </s>`` and, for pairs, ``<s> A </s></s> B </s>``, every token type 0 (RoBERTa
  has one segment; the model is never given token_type_ids);
- ``<mask>`` with lstrip: written in a text it takes the whitespace on its left, so "It was <mask>."
  reads the mask where " great" would be -- the token the masked LM predicts carries the space
  itself (`Ġgreat`). Prompt-based fine-tuning (lesson 35) relies on this.

`tests/test_roberta_tokenizer.py` compares the ids with the `tokenizers` package and transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from minift.checkpoint.files import CONFIG_NAME
from minift.io import read_json
from minift.tokenizer.base import Template, split_on_special_tokens
from minift.tokenizer.bpe import ByteLevelBPETokenizer
from minift.tokenizer.files import read_tokenizer_settings

BOS, PAD, EOS, UNK, MASK = "<s>", "<pad>", "</s>", "<unk>", "<mask>"


class RobertaTokenizer(ByteLevelBPETokenizer):
    """GPT-2's byte-level BPE with `<s> … </s>` around a text and `<mask>` (lstrip)."""

    ROLES: ClassVar[dict[str, str]] = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "sep_token": EOS,
                                       "pad_token": PAD, "cls_token": BOS, "mask_token": MASK}
    SAVED_ROLES = ROLES
    TEMPLATE = Template(single=((BOS, 0), ("$A", 0), (EOS, 0)),
                        pair=((BOS, 0), ("$A", 0), (EOS, 0), (EOS, 0), ("$B", 0), (EOS, 0)))
    LSTRIP = (MASK,)
    TOKENIZER_CLASS = "RobertaTokenizer"

    @classmethod
    def from_pretrained(cls, folder: str | Path, *args, **kwargs) -> RobertaTokenizer:
        """As GPT-2's; without model_max_length in tokenizer_config.json, the longest input is the
        position table less the rows up to padding_idx (514 - 2 = 512 for roberta-base)."""
        tokenizer = super().from_pretrained(folder, *args, **kwargs)
        config_path = Path(folder) / CONFIG_NAME
        if "model_max_length" not in read_tokenizer_settings(Path(folder)) and config_path.is_file():
            config = read_json(config_path)
            if isinstance(config.get("max_position_embeddings"), int) and isinstance(config.get("pad_token_id"), int):
                tokenizer.model_max_length = config["max_position_embeddings"] - config["pad_token_id"] - 1
        return tokenizer

    def _words(self, text: str) -> list[tuple[str, bool]]:
        """As every tokenizer's, except that a token in LSTRIP takes the whitespace on its left (what
        `tokenizers`' AddedToken(lstrip=True) does): "was <mask>" -> "was", "<mask>"."""
        pieces = split_on_special_tokens(text, self._special_pattern)
        words = []
        for k, (piece, is_special) in enumerate(pieces):
            if is_special:
                words.append((piece, True))
                continue
            if k + 1 < len(pieces) and pieces[k + 1][0] in self.LSTRIP:
                piece = piece.rstrip()
            words += [(word, False) for word in self.pre_tokenize(piece)]
        return words

