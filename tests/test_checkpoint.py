"""minift/checkpoint/ and minift/models/pretrained.py against the public layout: transformers loads what we save, and back.

Part 1 uses tiny hand-made PretrainedModel subclasses, so that name mapping, the report, tying and
atomic writes are tested on their own. Part 2 uses minift's BERT and transformers' BERT with small
random configs and the real all-MiniLM-L6-v2 weights.
"""

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import transformers
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import minift.checkpoint.files as ckpt_files
import minift.io
from minift.checkpoint import (
    CheckpointError,
    load_into,
    load_state_dict,
    read_config,
    save_state_dict,
)
from minift.models import BertForMaskedLM, BertForSequenceClassification, BertModel
from minift.models.pretrained import PretrainedModel

# --------------------------------------------------------------------------------------------
# Tiny models: a base (embedding + norm) under the prefix "toy", a classifier and a tied LM head.
# --------------------------------------------------------------------------------------------


@dataclass
class ToyConfig:
    model_type: ClassVar[str] = "toy"
    vocab_size: int = 11
    hidden_size: int = 6
    num_labels: int = 3
    tie_word_embeddings: bool = True

    @classmethod
    def from_dict(cls, d: dict, source: str) -> "ToyConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return {"model_type": self.model_type, **dataclasses.asdict(self)}


class ToyModel(PretrainedModel):
    config_class = ToyConfig
    base_model_prefix = "toy"
    _keys_to_ignore_on_load = (r"position_ids$",)

    def __init__(self, config: ToyConfig):
        super().__init__(config)
        self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.norm = torch.nn.LayerNorm(config.hidden_size)
        self.register_buffer("position_ids", torch.arange(5))
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        if isinstance(module, (torch.nn.Embedding, torch.nn.Linear)):
            torch.nn.init.normal_(module.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.embed(ids))


class ToyClassifier(ToyModel):
    def __init__(self, config: ToyConfig):
        PretrainedModel.__init__(self, config)
        self.toy = ToyModel(config)
        self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.toy(ids))


class ToyLM(ToyModel):
    _tied_weights_keys = {"decoder.weight": "toy.embed.weight"}

    def __init__(self, config: ToyConfig, head_first: bool = False):
        PretrainedModel.__init__(self, config)
        if head_first:  # the tied target then comes first in state_dict(): saving must still drop it
            self.decoder = torch.nn.Linear(config.hidden_size, config.vocab_size)
        self.toy = ToyModel(config)
        self.decoder = torch.nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.toy(ids))


def random_state_dict(seed: int, dtypes=(torch.float32,)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (3,), (4, 4, 2), (13,), (1,), (6, 2)]
    return {
        f"layer{i}.w": torch.randn(shape, generator=g).to(dtypes[i % len(dtypes)])
        for i, shape in enumerate(shapes)
    }


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name  # bit-exact: saving must not change a single bit


