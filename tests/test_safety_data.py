"""Untrusted input: pickles that run code, tar members that escape or bomb, and downloads that fail half-way."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import subprocess
import tarfile
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy as np
import pytest

import cifarkit.data.archive as archive
import cifarkit.data.download as download
from cifarkit.data.archive import extract_cached, restricted_loads
from cifarkit.data import Cifar10, load_cifar10
from cifarkit.data.download import download_cifar10
from cifarkit.errors import CifarkitError


@pytest.fixture(autouse=True)
def _private_cache(cifar_cache: Path) -> Path:
    """Every test here gets its own cache, so none reads or fills ~/.cache/cifarkit."""
    return cifar_cache


# ----------------------------------------------------------------------------------------------- pickles

class _RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


class _Evaluates:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return eval, ("1 + 1",)


class _Subprocess:
    def __reduce__(self) -> tuple[object, tuple[list[str]]]:
        return subprocess.call, (["true"],)


def test_os_system_pickle_is_refused(tmp_path: Path, tiny_data: Cifar10, cifar_files: SimpleNamespace) -> None:
    """A batch whose pickle would call os.system is refused, naming the file and the global, and the command never
    runs (its marker file does not appear)."""
    marker = tmp_path / "MARKER"
    folder = cifar_files.pickle_folder(tiny_data, tmp_path / "b")
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": _RunsShell(f"touch {marker}"), b"labels": []}))
    with pytest.raises(CifarkitError) as info:
        load_cifar10(folder)
    message = str(info.value)
    assert str(folder / "data_batch_1") in message and "system" in message and "refused" in message
    assert not marker.exists()


@pytest.mark.parametrize("payload, refused", [(_Evaluates(), "builtins.eval"), (_Subprocess(), "subprocess.call")])
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_other_code_globals_are_refused(tmp_path: Path, payload: object, refused: str, protocol: int) -> None:
    """eval and subprocess are refused at every pickle protocol, named in the error with the file."""
    raw = pickle.dumps(payload, protocol=protocol, fix_imports=False)  # keep Python 3 names (no __builtin__)
    with pytest.raises(CifarkitError, match=refused.replace(".", r"\.")) as info:
        restricted_loads(raw, tmp_path / "x")
    assert str(tmp_path / "x") in str(info.value)


def test_python2_globals_are_refused(tmp_path: Path) -> None:
    """A Python 2 pickle naming __builtin__.eval is refused (no name mapping opens a side door)."""
    raw = b"c__builtin__\neval\n(S'1+1'\ntR."
    with pytest.raises(CifarkitError, match="__builtin__.eval"):
        restricted_loads(raw, tmp_path / "x")


def test_codecs_only_latin1(tmp_path: Path) -> None:
    """_codecs.encode (how Python 3 writes bytes at protocol 2) is admitted for latin1 only."""
    good = pickle.dumps(b"\x00\xff", protocol=2)
    assert restricted_loads(good, "ok") == b"\x00\xff"
    bad = b"c_codecs\nencode\n(Vabc\nVrot13\ntR."
    with pytest.raises(CifarkitError, match="cannot parse"):
        restricted_loads(bad, tmp_path / "x")


def test_numpy_arrays_are_admitted() -> None:
    """Plain numpy arrays round-trip at protocols 2, 4 and 5 (what CIFAR batches and re-exports hold)."""
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in (2, 4, 5):
        np.testing.assert_array_equal(restricted_loads(pickle.dumps({"data": array}, protocol=protocol), "x")["data"],
                                      array)


# ----------------------------------------------------------------------------------------------- tar members

def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info, payload in members:
            if payload is not None:
                info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def _file(name: str, payload: bytes = b"hello") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), payload


def _special(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, None


def _everything_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink", "hardlink", "device", "fifo"])
def test_unsafe_member_is_refused_before_writing(tmp_path: Path, case: str, cifar_cache: Path) -> None:
    """A member with ../, an absolute path, a symlink, a hardlink, a device or a fifo is refused, naming the archive
    and the member; nothing is written, not even the harmless member before it, and nothing outside the cache."""
    outside = tmp_path / "outside"
    bad = {
        "dotdot": _file("data/../../outside"),
        "absolute": _file(str(outside)),
        "symlink": _special("data/link", tarfile.SYMTYPE, "/etc/passwd"),
        "hardlink": _special("data/hard", tarfile.LNKTYPE, "/etc/passwd"),
        "device": _special("data/dev", tarfile.CHRTYPE),
        "fifo": _special("data/fifo", tarfile.FIFOTYPE),
    }[case]
    tgz = _tar(tmp_path / "evil.tar.gz", [_file("data/ok.txt"), bad])
    with pytest.raises(CifarkitError) as info:
        extract_cached(tgz)
    message = str(info.value)
    assert str(tgz) in message and bad[0].name in message and "\n" not in message
    assert not outside.exists() and _everything_under(cifar_cache) == []


def test_unsafe_archive_leaves_cache_clean(tmp_path: Path, cifar_cache: Path) -> None:
    """load_cifar10 on an unsafe archive raises and leaves no (partial) cache entry."""
    tgz = _tar(tmp_path / "evil.tgz", [_file("cifar10/train/cat/a.png"), _file("../escape")])
    with pytest.raises(CifarkitError, match="escape"):
        load_cifar10(tgz)
    assert _everything_under(cifar_cache / "extracted") == []
    assert not (tmp_path.parent / "escape").exists()


def test_size_bomb_is_refused(tmp_path: Path, cifar_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Members adding up to more than the byte cap are refused from their headers, before anything is written,
    through the parameter and through the module constant that load_cifar10 uses."""
    tgz = _tar(tmp_path / "big.tar.gz", [_file(f"d/{i}", b"\0" * 600) for i in range(3)])
    with pytest.raises(CifarkitError, match="bomb"):
        extract_cached(tgz, max_bytes=1000)
    assert _everything_under(cifar_cache) == []
    monkeypatch.setattr(archive, "MAX_EXTRACT_BYTES", 1000)
    with pytest.raises(CifarkitError, match="bomb") as info:
        load_cifar10(tgz)
    assert str(tgz) in str(info.value)
    assert _everything_under(cifar_cache) == []


