"""Shared fixtures: the real MiniLM checkpoint and the public evaluation data.

Both are optional on a developer machine (the tests that need them skip), but `make test` pulls the
weights first and sets MINIFT_REQUIRE_WEIGHTS=1, so there a missing checkpoint fails loudly instead
of skipping silently; and CI (.ci/run) sets MINIFT_REQUIRE_DATA=1, so there a missing ../shared/data
(or a file missing from it) fails every test that needs it instead of skipping it.
"""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# The public data beside the repository; MINIFT_SHARED_DATA names another folder (a path that does not
# exist runs everything as on a fresh clone, where the lessons fall back on lessons/fixtures/).
SHARED_DATA = REPO / os.environ.get("MINIFT_SHARED_DATA", "../shared/data")
MINILM = Path(
    os.environ.get("MINIFT_MINILM", REPO / "weights" / "sentence-transformers--all-MiniLM-L6-v2")
)


def minilm_or_skip() -> Path:
    if (MINILM / "model.safetensors").is_file():
        return MINILM
    if os.environ.get("MINIFT_REQUIRE_WEIGHTS") == "1":
        pytest.fail(f"MINIFT_REQUIRE_WEIGHTS=1 but {MINILM} holds no model.safetensors; run `make weights`")
    pytest.skip(f"real MiniLM weights not found at {MINILM} (run `minift weights pull all-MiniLM-L6-v2`)")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Folder of sentence-transformers/all-MiniLM-L6-v2 (config.json, model.safetensors, vocab)."""
    return minilm_or_skip()


def data_required() -> bool:
    return os.environ.get("MINIFT_REQUIRE_DATA") == "1"


def shared_data_or_skip(*files: str) -> Path:
    """The public data folder, when it (and each of `files`, relative to it) is there; else skip,
    or fail under MINIFT_REQUIRE_DATA=1 (CI), naming what is missing."""
    missing = [str(SHARED_DATA)] if not SHARED_DATA.is_dir() else [
        str(SHARED_DATA / f) for f in files if not (SHARED_DATA / f).exists()]
    if missing:
        message = f"public evaluation data not found: {', '.join(missing)}"
        if data_required():
            pytest.fail(f"MINIFT_REQUIRE_DATA=1 but {message}")
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (SST-5, CFIMDB, WNUT17, GPT-2 BPE files); skip cleanly when absent (fail in CI)."""
    return shared_data_or_skip()


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """MINIFT_CACHE_DIR in a temporary folder for the whole session (and the subprocesses it starts):
    the decoding-order calibration of GPT-2's fast path (minift/models/calibration.py) writes its
    cache there, never into the user's ~/.cache. Set in os.environ, restored afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINIFT_CACHE_DIR", str(tmp_path_factory.mktemp("minift-cache")))
        yield


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models (`pytestmark = pytest.mark.usefixtures("one_thread")`): a second
    intra-op thread only adds start-up and synchronisation, which on a shared 2-core machine costs far
    more than the work itself. Restored afterwards, so no other test module is affected."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def needed_or_skip(module: str, why: str):
    """Imports a dev-only module a test needs. Missing: a skip on a developer's machine, a failure
    under CI (CI is set there, and `make test` installs the dev extra, so a skip would hide a gap)."""
    try:
        return __import__(module)
    except ImportError:
        message = f"{module} is not installed ({why}); `make test` installs it with the dev extra"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {message}")
        pytest.skip(message)