# --------------------------------------------------------------------------------------------
# Saving and reading state dicts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_single_file_round_trip(tmp_path, seed):
    sd = random_state_dict(seed, dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.int64))
    save_state_dict(sd, tmp_path, metadata={"note": "hi"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert_same_state(load_state_dict(tmp_path), sd)
    assert_same_state(load_file(tmp_path / "model.safetensors"), sd)  # the reference reader agrees
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt", "note": "hi"}


# Tensor sizes are 140, 12, 128, 52, 4 and 48 bytes: 152 and 180 fill a shard exactly.
@pytest.mark.parametrize("max_shard_size", [100, 152, 180, "0.2KB", 1000])
def test_shards_match_huggingface_hub_plan(tmp_path, max_shard_size):
    sd = random_state_dict(3)
    files = save_state_dict(sd, tmp_path, max_shard_size=max_shard_size)
    reference = split_torch_state_dict_into_shards(
        sd, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files)
    if not reference.is_sharded:
        assert [p.name for p in files] == ["model.safetensors"]
    else:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert index["weight_map"] == reference.tensor_to_filename
        assert index["metadata"]["total_size"] == reference.metadata["total_size"]
        for shard, names in reference.filename_to_tensors.items():
            assert sorted(load_file(tmp_path / shard)) == sorted(names)
    assert_same_state(load_state_dict(tmp_path), sd)


def test_shared_storage_written_once(tmp_path):
    base = torch.randn(4, 3)
    sd = {"a": base, "alias": base, "view": base[1:3], "transposed": base.t()}
    save_state_dict(sd, tmp_path)
    loaded = load_state_dict(tmp_path)
    assert sorted(loaded) == ["a", "transposed", "view"]  # the exact alias is dropped
    assert torch.equal(loaded["view"], base[1:3]) and torch.equal(loaded["transposed"], base.t())


def test_new_save_removes_stale_weights_only(tmp_path):
    sd = random_state_dict(4)
    (tmp_path / "tokenizer.json").write_text("{}")
    save_state_dict(sd, tmp_path, max_shard_size=60)  # several shards
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 2
    save_state_dict(sd, tmp_path, max_shard_size=250)  # fewer shards: old ones go
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert sorted(p.name for p in tmp_path.glob("model-*")) == sorted(set(index["weight_map"].values()))
    save_state_dict(sd, tmp_path)  # single file: index and shards go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "tokenizer.json"]
    save_state_dict(sd, tmp_path, max_shard_size=100)  # sharded again: the single file goes
    assert not (tmp_path / "model.safetensors").exists()
    assert_same_state(load_state_dict(tmp_path), sd)


# --------------------------------------------------------------------------------------------
# Interrupted saves leave the previous checkpoint loadable
# --------------------------------------------------------------------------------------------


def crash_after_half(real_save):
    """A stand-in for safetensors' save_file that writes half a file and then dies."""

    def save(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt("killed during save")

    return save


@pytest.mark.parametrize("old_shards,new_shards", [(None, None), (None, 100), (100, 100), (100, None)])
def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch, old_shards, new_shards):
    old = random_state_dict(5)
    save_state_dict(old, tmp_path, max_shard_size=old_shards)
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setattr(ckpt_files, "save_file", crash_after_half(save_file))
    with pytest.raises(KeyboardInterrupt):
        save_state_dict(random_state_dict(6), tmp_path, max_shard_size=new_shards)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary file left behind
    assert_same_state(load_state_dict(tmp_path), old)


@pytest.mark.parametrize("old_shards", [None, 60])
def test_crash_before_new_index_keeps_previous_checkpoint(tmp_path, monkeypatch, old_shards):
    """New shards are in place but the index is not: old files are deleted only after the index."""
    old = random_state_dict(5)
    save_state_dict(old, tmp_path, max_shard_size=old_shards)

    def die(data, path):
        raise KeyboardInterrupt("killed before the index")

    monkeypatch.setattr(ckpt_files, "write_json", die)
    with pytest.raises(KeyboardInterrupt):
        save_state_dict(random_state_dict(6), tmp_path, max_shard_size=250)  # 2 shards, not the old 5
    assert_same_state(load_state_dict(tmp_path), old)


def test_interrupted_config_write_keeps_previous_config(tmp_path, monkeypatch):
    model = ToyModel(ToyConfig())
    model.save_pretrained(tmp_path)
    config_before = (tmp_path / "config.json").read_text()

    def die(path):
        raise OSError("disk full")

    monkeypatch.setattr(minift.io, "fsync_file", die)
    model.config.hidden_size = 99
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").read_text() == config_before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------------------------
# Reading errors: each names the file, and line/column or the tensor
# --------------------------------------------------------------------------------------------


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(CheckpointError, match="nope: checkpoint folder not found"):
        read_config(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="nope: checkpoint folder not found"):
        ToyModel.from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match=r"config\.json: no config\.json in the checkpoint folder"):
        ToyModel.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no weights found .* holds: nothing"):
        load_state_dict(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(CheckpointError, match="file.txt: expected a checkpoint folder, found a file"):
        ToyModel.from_pretrained(tmp_path / "file.txt")


@pytest.mark.parametrize("bad", [0, -5, "5XB", "many", True])
def test_bad_save_arguments(tmp_path, bad):
    with pytest.raises(CheckpointError, match="max_shard_size="):
        save_state_dict(random_state_dict(0), tmp_path / "new", max_shard_size=bad)
    with pytest.raises(CheckpointError, match="metadata must map str to str"):
        save_state_dict(random_state_dict(0), tmp_path / "new", metadata={"step": 3})
    assert not (tmp_path / "new").exists()  # nothing was written, not even the folder


def test_malformed_config(tmp_path):
    (tmp_path / "config.json").write_text('{\n  "vocab_size": 11,\n  "hidden_size": 6\n  "x": 1\n}\n')
    with pytest.raises(CheckpointError, match=r"config\.json:4:3: invalid JSON"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"config\.json: expected a JSON object .* found list"):
        read_config(tmp_path)


def test_unknown_model_type(tmp_path):
    ToyModel(ToyConfig()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="model_type 'gpt2' cannot be loaded into ToyModel.*'toy'"):
        ToyModel.from_pretrained(tmp_path)


def test_truncated_safetensors(tmp_path):
    sd = random_state_dict(7)
    save_state_dict(sd, tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    for cut, meaning in [(len(data) // 2, "truncated"), (5, "empty or truncated"), (0, "empty")]:
        (tmp_path / "model.safetensors").write_bytes(data[:cut])
        expected = f"model.safetensors: not a valid safetensors file: .*{meaning}"
        with pytest.raises(CheckpointError, match=expected):
            load_state_dict(tmp_path)


def test_index_problems_all_reported(tmp_path):
    sd = random_state_dict(8)
    save_state_dict(sd, tmp_path, max_shard_size=100)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    (tmp_path / shards[0]).unlink()
    index["weight_map"]["ghost.w"] = shards[1]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError) as err:
        load_state_dict(tmp_path)
    message = str(err.value)
    assert f"shard {shards[0]} named by the index is missing" in message
    assert f"tensor ghost.w is listed in the index for {shards[1]} but {shards[1]} lacks it" in message
    index["weight_map"]["ghost.w"] = "../outside.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="'../outside.safetensors' is not a plain file name"):
        load_state_dict(tmp_path)


def test_pickle_refused_unless_allowed(tmp_path):
    sd = random_state_dict(9)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refusing to load a pickle checkpoint.*arbitrary code") as err:
        load_state_dict(tmp_path)
    assert "save_state_dict(load_state_dict(" in str(err.value)  # says how to convert
    assert_same_state(load_state_dict(tmp_path, allow_pickle=True), sd)
    torch.save(sd, tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="weights.pt: refusing"):
        load_state_dict(tmp_path / "weights.pt")
    assert_same_state(load_state_dict(tmp_path / "weights.pt", allow_pickle=True), sd)


def test_pickle_with_code_is_not_run(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > /dev/null",))

    torch.save({"w": torch.ones(1), "evil": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_state_dict(tmp_path, allow_pickle=True)


# --------------------------------------------------------------------------------------------
# load_into: name mapping, report, tying, dtype
# --------------------------------------------------------------------------------------------


def toy_outputs(model: torch.nn.Module) -> torch.Tensor:
    return model(torch.tensor([[1, 2, 3, 10]]))


def test_base_checkpoint_into_head_and_back(tmp_path):
    torch.manual_seed(0)
    base = ToyModel(ToyConfig())
    base.save_pretrained(tmp_path / "base")
    with pytest.warns(UserWarning, match=r"newly initialised: classifier\.bias, classifier\.weight"):
        head = ToyClassifier.from_pretrained(tmp_path / "base")
    assert torch.equal(head.toy(torch.arange(4)), base(torch.arange(4)))  # bit-exact copy

    head.save_pretrained(tmp_path / "head")
    assert "toy.embed.weight" in load_state_dict(tmp_path / "head")
    with pytest.warns(UserWarning, match=r"not used \(another head's tensors\): classifier\.bias"):
        again = ToyModel.from_pretrained(tmp_path / "head")
    assert torch.equal(again(torch.arange(4)), base(torch.arange(4)))
    assert not again.training  # eval mode, as transformers returns it


def test_head_to_head_checkpoint_loads_without_warning(tmp_path):
    head = ToyClassifier(ToyConfig())
    head.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = ToyClassifier.from_pretrained(tmp_path)
    assert torch.equal(toy_outputs(loaded), toy_outputs(head.eval()))


def test_partial_head_is_missing_not_new(tmp_path):
    sd = ToyClassifier(ToyConfig()).state_dict()
    del sd["classifier.bias"]
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: classifier\.bias"):
        load_into(ToyClassifier(ToyConfig()), sd)


def test_ignored_keys_and_dtype_conversion():
    source = ToyModel(ToyConfig())
    sd = {k: v.double() for k, v in source.state_dict().items() if k != "position_ids"}
    sd["position_ids"] = torch.arange(100)  # a buffer of another length: ignored by regex, no error
    target = ToyModel(ToyConfig())
    report = load_into(target, sd)
    assert not report.has_errors and "position_ids" not in report.loaded
    assert target.embed.weight.dtype == torch.float32
    torch.testing.assert_close(target.embed.weight, source.embed.weight, rtol=0, atol=0)


def test_all_problems_in_one_report():
    sd = ToyClassifier(ToyConfig()).state_dict()
    del sd["toy.norm.bias"]
    sd["toy.embed.weight"] = torch.zeros(12, 6)
    sd["toy.extra.weight"] = torch.zeros(2)
    sd["cls.predictions.bias"] = torch.zeros(2)
    model = ToyClassifier(ToyConfig())
    with pytest.raises(CheckpointError) as err:
        load_into(model, sd, source="somewhere")
    message = str(err.value)
    assert "missing from the checkpoint: toy.norm.bias" in message
    assert "shape mismatch for toy.embed.weight: checkpoint [12, 6], model [11, 6]" in message
    assert "unexpected in the checkpoint (the model has no such tensor): toy.extra.weight" in message
    assert "not used (another head's tensors): cls.predictions.bias" in message
    assert "strict=False" in message
    before = model.toy.embed.weight.clone()
    with pytest.warns(UserWarning, match="shape mismatch for toy.embed.weight"):
        report = load_into(model, sd, strict=False)
    assert torch.equal(model.toy.embed.weight, before)  # the mis-shaped tensor is left alone
    assert "toy.norm.weight" in report.loaded and report.missing == ["toy.norm.bias"]


@pytest.mark.parametrize("head_first", [False, True])
def test_tied_weights_after_load_and_after_save(tmp_path, head_first):
    lm = ToyLM(ToyConfig(), head_first=head_first)
    assert lm.decoder.weight is lm.toy.embed.weight
    lm.save_pretrained(tmp_path)
    saved = load_state_dict(tmp_path)
    assert "decoder.weight" not in saved and "toy.embed.weight" in saved  # written once, as transformers
    loaded = ToyLM.from_pretrained(tmp_path)
    assert loaded.decoder.weight is loaded.toy.embed.weight
    assert torch.equal(toy_outputs(loaded), toy_outputs(lm.eval()))
    assert loaded.num_parameters() == lm.num_parameters() == 11 * 6 + 2 * 6 + 11

    # An old checkpoint that kept only the tied target still provides the shared values.
    only_target = {("decoder.weight" if k == "toy.embed.weight" else k): v for k, v in saved.items()}
    fresh = ToyLM(ToyConfig())
    fresh.decoder.weight = torch.nn.Parameter(torch.zeros(11, 6))  # untied: load_into ties again
    load_into(fresh, only_target)
    assert fresh.decoder.weight is fresh.toy.embed.weight
    assert torch.equal(fresh.toy.embed.weight, lm.toy.embed.weight)


def test_untied_when_config_says_so(tmp_path):
    lm = ToyLM(ToyConfig(tie_word_embeddings=False))
    assert lm.decoder.weight is not lm.toy.embed.weight
    lm.save_pretrained(tmp_path)
    assert "decoder.weight" in load_state_dict(tmp_path)
    loaded = ToyLM.from_pretrained(tmp_path)
    assert torch.equal(loaded.decoder.weight, lm.decoder.weight)


def test_overrides_reach_the_config(tmp_path):
    ToyModel(ToyConfig()).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"embed\.weight: checkpoint \[11, 6\], model \[20, 6\]"):
        ToyModel.from_pretrained(tmp_path, vocab_size=20)
    config = read_config(tmp_path)
    assert config["architectures"] == ["ToyModel"] and config["model_type"] == "toy"
    with pytest.warns(UserWarning, match="newly initialised") as record:
        assert ToyClassifier.from_pretrained(tmp_path, num_labels=5).classifier.out_features == 5
    assert record[0].filename == __file__  # the warning points at the caller's line


def test_num_parameters_trainable_only():
    model = ToyClassifier(ToyConfig())
    model.toy.embed.weight.requires_grad_(False)
    assert model.num_parameters() == 11 * 6 + 2 * 6 + 6 * 3 + 3
    assert model.num_parameters(trainable_only=True) == 2 * 6 + 6 * 3 + 3


def test_legacy_layernorm_names():
    source = ToyModel(ToyConfig())
    sd = source.state_dict()
    # Rename as the TensorFlow-converted checkpoints do (their module is called LayerNorm).
    legacy = {
        k.replace("norm.weight", "LayerNorm.gamma").replace("norm.bias", "LayerNorm.beta"): v
        for k, v in sd.items()
    }
    model = ToyModel(ToyConfig())
    model.LayerNorm = model.norm
    del model.norm
    report = load_into(model, legacy)
    assert sorted(report.loaded) == ["LayerNorm.bias", "LayerNorm.weight", "embed.weight"]
    assert torch.equal(model.LayerNorm.weight, source.norm.weight)


# --------------------------------------------------------------------------------------------
# Part 2: minift BERT <-> transformers BERT, through the files each one writes
# --------------------------------------------------------------------------------------------

PAIRS = {
    "BertModel": (BertModel, "BertModel"),
    "BertForSequenceClassification": (BertForSequenceClassification, "BertForSequenceClassification"),
    "BertForMaskedLM": (BertForMaskedLM, "BertForMaskedLM"),
}
# Two small random shapes; hidden 24 with 3 heads and an odd intermediate size catch transposes.
SHAPES = [
    dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37),
    dict(hidden_size=24, num_hidden_layers=3, num_attention_heads=3, intermediate_size=50),
]


def reference_model(kind: str, seed: int, shape: dict) -> torch.nn.Module:
    config = transformers.BertConfig(vocab_size=99, max_position_embeddings=40, num_labels=3, **shape)
    torch.manual_seed(seed)
    model = getattr(transformers, kind)(config).eval()
    with torch.no_grad():  # transformers zero-initialises biases: randomise them so they are checked
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, t = 2 + seed % 2, 7 + seed
    ids = torch.randint(0, 99, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, t - 3 :] = 0  # padding at the end of one row
    types = torch.randint(0, 2, (b, t), generator=g)
    return ids, mask, types


def outputs(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    ids, mask, types = batch(seed)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    names = ("last_hidden_state", "pooler_output", "logits")
    return {n: getattr(out, n) for n in names if getattr(out, n, None) is not None}


def assert_same_outputs(ours: torch.nn.Module, ref: torch.nn.Module, seed: int) -> float:
    a, b = outputs(ours, seed), outputs(ref, seed)
    assert a.keys() == b.keys() and a
    worst = 0.0
    for name in a:
        # fp32 activations of the same weights: summation order differs, 1e-5 absolute is the bound.
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5, msg=name)
        worst = max(worst, (a[name] - b[name]).abs().max().item())
    return worst


def transformers_load(kind: str, folder: Path) -> torch.nn.Module:
    model, info = getattr(transformers, kind).from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


@pytest.mark.parametrize("kind", list(PAIRS))
@pytest.mark.parametrize("seed,shard", [(0, None), (1, "3KB")])
def test_both_directions_same_outputs(tmp_path, kind, seed, shard):
    ours_cls, _ = PAIRS[kind]
    ref = reference_model(kind, seed, SHAPES[seed])
    ref.save_pretrained(tmp_path / "theirs", max_shard_size=shard or "50GB")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same architecture loads without a single warning
        ours = ours_cls.from_pretrained(tmp_path / "theirs")
    assert not ours.training
    assert_same_outputs(ours, ref, seed)

    ours.save_pretrained(tmp_path / "ours", max_shard_size=shard)
    theirs_files = sorted(p.name for p in (tmp_path / "theirs").glob("model*"))
    assert sorted(p.name for p in (tmp_path / "ours").glob("model*")) == theirs_files
    if shard:  # same shards, same tensors in each: the layout transformers writes, file for file
        assert len(theirs_files) > 3
        ours_index = json.loads((tmp_path / "ours" / "model.safetensors.index.json").read_text())
        theirs_index = json.loads((tmp_path / "theirs" / "model.safetensors.index.json").read_text())
        assert ours_index == theirs_index
    back = transformers_load(kind, tmp_path / "ours")
    assert_same_outputs(ours, back, seed + 1)
    assert read_config(tmp_path / "ours")["architectures"] == [kind]


def test_mlm_tied_after_load_and_save(tmp_path):
    ref = reference_model("BertForMaskedLM", 2, SHAPES[0])
    ref.save_pretrained(tmp_path / "theirs")
    ours = BertForMaskedLM.from_pretrained(tmp_path / "theirs")
    embedding = ours.bert.embeddings.word_embeddings.weight
    assert ours.cls.predictions.decoder.weight is embedding
    with torch.no_grad():
        embedding[5] += 1.0  # an update to one name is seen through the other
    ours.save_pretrained(tmp_path / "ours")
    assert "cls.predictions.decoder.weight" not in load_state_dict(tmp_path / "ours")
    again = BertForMaskedLM.from_pretrained(tmp_path / "ours")
    assert again.cls.predictions.decoder.weight is again.bert.embeddings.word_embeddings.weight
    back = transformers_load("BertForMaskedLM", tmp_path / "ours")
    torch.testing.assert_close(back.cls.predictions.decoder.weight, embedding, rtol=0, atol=0)
    assert_same_outputs(again, back, 2)


def test_real_minilm_into_base_and_classifier(minilm_dir):
    ref = transformers.BertModel.from_pretrained(minilm_dir).eval()
    base = BertModel.from_pretrained(minilm_dir)
    worst = assert_same_outputs(base, ref, 0)
    print(f"MiniLM BertModel vs transformers: max abs diff {worst:.2e}")

    with pytest.warns(UserWarning, match=r"newly initialised: classifier\.bias, classifier\.weight"):
        head = BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=5)
    assert head.classifier.out_features == 5
    ids, mask, types = batch(1)
    with torch.no_grad():
        torch.testing.assert_close(  # same weights, same code: bit-identical
            head.bert(ids, mask, types).last_hidden_state, base(ids, mask, types).last_hidden_state,
            rtol=0, atol=0,
        )


def test_real_minilm_errors(tmp_path, minilm_dir):
    for name in ("config.json", "vocab.txt"):
        (tmp_path / name).write_bytes((minilm_dir / name).read_bytes())
    data = (minilm_dir / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    truncated = r"model\.safetensors: not a valid safetensors file: .*truncated"
    with pytest.raises(CheckpointError, match=truncated):
        BertModel.from_pretrained(tmp_path)

    (tmp_path / "model.safetensors").write_bytes(data)
    with pytest.raises(CheckpointError) as err:
        BertModel.from_pretrained(tmp_path, vocab_size=30000, max_position_embeddings=128)
    message = str(err.value)
    for name, ckpt_shape, model_shape in [
        ("embeddings.word_embeddings.weight", [30522, 384], [30000, 384]),
        ("embeddings.position_embeddings.weight", [512, 384], [128, 384]),
    ]:
        assert f"shape mismatch for {name}: checkpoint {ckpt_shape}, model {model_shape}" in message

    config = json.loads((minilm_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="model_type 'gpt2' cannot be loaded into BertModel"):
        BertModel.from_pretrained(tmp_path)


def test_two_tensors_for_one_name_is_an_error():
    sd = ToyModel(ToyConfig()).state_dict()
    sd = {k.replace("norm.", "LayerNorm."): v for k, v in sd.items()}
    sd["LayerNorm.gamma"] = sd["LayerNorm.weight"]
    model = ToyModel(ToyConfig())
    model.LayerNorm = model.norm
    del model.norm
    with pytest.raises(CheckpointError, match=r"LayerNorm\.gamma \(a second tensor for LayerNorm\.weight"):
        load_into(model, sd)
