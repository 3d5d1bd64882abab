"""One dataclass for a training run. Its defaults are the assignment; CLI flags map onto its fields one to one
(all but `data_fingerprint` and `extra`, which a run records).

It is saved as `config.json` in every run folder and inside every checkpoint, with the data the run used: `data`, its
absolute path (or "synthetic"), and `data_fingerprint`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cifarkit.data.stats import check_pad_mode, cifar10_std
from cifarkit.errors import CifarkitError, named_error


def opt(default: Any, help: str) -> Any:
    """A field whose help text is also the CLI flag's help."""
    return field(default=default, metadata={"help": help})


NOT_FLAGS = ("extra", "data_fingerprint")  # TrainConfig fields a run records, not choices a user makes
PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # --precision; what auto picks: device.choose_precision
DEVICES = ("auto", "cpu", "cuda", "mps")  # --device; "cuda:N" names one GPU


def check_precision_name(name: str) -> None:
    """A precision name, checked without torch (the command line asks before loading it)."""
    if name not in PRECISIONS:
        raise named_error(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}", "precision")


def check_device_name(name: str) -> None:
    """A device name, checked without torch; whether the device is there is device.pick_device's question."""
    index = name.partition(":")[2]
    if name not in DEVICES and not (name.startswith("cuda:") and index.isdigit()):
        raise named_error(f"device must be auto, cpu, cuda or mps, got {name!r}", "device")

# The assignment's peak: epoch 5 of 24. Shortened runs keep the peak at the same fraction of the run.
ASSIGNMENT_EPOCHS = 24
ASSIGNMENT_PEAK_EPOCH = 5.0


