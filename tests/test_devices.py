"""Device paths (minift/train/device.py, the per-device dtype of minift/train/precision.py): what runs
on a CPU runs here (parsing --device, its errors, the order of the automatic choice, the DDP backend,
batches moved with the right copy mode, pinned loaders on CUDA); the GPU tests (a short fp16 run with
LossScaler on CUDA, bf16 on MPS, MiniLM on the GPU against the CPU) skip where there is no GPU."""

import re

import pytest
import torch

from minift.cli import main
from minift.data import LabelMap, demo_path, read_classification
from minift.models import BertForSequenceClassification
from minift.optim import AdamW
from minift.tokenizer import WordPieceTokenizer
from minift.train.device import DeviceError, distributed_backend, select_device, to_device
from minift.train.precision import LossScaler, autocast_context, autocast_dtype
from minift.train.tasks.classification import make_loaders

HAS_CUDA = torch.cuda.is_available()
HAS_MPS = torch.backends.mps.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
needs_mps = pytest.mark.skipif(not HAS_MPS, reason="needs an Apple GPU (MPS)")


def fake_machine(monkeypatch, cuda: int = 0, mps: bool = False) -> None:
    """Pretend this machine has `cuda` CUDA devices and (or not) an MPS device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


# ----------------------------------------------------------------------------------------------------
# select_device
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cuda,mps,expected", [(2, True, "cuda"), (0, True, "mps"), (0, False, "cpu")])
@pytest.mark.parametrize("name", [None, "auto"])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, name, cuda, mps, expected):
    fake_machine(monkeypatch, cuda=cuda, mps=mps)
    assert select_device(name) == torch.device(expected)


@pytest.mark.parametrize("name,expected", [("cpu", "cpu"), ("cpu:0", "cpu:0"), (torch.device("cpu"), "cpu")])
def test_cpu_is_always_there(name, expected):
    assert select_device(name) == torch.device(expected)


def test_override_wins_over_auto(monkeypatch):
    fake_machine(monkeypatch, cuda=2, mps=False)
    assert select_device("cpu") == torch.device("cpu")  # a GPU machine can still be told to use the CPU
    assert select_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("name,message", [
    ("gpu", r"--device 'gpu': not a device name; expected cpu, cuda, cuda:N, mps or auto"),
    ("CUDA", r"--device 'CUDA': not a device name"),
    ("cuda:x", r"--device 'cuda:x': not a device name"),
    ("cuda:-1", r"--device 'cuda:-1': not a device name"),
    ("", r"--device '': not a device name"),
    ("xpu", r"--device xpu: minift runs on cpu, cuda and mps, not xpu"),
    ("meta", r"--device meta: minift runs on cpu, cuda and mps, not meta"),
    ("cpu:1", r"--device cpu:1: the CPU is one device, cpu"),
])
def test_bad_names(name, message):
    with pytest.raises(DeviceError, match=message):
        select_device(name)


def test_absent_devices(monkeypatch):
    fake_machine(monkeypatch, cuda=0, mps=False)
    with pytest.raises(DeviceError, match=r"--device cuda: CUDA is not available on this machine \(torch "):
        select_device("cuda")
    with pytest.raises(DeviceError, match=r"--device mps: MPS is not available on this machine"):
        select_device("mps")


@pytest.mark.parametrize("env", [None, "2,3"])
def test_cuda_index_past_the_last_gpu(monkeypatch, env):
    """torch.device("cuda:1") is valid on any machine; the error would only come at the first .to()."""
    fake_machine(monkeypatch, cuda=1)
    if env is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert select_device("cuda:0") == torch.device("cuda", 0)
    hint = r" \(as CUDA_VISIBLE_DEVICES numbers them\)" if env else ""
    expected = rf"--device cuda:1: this machine has 1 CUDA device\(s\), numbered 0 to 0{hint}$"
    with pytest.raises(DeviceError, match=expected):
        select_device("cuda:1")


def test_one_mps_device(monkeypatch):
    fake_machine(monkeypatch, mps=True)
    assert select_device("mps:0") == torch.device("mps", 0)
    with pytest.raises(DeviceError, match=r"--device mps:1: there is one MPS device"):
        select_device("mps:1")


def test_device_error_is_a_value_error():
    assert issubclass(DeviceError, ValueError)  # the CLI prints ValueErrors as one line, no traceback


@pytest.mark.parametrize("flag,message", [
    ("gpu", r"--device 'gpu': not a device name"),
    ("cuda:99", r"--device cuda:99: (CUDA is not available|this machine has \d+ CUDA device)"),
])
def test_cli_reports_a_bad_device_in_one_line(capsys, minilm_dir, flag, message):
    # predict chooses the device before it loads anything, so this is quick
    assert main(["predict", "--model", str(minilm_dir), "--device", flag, "some text"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("minift predict: error: ")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err


# ----------------------------------------------------------------------------------------------------
# distributed_backend
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device,backend", [
    ("cpu", "gloo"), (torch.device("cpu"), "gloo"), ("cuda", "nccl"), ("cuda:1", "nccl"),
    (torch.device("cuda", 3), "nccl"), ("mps", "gloo"),
])
def test_distributed_backend(device, backend):
    # a name, not a device lookup: it answers on a machine without the GPU (a launcher may ask first)
    assert distributed_backend(device) == backend


def test_distributed_backend_bad_name():
    with pytest.raises(DeviceError, match=r"--device 'tpu': not a device name"):
        distributed_backend("tpu")


def test_gloo_is_available_for_cpu_runs():
    import torch.distributed as dist

    assert dist.is_available() and dist.is_gloo_available()


# ----------------------------------------------------------------------------------------------------
# to_device and pinned loaders
# ----------------------------------------------------------------------------------------------------


def test_to_device_on_cpu_keeps_values():
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(0, 30000, (4, 9), generator=g), "attention_mask": torch.ones(4, 9),
             "scores": torch.randn(4, 3, generator=g, dtype=torch.float64), "words": [["a", "b"]] * 4, "n": 4}
    moved = to_device(batch, torch.device("cpu"))
    assert moved.keys() == batch.keys()
    for k in ("input_ids", "attention_mask", "scores"):
        assert moved[k].device.type == "cpu" and moved[k].dtype == batch[k].dtype
        assert torch.equal(moved[k], batch[k])  # same values, bit for bit (nothing is cast)
    assert moved["words"] is batch["words"] and moved["n"] == 4  # non-tensors pass through
    assert to_device(batch, "cpu")["scores"] is batch["scores"]  # a string device works too


@pytest.mark.parametrize("device,non_blocking", [("cpu", False), ("cuda", True), ("cuda:1", True),
                                                 ("mps", False)])
def test_non_blocking_only_on_cuda(monkeypatch, device, non_blocking):
    """Asynchronous copies on CUDA (from pinned memory they overlap with compute); blocking on MPS,
    where a non-blocking copy from pageable memory can deliver wrong values (pytorch#139550)."""
    calls = []
    def recording_to(self, *args, **kwargs):
        calls.append((args, kwargs))
        return self

    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    to_device({"a": torch.zeros(2), "b": torch.ones(3), "c": "text"}, torch.device(device))
    assert calls == [((torch.device(device),), {"non_blocking": non_blocking})] * 2


@pytest.mark.parametrize("device,pinned", [("cpu", False), ("cuda", True), ("mps", False)])
def test_loaders_pin_memory_on_cuda_only(minilm_dir, device, pinned):
    """minift/train/tasks/classification.py: make_loaders pins host memory exactly where to_device copies asynchronously."""
    examples = read_classification(demo_path("train"))[:8]
    labels = LabelMap.from_labels([e.label for e in examples])
    train, dev = make_loaders(WordPieceTokenizer.from_pretrained(minilm_dir), labels, examples, examples,
                              batch_size=4, max_length=16, seed=0, device=torch.device(device))
    assert train.pin_memory is pinned and dev.pin_memory is pinned


# ----------------------------------------------------------------------------------------------------
# autocast dtype per device
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "mps", "cuda"])
def test_fp32_autocasts_nothing(device):
    assert autocast_dtype(device, "fp32") is None


