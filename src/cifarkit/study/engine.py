"""The sweep's study in Optuna: where it lives, its trials as tickets that are handed out once, and how the trial of a
worker that died is handed out again.

A study is an Optuna study named after the sweep folder, in an sqlite file inside it (`SWEEP/study.db`, no server)
or in the database that `--storage URL` names, which several machines share. A grid's trials are enqueued once, by
the process that creates the study; every process then claims WAITING trials, one at a time, by the storage's atomic
WAITING -> RUNNING update, so no trial is handed to two workers. A claimed trial carries a heartbeat; when the
process that holds it dies (kill -9, a lost machine), its trial is failed and a copy of it, with the same run
folder, is enqueued again (Optuna's retry callback): at once when the dead process ran on this machine,
else once its heartbeat is `GRACE_S` seconds old.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.trial import FrozenTrial, Trial, TrialState

from cifarkit.errors import CifarkitError, one_line
from cifarkit.study.plan import Plan

HEARTBEAT_S = 10  # a running trial's heartbeat, written by the process that holds it
GRACE_S = 40  # a trial whose heartbeat is older than this is taken for dead and handed out again
READY_WAIT_S = 60.0  # how long a process that did not create the study waits for its creator to enqueue the grid


def _retry() -> Callable[[optuna.Study, FrozenTrial], None]:
    """Optuna's callback that enqueues a copy of a failed trial (renamed in optuna 4.9)."""
    from optuna import storages

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old name's deprecation
        warnings.simplefilter("ignore", ExperimentalWarning)
        cls = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
        return cls(max_retry=None)


def default_storage(sweep: Path) -> str:
    return f"sqlite:///{Path(sweep).absolute() / 'study.db'}"


def shown_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as given (it has no password we could find)
        return url


def open_storage(url: str) -> RDBStorage:
    """The study's storage, connected now: an unreachable or unknown database is one line, before any run starts."""
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}  # several sweep processes on one sqlite file wait in turn
    try:
        for attempt in range(3):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
                                      grace_period=GRACE_S, heartbeat_stale_trial_callback=_retry())
            except Exception as e:  # noqa: BLE001 - narrowed below
                # Two processes that start on a new database both create Optuna's tables; one loses with an
                # IntegrityError, and finds the tables there when it tries again.
                if type(e).__name__ != "IntegrityError" or attempt == 2:
                    raise
                time.sleep(1.0 + attempt)
        raise AssertionError("unreachable")
    except ModuleNotFoundError as e:
        raise CifarkitError(f"--storage {shown_url(url)}: its database driver is not installed ({e.name}); for "
                            "PostgreSQL: pip install 'psycopg[binary]'") from e
    except Exception as e:  # noqa: BLE001 - sqlalchemy's errors for a bad URL, a refused connection, a bad password
        raise CifarkitError(f"cannot reach --storage {shown_url(url)}: {one_line(e)[:200]}") from e