@dataclass
class TrainConfig:
    """Everything that defines a run. Defaults reproduce the assignment."""

    data: str | None = opt(None, 'CIFAR-10 folder or archive (see load_cifar10), or "synthetic"; default: '
                           '$CIFARKIT_DATA, else the cache, else a download. A run records the absolute path it used')
    data_fingerprint: str | None = opt(None, "sha256 of the data's decoded arrays, recorded by the run (not a flag)")
    out: str = opt("runs/default", 'run folder: config, history, metrics, checkpoints, plots, report')
    epochs: int = opt(ASSIGNMENT_EPOCHS, 'training epochs (the assignment: 24)')
    peak_epoch: float | None = opt(None, 'epoch at whose end the LR peaks; default: 5/24 of the run (5 at 24 epochs)')
    batch_size: int = opt(512, 'global batch, split across ranks under torchrun')
    lr_min: float | None = opt(None, 'one-cycle start and end LR; default: found by the LR range test')
    lr_max: float | None = opt(None, 'one-cycle peak LR; default: found by the LR range test')
    final_div: float = opt(1.0, 'final LR = lr_min / final_div; 1 = no annihilation (assignment), 100 = reference variant')
    label_smoothing: float = opt(0.0, "CrossEntropyLoss's label_smoothing: 0 = the assignment's plain cross-entropy")
    beta1_peak: float = opt(0.9, "Adam's beta1 at the LR peak (cycled linearly against the LR; 0.85 in OneCycleLR)")
    beta1_ends: float = opt(0.9, "Adam's beta1 at LRMIN, the cycle's start and end (0.95 in OneCycleLR); "
                                 "equal to beta1_peak: constant, Adam's default 0.9")
    weight_decay: float = opt(1e-4, "Adam's (coupled, L2) weight decay, as the reference")
    lr_find_iters: int = opt(200, 'steps of the LR range test; at least 10')
    lr_find_start: float = opt(1e-7, 'first LR of the exponential sweep')
    lr_find_end: float = opt(10.0, 'last LR of the sweep (it stops earlier once the loss diverges)')
    seed: int = opt(0, 'seed of weights, data order and augmentation')
    device: str = opt("auto", 'auto (cuda, then mps, then cpu), cpu, cuda or mps')
    subset: int | None = opt(None, 'class-balanced number of training images; default: all (50,000)')
    test_subset: int | None = opt(None, 'class-balanced number of test images; default: all (10,000)')
    augment: str = opt("auto", '"albumentations" (DataLoader, the reference), "batched" (on the device), auto: '
                       'batched on CUDA; the config of the run records what ran')
    pad_mode: str = opt("reflect", 'padding for the 4-pixel pad before the random crop: "reflect" (as the reference: '
                        'the default of albumentations 1.x) or "zero" (the mean colour)')
    std: str = opt("true", 'normalisation std: "true" (dataset std) or "reference" (0.2023, 0.1994, 0.2010)')
    cutout_p: float = opt(0.5, 'probability of the one 8x8 CutOut hole, filled with the dataset mean')
    cutout_size: int = opt(8, 'hole side, pixels')
    workers: int | None = opt(None, 'DataLoader workers; default: fitted to the machine')
    eval_batch_size: int = opt(1024, 'batch size for evaluation (no gradients, so it can be larger)')
    precision: str = opt("auto", 'auto|bf16|fp16|fp32; auto: bf16 on CUDA >= 8.0 and on CPUs with bf16 units '
                         '(AVX512-BF16 or AMX), fp16 with a gradient scaler on older CUDA (T4, V100), fp32 on other '
                         'CPUs and MPS; the config of the run records what ran')
    channels_last: bool = opt(True, 'NHWC memory format: faster convolutions on GPUs and on oneDNN CPUs')
    compile: bool = opt(False, 'torch.compile the model (CUDA)')
    deterministic: bool = opt(False, 'deterministic algorithms (torch.use_deterministic_algorithms, '
                              'CUBLAS_WORKSPACE_CONFIG, no cuDNN autotuning): two runs on one machine give the same '
                              'bits, slower on CUDA')
    tta: bool = opt(False, 'also report flip test-time-augmented accuracy')
    sync_bn: bool = opt(False, 'SyncBatchNorm under torchrun')
    plots: bool = opt(True, 'write RUN/plots/*.png at the end')
    tensorboard: bool = opt(False, 'log scalars and LR to RUN/tensorboard')
    extra: dict[str, Any] = field(default_factory=dict, metadata={"help": "free-form notes saved with the run"})

    def __post_init__(self) -> None:
        if self.peak_epoch is None:
            self.peak_epoch = ASSIGNMENT_PEAK_EPOCH * self.epochs / ASSIGNMENT_EPOCHS

    def validate(self) -> None:
        """Raise CifarkitError naming the first invalid field (`epochs`; the CLI prints its flag, `--epochs`)."""
        def check(ok: bool, message: str, *names: str) -> None:
            if not ok:
                raise named_error(message, *names)

        check(self.epochs > 0, f"epochs must be positive, got {self.epochs}", "epochs")
        check(self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}", "batch_size")
        check(self.eval_batch_size > 0, f"eval_batch_size must be positive, got {self.eval_batch_size}",
              "eval_batch_size")
        assert self.peak_epoch is not None
        check(0 < self.peak_epoch <= self.epochs, f"peak_epoch must be in (0, epochs={self.epochs}], got "
              f"{self.peak_epoch}", "peak_epoch")
        for name in ("lr_min", "lr_max"):
            value = getattr(self, name)
            check(value is None or value > 0, f"{name} must be positive, got {value}", name)
        if self.lr_min is not None and self.lr_max is not None:
            check(self.lr_min < self.lr_max, f"lr_min ({self.lr_min:g}) must be below lr_max ({self.lr_max:g})",
                  "lr_min", "lr_max")
        check(self.final_div >= 1, f"final_div must be >= 1 (no LR above lr_min at the end), got {self.final_div}",
              "final_div")
        check(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}",
              "label_smoothing")
        for name in ("beta1_peak", "beta1_ends"):
            check(0 <= getattr(self, name) < 1, f"{name} must be in [0, 1), got {getattr(self, name)}", name)
        check(self.lr_find_iters >= 10, f"lr_find_iters must be at least 10, got {self.lr_find_iters}",
              "lr_find_iters")
        check(0 < self.lr_find_start < self.lr_find_end, "lr_find_start must be positive and below lr_find_end",
              "lr_find_start", "lr_find_end")
        for name in ("subset", "test_subset", "workers"):
            value = getattr(self, name)
            check(value is None or value >= (0 if name == "workers" else 1),
                  f"{name} must be {'at least 0' if name == 'workers' else 'positive'}, got {value}", name)
        check(self.augment in ("auto", "albumentations", "batched"),
              f"augment must be auto, albumentations or batched, got {self.augment!r}", "augment")
        check_pad_mode(self.pad_mode)
        check(isinstance(self.deterministic, bool), f"deterministic must be true or false, got {self.deterministic!r}",
              "deterministic")
        check_precision_name(self.precision)
        check_device_name(self.device)
        cifar10_std(self.std)
        check(0 <= self.cutout_p <= 1, f"cutout_p must be in [0, 1], got {self.cutout_p}", "cutout_p")
        check(0 <= self.cutout_size <= 32, f"cutout_size must be in [0, 32], got {self.cutout_size}", "cutout_size")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CifarkitError(f"unknown config fields {unknown}: the config comes from another cifarkit version")
        return cls(**values)
