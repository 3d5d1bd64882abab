"""`cifarkit sweep`: a plan's trials run by `workers` child processes, resumable, in a study others may share.

Each trial is an ordinary run folder, SWEEP/<config>-seed<seed> (a search's: SWEEP/trial<n>-<config>-seed<seed>).
A finished run folder is never trained again; a run folder with a checkpoint is resumed as `train --resume`; the
range test runs once per recipe, in SWEEP/lr-find/<config>, and its LRs serve every seed of that recipe. A search
reports each epoch's test accuracy to Optuna and stops (SIGTERM: a checkpoint, then exit) a trial that the median
pruner prunes.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from cifarkit.cli_flags import check_sweep_out
from cifarkit.config import TrainConfig
from cifarkit.console import say
from cifarkit.data import resolve_data
from cifarkit.device import pick_device
from cifarkit.errors import CifarkitError, one_line
from cifarkit.run import CHECKPOINT, LR_FINDER, is_finished, read_optional_json
from cifarkit.study import engine
from cifarkit.study.plan import Plan, label, plural, run_name, trials_said
from cifarkit.study.runs import final_accuracy, history_column
from cifarkit.study.worker import cpu_slices, last_error, launch

TICK_S = 0.2


@dataclass
class Job:
    """A trial this process holds, and the child process working on it (the range test, then the run)."""

    tid: int
    trial: Any  # optuna.trial.Trial
    run: Path
    recipe: str
    seed: int
    config: TrainConfig
    cpus: list[int]
    proc: subprocess.Popen[bytes] | None = None
    phase: str = "train"
    started: float = 0.0
    reported: int = 0
    pruned: bool = False


class Sweep:
    def __init__(self, plan: Plan, out: Path, storage_url: str, workers: int) -> None:
        self.plan, self.out, self.workers = plan, out, workers
        self.storage = engine.open_storage(storage_url)
        self.study = engine.open_study(self.storage, out.name, plan, plan.seeds[0])
        self.jobs: dict[int, Job] = {}  # slot -> job
        self.slices = cpu_slices(workers)
        self.finding: set[str] = set()  # recipes whose range test runs in this process
        self.failed = 0
        self.waiting_said = False
        self.bar: tqdm | None = None

    # ------------------------------------------------------------------------------------------- the loop
    def run(self) -> int:
        engine.hand_out_dead(self.storage, self.study)
        retried = engine.retry_failed(self.study)
        if retried:
            say(f"trying again {plural(retried, 'trial')} that failed in an earlier run of this sweep")
        total = self.plan.trials or len(self.plan.tickets())
        done = self._done()
        say(f"sweep {self.out}: {trials_said(self.plan)}, {done} already finished; {self.workers} at once "
                   f"({plural(len(self.slices[0]), 'CPU thread')} each); study "
                   f"{self.study.study_name!r} in {engine.shown_url(self.storage.url)}")
        self.bar = tqdm(total=total, initial=done, desc="sweep", unit="trial", dynamic_ncols=True)
        beat = time.monotonic()
        stop: dict[str, int] = {}  # the signal that stops the sweep: SIGINT (Ctrl-C) or SIGTERM

        def on_signal(signum: int, frame: Any) -> None:
            stop["signum"] = signum
            # At once, out of any wait. Raised inside a weakref callback or __del__, Python prints the exception
            # and drops it: the loop then stops at its next tick on the signal noted here.
            raise KeyboardInterrupt

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while True:
                if stop:
                    raise KeyboardInterrupt
                for slot in list(self.jobs):
                    self._poll(slot)
                for slot in range(self.workers):
                    if slot not in self.jobs and not self._start(slot):
                        break
                if time.monotonic() - beat > engine.HEARTBEAT_S:
                    beat = time.monotonic()
                    engine.heartbeat(self.storage, [j.tid for j in self.jobs.values()])
                    engine.hand_out_dead(self.storage, self.study)
                if not self.jobs and not self._more():
                    break
                time.sleep(TICK_S)
        except KeyboardInterrupt:
            return self._interrupted(stop.get("signum", int(signal.SIGINT)))
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.bar.close()
        c = engine.counts(self.study)
        again = f" (logs: {self.out / 'logs'}; the same command tries them again)" if c["fail"] else ""
        say(f"sweep {self.out}: {c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed{again}; compare "
            f"with: cifarkit compare {self.out}")
        return 1 if self.failed else 0

    def _done(self) -> int:
        c = engine.counts(self.study)
        return c["complete"] + c["pruned"] + c["fail"]

    def _more(self) -> bool:
        """Whether trials are left to claim, now or later: waiting ones, trials still to ask for in a search, and
        trials that other processes run (if one of them dies, its trial comes back to the queue)."""
        c = engine.counts(self.study)
        if c["waiting"] or (self.plan.search and sum(c.values()) < (self.plan.trials or 0)):
            return True
        others = c["running"] - len(self.jobs)
        if others > 0 and not self.waiting_said:
            self.waiting_said = True
            say(f"waiting for {plural(others, 'trial')} that other sweep processes run (a trial "
                       f"whose heartbeat stops for {engine.GRACE_S} s is handed out again)")
        return others > 0

    # ------------------------------------------------------------------------------------------ starting
    def _start(self, slot: int) -> bool:
        """Claim a trial into `slot` and start its child; False when there is none to claim now."""
        trial = engine.claim(self.storage, self.study, lambda t: t.user_attrs.get("recipe") not in self.finding)
        if trial is None and self.plan.search and sum(engine.counts(self.study).values()) < (self.plan.trials or 0):
            trial = engine.ask_new(self.storage, self.study)
        if trial is None:
            return False
        tid = engine.trial_id(self.storage, self.study, trial.number)
        attrs = trial.user_attrs
        if self.plan.search:
            overrides = {s.name: (trial.suggest_int(s.name, int(s.low), int(s.high), log=s.log) if s.integer else
                                  trial.suggest_float(s.name, s.low, s.high, log=s.log)) for s in self.plan.search}
            seed, recipe = self.plan.seeds[0], label(overrides)
            name = attrs.get("run") or f"trial{trial.number:03d}-{run_name(recipe, seed)}"
            for key, value in {"run": name, "recipe": name, "overrides": overrides, "seed": seed}.items():
                trial.set_user_attr(key, value)
            recipe = name  # each searched config has its own range test
        else:
            name, recipe, overrides, seed = attrs["run"], attrs["recipe"], attrs["overrides"], attrs["seed"]
        run = self.out / name
        job = Job(tid, trial, run, recipe, seed, self.plan.config(overrides, seed, run), self.slices[slot])
        if is_finished(run):  # trained by a process that died before it could say so
            self._tell_complete(job, "already trained")
            return True
        self.jobs[slot] = job
        if (run / CHECKPOINT).is_file():
            say(f"resume {name} from its checkpoint")
            self._launch(job, "train", resume=True)
        elif job.config.lr_min is None or job.config.lr_max is None:
            lrs = self._known_lrs(recipe)
            if lrs is None:
                self.finding.add(recipe)
                job.phase = "lr-find"
                self._launch(job, "lr-find")
            else:
                self._with_lrs(job, lrs)
                self._launch(job, "train")
        else:
            self._launch(job, "train")
        return True

    def _launch(self, job: Job, kind: str, resume: bool = False) -> None:
        config = job.config
        if kind == "lr-find":
            config = replace(config, out=str(self.lr_dir(job.recipe)))
        job.phase, job.started = kind, time.monotonic()
        job.proc = launch(kind, config.to_dict(), resume=resume, cpus=job.cpus,
                          log=self.out / "logs" / f"{job.run.name}.log")

    def lr_dir(self, recipe: str) -> Path:
        return self.out / "lr-find" / (run_name(recipe, 0).rsplit("-seed", 1)[0] if recipe else "all")

    def _known_lrs(self, recipe: str) -> list[float] | None:
        key = f"lrs:{recipe}"
        lrs = self.study.user_attrs.get(key)
        found = read_optional_json(self.lr_dir(recipe) / LR_FINDER) if lrs is None else None
        if found is not None:
            lrs = [found["lr_min"], found["lr_max"]]
            self.study.set_user_attr(key, lrs)
        return lrs

    def _with_lrs(self, job: Job, lrs: list[float]) -> None:
        c = job.config
        found = [name for name in ("lr_min", "lr_max") if getattr(c, name) is None]
        job.config = replace(c, lr_min=c.lr_min or lrs[0], lr_max=c.lr_max or lrs[1],
                             extra=c.extra | {"lr_from": str(self.lr_dir(job.recipe).relative_to(self.out)),
                                              "lrs_found": found})

    # ---------------------------------------------------------------------------------------- finishing
    def _poll(self, slot: int) -> None:
        job = self.jobs[slot]
        assert job.proc is not None
        if self.plan.search and job.phase == "train" and not job.pruned:
            self._report(job)
        code = job.proc.poll()
        if code is None:
            return
        log = self.out / "logs" / f"{job.run.name}.log"
        if job.phase == "lr-find":
            self.finding.discard(job.recipe)
            if code == 0:
                lrs = self._known_lrs(job.recipe)
                assert lrs is not None
                seeds = "the trial" if self.plan.search else f"its {len(self.plan.seeds)} seeds"
                say(f"lr-find {job.recipe or 'the recipe'}: LRMIN {lrs[0]:.3g}, LRMAX {lrs[1]:.3g}, "
                           f"used by {seeds} ({self.lr_dir(job.recipe)})")
                self._with_lrs(job, lrs)
                self._launch(job, "train")
                return
        del self.jobs[slot]
        if job.phase == "train" and code == 0 and is_finished(job.run):
            self._tell_complete(job, f"{time.monotonic() - job.started:.0f} s")
        elif job.pruned and code == 128 + signal.SIGTERM:
            self.study.tell(job.trial, state=engine.TrialState.PRUNED)
            epochs = len(history_column(job.run, "test_acc"))
            self._line(f"pruned {job.run.name} after epoch {epochs} of {job.config.epochs}")
        else:
            self.failed += 1
            self.study.tell(job.trial, state=engine.TrialState.FAIL)
            self._line(f"failed {job.run.name} ({job.phase}): {last_error(log)} (log: {log}; the same command "
                       "tries it again)")

    def _report(self, job: Job) -> None:
        """Each new epoch's test accuracy to Optuna; a run the pruner prunes is stopped at its next step."""
        accs = history_column(job.run, "test_acc")
        for epoch in range(job.reported, len(accs)):
            job.trial.report(accs[epoch], epoch + 1)
            job.reported = epoch + 1
            if job.trial.should_prune():
                job.pruned = True
                assert job.proc is not None
                job.proc.send_signal(signal.SIGTERM)
                return

    def _tell_complete(self, job: Job, how: str) -> None:
        acc = final_accuracy(job.run)
        self.study.tell(job.trial, acc)
        config = label(job.trial.params) if self.plan.search else job.recipe or "the recipe"
        self._line(f"done {config}, seed {job.seed}: final test accuracy {100 * acc:.2f}% ({how}; {job.run})")

    def _line(self, text: str) -> None:
        say(text)
        if self.bar is not None:
            self.bar.update(1)

    def _interrupted(self, signum: int) -> int:
        """Ctrl-C or SIGTERM: every child stops at a step boundary with a checkpoint; their trials go back to the
        queue, so the same command resumes them. The exit code is the command line's: 128 + the signal."""
        if self.bar is not None:
            self.bar.close()  # the lines below start lines of their own
        for job in self.jobs.values():
            if job.proc is not None and job.proc.poll() is None:
                job.proc.send_signal(signal.SIGTERM)
        for job in self.jobs.values():
            if job.proc is not None:
                try:
                    job.proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    job.proc.kill()
            engine.give_back(self.storage, self.study, job.tid)
        say("interrupted: the runs stopped at a checkpoint; the same command resumes the sweep")
        return 128 + signum


