"""minift/models/calibration.py: the per-machine choice of the CPU decoding path's BLAS order. The
margin rule on injected timings, the on-disk cache (written in a temporary folder, read back without
timing, keyed by the machine, a corrupt or unwritable file reported and survived), the forced modes,
the buckets, that calibrating touches no RNG and never runs in a training step, and greedy decoding
against transformers whichever order wins."""

import json

import pytest
import torch
import transformers
from tests_support import threads

from minift.generate import generate
from minift.models import calibration, gpt2_fast
from minift.models.calibration import PLAIN
from minift.models.gpt2 import GPT2Config, GPT2LMHeadModel
from minift.models.gpt2_fast import COLUMNS, SLABS, TALL, FewRowsLinear, FewRowsLMHead

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py

CONFIG = {"n_embd": 20, "n_head": 4, "n_layer": 2, "vocab_size": 41, "n_positions": 32, "resid_pdrop": 0.0,
          "embd_pdrop": 0.0, "attn_pdrop": 0.0}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache folder in MINIFT_CACHE_DIR, calibrate mode, and no decision remembered from an
    earlier test: what a new process on a new machine sees. Yields the folder."""
    monkeypatch.setenv(calibration.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(calibration.ORDER_ENV, raising=False)
    calibration.forget()
    yield tmp_path / "cache"
    calibration.forget()


class FakeTimer:
    """Stands in for calibration.measure: counts the measurements, runs every candidate once (each must
    give F.linear's numbers) and returns `seconds[name]` (default 1.0 for any other)."""

    def __init__(self, **seconds):
        self.seconds, self.calls = seconds, []

    def __call__(self, candidates):
        self.calls.append(sorted(candidates))
        want = candidates[PLAIN]()
        for fn in candidates.values():
            assert (fn() - want).abs().max() <= 1e-5
        return {name: self.seconds.get(name, 1.0) for name in candidates}


def fake(monkeypatch, **seconds) -> FakeTimer:
    timer = FakeTimer(**{k.replace("_", " "): v for k, v in seconds.items()})
    monkeypatch.setattr(calibration, "measure", timer)
    return timer


def projection(out_features=24, in_features=12) -> FewRowsLinear:
    torch.manual_seed(0)
    layer = FewRowsLinear(in_features, out_features)
    layer.weight.requires_grad_(False)
    return layer


def spy_slabs(monkeypatch) -> list:
    """A list that gets one entry per call of few_rows_linear (the slab order) from a FewRowsLinear."""
    calls = []
    real = gpt2_fast.few_rows_linear
    monkeypatch.setattr(gpt2_fast, "few_rows_linear", lambda *a: calls.append(a[3]) or real(*a))
    return calls


def run(layer, rows=1, n_threads=2):
    """The layer on `rows` rows, with `n_threads` threads and no autograd; checks F.linear's numbers."""
    x = torch.randn(rows, layer.in_features)
    with threads(n_threads), torch.no_grad():
        got = layer(x)
    assert (got - torch.nn.functional.linear(x, layer.weight, layer.bias)).abs().max() <= 1e-5
    return got


# ----------------------------------------------------------------------------------------------------
# The decision
# ----------------------------------------------------------------------------------------------------


def test_pick_keeps_an_order_only_where_it_pays():
    assert calibration.MARGIN == 0.05
    assert calibration.pick({PLAIN: 1.0, SLABS: 0.97}) == PLAIN  # 3% faster: within the margin
    assert calibration.pick({PLAIN: 1.0, SLABS: 0.80}) == SLABS  # 20% faster: kept
    assert calibration.pick({PLAIN: 1.0, SLABS: 1.30}) == PLAIN
    assert calibration.pick({PLAIN: 1.0, TALL: 0.9, COLUMNS: 0.5}) == COLUMNS  # the fastest of several
    assert calibration.pick({PLAIN: 1.0, TALL: 0.97, COLUMNS: 0.96}) == PLAIN


@pytest.mark.parametrize(("slab_seconds", "slabs_run"), [(0.97, False), (0.80, True)])
def test_a_layer_runs_the_order_its_calibration_picked(cache, monkeypatch, slab_seconds, slabs_run):
    """Through the layer: a candidate 3% faster than F.linear leaves F.linear; 20% faster is taken."""
    timer = fake(monkeypatch, **{PLAIN: 1.0, SLABS: slab_seconds})
    calls = spy_slabs(monkeypatch)
    layer = projection()
    run(layer)  # calibrates (the fake timer runs every candidate once)
    calls.clear()
    run(layer)
    assert timer.calls == [[PLAIN, SLABS]]
    assert bool(calls) == slabs_run


def test_the_lm_head_runs_each_order_its_calibration_picked(cache, monkeypatch):
    """The head's three orders for one row and two for several, each taken when it wins; the column
    copy built to time the column order is kept only when that order wins."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**CONFIG, attn_impl="sdpa")).eval()
    head = model.lm_head
    assert type(head) is FewRowsLMHead
    ran = []
    real = FewRowsLMHead.few_rows_logits
    monkeypatch.setattr(FewRowsLMHead, "few_rows_logits", lambda self, h, o=None: ran.append(o) or real(self, h, o))
    for winner in (PLAIN, TALL, COLUMNS):
        calibration.forget()
        head._by_column = None
        for path in cache.glob("decoding-order/*.json"):  # a new machine each time
            path.unlink()
        timer = fake(monkeypatch, **{winner: 0.5})
        for rows in (1, 3):
            hidden = torch.randn(rows, 1, CONFIG["n_embd"])
            with torch.no_grad():
                head(hidden)  # calibrates (the fake timer runs every candidate once)
                if rows == 1:
                    assert (head._by_column is not None) == (winner == COLUMNS)  # freed if its order lost
                ran.clear()
                got = head(hidden)
            assert (got - torch.nn.functional.linear(hidden, head.weight)).abs().max() <= 1e-5
            expected = winner if rows == 1 or winner != COLUMNS else PLAIN  # no column order for 3 rows
            assert ran == ([] if expected == PLAIN else [expected]), (winner, rows, ran)
        assert timer.calls == [sorted((PLAIN, TALL, COLUMNS)), sorted((PLAIN, TALL))]


def test_measure_times_every_candidate_interleaved_and_from_memory():
    """One warm-up call each, then REPEATS rounds in a rotated order, every timed call after a read that
    evicts the weight from the caches; the medians are per call."""
    seen = []
    candidates = {name: (lambda name=name: seen.append(name)) for name in ("a", "b", "c")}
    seconds = calibration.measure(candidates, repeats=3, evict=lambda: seen.append("evict"))
    assert set(seconds) == {"a", "b", "c"} and all(s > 0 for s in seconds.values())
    assert seen[:3] == ["a", "b", "c"]  # the warm-up
    timed = seen[3:]
    assert timed[0::2] == ["evict"] * 9  # an eviction before each of the 9 timed calls
    assert timed[1::2] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # rotated every round


def test_the_evictor_reads_twice_the_last_level_cache(monkeypatch):
    monkeypatch.setattr(calibration, "last_level_cache_bytes", lambda: 40 << 20)
    assert calibration.evictor().__self__.numel() * 4 == 80 << 20
    monkeypatch.setattr(calibration, "last_level_cache_bytes", lambda: None)  # unknown: the minimum, twice
    assert calibration.evictor().__self__.numel() * 4 == 2 * calibration.EVICT_MIN
    monkeypatch.setattr(calibration, "last_level_cache_bytes", lambda: 4 << 30)  # within the maximum
    assert calibration.evictor().__self__.numel() * 4 == calibration.EVICT_MAX
    size = calibration.last_level_cache_bytes()
    assert size is None or size >= 1 << 20  # this machine's, if Linux reports it


def test_buckets():
    assert [calibration.bucket(n) for n in (1, 2, 8, 9, 64)] == [("1", 1), ("2-8", 4), ("2-8", 4),
                                                                  ("9-64", 32), ("9-64", 32)]
    with pytest.raises(ValueError, match="65 rows"):
        calibration.bucket(65)


def test_each_bucket_and_thread_count_is_its_own_decision(cache, monkeypatch):
    timer = fake(monkeypatch, **{SLABS: 0.5})
    layer = projection()
    for rows in (1, 1, 2, 8, 9, 64):
        run(layer, rows)
    run(layer, 1, n_threads=3)
    assert len(timer.calls) == 4  # rows 1, 2-8, 9-64 with 2 threads, rows 1 with 3
    assert sorted(calibration.decided()) == [
        "block projection 24x12 float32, 2 threads, rows 1", "block projection 24x12 float32, 2 threads, rows 2-8",
        "block projection 24x12 float32, 2 threads, rows 9-64", "block projection 24x12 float32, 3 threads, rows 1"]


# ----------------------------------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------------------------------


def test_the_cache_is_written_where_the_variable_says_and_read_back_without_timing(cache, monkeypatch):
    timer = fake(monkeypatch, **{SLABS: 0.5})
    layer = projection()
    run(layer)
    path = calibration.cache_file(calibration.machine())
    assert path.parent == cache / "decoding-order" and path.is_file()
    data = json.loads(path.read_text())
    assert data["machine"] == calibration.machine() and data["machine"]["torch"] == torch.__version__
    assert data["orders"] == {"block projection 24x12 float32, 2 threads, rows 1": {
        "order": SLABS, "ms": {PLAIN: 1000.0, SLABS: 500.0}, "seconds": data["orders"][
            "block projection 24x12 float32, 2 threads, rows 1"]["seconds"], "rows timed": 1}}
    name = "block projection 24x12 float32, 2 threads, rows 1"
    assert calibration.decided()[name]["source"] == "measured"
    run(layer)
    assert len(timer.calls) == 1  # the same process: from memory
    calibration.forget()  # a new process: from the file
    calls = spy_slabs(monkeypatch)
    run(layer)
    assert len(timer.calls) == 1 and calls == [2]
    assert calibration.decided()[name]["source"] == "cache" and calibration.decided()[name]["order"] == SLABS
    run(projection(48, 12))  # another shape: measured, and added to the same file
    assert len(timer.calls) == 2 and len(json.loads(path.read_text())["orders"]) == 2


def test_the_default_folder_is_the_xdg_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(calibration.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert calibration.cache_dir() == tmp_path / "minift"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert calibration.cache_dir() == tmp_path / "home" / ".cache" / "minift"


def test_another_machine_calibrates_again(cache, monkeypatch):
    """The identity (CPU, flags, torch version) names the file and is checked inside it: another CPU,
    or a file copied from one, is measured afresh."""
    timer = fake(monkeypatch, **{SLABS: 0.5})
    run(projection())
    here = calibration.machine()
    calibration.forget()
    there = {**here, "model": "Intel(R) Xeon(R) Platinum 8480+", "flags": {**here["flags"], "amx_bf16": True}}
    monkeypatch.setattr(calibration, "machine", lambda: there)
    run(projection())
    assert len(timer.calls) == 2
    assert calibration.cache_file(there) != calibration.cache_file(here)
    assert len(list((cache / "decoding-order").iterdir())) == 2
    # A file holding another machine's identity under this machine's name is not believed either.
    calibration.forget()
    calibration.cache_file(there).write_text(calibration.cache_file(here).read_text())
    run(projection())
    assert len(timer.calls) == 3
    assert json.loads(calibration.cache_file(there).read_text())["machine"] == there  # rewritten


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"machine": {}, "orders": 3}', ""])
def test_a_corrupt_cache_is_reported_by_path_and_rewritten(cache, monkeypatch, content):
    timer = fake(monkeypatch, **{SLABS: 0.5})
    path = calibration.cache_file(calibration.machine())
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.warns(UserWarning, match=rf"{path}.*measured again and the file rewritten"):
        run(projection())
    assert len(timer.calls) == 1
    assert json.loads(path.read_text())["orders"]["block projection 24x12 float32, 2 threads, rows 1"]["order"] == SLABS
    # An entry naming an order this layer does not have is measured again, quietly.
    data = json.loads(path.read_text())
    data["orders"]["block projection 24x12 float32, 2 threads, rows 1"]["order"] = "no such order"
    path.write_text(json.dumps(data))
    calibration.forget()
    run(projection())
    assert len(timer.calls) == 2


def test_an_unwritable_cache_is_a_warning_and_decoding_goes_on(tmp_path, monkeypatch):
    (tmp_path / "a file").write_text("")
    monkeypatch.setenv(calibration.CACHE_ENV, str(tmp_path / "a file"))  # a folder cannot be made there
    monkeypatch.delenv(calibration.ORDER_ENV, raising=False)
    calibration.forget()
    timer = fake(monkeypatch, **{SLABS: 0.5})
    calls = spy_slabs(monkeypatch)
    with pytest.warns(UserWarning, match=rf"{tmp_path / 'a file'}.*cannot save the decoding order"):
        run(projection())
    calls.clear()
    run(projection())
    assert len(timer.calls) == 1 and calls == [2]  # remembered for the process
    calibration.forget()


# ----------------------------------------------------------------------------------------------------
# The forced modes, and where calibration does not run
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "slabs_run"), [("fast", True), ("plain", False), (" Plain ", False)])
def test_forced_modes_choose_what_they_say_without_timing(cache, monkeypatch, mode, slabs_run):
    monkeypatch.setenv(calibration.ORDER_ENV, mode)
    timer = fake(monkeypatch, **{SLABS: 2.0 if slabs_run else 0.5})  # the opposite of what is forced
    calls = spy_slabs(monkeypatch)
    run(projection())
    assert timer.calls == [] and bool(calls) == slabs_run
    assert not (cache / "decoding-order").exists()


def test_an_unknown_mode_names_the_variable(cache, monkeypatch):
    monkeypatch.setenv(calibration.ORDER_ENV, "fastest")
    with pytest.raises(ValueError, match=r"MINIFT_DECODING_ORDER='fastest': must be one of calibrate, fast, plain"):
        run(projection())


def test_no_calibration_in_a_training_step_or_on_one_thread(cache, monkeypatch):
    """Autograd recording (a training step, even of few rows), more than FEW_ROWS rows, or one thread
    for the block projections: F.linear, and nothing is measured."""
    timer = fake(monkeypatch)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**CONFIG, attn_impl="sdpa"))
    ids = torch.tensor([[3, 1, 4, 1]])
    with threads(2):
        model(ids, labels=ids).loss.backward()  # 4 rows, recording
        with torch.no_grad():
            model(torch.randint(0, 41, (3, 30)))  # 90 rows
    with threads(1), torch.no_grad():
        model.transformer(ids)  # the blocks only, one thread
    assert timer.calls == []


def test_calibrating_touches_no_random_numbers_and_changes_no_logits(cache):
    """A real calibration (no fake timer) inside a forward: the RNG state after it is the state before,
    and the logits are the readable model's."""
    torch.manual_seed(0)
    eager = GPT2LMHeadModel(GPT2Config(**CONFIG, attn_impl="eager")).eval()
    fast = GPT2LMHeadModel(GPT2Config(**CONFIG, attn_impl="sdpa")).eval()
    fast.load_state_dict(eager.state_dict())
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    torch.manual_seed(7)
    before = torch.get_rng_state()
    with threads(2), torch.no_grad():
        got = fast(ids, logits_to_keep=1).logits
        want = eager(ids).logits[:, -1:]
    assert torch.equal(torch.get_rng_state(), before)
    assert len(calibration.decided()) == 5  # four projection shapes and the head, for 5 rows
    assert (got - want).abs().max() <= 1e-5


# ----------------------------------------------------------------------------------------------------
# Greedy decoding whatever wins
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("winner", [PLAIN, "fast orders", "tall everywhere"])
def test_greedy_decoding_matches_transformers_whichever_order_wins(cache, monkeypatch, tmp_path, winner):
    """Injected timings make each order win (the slabs and the column slabs, the tall head for one row
    too, or F.linear everywhere); greedy tokens, one prompt and a batch, are transformers'."""
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(transformers.GPT2Config(**CONFIG)).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(0.3 * torch.randn(p.shape))  # far from init: no near-ties between tokens
    ref.save_pretrained(tmp_path / "gpt2")
    ours = GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2", attn_impl="sdpa")
    seconds = {PLAIN: {}, "fast orders": {SLABS: 0.5, COLUMNS: 0.4, TALL: 0.5},
               "tall everywhere": {TALL: 0.5}}[winner]
    timer = fake(monkeypatch, **seconds)
    ids = torch.tensor([[5, 9, 2, 7]])
    batch = torch.tensor([[5, 9, 2, 7], [0, 0, 3, 8]])
    mask = (batch != 0).long()
    with threads(2):
        assert torch.equal(generate(ours, ids, 8), ref.generate(ids, max_new_tokens=8, do_sample=False))
        assert torch.equal(generate(ours, batch, 8, attention_mask=mask, pad_token_id=0),
                           ref.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0))
    orders = {entry["order"] for entry in calibration.decided().values()}
    assert timer.calls and orders == {PLAIN: {PLAIN}, "fast orders": {SLABS, COLUMNS, TALL},
                                      "tall everywhere": {PLAIN, TALL}}[winner]
