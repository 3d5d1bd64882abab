"""The command line's flags: generated from TrainConfig's fields (same names everywhere), the argparse pieces every
command shares (one-line errors, checked numbers, --device and --precision), and `check_args`, every check of a
command's arguments and outputs that needs no torch, run before any command imports it."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from cifarkit import run as R
from cifarkit.config import NOT_FLAGS, TrainConfig, check_device_name, check_precision_name
from cifarkit.console import say
from cifarkit.data.images import check_image_path
from cifarkit.errors import CifarkitError, TrainingInterrupted, os_error_line
from cifarkit.net import check_address
from cifarkit.run.claim import check_out_folder

LR_FIND_FIELDS = ("data", "out", "batch_size", "weight_decay", "label_smoothing", "seed", "device", "subset",
                  "augment", "pad_mode", "std", "cutout_p", "cutout_size", "workers", "precision", "channels_last",
                  "lr_find_iters", "lr_find_start", "lr_find_end")
MAX_TOP_K = 10  # CIFAR-10's classes
PRECISION_HELP = "auto, bf16, fp16 or fp32 (autocast); auto: what the hardware runs best, as train's --precision"


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as the one `error:` line every cifarkit mistake gets (no usage block), and no
    abbreviated flags: `--epoch 3` is refused, not taken as `--epochs 3`. Subparsers are made of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise CifarkitError(f"{message} (see {self.prog} --help)")


def _field_type(tp: Any) -> Any:
    """The scalar type of a field annotated `X` or `X | None`."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def add_config_flags(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """One flag per TrainConfig field; defaults are SUPPRESSed so we know which flags the user gave."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in NOT_FLAGS or (names is not None and f.name not in names):
            continue
        tp = _field_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"].replace("%", "%%")
        if "default:" not in help_text:  # a None default is explained in the help itself ("default: all")
            shown = ("on" if f.default else "off") if tp is bool else f.default
            help_text += f" (default: {shown})"
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type=tp, default=argparse.SUPPRESS, help=help_text)


def given_config(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names}


def count(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in low..high, refused while parsing, before any work."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {f'in {low}..{high}' if high else f'at least {low}'}, got "
                                             f"{value}")
        return value
    return parse


def add_run_flags(p: argparse.ArgumentParser, what: str) -> None:
    """--device and --precision, for every command that runs the model."""
    p.add_argument("--device", default="auto", help=f"where {what} runs: auto (cuda, then mps, then cpu), cpu, cuda "
                   "or mps (default: auto)")
    p.add_argument("--precision", default="auto", help=f"{PRECISION_HELP} (default: auto)")


def check_sweep_out(out: Path) -> Path:
    """A sweep's --out, before any data loads: a folder (new, or a sweep's) that can be written, not a run folder."""
    check_out_folder(out, what="the sweep's runs")
    if (out / R.CONFIG).is_file():
        raise CifarkitError(f"--out {out} is a run folder: give a new folder, or the folder of a sweep")
    return out


def check_args(args: argparse.Namespace) -> None:
    """Every check that needs no torch, run before any command imports it: a mistake gets its line at once."""
    for name, check in (("device", check_device_name), ("precision", check_precision_name)):
        value = getattr(args, name, None)
        if value is not None:
            try:
                check(value)
            except CifarkitError as e:
                raise CifarkitError(e.cli_line()) from None
    if args.command in ("train", "lr-find"):
        given = given_config(args)
        try:
            TrainConfig(**given).validate()
        except CifarkitError as e:
            raise CifarkitError(e.cli_line()) from None
        kind = "lr-find" if args.command == "lr-find" else "resume" if args.resume else "train"
        R.check_run_out(given.get("out", TrainConfig.out), kind=kind)
    elif args.command in ("evaluate", "predict"):
        R.check_torch_file(R.find_weights(args.checkpoint))
        for image in getattr(args, "images", ()):
            check_image_path(image)
    elif args.command == "report":
        R.find_weights(R.report_folder(args.run))
    elif args.command in ("app", "export"):
        R.find_weights(args.run)
        if args.command == "app":
            check_address(args.host, args.port)
        if args.command == "export":
            R.check_out_file(args.out, suffix=args.format)
    elif args.command == "sweep":
        check_sweep_out(args.sweep_out)
    elif args.command == "compare" and args.out is not None:
        check_out_folder(args.out, what="compare's files")


def say_error(line: str) -> int:
    """The one `error: ...` line of a failed command, on stderr; its exit code, 2."""
    say(f"error: {line}")
    return 2


def run_guarded(work: Callable[[], int], *, batch_size: int | None = None) -> int:
    """`work()`'s exit code, with what a user can cause turned into the command line's answer: a CifarkitError, an
    OSError (a full disk, a read-only or vanished folder) or an allocator's failure is one `error:` line and 2; a
    stop by a signal is an `interrupted:` line and 128 + the signal. `cifarkit` and each sweep trial's process run
    their work through it; any other exception is a bug, and raises."""
    try:
        return work()
    except CifarkitError as e:
        return say_error(e.cli_line())
    except OSError as e:
        return say_error(os_error_line(e))
    except TrainingInterrupted as e:
        say(f"interrupted: {e}")
        return 128 + e.signum
    except KeyboardInterrupt:
        say("interrupted")
        return 128 + signal.SIGINT
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        return say_error(f"a batch{f' of {batch_size} images' if batch_size else ''} does not fit in memory on this "
                         "device; lower --batch-size")


def is_out_of_memory(e: BaseException) -> bool:
    """An allocator's failure (torch.OutOfMemoryError on a GPU, "can't allocate memory" on a CPU), told by its words
    so that the check needs no torch."""
    text = str(e)
    return isinstance(e, MemoryError) or isinstance(e, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text)
