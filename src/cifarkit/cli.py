"""`cifarkit` command line: summary, lr-find, train, evaluate, predict, report, bench, app, export, cache, sweep,
compare.

`train` and `lr-find` flags map one to one onto TrainConfig fields (--lr-max is TrainConfig.lr_max). Every number is
checked before any work starts. Errors a user can cause print one `error: ...` line on stderr and exit 2, with no
traceback; what a command uses (weights, data) is said on stderr, results go to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cifarkit import __version__
from cifarkit import run as R
from cifarkit.cli_flags import (LR_FIND_FIELDS, MAX_TOP_K, Parser, add_config_flags, add_run_flags, check_args, count,
                                given_config, run_guarded, say_error)
from cifarkit.config import TrainConfig
from cifarkit.console import route_logging
from cifarkit.errors import CifarkitError, pip_install
from cifarkit.study.commands import STUDY_COMMANDS, add_study_parsers

def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cifarkit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cifarkit {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_help = R.WEIGHTS_HELP

    p = sub.add_parser("summary", help="print the model's torchinfo table")
    p.add_argument("--batch-size", type=count(1), default=512, help="input batch of the table (default: 512)")
    p.add_argument("--precision", default=None, help="accepted for symmetry with the other commands; does not "
                   "apply here (the counts are the same in every precision)")

    p = sub.add_parser("lr-find", help="run the LR range test and suggest LRMIN and LRMAX")
    add_config_flags(p, LR_FIND_FIELDS)

    p = sub.add_parser("train", help="train the assignment's recipe (runs the LR range test unless LRs are given)")
    add_config_flags(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint, on "
                   "the data it recorded")

    p = sub.add_parser("evaluate", help="test accuracy of a run's weights")
    p.add_argument("--checkpoint", required=True, metavar="RUN", help=run_help)
    p.add_argument("--data", default=None, help="data to test on (default: the data the run recorded, checked by "
                   "its fingerprint)")
    p.add_argument("--test-subset", type=count(1), default=None, help="class-balanced number of test images "
                   "(default: the whole test set)")
    p.add_argument("--tta", action="store_true", help="also report flip test-time-augmented accuracy")
    p.add_argument("--report", action="store_true", help="also print the classification report (precision, recall "
                   "and F1 per class) and the most-confused pairs")
    add_run_flags(p, "evaluation")

    p = sub.add_parser("predict", help="classify image files")
    p.add_argument("--checkpoint", required=True, metavar="RUN", help=run_help)
    p.add_argument("images", nargs="+", help="image files, any size (resized to 32x32; at most 4096x4096)")
    p.add_argument("--top-k", type=count(1, MAX_TOP_K), default=1, help="classes to print per image, most likely "
                   "first (1-10, default: 1)")
    p.add_argument("--json", action="store_true", help="print one JSON list of {image, top: [{class, probability}]}")
    p.add_argument("--data", default=None, help="data set whose class names to print (default: CIFAR-10's)")
    add_run_flags(p, "prediction")

    p = sub.add_parser("report", help=f"(re)draw a run's plots and write RUN/{R.REPORT}")
    p.add_argument("run", type=Path, metavar="RUN", help=run_help + " inside a run folder")
    p.add_argument("--data", default=None, help="data to draw from (default: the data the run recorded, checked by "
                   "its fingerprint)")
    add_run_flags(p, "the model")

    p = sub.add_parser("bench", help="training and data-pipeline throughput against a bare loop")
    p.add_argument("--batch-size", type=count(1), default=512, help="images per step (default: 512)")
    p.add_argument("--steps", type=count(1), default=5, help="steps per timing (default: 5)")
    p.add_argument("--warmup", type=count(0), default=2, help="untimed steps of each loop first (default: 2)")
    p.add_argument("--repeats", type=count(1), default=3, help="interleaved timings; the median is shown (default: 3)")
    add_run_flags(p, "the benchmark")
    add_app_export_parsers(sub)
    add_cache_parser(sub)
    add_study_parsers(sub)
    return parser


def add_cache_parser(sub: Any) -> None:
    p = sub.add_parser("cache", help="list what the data cache holds (entries, sizes, the data each came from)",
                       description="The data cache: $CIFARKIT_CACHE, else ~/.cache/cifarkit. It holds extracted "
                       "archives and decoded arrays (about 430 MB for the CIFAR-10 PNG archive).")
    p.add_argument("--clear", action="store_true", help="remove every entry; the data you gave is untouched, and the "
                   "next load extracts and decodes again")


def cmd_cache(args: argparse.Namespace) -> int:
    from cifarkit.commands import cache_command

    print(cache_command(clear=args.clear))
    return 0


# ---------------------------------------------------------------------------------------- app and export
# Both need optional extras (cifarkit[app], cifarkit[export]), imported only when the command runs.

EXPORT_DESCRIPTION = f"""Export a run's model and check the file against PyTorch on the run's test images.

