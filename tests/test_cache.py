"""`cifarkit cache` lists what the data cache holds (entries, sizes on disk, the data each came from) and
`cifarkit cache --clear` empties it; $CIFARKIT_CACHE moves it."""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from cifarkit.data import Cifar10, load_cifar10
from cifarkit.data.cache import cache_entries, clear_cache, disk_bytes
from helpers import run_cli


def test_disk_bytes_counts_allocated_blocks_of_a_folder(tmp_path: Path) -> None:
    """A folder's size is the sum of what each file and folder takes on disk (st_blocks), worked out file by file."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "one").write_bytes(b"x" * 10)
    (tmp_path / "a" / "b" / "two").write_bytes(b"y" * 5000)
    parts = [tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "one", tmp_path / "a" / "b" / "two"]
    assert disk_bytes(tmp_path / "a") == sum(os.lstat(p).st_blocks * 512 for p in parts)
    assert disk_bytes(tmp_path / "missing") == 0


def test_entries_name_the_data_they_came_from_and_clear_removes_them(
        cifar_cache: Path, tiny_data: Cifar10, cifar_files: SimpleNamespace, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """After loading a PNG-tree archive, python batches as a folder and as an archive, and a PNG folder, the cache
    lists each archive's extracted files, the decoded arrays of each tree and the fingerprint of each set of batches,
    each naming the path the user gave; their sizes add up to the cache's disk use; --clear removes them all and
    leaves foreign files alone."""
    archive = cifar_files.tar(tmp_path / "pngs.tar.gz", cifar_files.image_tree(tiny_data, tmp_path / "tree"), "tree")
    batches = cifar_files.pickle_folder(tiny_data, tmp_path / "batches")
    batches_tar = cifar_files.tar(tmp_path / "batches.tar.gz", batches, "cifar-10-batches-py")
    folder = cifar_files.image_tree(tiny_data, tmp_path / "folder")
    for source in (archive, batches, batches_tar, folder):
        load_cifar10(source)
    found = sorted((e.name.split("/")[0], e.what, e.source) for e in cache_entries())
    assert found == sorted([("extracted", "extracted files", str(archive)),
                            ("arrays", "decoded images", str(archive)),  # the tree inside the archive, decoded
                            ("arrays", "data fingerprint", str(batches)),
                            ("extracted", "extracted files", str(batches_tar)),
                            ("arrays", "data fingerprint", str(batches_tar)),  # of the batches inside it
                            ("arrays", "decoded images", str(folder))]), found
    tops = [p for d in (cifar_cache, cifar_cache / "extracted", cifar_cache / "arrays") for p in d.iterdir()
            if p.name not in ("extracted", "arrays")]  # every file and folder the cache holds, once
    assert sum(e.bytes for e in cache_entries()) == sum(disk_bytes(p) for p in tops)

    code, out, err = run_cli(["cache"], capsys)
    assert code == 0, err
    assert out.startswith(f"cache: {cifar_cache} (set by $CIFARKIT_CACHE): 6 entries")
    assert str(archive.resolve()) in out and str(folder.resolve()) in out and str(batches.resolve()) in out

    (cifar_cache / "mine.txt").write_text("not cifarkit's")
    code, out, err = run_cli(["cache", "--clear"], capsys)
    assert code == 0, err
    assert out.startswith(f"cleared {cifar_cache}: 6 entries")
    assert sorted(p.name for p in cifar_cache.iterdir()) == ["mine.txt"]
    assert cache_entries() == []
    assert load_cifar10(archive).fingerprint == load_cifar10(folder).fingerprint  # the cache fills again


def test_cache_env_moves_the_cache_and_an_empty_cache_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """With $CIFARKIT_CACHE set, the listing shows that folder; an absent cache is "empty" and clearing it removes
    nothing; without the variable the cache is ~/.cache/cifarkit (HOME moved to an empty folder)."""
    monkeypatch.setenv("CIFARKIT_CACHE", str(tmp_path / "elsewhere"))
    assert run_cli(["cache"], capsys)[:2] == (0, f"cache: {tmp_path / 'elsewhere'} (set by $CIFARKIT_CACHE): empty\n")
    assert clear_cache() == (0, 0) and not (tmp_path / "elsewhere").exists()
    monkeypatch.delenv("CIFARKIT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert run_cli(["cache"], capsys)[:2] == (0, f"cache: {tmp_path / 'home' / '.cache' / 'cifarkit'} "
                                                 "($CIFARKIT_CACHE moves it): empty\n")


def test_an_entry_of_an_older_version_says_its_source_is_not_recorded(cifar_cache: Path) -> None:
    """A downloaded archive names the official URL; an extracted folder without a .source note says so."""
    from cifarkit.data.download import OFFICIAL_URL

    (cifar_cache / "extracted" / "old-1-2").mkdir(parents=True)
    (cifar_cache / "cifar-10-python.tar.gz").write_bytes(b"\0" * 100)
    found = {e.name: e for e in cache_entries()}
    assert found["extracted/old-1-2/"].source == ""
    assert found["cifar-10-python.tar.gz"].source == OFFICIAL_URL
    assert clear_cache()[0] == 2 and not cifar_cache.exists()


def test_the_readme_says_where_the_cache_is_and_how_large_it_gets() -> None:
    """The README names the cache folder, the variable that moves it, both commands, and its size for CIFAR-10's
    PNG archive as the sum of its two parts (249 MB extracted + 185 MB arrays = 434 MB)."""
    words = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    for text in ("`~/.cache/cifarkit`, or `$CIFARKIT_CACHE`", "`cifarkit cache` lists", "`cifarkit cache --clear`"):
        assert text in words, text
    found = re.search(r"takes (\d+) MB there: (\d+) MB of extracted files and (\d+) MB of arrays", words)
    assert found and int(found.group(1)) == int(found.group(2)) + int(found.group(3))