def open_study(storage: RDBStorage, name: str, plan: Plan, sampler_seed: int) -> optuna.Study:
    """Create the study and enqueue the grid's trials, or load the study another process created, checking that it
    was made for the same plan."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # trials are reported by the sweep, one line each
    sampler = optuna.samplers.TPESampler(seed=sampler_seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=startup_trials(plan.trials), n_warmup_steps=0)
    signature = plan.signature()
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                    pruner=pruner)
        study.set_user_attr("plan", signature)
        for ticket in plan.tickets() if not plan.search else []:
            study.enqueue_trial({}, user_attrs={"run": ticket.run, "recipe": ticket.recipe,
                                                "overrides": ticket.overrides, "seed": ticket.seed})
        study.set_user_attr("ready", True)
        return study
    except optuna.exceptions.DuplicatedStudyError:
        pass
    study = optuna.load_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner)
    deadline = time.monotonic() + READY_WAIT_S
    while "ready" not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.5)
    theirs = study.user_attrs.get("plan")
    if theirs is not None and theirs != signature:
        names = {"base": "train flags", "seeds": "--seeds", "grid": "--grid", "search": "--search", "trials": "--trials"}
        diff = [names[k] for k in names if signature.get(k) != theirs.get(k)]
        raise CifarkitError(f"study {name!r} was made by a sweep with other {', '.join(diff)}: rerun it with the same "
                            "flags, or give another --out")
    if "ready" not in study.user_attrs:  # its creator died while enqueueing: finish its work
        present = {t.user_attrs.get("run") for t in study.get_trials(deepcopy=False)}
        for ticket in plan.tickets() if not plan.search else []:
            if ticket.run not in present:
                study.enqueue_trial({}, user_attrs={"run": ticket.run, "recipe": ticket.recipe,
                                                    "overrides": ticket.overrides, "seed": ticket.seed})
        study.set_user_attr("ready", True)
    return study


def startup_trials(trials: int | None) -> int:
    """Trials that complete before the median pruner stops any: a fifth of the search, at least one."""
    return max(1, (trials or 0) // 5)


def trial_id(storage: RDBStorage, study: optuna.Study, number: int) -> int:
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def claim(storage: RDBStorage, study: optuna.Study, accept: Callable[[FrozenTrial], bool]) -> Trial | None:
    """A WAITING trial that `accept`s, now RUNNING and ours; None when there is none."""
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if not accept(frozen):
            continue
        tid = trial_id(storage, study, frozen.number)
        try:
            if not storage.set_trial_state_values(tid, TrialState.RUNNING):  # another process took it first
                continue
        except UpdateFinishedTrialError:
            continue
        return _held(storage, study, tid)


def ask_new(storage: RDBStorage, study: optuna.Study) -> Trial:
    """A new trial for the search (or a WAITING one, which Optuna hands out first), held by this process."""
    trial = study.ask()
    return _held(storage, study, trial_id(storage, study, trial.number))


def process_space() -> str:
    """Where this process's id means this process: the host name, its boot, and the PID namespace (two containers
    on one machine may share a host name, never a PID namespace)."""
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(Path(path).read_text().strip() if "boot" in path else str(os.stat(path).st_ino))
        except OSError:
            parts.append("?")
    return "/".join(parts)


def _held(storage: RDBStorage, study: optuna.Study, tid: int) -> Trial:
    trial = Trial(study, tid)
    trial.set_user_attr("host", process_space())
    trial.set_user_attr("pid", os.getpid())
    storage.record_heartbeat(tid)
    return trial


def heartbeat(storage: RDBStorage, trial_ids: list[int]) -> None:
    for tid in trial_ids:
        storage.record_heartbeat(tid)


def hand_out_dead(storage: RDBStorage, study: optuna.Study) -> int:
    """Fail the RUNNING trials whose process is gone, and enqueue each again (same run folder): those of a process of
    this machine that no longer exists at once, the others once their heartbeat is stale. Returns how many."""
    retry = _retry()
    host, count = process_space(), 0
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = frozen.user_attrs.get("pid")
        if frozen.user_attrs.get("host") != host or pid is None or _alive(int(pid)):
            continue
        try:
            if storage.set_trial_state_values(trial_id(storage, study, frozen.number), TrialState.FAIL):
                retry(study, frozen)
                count += 1
        except UpdateFinishedTrialError:  # another process failed it first, and enqueued its copy
            pass
    before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        fail_stale_trials(study)
    return count + len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) - before


def retry_failed(study: optuna.Study) -> int:
    """Enqueue again (same run folder) every failed trial that has no copy yet: those whose run stopped with an
    error, so that a rerun of the sweep, once the cause is fixed, tries them again. Returns how many."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    retry = _retry()
    failed = [t for t in trials if t.state == TrialState.FAIL and t.number not in retried]
    for frozen in failed:
        retry(study, frozen)
    return len(failed)


def give_back(storage: RDBStorage, study: optuna.Study, tid: int) -> None:
    """A trial this process stops without finishing (Ctrl-C): failed, and enqueued again so a rerun resumes it."""
    try:
        if storage.set_trial_state_values(tid, TrialState.FAIL):
            _retry()(study, storage.get_trial(tid))
    except UpdateFinishedTrialError:
        pass


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state; a failed trial that was enqueued again counts once, as its copy."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    out = {s.name.lower(): 0 for s in TrialState}
    for t in trials:
        if not (t.state == TrialState.FAIL and t.number in retried):
            out[t.state.name.lower()] += 1
    return out
