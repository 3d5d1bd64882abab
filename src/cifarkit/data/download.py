"""Download the official CIFAR-10 python archive: verified by md5, and never left half-written."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm import tqdm

from cifarkit.atomic import atomic_write
from cifarkit.errors import CifarkitError

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
OFFICIAL_ARCHIVE_NAME = "cifar-10-python.tar.gz"

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0  # per socket operation, not for the whole download


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # an integrity check against the published sum, not security
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, out: BinaryIO, desc: str) -> str:
    """Stream `url` into the open file `out` with a progress bar; return the md5 of what was received."""
    digest = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, mininterval=0.5) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        # http.client ends a short body quietly; say so rather than report a confusing md5 mismatch
        raise CifarkitError(f"download of {url} stopped after {received:,} of {total:,} bytes; try again")
    return digest.hexdigest()


def download_cifar10(dest: str | os.PathLike[str], *, url: str = OFFICIAL_URL, md5: str = OFFICIAL_MD5) -> Path:
    """Download `url` into folder `dest` and return the file's path (dest/<file name of the URL>).

    The bytes go to a temporary file beside the target, are checked against `md5`, and only then renamed into place, so
    on any failure (network, md5 mismatch, Ctrl-C) no partial file remains. A file already there with the right md5 is
    reused without downloading.
    """
    folder = Path(dest).expanduser()
    name = PurePosixPath(urllib.parse.urlparse(url).path).name or OFFICIAL_ARCHIVE_NAME
    target = folder / name
    expected = md5.lower()
    if target.is_file() and file_md5(target) == expected:
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CifarkitError(f"{folder}: cannot write the download there ({exc}); pass a writable folder") from exc
    # atomic_write removes the partial file on any failure (network, md5 mismatch, Ctrl-C) and lets the error through
    with atomic_write(target) as out:
        try:
            got = _fetch(url, out, name)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            if isinstance(exc, urllib.error.HTTPError):
                reason: object = f"HTTP {exc.code} {exc.reason}"
            else:
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise CifarkitError(f"download of {url} failed ({reason}); check the network, or download it yourself "
                                "and pass --data PATH") from exc
        if got != expected:
            raise CifarkitError(f"download of {url} has md5 {got}, expected {expected}: the file is corrupt or not the "
                                "CIFAR-10 archive; try again")
    return target
