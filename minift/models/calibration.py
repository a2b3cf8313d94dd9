"""Which BLAS order a CPU decoding product runs in on this machine: measured once, at first use, and
remembered on disk per CPU. minift/models/gpt2_fast.py offers the orders; this file times them,
decides, and caches the decision.

Lesson: `lessons/16-generation.md`, "The weight products of a decoding step" (why it is measured).

Why measure. The orders of gpt2_fast.py compute the same numbers as nn.Linear; whether they are
faster is a property of the BLAS library and the CPU, not of the math. They were tuned on an AMD EPYC
(AVX512, MKL), where greedy GPT-2 small with the KV cache runs 1.61x transformers' speed at batch 1
and 2.07x at batch 4. On an Intel Xeon with AMX (issue 15) the same orders lost: `few_rows_linear`
0.95x nn.Linear at 1, 4 and 64 rows, the tall LM-head product 0.48x at 2 rows and 0.88x at 4, and
greedy decoding only 1.09x and 0.97x transformers'. So each machine measures for itself, and an order
is kept only where it pays.

What it does. `decoding_order(kind, shape, dtype, rows, orders, setup, fast)` names the order a layer
runs for `rows` rows. The row count falls in a bucket (1 row; 2-8; 9-64, `BUCKETS`); the decision is
made once per layer kind, weight shape, compute dtype, thread count and bucket:

1. in this process's memory, if it was made before;
2. else in the cache file of this machine, if it is there;
3. else measured (`measure`): `setup(rows timed)` builds each order as a call on a fixed input (no
   random numbers, so no RNG state is touched); each is called once to warm up, then `REPEATS`
   interleaved rounds (the order of the candidates rotated every round, so that other load on the
   machine slows each alike) time one call of each, the median counting. Before every timed call a
   buffer twice the size of the last-level cache is read (`evictor`), so the weight comes from
   memory as in a real step, where the 48 other matrices of GPT-2 small (340 MB) have pushed it out
   of the caches: the same matrix timed over and over would sit in the cache and time that instead.
   `pick` keeps the fastest order only if it beats `F.linear` by `MARGIN` (5%), else `F.linear`:
   where an order does not pay it is dropped. A bucket costs six calls of each candidate and as many
   reads of the buffer: for GPT-2 small, whose head takes 4 to 11 ms a call on two threads (lesson
   16), a fraction of a second on a quiet machine; several seconds on a busy one.

The cache. A JSON file per machine, `<cache>/decoding-order/<hash>.json`, where the hash is of the
machine's identity (`machine()`: `minift.profiling.cpu_identity()` without the thread count -- CPU
model, torch's vector capability, the avx2/avx512/amx flags, the core count -- and the torch version);
the file also holds that identity, which is compared on reading. Inside, one entry per decision,
named by kind, shape, dtype, threads and bucket, with the order and the milliseconds measured. A
new CPU or a new torch is a new file, hence a new calibration. Writes are atomic (minift/io.py) and
merged with what another process may have written meanwhile. A file that cannot be read or parsed is
reported in a warning naming its path, ignored, and rewritten; a cache that cannot be written is a
warning too (the decisions then last as long as the process). Neither stops decoding. A calibration
measures the machine as it is at that moment: one taken while other work kept the cores busy can
prefer the single-threaded F.linear (another thread's wake-up waits for a free core); delete the
file to measure again on a quiet machine.

Variables.
- `MINIFT_DECODING_ORDER`: `calibrate` (the default: measure, or read the cache), `fast` (the orders
  as tuned on the AMD EPYC, without measuring: slabs for the block projections, for the LM head the
  column slabs for one row and the tall product for more) or `plain` (`F.linear` everywhere, as
  nn.Linear). The tests force each to cover every order.
- `MINIFT_CACHE_DIR`: the folder of minift's caches; default `$XDG_CACHE_HOME/minift`, else
  `~/.cache/minift`. The tests point it at a temporary folder.

What it leaves out. Anything but a decoding step on a CPU: gpt2_fast.py asks only for at most
FEW_ROWS rows on a CPU with autograd not recording, so a training step (which records, and has more
rows) never triggers a calibration. A rule measured across several CPU kinds would save the first
fraction of a second, but one machine's rule is what issue 15 shows to fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from minift.io import DiskFullError, JSONError, read_json, write_json
from minift.profiling import cpu_identity

ORDER_ENV = "MINIFT_DECODING_ORDER"
CACHE_ENV = "MINIFT_CACHE_DIR"
MODES = ("calibrate", "fast", "plain")
PLAIN = "F.linear"  # the baseline every order must beat: nn.Linear's own product

# A candidate is kept only if its time is at most (1 - MARGIN) x F.linear's: a few percent is within
# the noise of a short measurement on a busy machine, and an order that does not pay is not worth its
# code path (nor, for the LM head's column copy, its memory).
MARGIN = 0.05
# (first row count, last row count, rows timed): one row is a single prompt's decoding step; 2-8 a
# small batch; 9-64 a large batch or a short prompt's prefill (gpt2_fast.FEW_ROWS is 64).
BUCKETS = ((1, 1, 1), (2, 8, 4), (9, 64, 32))
REPEATS = 5  # timed rounds per candidate; the median is kept
# Bytes read before each timed call to push the weight out of the caches (`evictor`): twice the
# last-level cache (32 MiB on this AMD EPYC, more on a large Xeon), within these bounds.
EVICT_MIN, EVICT_MAX = 32 << 20, 512 << 20

# What this process decided: (MINIFT_CACHE_DIR, XDG_CACHE_HOME, kind, shape, dtype, threads, bucket) -> entry
# (with its "name" in the cache file). The environment is
# part of the key so that a test pointing the cache elsewhere starts afresh; the machine is not (it does
# not change in a process; `forget` starts afresh as a new process would).
_decided: dict[tuple, dict] = {}


def mode() -> str:
    """MINIFT_DECODING_ORDER: calibrate (default), fast or plain; anything else is a ValueError naming it."""
    value = os.environ.get(ORDER_ENV, "").strip().lower() or "calibrate"
    if value not in MODES:
        raise ValueError(f"{ORDER_ENV}={os.environ[ORDER_ENV]!r}: must be one of {', '.join(MODES)} "
                         "(calibrate: measure once per machine; fast: the orders tuned on an AMD EPYC; "
                         "plain: F.linear, as nn.Linear)")
    return value


def cache_dir() -> Path:
    """$MINIFT_CACHE_DIR, else $XDG_CACHE_HOME/minift, else ~/.cache/minift."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "minift"


