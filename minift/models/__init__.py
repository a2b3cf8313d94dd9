"""The models, with the class names `transformers` uses: BERT (bert.py, lesson 05), GPT-2
(gpt2.py, lesson 15) and RoBERTa (roberta.py, lesson 34), the original encoder-decoder Transformer
(transformer.py, lesson 39), and transformers' Auto classes, which pick one by config.json's
model_type through the table of architectures (auto.py, lesson 33); BERT as a decoder
(bert_decoder.py) and the warm-started encoder-decoder (encoder_decoder.py, lesson 40)."""

from minift.models.auto import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from minift.models.bert import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from minift.models.bert_decoder import BertLMHeadModel
from minift.models.encoder_decoder import EncoderDecoderConfig, EncoderDecoderModel
from minift.models.gpt2 import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2ForTokenClassification,
    GPT2LMHeadModel,
    GPT2Model,
)
from minift.models.roberta import (
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
)
from minift.models.transformer import Transformer, TransformerConfig

__all__ = [
    "AutoConfig",
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForMaskedLM",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "BertConfig",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertLMHeadModel",
    "BertModel",
    "EncoderDecoderConfig",
    "EncoderDecoderModel",
    "GPT2Config",
    "GPT2ForSequenceClassification",
    "GPT2ForTokenClassification",
    "GPT2LMHeadModel",
    "GPT2Model",
    "RobertaConfig",
    "RobertaForMaskedLM",
    "RobertaForSequenceClassification",
    "RobertaForTokenClassification",
    "RobertaModel",
    "Transformer",
    "TransformerConfig",
]
