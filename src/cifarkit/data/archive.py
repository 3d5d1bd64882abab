"""Files we must not trust or half-write: tar archives, pickle batches, and the cache entries made of them.

CIFAR-10 ships as numpy arrays pickled inside a tar.gz: opened naively, a pickle can run any code and a tar member
can be written anywhere. Everything here refuses what a CIFAR-10 file never holds, before anything is executed or
written, and writes cache entries through a temporary name so a crash never leaves a half entry that looks whole.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from cifarkit.atomic import atomic_write, write_text
from cifarkit.errors import CifarkitError, one_line

# Extraction caps. CIFAR-10 unpacks to ~180 MB in 8 files (python batches) or 60,000 PNGs (image tree); the caps leave
# room for re-exports and refuse a decompression bomb from its headers, before a byte is written. Read at call time,
# so callers and tests can pass smaller ones.
MAX_EXTRACT_BYTES = 1 << 30
MAX_EXTRACT_MEMBERS = 200_000

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def cache_root() -> Path:
    """The cache folder: $CIFARKIT_CACHE, else ~/.cache/cifarkit. Not created here."""
    env = os.environ.get("CIFARKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cifarkit"


SOURCE_SUFFIX = ".source"  # a cache entry's note of the data it was made from (its absolute path)


def source_note(entry: Path) -> Path:
    """Where cache `entry` notes its source: inside a folder (FOLDER/.source, so it goes wherever the folder goes),
    beside a file (KEY.npz: KEY.source)."""
    return entry / SOURCE_SUFFIX if entry.is_dir() else entry.with_suffix(SOURCE_SUFFIX)


def record_source(entry: Path, source: Path) -> None:
    """Note which data cache `entry` was made from, for `cifarkit cache`. A cache that cannot be written only loses
    the note."""
    note, text = source_note(entry), f"{source.resolve()}\n"
    try:
        if not note.is_file() or note.read_text() != text:
            write_text(note, text)
    except OSError:
        pass


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def archive_stem(path: Path) -> str:
    """`cifar-10-python` for `cifar-10-python.tar.gz`."""
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# ---------------------------------------------------------------------------------------------------------- tar files

def _member_parts(member: tarfile.TarInfo, archive: Path) -> tuple[str, ...]:
    """The member's path as folder parts below the target, or CifarkitError if it could land outside or is no plain
    file or folder (links can point anywhere, devices and fifos have no place in a data set)."""
    name = member.name.replace("\\", "/")  # a Windows-made archive may use backslashes as separators
    parts = PurePosixPath(name).parts
    if name.startswith("/") or (parts and parts[0].endswith(":")) or ".." in parts:
        raise CifarkitError(f"{archive}: refused member {member.name!r}: it would land outside the extraction folder; "
                            "the archive is unsafe, get a clean copy")
    if member.issym() or member.islnk():
        kind = "symlink" if member.issym() else "hardlink"
        raise CifarkitError(f"{archive}: refused member {member.name!r}: a {kind} to {member.linkname!r}; CIFAR-10 "
                            "archives hold only files and folders, get a clean copy")
    if not (member.isreg() or member.isdir()) or member.issparse():
        raise CifarkitError(f"{archive}: refused member {member.name!r}: a device, fifo or other special file; "
                            "CIFAR-10 archives hold only files and folders, get a clean copy")
    return parts


def _checked_members(tf: tarfile.TarFile, archive: Path, max_bytes: int,
                     max_members: int) -> list[tuple[tarfile.TarInfo, tuple[str, ...]]]:
    """Every member with its parts, after checking all of them against the rules and the caps. Reads headers only."""
    checked: list[tuple[tarfile.TarInfo, tuple[str, ...]]] = []
    total = 0
    for member in tf:  # iterate rather than getmembers() so a member-count bomb stops at the cap
        if len(checked) >= max_members:
            raise CifarkitError(f"{archive}: more than {max_members:,} members; refused as a possible archive bomb, "
                                "this is not a CIFAR-10 archive")
        parts = _member_parts(member, archive)
        total += member.size if member.isreg() else 0
        if total > max_bytes:
            raise CifarkitError(f"{archive}: members add up to more than {max_bytes:,} bytes; refused as a possible "
                                "archive bomb, this is not a CIFAR-10 archive")
        checked.append((member, parts))
    return checked


def _extract_checked(tf: tarfile.TarFile, members: list[tuple[tarfile.TarInfo, tuple[str, ...]]],
                     target: Path) -> None:
    # Written by hand rather than extractall: no links exist among the members and none in the fresh target, so a path
    # made of checked parts cannot leave it; owners, modes and times from the archive are deliberately not applied.
    for member, parts in members:
        if not parts:
            continue  # the archive's "." entry
        out = target.joinpath(*parts)
        if member.isdir():
            out.mkdir(parents=True, exist_ok=True)
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        source = tf.extractfile(member)
        assert source is not None  # regular files always have a payload
        with source, open(out, "xb") as dest:  # "x": a duplicate member name is an error, not a silent overwrite
            shutil.copyfileobj(source, dest, 1 << 20)


def _open_checked(archive: Path, max_bytes: int | None, max_members: int | None
                  ) -> tuple[tarfile.TarFile, list[tuple[tarfile.TarInfo, tuple[str, ...]]]]:
    try:
        tf = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise CifarkitError(f"{archive}: cannot open it as a tar archive ({one_line(exc)}); "
                            "it is truncated or corrupt, download it again") from exc
    try:
        return tf, _checked_members(tf, archive, MAX_EXTRACT_BYTES if max_bytes is None else max_bytes,
                                    MAX_EXTRACT_MEMBERS if max_members is None else max_members)
    except BaseException as exc:
        tf.close()
        if isinstance(exc, (tarfile.TarError, OSError, EOFError, zlib.error)):
            raise CifarkitError(f"{archive}: cannot read the archive ({one_line(exc)}); "
                                "it is truncated or corrupt, download it again") from exc
        raise


def extract_cached(archive: Path, *, max_bytes: int | None = None, max_members: int | None = None) -> Path:
    """The folder holding `archive`'s contents in the cache, extracting it the first time.

    The entry is keyed by name, size and modification time, so a different file of the same name gets its own entry.
    It is extracted into a temporary folder beside it and renamed, so an entry that exists is complete.
    """
    try:
        stat = archive.stat()
    except OSError as exc:
        raise CifarkitError(f"{archive}: cannot read it ({one_line(exc)})") from exc
    final = cache_root() / "extracted" / f"{archive_stem(archive)}-{stat.st_size}-{stat.st_mtime_ns}"
    if final.is_dir():
        return final
    tf, members = _open_checked(archive, max_bytes, max_members)  # refuse before creating anything
    with tf:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
        except OSError as exc:
            raise CifarkitError(f"{final.parent}: cannot create the cache folder ({one_line(exc)}); "
                                "set CIFARKIT_CACHE to a writable folder") from exc
        try:
            _extract_checked(tf, members, tmp)
            record_source(tmp, archive)  # inside the folder: in place the moment the entry is
            try:
                os.replace(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same entry first; use theirs
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, (tarfile.TarError, OSError, EOFError, zlib.error)):
                raise CifarkitError(f"{archive}: extraction into {final.parent} failed ({one_line(exc)}); check "
                                    "free disk space, or download the archive again") from exc
            raise
    return final


# -------------------------------------------------------------------------------------------------------- pickles

def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 writes bytes at pickle protocol 2 as _codecs.encode(text, "latin1"); only that use is admitted (no codec
    # lookup by a name the pickle chooses), so a pickle cannot reach other codecs through it.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _admitted_globals() -> dict[tuple[str, str], Any]:
    """What a CIFAR-10 batch may reference: numpy's array and scalar reconstruction, nothing that can run code."""
    try:  # numpy >= 2 moved core to _core; old pickles name numpy.core, new ones numpy._core: admit both spellings
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    admitted: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                            ("_codecs", "encode"): _latin1_encode}
    for prefix in ("numpy.core", "numpy._core"):
        admitted[(f"{prefix}.multiarray", "_reconstruct")] = multiarray._reconstruct
        admitted[(f"{prefix}.multiarray", "scalar")] = multiarray.scalar
        admitted[(f"{prefix}.numeric", "_frombuffer")] = numeric._frombuffer  # arrays pickled at protocol 5
    return admitted


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose find_class admits only numpy array reconstruction; lists, dicts, bytes, str and ints need no
    globals. Anything else (os.system, builtins.eval, subprocess...) is refused with a CifarkitError naming the file."""

    def __init__(self, file: io.BufferedIOBase, name: object) -> None:
        # encoding="bytes": the official batches are Python 2 pickles whose str keys and array data load as bytes.
        super().__init__(file, encoding="bytes")
        self._name = name
        self._admitted = _admitted_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._admitted[(module, name)]
        except KeyError:
            raise CifarkitError(f"{self._name}: refused to load: the pickle asks for {module}.{name}, which no "
                                "CIFAR-10 batch holds (it could run code); delete the file and download CIFAR-10 again"
                                ) from None


def restricted_loads(raw: bytes, name: object) -> Any:
    """Unpickle `raw` (read from file `name`) with RestrictedUnpickler; a damaged pickle is a CifarkitError."""
    try:
        return RestrictedUnpickler(io.BytesIO(raw), name).load()
    except CifarkitError:
        raise
    except Exception as exc:  # truncated or corrupt: EOFError, UnpicklingError, ValueError, TypeError, ...
        raise CifarkitError(f"{name}: cannot parse it as a CIFAR-10 batch ({one_line(exc)}); the file is truncated "
                            "or corrupt, download CIFAR-10 again") from exc


# --------------------------------------------------------------------------------------------------------- arrays

def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """np.savez (uncompressed: loading is then a plain read) through a temporary file renamed into place."""
    with atomic_write(path) as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