def machine() -> dict:
    """What a decision depends on besides the product itself: the CPU (`cpu_identity` without the
    thread count, which each entry names) and the torch version (its BLAS and kernels)."""
    identity = cpu_identity()
    identity.pop("threads")
    return {**identity, "torch": torch.__version__}


def cache_file(identity: dict) -> Path:
    """This machine's cache file: <cache>/decoding-order/<16 hex digits of the identity's hash>.json."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "decoding-order" / f"{digest}.json"


def bucket(rows: int) -> tuple[str, int]:
    """The bucket of a row count: its name ("1", "2-8", "9-64") and the row count the calibration times."""
    for first, last, timed in BUCKETS:
        if first <= rows <= last:
            return (str(first) if first == last else f"{first}-{last}"), timed
    raise ValueError(f"{rows} rows: the decoding orders are for 1 to {BUCKETS[-1][1]} rows")


def entry_name(kind: str, shape: tuple[int, ...], dtype: torch.dtype, threads: int, rows: str) -> str:
    """The name of a decision in the cache file: 'LM head 50257x768 float32, 2 threads, rows 1'."""
    return (f"{kind} {'x'.join(map(str, shape))} {str(dtype).removeprefix('torch.')}, "
            f"{threads} thread{'s' if threads != 1 else ''}, rows {rows}")


def decoding_order(kind: str, shape: tuple[int, ...], dtype: torch.dtype, rows: int, orders: tuple[str, ...],
                   setup: Callable[[int], dict[str, Callable[[], object]]], fast: str) -> str:
    """The order (one of `orders`, PLAIN among them) a `kind` layer with a `shape` weight runs for
    `rows` rows in `dtype` with torch's current thread count: MINIFT_DECODING_ORDER's choice (plain:
    PLAIN, fast: `fast`), else this machine's calibrated one. `setup(n)` gives each order as a
    call on n fixed rows; it is used only when the decision is measured."""
    chosen = mode()
    if chosen == "plain":
        return PLAIN
    if chosen == "fast":
        return fast
    rows_bucket, timed_rows = bucket(rows)
    threads = torch.get_num_threads()
    memo = (os.environ.get(CACHE_ENV), os.environ.get("XDG_CACHE_HOME"), kind, shape, dtype, threads, rows_bucket)
    entry = _decided.get(memo)  # every decoding step of every layer comes here: a dict look-up, no more
    if entry is None:
        name = entry_name(kind, shape, dtype, threads, rows_bucket)
        identity = machine()
        path = cache_file(identity)
        entry = read_entries(path, identity).get(name)
        if isinstance(entry, dict) and entry.get("order") in orders:
            entry = {**entry, "name": name, "source": "cache"}
        else:  # absent, or not one of this layer's orders
            entry = {**calibrate(setup(timed_rows)), "rows timed": timed_rows}
            save_entry(path, identity, name, entry)
            entry = {**entry, "name": name, "source": "measured"}
        _decided[memo] = entry
    return entry["order"]


def calibrate(candidates: dict[str, Callable[[], object]]) -> dict:
    """Time the candidates (`measure`) and `pick`: {"order", "ms" per call of each, "seconds" it took}."""
    start = time.perf_counter()
    with torch.no_grad():
        seconds = measure(candidates)
    return {"order": pick(seconds), "ms": {k: round(1000 * s, 4) for k, s in seconds.items()},
            "seconds": round(time.perf_counter() - start, 3)}


def measure(candidates: dict[str, Callable[[], object]], repeats: int = REPEATS,
            evict: Callable[[], object] | None = None) -> dict[str, float]:
    """Median seconds of one call of each candidate: one warm-up call each, then `repeats` rounds, each
    timing one call of every candidate, in an order rotated from round to round. Before every timed
    call `evict()` runs (untimed; default: `evictor()`, a read of twice the last-level cache), so
    the weight comes from memory, as in a real decoding step, where the other layers' weights have
    pushed it out of the caches since its last use; timing the same matrix again and again would
    time the cache instead."""
    evict = evictor() if evict is None else evict
    for fn in candidates.values():
        fn()  # the first call may pay for page faults and the kernel's choice
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            evict()
            start = time.perf_counter()
            candidates[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def evictor() -> Callable[[], object]:
    """A call that reads a buffer of its own, twice the last-level cache (within EVICT_MIN and
    EVICT_MAX; EVICT_MIN x 2 where the size is unknown): afterwards the caches hold that buffer, not
    the weight being timed (and torch's threads are awake, as after the previous layer of a step)."""
    size = min(EVICT_MAX, max(EVICT_MIN, 2 * (last_level_cache_bytes() or EVICT_MIN)))
    buffer = torch.ones(size // 4)  # float32
    return buffer.sum


def last_level_cache_bytes() -> int | None:
    """The size of the largest CPU cache Linux reports for cpu0 (/sys/devices/system/cpu/cpu0/cache),
    None elsewhere."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        if text[:-1].isdigit() and text[-1] in units:
            sizes.append(int(text[:-1]) * units[text[-1]])
        elif text.isdigit():
            sizes.append(int(text))
    return max(sizes, default=None)


def pick(seconds: dict[str, float], margin: float = MARGIN) -> str:
    """The fastest order if it takes at most (1 - margin) x PLAIN's time, else PLAIN."""
    best = min(seconds, key=seconds.__getitem__)
    return best if seconds[best] <= (1 - margin) * seconds[PLAIN] else PLAIN


def read_entries(path: Path, identity: dict, *, quiet: bool = False) -> dict:
    """The decisions stored in `path` for the machine `identity`; {} if there is no file or it is another
    machine's. A file that is not a cache of this kind is a warning naming it (unless `quiet`) and {}."""
    if not path.exists():
        return {}
    try:
        data = read_json(path)
        if not (isinstance(data, dict) and isinstance(data.get("machine"), dict)
                and isinstance(data.get("orders"), dict)):
            raise JSONError(f"{path}: not a decoding-order cache (expected an object with 'machine' and 'orders')")
    except (JSONError, OSError) as err:
        if not quiet:
            warnings.warn(f"{err}; ignoring it: the decoding order is measured again and the file rewritten",
                          stacklevel=2)
        return {}
    return data["orders"] if data["machine"] == identity else {}


def save_entry(path: Path, identity: dict, name: str, entry: dict) -> None:
    """Add one decision to `path`, atomically, keeping the others (another process may have added some
    since this one read the file). A failure to write is a warning, not an error."""
    entries = {**read_entries(path, identity, quiet=True), name: entry}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json({"machine": identity, "orders": entries}, path)
    except (OSError, DiskFullError) as err:
        warnings.warn(f"{path}: cannot save the decoding order ({err}); it will be measured again by the next "
                      f"process (set {CACHE_ENV} to a writable folder)", stacklevel=2)


def decided() -> dict[str, dict]:
    """What this process decided so far: entry name -> {"order", "ms" per candidate, "seconds" the
    calibration took, "rows timed", "source": "measured" (by this process) or "cache" (read from the
    file)}. For reports such as benchmarks/generate_kv.py's."""
    return {entry["name"]: {k: v for k, v in entry.items() if k != "name"} for entry in _decided.values()}


def forget() -> None:
    """Drop this process's decisions (the cache file stays): the next call reads or measures again, as a
    new process would."""
    _decided.clear()