def sweep_command(plan: Plan, *, out: Path, storage: str | None, workers: int) -> int:
    """Check everything (the out folder, the devices, the storage, the study's plan, then the data), then run the
    sweep. A start that fails leaves no new folder behind. Every line it says goes to stderr (console.say): a
    sweep's results are its run folders, which `cifarkit compare` reads."""
    check_sweep_out(out)
    for device in plan.devices():  # one line for a device that is not there (cuda without a GPU), not a failed
        pick_device(device)  # trial per run; each run resolves its precision, so the sweep starts no GPU context
    if storage is not None:  # reached before anything is written or loaded
        engine.open_storage(storage).engine.dispose()
    new = _first_new(out)
    try:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CifarkitError(f"cannot make --out {out}: {e.strerror or one_line(e)}; choose another --out") from None
        sweep = Sweep(plan, out, storage or engine.default_storage(out), workers)  # another plan's study: refused
        if "data" not in plan.grid:
            data = resolve_data(plan.base.get("data"))  # no data: one line, before any run; else decoded once
            if data.path:
                sweep.plan = replace(plan, base=plan.base | {"data": data.path})
            say(f"data: {data.source}")
    except BaseException:
        if new is not None:
            shutil.rmtree(new, ignore_errors=True)
        raise
    return sweep.run()


def _first_new(path: Path) -> Path | None:
    """The topmost folder of `path` that does not exist yet (what mkdir(parents=True) makes), or None."""
    new = None
    while not path.exists() and path != path.parent:
        new, path = path, path.parent
    return new
