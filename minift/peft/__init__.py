"""Parameter-efficient fine-tuning, written by hand: train a few parameters instead of all of them.

Lesson: `lessons/19-lora-and-freezing.md` (the strategies, the low-rank arithmetic, the parameter and
optimizer-memory count for all-MiniLM-L6-v2, the merge math).

One concept per file:

    trainable.py   what a method trains: the modules it targets (by name suffix), the task head
                   trained in full beside them, and the count a run prints (`trainable_summary`)
    freezing.py    freezing strategies (Howard & Ruder 2018; Lee et al. 2019): `freeze`
    lora.py        LoRA (Hu et al. 2021, eq. 3): `LoRALinear`, `apply_lora`, `merge_lora`
    files.py       the adapter on its own: adapter_config.json + adapter_model.safetensors
    setup.py       `setup_peft`, the one call `minift finetune` makes with its --freeze / --lora-* flags

A new method (DoRA, IA3, prompt tuning, bottleneck adapters) is one more file beside lora.py that
takes its targets and head from trainable.py, plus one branch in setup.py.
"""

from minift.peft.files import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter, save_adapter
from minift.peft.freezing import STRATEGIES, freeze
from minift.peft.lora import (
    DEFAULT_LORA_ALPHA,
    DEFAULT_LORA_DROPOUT,
    DEFAULT_LORA_TARGETS,
    LoRAConfig,
    LoRALinear,
    apply_lora,
    lora_parameters,
    lora_state_dict,
    merge_lora,
)
from minift.peft.setup import setup_peft
from minift.peft.trainable import HEAD_MODULES, trainable_parameters, trainable_summary

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "DEFAULT_LORA_ALPHA",
    "DEFAULT_LORA_DROPOUT",
    "DEFAULT_LORA_TARGETS",
    "HEAD_MODULES",
    "STRATEGIES",
    "LoRAConfig",
    "LoRALinear",
    "apply_lora",
    "freeze",
    "load_adapter",
    "lora_parameters",
    "lora_state_dict",
    "merge_lora",
    "save_adapter",
    "setup_peft",
    "trainable_parameters",
    "trainable_summary",
]
