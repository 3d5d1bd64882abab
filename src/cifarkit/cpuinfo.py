"""Facts of the machine that cifarkit adapts to: how many CPUs this process may use, the CPU's name and flags.

Read from the OS each time (no module state), and torch-free, so the data layer can use them without loading torch.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and taskset narrow), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def cpuinfo_fields(text: str | None = None) -> dict[str, list[str]]:
    """/proc/cpuinfo as key -> values, one value per logical CPU (empty where it cannot be read, e.g. macOS)."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {}
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ":" in line:
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), []).append(value.strip())
    return fields


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The first CPU's feature flags (avx2, avx512_bf16, amx_bf16, ...); empty where they cannot be read."""
    return frozenset(cpuinfo_fields(cpuinfo).get("flags", [""])[0].split())


def cpu_model() -> str:
    """The CPU's marketing name ("AMD EPYC 7B13"), else what `platform` knows."""
    names = cpuinfo_fields().get("model name")
    return names[0] if names else (platform.processor() or platform.machine())
