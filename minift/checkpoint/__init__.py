"""Checkpoints in the public (Hugging Face) layout (lesson 06).

    files.py   the file names; reading a folder's weights into {name: tensor} (safetensors, shards +
               index, pickles refused); writing them back, sharded or not, atomically
    load.py    putting a {name: tensor} dict into a model: the name map, the load report, tying

The model base class with ``from_pretrained`` / ``save_pretrained`` is minift/models/pretrained.py.
"""

from minift.checkpoint.files import (
    CONFIG_NAME,
    PICKLE_INDEX,
    PICKLE_WEIGHTS,
    SAFE_INDEX,
    SAFE_WEIGHTS,
    SHARD_NAME,
    SHARD_PATTERN,
    CheckpointError,
    load_state_dict,
    read_config,
    read_index,
    save_state_dict,
    write_safetensors,
)
from minift.checkpoint.load import LoadReport, load_into, tie_weights

__all__ = [
    "CONFIG_NAME",
    "PICKLE_INDEX",
    "PICKLE_WEIGHTS",
    "SAFE_INDEX",
    "SAFE_WEIGHTS",
    "SHARD_NAME",
    "SHARD_PATTERN",
    "CheckpointError",
    "LoadReport",
    "load_into",
    "load_state_dict",
    "read_config",
    "read_index",
    "save_state_dict",
    "tie_weights",
    "write_safetensors",
]