The exported model takes what an image file holds and returns what a user wants:
  input  "images": uint8 [B, 32, 32, 3], RGB, batch size B free (NHWC, as PIL and numpy give images)
  output "probs":  float32 [B, classes], softmax probabilities
The run's normalisation (its mean and std) is inside the graph, so callers only resize to 32x32.
The check fails (exit 2, nothing written) unless every probability is within 1e-3 of PyTorch's and the
top-1 class is the same on every image. Needs: {pip_install('export')}."""


def add_app_export_parsers(sub: Any) -> None:
    p = sub.add_parser("app", help="serve a local web app over a run: predict, Grad-CAM, misclassified images",
                       description=f"A Gradio app over a trained run (needs: {pip_install('app')}).")
    p.add_argument("run", type=Path, help=R.WEIGHTS_HELP)
    p.add_argument("--port", type=int, default=7860, help="TCP port to serve on (default: 7860)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 serves every network)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    p.add_argument("--data", default=None, help="data for the test images and examples (default: the run's own)")

    p = sub.add_parser("export", help="export a run's model to ONNX (or TorchScript) and check it against PyTorch",
                       description=EXPORT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help=R.WEIGHTS_HELP)
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript"], help="file format (default: onnx)")
    p.add_argument("--out", type=Path, required=True, help="file to write, e.g. model.onnx")
    p.add_argument("--check-images", type=int, default=1000,
                   help="test images for the parity check and the speed figures (default: 1000; 0: all)")
    p.add_argument("--data", default=None, help="data for the check (default: the run's own)")


def cmd_app(args: argparse.Namespace) -> int:
    from cifarkit.app.server import app_command

    return app_command(args.run, data=args.data, device=args.device, host=args.host, port=args.port)


def cmd_export(args: argparse.Namespace) -> int:
    from cifarkit.export import export_command

    for line in export_command(args.run, fmt=args.format, out=args.out, check_images=args.check_images,
                               data=args.data):
        print(line)
    return 0

# ---------------------------------------------------------------------------------- end of app and export


def cmd_summary(args: argparse.Namespace) -> int:
    from cifarkit.commands import summary_command

    print(summary_command(args.batch_size, precision=args.precision))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cifarkit.commands import train_command

    history = train_command(given_config(args), resume=args.resume)
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

    result = evaluate_command(Path(args.checkpoint), data=args.data, device=args.device, precision=args.precision,
                              tta=args.tta, test_subset=args.test_subset, report=args.report)
    text = result.pop("report", None)
    print(" ".join(f"{k}={v}" if isinstance(v, int) else f"{k}={v:.4f}" for k, v in result.items()))
    if text:
        print(text, end="")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cifarkit.commands import predict_command

    results = predict_command(Path(args.checkpoint), args.images, device=args.device, precision=args.precision,
                              top_k=args.top_k, data=args.data)
    if args.json:
        print(json.dumps([{"image": image, "top": [{"class": c, "probability": p} for c, p in top]}
                          for image, top in results], indent=2))
    else:  # a line per image: the image, then each class and its probability, tab-separated
        for image, top in results:
            print("\t".join([image, *(f"{c}\t{p:.4f}" for c, p in top)]))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cifarkit.commands import report_command

    print(report_command(args.run, data_source=args.data, device=args.device, precision=args.precision))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from cifarkit.bench import format_bench, run_bench

    print(format_bench(run_bench(device=args.device, batch_size=args.batch_size, steps=args.steps,
                                 warmup=args.warmup, repeats=args.repeats, precision=args.precision)))
    return 0


COMMANDS = {"summary": cmd_summary, "lr-find": cmd_lr_find, "train": cmd_train, "evaluate": cmd_evaluate,
            "predict": cmd_predict, "report": cmd_report, "bench": cmd_bench, "app": cmd_app, "export": cmd_export,
            "cache": cmd_cache, **STUDY_COMMANDS}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help and --version print, then exit 0
        return e.code if isinstance(e.code, int) else 0
    except CifarkitError as e:
        return say_error(e.cli_line())
    route_logging()

    def work() -> int:
        check_args(args)  # no torch yet
        return COMMANDS[args.command](args)

    return run_guarded(work, batch_size=getattr(args, "batch_size", None))


if __name__ == "__main__":
    sys.exit(main())
