"""`cifarkit` command line: summary, lr-find, train, evaluate, predict, report, bench.

`train` flags map one to one onto TrainConfig fields (--lr-max is TrainConfig.lr_max). Errors a user can cause
print one `error: ...` line on stderr and exit 2, with no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cifarkit.config import TrainConfig
from cifarkit.errors import CifarkitError


def _field_type(tp: Any) -> Any:
    """The scalar type of a field annotated `X` or `X | None`."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def add_config_flags(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """One flag per TrainConfig field; defaults are SUPPRESSed so we know which flags the user gave."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "extra" or (names is not None and f.name not in names):
            continue
        tp = _field_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type=tp, default=argparse.SUPPRESS, help=help_text)


def given_config(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cifarkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("summary", help="print the model's torchinfo table")
    p.add_argument("--batch-size", type=int, default=512)

    p = sub.add_parser("lr-find", help="run the LR range test and suggest LRMIN and LRMAX")
    add_config_flags(p, ["data", "out", "batch_size", "weight_decay", "seed", "device", "subset", "augment",
                         "pad_mode", "std", "cutout_p", "cutout_size", "workers", "lr_find_start", "lr_find_end"])
    p.add_argument("--iters", dest="lr_find_iters", type=int, default=argparse.SUPPRESS,
                   help="steps of the sweep (default: 200)")

    p = sub.add_parser("train", help="train the assignment's recipe (runs the LR range test unless LRs are given)")
    add_config_flags(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")

    p = sub.add_parser("evaluate", help="test accuracy of a run's weights")
    p.add_argument("--checkpoint", required=True, help="RUN/model.pt, RUN/checkpoints/last.pt, or a run folder")
    p.add_argument("--data", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--tta", action="store_true", help="also report flip test-time-augmented accuracy")

    p = sub.add_parser("predict", help="classify image files")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("report", help="(re)draw a run's plots and write RUN/report.md")
    p.add_argument("run", type=Path)
    p.add_argument("--data", default=None, help="data source (default: the run's own)")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("bench", help="training and data-pipeline throughput against a bare loop")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", default="auto", help="auto, bf16 or fp32, as train's --precision")
    add_app_export_parsers(sub)
    return parser


# ---------------------------------------------------------------------------------------- app and export
# Both need optional extras (cifarkit[app], cifarkit[export]), imported only when the command runs.

EXPORT_DESCRIPTION = """Export a run's model and check the file against PyTorch on the run's test images.

The exported model takes what an image file holds and returns what a user wants:
  input  "images": uint8 [B, 32, 32, 3], RGB, batch size B free (NHWC, as PIL and numpy give images)
  output "probs":  float32 [B, classes], softmax probabilities
The run's normalisation (its mean and std) is inside the graph, so callers only resize to 32x32.
The check fails (exit 2, nothing written) unless every probability is within 1e-3 of PyTorch's and the
top-1 class is the same on every image. Needs: pip install "cifarkit[export]"."""


def add_app_export_parsers(sub: Any) -> None:
    p = sub.add_parser("app", help="serve a local web app over a run: predict, Grad-CAM, misclassified images",
                       description="A Gradio app over a trained run (needs: pip install \"cifarkit[app]\").")
    p.add_argument("run", type=Path, help="run folder, RUN/model.pt, or RUN/checkpoints/last.pt")
    p.add_argument("--port", type=int, default=7860, help="TCP port to serve on (default: 7860)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 serves every network)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    p.add_argument("--data", default=None, help="data for the test images and examples (default: the run's own)")

    p = sub.add_parser("export", help="export a run's model to ONNX (or TorchScript) and check it against PyTorch",
                       description=EXPORT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="run folder, RUN/model.pt, or RUN/checkpoints/last.pt")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript"], help="file format (default: onnx)")
    p.add_argument("--out", type=Path, required=True, help="file to write, e.g. model.onnx")
    p.add_argument("--check-images", type=int, default=1000,
                   help="test images for the parity check and the speed figures (default: 1000; 0: all)")
    p.add_argument("--data", default=None, help="data for the check (default: the run's own)")


def cmd_app(args: argparse.Namespace) -> int:
    from cifarkit.app import app_command

    return app_command(args.run, data=args.data, device=args.device, host=args.host, port=args.port)


def cmd_export(args: argparse.Namespace) -> int:
    from cifarkit.export import export_command

    return export_command(args.run, fmt=args.format, out=args.out, check_images=args.check_images, data=args.data)

# ---------------------------------------------------------------------------------- end of app and export


def cmd_summary(args: argparse.Namespace) -> int:
    from cifarkit.summary import model_summary

    if args.batch_size <= 0:
        raise CifarkitError(f"--batch-size must be positive, got {args.batch_size}")
    print(model_summary(args.batch_size))
    return 0


def saved_config(out: Path) -> TrainConfig:
    """The recipe of the run in `out`: its config.json or, when that is gone or damaged, the one in its checkpoint."""
    from cifarkit.checkpoint import load_checkpoint

    try:
        return TrainConfig.load(out / "config.json")
    except (OSError, ValueError, TypeError):  # missing, unreadable, or not JSON of a config
        pass
    if not (out / "checkpoints" / "last.pt").is_file():
        raise CifarkitError(f"nothing to resume in {out}: no readable config.json and no checkpoint "
                            "(start the run without --resume)")
    return TrainConfig.from_dict(load_checkpoint(out / "checkpoints" / "last.pt")["config"])


def cmd_train(args: argparse.Namespace) -> int:
    from cifarkit.train import fit

    given = given_config(args)
    if args.resume:
        out = Path(given.get("out", TrainConfig.out))
        config = TrainConfig.from_dict(saved_config(out).to_dict() | given)
    else:
        config = TrainConfig(**given)
    history = fit(config, resume=args.resume)
    m = history.metrics
    if m and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        print(f"final_test_accuracy={m['final_test_accuracy']:.4f} best_test_accuracy={m['best_test_accuracy']:.4f} "
              f"run={history.run_dir}")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from cifarkit.commands import lr_find_command

    result = lr_find_command(TrainConfig(**given_config(args)))
    print(f"lr_min={result.lr_min:.4g} lr_max={result.lr_max:.4g} steps={len(result.lrs)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cifarkit.commands import evaluate_command

    result = evaluate_command(Path(args.checkpoint), data=args.data, device=args.device, tta=args.tta)
    print(" ".join(f"{k}={v:.4f}" for k, v in result.items()))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cifarkit.commands import predict_command

    for path, label, prob in predict_command(Path(args.checkpoint), [Path(p) for p in args.images], args.device):
        print(f"{path}\t{label}\t{prob:.4f}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cifarkit.report import build_report

    print(build_report(args.run, data_source=args.data, device=args.device))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from cifarkit.bench import format_bench, run_bench

    print(format_bench(run_bench(device=args.device, batch_size=args.batch_size, steps=args.steps,
                                 repeats=args.repeats, precision=args.precision)))
    return 0


COMMANDS = {"summary": cmd_summary, "lr-find": cmd_lr_find, "train": cmd_train, "evaluate": cmd_evaluate,
            "predict": cmd_predict, "report": cmd_report, "bench": cmd_bench, "app": cmd_app, "export": cmd_export}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cifarkit.train import TrainingInterrupted

    try:
        return COMMANDS[args.command](args)
    except (CifarkitError, OSError) as e:  # OSError: a full disk, a read-only or vanished folder, not a bug
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
