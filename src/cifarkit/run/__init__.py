"""The run folder, cifarkit's central object: the name of every file in it, how each is read back, which weights a
path means, the lock, and claiming a new folder so that a failed start leaves nothing behind.

    from cifarkit import run
    weights = run.find_weights("runs/a")         # runs/a/model.pt, else runs/a/checkpoints/last.pt
    config = run.read_config("runs/a")           # TrainConfig, or one CifarkitError line naming config.json
    run.check_run_out("runs/b", kind="train")   # before any work: writable, not a file, not another kind of run

Every reader raises CifarkitError naming the file and what to do when it is missing, truncated or damaged. Nothing
here imports torch: the command line checks its outputs with it before loading the model.
"""

from cifarkit.run.claim import RunLock, check_out_file, check_run_out, claim_run_folder
from cifarkit.run.files import (CHECKPOINT, CHECKPOINT_NAME, CLASSIFICATION_REPORT, CONFIG, FILE_NAMES, HISTORY,
                                LOCK, LR_FINDER, LR_FINDER_PLOT, METRICS, MODEL, PER_CLASS, PLOTS, REPORT,
                                REPORT_HTML, SCHEDULE, STEPS, TENSORBOARD, TRAINING_FILES, WEIGHTS_HELP,
                                check_torch_file, find_weights, is_checkpoint, is_finished, read_config, read_json,
                                read_metrics, read_optional_json, read_rows, report_folder, run_file, run_of,
                                weights_note, write_config, write_lr_finder, write_metrics)

__all__ = ["CHECKPOINT", "CHECKPOINT_NAME", "CLASSIFICATION_REPORT", "CONFIG", "FILE_NAMES", "HISTORY", "LOCK",
           "LR_FINDER", "LR_FINDER_PLOT", "METRICS", "MODEL", "PER_CLASS", "PLOTS", "REPORT", "REPORT_HTML", "RunLock",
           "SCHEDULE", "STEPS", "TENSORBOARD", "TRAINING_FILES", "WEIGHTS_HELP", "check_out_file", "check_run_out",
           "check_torch_file", "claim_run_folder", "find_weights", "is_checkpoint", "is_finished", "read_config",
           "read_json", "read_metrics", "read_optional_json", "read_rows", "report_folder", "run_file", "run_of",
           "weights_note", "write_config", "write_lr_finder", "write_metrics"]