def test_bf16_on_cpu():
    assert autocast_dtype("cpu", "bf16") == torch.bfloat16
    assert autocast_dtype(torch.device("cpu"), "bf16") == torch.bfloat16


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_fp16_is_cuda_only(device):
    expected = rf"--precision fp16 needs a CUDA device, but the device is {device}:"
    with pytest.raises(ValueError, match=expected):
        autocast_dtype(device, "fp16")


def test_bf16_needs_ampere_on_cuda(monkeypatch):
    """Before compute capability 8.0 torch would emulate bf16; minift says to use fp16 instead."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    expected = r"--precision bf16: Tesla T4 \(compute capability 7.5\) has no bfloat16 tensor cores.*fp16"
    with pytest.raises(ValueError, match=expected):
        autocast_dtype("cuda", "bf16")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert autocast_dtype("cuda:1", "bf16") == torch.bfloat16
    assert autocast_dtype("cuda", "fp16") == torch.float16


def test_bf16_on_mps_needs_macos_14(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: major < 14)
    with pytest.raises(ValueError, match=r"--precision bf16 on mps needs macOS 14 or later"):
        autocast_dtype("mps", "bf16")
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: True)
    assert autocast_dtype("mps", "bf16") == torch.bfloat16


def test_unknown_device_type():
    with pytest.raises(ValueError, match=r"--precision bf16 on meta: minift runs on cpu, cuda and mps"):
        autocast_dtype("meta", "bf16")


# ----------------------------------------------------------------------------------------------------
# On the GPU (skipped where there is none)
# ----------------------------------------------------------------------------------------------------


def _load_minilm(folder, impl: str = "sdpa") -> BertForSequenceClassification:
    torch.manual_seed(0)  # the new classifier head
    with pytest.warns(UserWarning, match="newly initialised"):
        return BertForSequenceClassification.from_pretrained(folder, num_labels=2, attn_impl=impl)


def _batch(seed: int, batch_size: int = 8, length: int = 32) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 20000, (batch_size, length), generator=g)
    mask = torch.ones_like(ids)
    mask[: batch_size // 2, length // 2:] = 0  # half the rows padded: the mask path runs too
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.randint(0, 2, (batch_size,), generator=g)}


@pytest.fixture
def exact_cuda_matmuls():
    """TF32 off on CUDA for the comparison with the CPU (it rounds fp32 inputs to 10 mantissa bits)."""
    if not HAS_CUDA:
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_cuda),
                                    pytest.param("mps", marks=needs_mps)])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_minilm_on_the_gpu_matches_the_cpu(minilm_dir, exact_cuda_matmuls, device, impl):
    model = _load_minilm(minilm_dir, impl).eval()
    batch = _batch(seed=1)
    with torch.no_grad():
        on_cpu = model.bert(**{k: v for k, v in batch.items() if k != "labels"}).last_hidden_state
        model.to(device)
        on_gpu = model.bert(**to_device({k: v for k, v in batch.items() if k != "labels"}, device))
        diff = (on_gpu.last_hidden_state.cpu() - on_cpu).abs().max().item()
    # 1e-4, not 1e-5: the GPU sums the same float32 products in another order (blocked matmuls, fused
    # attention) through six layers of values up to ~6; a wrong mask or layout would be off by > 0.1.
    assert diff <= 1e-4, f"{device} {impl}: max |gpu - cpu| = {diff:.2e}"


@pytest.mark.parametrize("device,precision", [
    pytest.param("cuda", "fp16", marks=needs_cuda),
    pytest.param("cuda", "bf16", marks=needs_cuda),
    pytest.param("mps", "bf16", marks=needs_mps),
])
def test_short_mixed_precision_run_learns(minilm_dir, device, precision):
    """Eight steps on one batch: the loss drops, every loss is finite, the weights stay float32, and
    with fp16 the LossScaler takes almost every step (at most one skip while it finds its scale)."""
    if device == "cuda" and precision == "bf16" and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("this GPU has no native bfloat16")
    device = torch.device(device)
    model = _load_minilm(minilm_dir).to(device).train()
    optimizer = AdamW(model.parameters(), lr=3e-4)
    scaler = LossScaler(enabled=precision == "fp16")
    batch = to_device(_batch(seed=2), device)
    losses, taken = [], 0
    for _ in range(8):
        with autocast_context(device, precision):
            loss = model(**batch).loss
        scaler.scale(loss).backward()
        taken += scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert taken >= 7, f"{8 - taken} of 8 steps skipped (scale now {scaler.get_scale()})"
    # memorising 8 examples: in fp32 on the CPU the loss goes from 0.69 to 0.04 in these 8 steps
    assert losses[-1] < 0.5 * losses[0], losses


@needs_cuda
def test_pinned_non_blocking_copy_keeps_values():
    g = torch.Generator().manual_seed(3)
    batch = {"x": torch.randn(64, 128, generator=g).pin_memory(),
             "ids": torch.randint(0, 9, (64,), generator=g).pin_memory()}
    moved = to_device(batch, "cuda")
    torch.cuda.synchronize()
    assert all(moved[k].is_cuda and torch.equal(moved[k].cpu(), batch[k]) for k in batch)


@needs_cuda
def test_every_visible_gpu_is_selectable_and_no_more():
    count = torch.cuda.device_count()
    assert [select_device(f"cuda:{i}").index for i in range(count)] == list(range(count))
    with pytest.raises(DeviceError, match=rf"this machine has {count} CUDA device"):
        select_device(f"cuda:{count}")
