"""Each run of a sweep in a child process of its own, on its share of the CPUs.

The sweep starts `python -m cifarkit.study.worker JOB` with JOB a JSON object: {"kind": "train" | "lr-find",
"config": TrainConfig's fields, "resume": bool, "threads": n}. A "train" job is `cifarkit train` (with `resume`:
`cifarkit train --resume --out RUN`, the run's own recipe from its checkpoint); an "lr-find" job is `cifarkit
lr-find`. The child runs on the CPUs the sweep gives it (its affinity) with as many torch threads, and dies with the
sweep (Linux: PR_SET_PDEATHSIG), so a killed sweep leaves no run going on alone. Exit codes are the CLI's: 0, 2 for
an error (one `error:` line), 128 + the signal for a stop at a step boundary (a checkpoint was saved).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1


def cpu_slices(workers: int) -> list[list[int]]:
    """The CPUs this process may use, split into `workers` contiguous slices (shared round robin when there are fewer
    CPUs than workers)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if len(cpus) < workers:
        return [[cpus[i % len(cpus)]] for i in range(workers)]
    size = len(cpus) // workers
    return [cpus[i * size:(i + 1) * size] for i in range(workers)]


def launch(kind: str, config: dict[str, Any], *, resume: bool, cpus: list[int], log: Path) -> subprocess.Popen[bytes]:
    """Start a child for one job; its output is appended to `log`."""
    job = {"kind": kind, "config": config, "resume": resume, "threads": len(cpus)}
    env = os.environ | {name: str(len(cpus)) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:

        def pin() -> None:
            if hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(0, cpus)

        return subprocess.Popen([sys.executable, "-m", "cifarkit.study.worker", json.dumps(job)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, preexec_fn=pin)


def last_error(log: Path) -> str:
    """The child's `error:` line (else its last line), for the sweep's report of a failed trial."""
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if line.startswith(("error:", "interrupted:"))]
    return (errors or lines or ["no output"])[-1]


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the sweep died before the line above
            os._exit(128 + signal.SIGKILL)


def run_job(job: dict[str, Any]) -> int:
    """One job, its errors and stops answered as `cifarkit` answers them (cli_flags.run_guarded): an `error:` line
    and 2, an `interrupted:` line and 128 + the signal."""
    import torch

    from cifarkit.checkpoint import saved_config
    from cifarkit.cli_flags import run_guarded
    from cifarkit.commands import lr_find_command
    from cifarkit.config import TrainConfig
    from cifarkit.console import route_logging
    from cifarkit.train import fit

    torch.set_num_threads(job["threads"])
    route_logging()

    def work() -> int:
        config = TrainConfig.from_dict(job["config"])
        if job["kind"] == "lr-find":
            lr_find_command(config)
        elif job["resume"]:
            fit(saved_config(Path(config.out)), resume=True, progress=False)
        else:
            fit(config, progress=False)
        return 0

    return run_guarded(work, batch_size=job["config"].get("batch_size"))


if __name__ == "__main__":
    _die_with_parent()
    sys.exit(run_job(json.loads(sys.argv[1])))