def test_member_count_bomb_is_refused(tmp_path: Path, cifar_cache: Path) -> None:
    """More members than the count cap are refused before anything is written."""
    tgz = _tar(tmp_path / "many.tar.gz", [_file(f"d/{i}", b"x") for i in range(6)])
    with pytest.raises(CifarkitError, match="members"):
        extract_cached(tgz, max_members=5)
    assert _everything_under(cifar_cache) == []
    entry = extract_cached(tgz, max_members=6)  # at the cap is fine
    assert len(list((entry / "d").iterdir())) == 6


def test_duplicate_member_is_refused(tmp_path: Path, cifar_cache: Path) -> None:
    """A member name given twice is an error rather than a silent overwrite; failing half-way through extraction
    into the cache leaves no partial entry (the temporary folder is removed)."""
    tgz = _tar(tmp_path / "dup.tar.gz", [_file("d/a", b"1"), _file("d/a", b"2")])
    with pytest.raises(CifarkitError, match="dup.tar.gz"):
        extract_cached(tgz)
    with pytest.raises(CifarkitError, match="dup.tar.gz"):
        load_cifar10(tgz)
    assert (cifar_cache / "extracted").is_dir() and _everything_under(cifar_cache / "extracted") == []


# ----------------------------------------------------------------------------------------------- downloads

@pytest.fixture
def http_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """A threaded HTTP server on 127.0.0.1 serving tmp_path/served; /short promises 1000 bytes and sends 10.
    Proxy variables are cleared so urllib talks to it directly, never to another address."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    served = tmp_path / "served"
    served.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(served), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            requests.append(self.path)
            if self.path == "/short":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b"x" * 10)
                return
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(root=served, url=f"http://127.0.0.1:{server.server_port}", requests=requests)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def served_archive(http_server: SimpleNamespace, tmp_path: Path, tiny_data: Cifar10,
                   cifar_files: SimpleNamespace) -> SimpleNamespace:
    """A small cifar-10-python.tar.gz on the local server, with its md5."""
    folder = cifar_files.pickle_folder(tiny_data, tmp_path / "src" / "cifar-10-batches-py")
    tgz = cifar_files.tar(http_server.root / "cifar-10-python.tar.gz", folder, "cifar-10-batches-py")
    return SimpleNamespace(url=f"{http_server.url}/cifar-10-python.tar.gz",
                           md5=hashlib.md5(tgz.read_bytes()).hexdigest(), server=http_server)


def test_download_verifies_and_loads(tmp_path: Path, served_archive: SimpleNamespace, tiny_data: Cifar10) -> None:
    """The archive arrives under its own name with the right md5, loads, and a second call reuses it unfetched."""
    dest = tmp_path / "dl"
    path = download_cifar10(dest, url=served_archive.url, md5=served_archive.md5)
    assert path == dest / "cifar-10-python.tar.gz" and sorted(dest.iterdir()) == [path]
    np.testing.assert_array_equal(load_cifar10(path).test_images, tiny_data.test_images)
    assert download_cifar10(dest, url=served_archive.url, md5=served_archive.md5) == path
    assert served_archive.server.requests == ["/cifar-10-python.tar.gz"]


def test_download_wrong_md5_leaves_nothing(tmp_path: Path, served_archive: SimpleNamespace) -> None:
    """An md5 mismatch is a CifarkitError naming the URL and leaves no file behind."""
    dest = tmp_path / "dl"
    with pytest.raises(CifarkitError, match="md5") as info:
        download_cifar10(dest, url=served_archive.url, md5="0" * 32)
    assert served_archive.url in str(info.value)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("path, fragment", [("/missing.tar.gz", "404"), ("/short", "10 of 1,000 bytes")])
def test_download_failure_leaves_nothing(tmp_path: Path, http_server: SimpleNamespace, path: str,
                                         fragment: str) -> None:
    """A 404 and a connection that ends early are CifarkitErrors naming the URL; no partial file remains."""
    dest = tmp_path / "dl"
    with pytest.raises(CifarkitError, match=fragment) as info:
        download_cifar10(dest, url=http_server.url + path, md5="0" * 32)
    assert http_server.url + path in str(info.value)
    assert list(dest.iterdir()) == []


def test_download_refused_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused connection (a loopback port nobody listens on) is a CifarkitError and leaves nothing."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    with socket_bound_port() as port:
        url = f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"
    with pytest.raises(CifarkitError, match="failed"):
        download_cifar10(tmp_path / "dl", url=url, md5="0" * 32)
    assert list((tmp_path / "dl").iterdir()) == []


def test_download_interrupt_leaves_nothing(tmp_path: Path, served_archive: SimpleNamespace,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during the transfer propagates as KeyboardInterrupt and removes the partial file."""
    class InterruptingBar:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __enter__(self) -> "InterruptingBar":
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def update(self, n: int) -> None:
            raise KeyboardInterrupt

    monkeypatch.setattr(download, "tqdm", InterruptingBar)
    dest = tmp_path / "dl"
    with pytest.raises(KeyboardInterrupt):
        download_cifar10(dest, url=served_archive.url, md5=served_archive.md5)
    assert list(dest.iterdir()) == []


class socket_bound_port:
    """A free loopback port: bound while inside the block, released (so nothing listens) after it."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
