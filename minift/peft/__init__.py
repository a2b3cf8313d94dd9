"""Parameter-efficient fine-tuning, written by hand: train a few parameters instead of all of them.

Lesson: `lessons/19-lora-and-freezing.md` (the strategies, the low-rank arithmetic, the parameter and
optimizer-memory count for all-MiniLM-L6-v2, the merge math).

One concept per file:

    trainable.py   what a method trains: the modules it targets (by name suffix), the task head
                   trained in full beside them, and the count a run prints (`trainable_summary`)
    freezing.py    freezing strategies (Howard & Ruder 2018; Lee et al. 2019): `freeze`
    lora.py        LoRA (Hu et al. 2021, eq. 3), rsLoRA's scaling and DoRA (Liu et al. 2024, eq. 5):
                   `LoRALinear`, `DoRALinear`, `apply_lora`, `merge_lora`
    ia3.py         (IA)^3 (Liu et al. 2022, sec. 3.3): learned scales, `IA3Linear`, `apply_ia3`
    prompt_tuning.py  prompt tuning (Lester et al. 2021): virtual token embeddings before the text
    prefix.py      prefix tuning / P-tuning v2 (Li & Liang 2021): learned keys/values in every layer
    adapters.py    bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021)
    unload.py      what every method answers: `active_method`, `merge_and_unload`, `unload`
    files.py       minift's own LoRA adapter files (adapter_config.json + adapter_model.safetensors)
    peft_files.py  the `peft` library's layout of the same two files: `save_peft_adapter`, `load_peft_adapter`
    setup.py       `setup_peft`, the one call `minift finetune` makes with its --freeze / --peft flags

Lessons: 19 (freezing, LoRA) and 36 (every method side by side, the files).
A new method is one more file beside lora.py that takes its targets and head from trainable.py, plus
one branch in setup.py, unload.py and peft_files.py.
"""

from minift.peft.adapters import ADAPTER_KINDS, AdapterLinear, apply_adapters
from minift.peft.files import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter, save_adapter
from minift.peft.freezing import STRATEGIES, freeze
from minift.peft.ia3 import IA3Linear, apply_ia3, merge_ia3
from minift.peft.lora import (
    DEFAULT_LORA_ALPHA,
    DEFAULT_LORA_DROPOUT,
    DEFAULT_LORA_TARGETS,
    DoRALinear,
    LoRAConfig,
    LoRALinear,
    apply_lora,
    lora_parameters,
    lora_state_dict,
    merge_lora,
)
from minift.peft.peft_files import adapter_head_rows, load_peft_adapter, save_peft_adapter
from minift.peft.prefix import PrefixEncoder, apply_prefix_tuning
from minift.peft.prompt_tuning import PROMPT_INITS, PromptEmbedding, apply_prompt_tuning
from minift.peft.setup import METHOD_OPTIONS, check_method_options, method_of, setup_peft
from minift.peft.trainable import HEAD_MODULES, trainable_parameters, trainable_summary
from minift.peft.unload import MERGEABLE, METHODS, active_method, merge_and_unload, method_parameters, unload

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_KINDS",
    "ADAPTER_WEIGHTS",
    "DEFAULT_LORA_ALPHA",
    "DEFAULT_LORA_DROPOUT",
    "DEFAULT_LORA_TARGETS",
    "HEAD_MODULES",
    "MERGEABLE",
    "METHODS",
    "METHOD_OPTIONS",
    "PROMPT_INITS",
    "STRATEGIES",
    "AdapterLinear",
    "DoRALinear",
    "IA3Linear",
    "LoRAConfig",
    "LoRALinear",
    "PrefixEncoder",
    "PromptEmbedding",
    "active_method",
    "adapter_head_rows",
    "apply_adapters",
    "apply_ia3",
    "apply_lora",
    "apply_prefix_tuning",
    "apply_prompt_tuning",
    "check_method_options",
    "freeze",
    "load_adapter",
    "load_peft_adapter",
    "lora_parameters",
    "lora_state_dict",
    "merge_and_unload",
    "merge_ia3",
    "merge_lora",
    "method_of",
    "method_parameters",
    "save_adapter",
    "save_peft_adapter",
    "setup_peft",
    "trainable_parameters",
    "trainable_summary",
    "unload",
]
