"""The data cache, shown and emptied (`cifarkit cache`, `cifarkit cache --clear`).

It lives in $CIFARKIT_CACHE, else ~/.cache/cifarkit, and holds what makes a second load of the data take a second:

    cifar-10-python.tar.gz                  the official archive, when it was downloaded (163 MB)
    extracted/<archive>-<size>-<mtime>/     an archive's files, unpacked on its first read
    arrays/<key>.npz                        an image-folder tree decoded into arrays (185 MB for CIFAR-10)
    arrays/<key>.sha256                     the fingerprint of a data set's arrays (65 bytes)
    extracted/<...>/.source, arrays/<key>.source    which data an entry was made from

Only these names are listed or removed: whatever else the folder holds is left alone.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cifarkit.atomic import TEMP_GLOB
from cifarkit.data.archive import SOURCE_SUFFIX, cache_root, source_note
from cifarkit.data.download import OFFICIAL_ARCHIVE_NAME, OFFICIAL_URL


@dataclass(frozen=True)
class CacheEntry:
    """One entry: its files (relative to the cache), their size on disk, what it is and which data it came from."""

    name: str
    paths: tuple[Path, ...]
    bytes: int
    what: str
    source: str  # "": not recorded (an entry made by an older cifarkit)


def disk_bytes(path: Path) -> int:
    """Bytes `path` takes on disk (allocated blocks, so 60,000 small files count as they weigh), folders in full."""
    def one(p: str | Path) -> int:
        st = os.lstat(p)
        return st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size

    if not path.is_dir() or path.is_symlink():
        return one(path) if path.exists() or path.is_symlink() else 0
    total = one(path)
    for folder, dirs, files in os.walk(path):
        total += sum(one(os.path.join(folder, name)) for name in dirs + files)
    return total


def _recorded(note: Path) -> str | None:
    try:
        return note.read_text().strip() or None
    except OSError:
        return None


def _source(root: Path, note: Path) -> str:
    """The data an entry came from, as its .source note says; a folder inside extracted/X stands for X's archive."""
    recorded = _recorded(note)
    if recorded is None:
        return ""
    extracted = root / "extracted"
    try:
        inside = Path(recorded).relative_to(extracted)
    except ValueError:
        return recorded
    return (_recorded(source_note(extracted / inside.parts[0])) if inside.parts else None) or recorded


def cache_entries(root: Path | None = None) -> list[CacheEntry]:
    """What the cache at `root` (default: cache_root()) holds, largest first."""
    root = cache_root() if root is None else root
    entries: list[CacheEntry] = []
    download = root / OFFICIAL_ARCHIVE_NAME
    if download.is_file():
        entries.append(CacheEntry(download.name, (download,), disk_bytes(download), "downloaded archive",
                                  OFFICIAL_URL))
    extracted = root / "extracted"
    if extracted.is_dir():
        for folder in sorted(p for p in extracted.iterdir() if p.is_dir() and not p.name.startswith(".")):
            entries.append(CacheEntry(f"extracted/{folder.name}/", (folder,), disk_bytes(folder), "extracted files",
                                      _source(root, source_note(folder))))
    arrays = root / "arrays"
    if arrays.is_dir():
        stems = sorted({p.stem for p in arrays.iterdir() if p.suffix in (".npz", ".sha256", SOURCE_SUFFIX)
                        and not p.name.startswith(".")})
        for stem in stems:
            paths = tuple(p for suffix in (".npz", ".sha256", SOURCE_SUFFIX)
                          if (p := arrays / f"{stem}{suffix}").exists())
            npz = (arrays / f"{stem}.npz").exists()
            note = arrays / f"{stem}{SOURCE_SUFFIX}"
            if not note.exists() and (extracted / stem).is_dir():  # an archive's tree, decoded: the archive's note
                note = source_note(extracted / stem)
            entries.append(CacheEntry(f"arrays/{stem}.{'npz' if npz else 'sha256'}", paths,
                                      sum(map(disk_bytes, paths)),
                                      "decoded images" if npz else "data fingerprint", _source(root, note)))
    return sorted(entries, key=lambda e: -e.bytes)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def format_cache(entries: list[CacheEntry], root: Path) -> str:
    """The listing `cifarkit cache` prints."""
    how = "set by $CIFARKIT_CACHE" if os.environ.get("CIFARKIT_CACHE") else "$CIFARKIT_CACHE moves it"
    where = f"cache: {root} ({how})"
    if not entries:
        return f"{where}: empty"
    lines = [f"{where}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, "
             f"{_mb(sum(e.bytes for e in entries))} on disk"]
    width = max(len(e.name) for e in entries)
    lines += [f"  {_mb(e.bytes):>10}  {e.name:<{width}}  {e.what}, "
              f"{f'from {e.source}' if e.source else 'source not recorded (an older cifarkit)'}" for e in entries]
    lines.append("empty it with: cifarkit cache --clear (the next load extracts and decodes again)")
    return "\n".join(lines)


def clear_cache(root: Path | None = None) -> tuple[int, int]:
    """Remove every cache entry (and temp files of interrupted writes); returns (entries, bytes) removed. The folder
    itself goes when nothing else is left in it."""
    root = cache_root() if root is None else root
    entries = cache_entries(root)
    for entry in entries:
        for path in entry.paths:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    for folder in (root, root / "extracted", root / "arrays"):
        leftovers = [*folder.glob(TEMP_GLOB), *folder.glob(".*.partial")] if folder.is_dir() else []
        for path in leftovers:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    for folder in (root / "extracted", root / "arrays", root):
        try:
            folder.rmdir()  # only when empty
        except OSError:
            pass
    return len(entries), sum(e.bytes for e in entries)
