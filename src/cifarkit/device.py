"""Where a model runs and in which precision: the one device and precision policy of every command."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from cifarkit.config import check_device_name, check_precision_name
from cifarkit.console import say
from cifarkit.cpuinfo import cpu_flags as read_cpu_flags
from cifarkit.errors import CifarkitError


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto": cuda, then mps, then cpu. Asking for a device that is not there is a user error."""
    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CifarkitError(f"device={name!r} was asked for, but PyTorch sees no CUDA GPU here; use device='cpu'",
                            cli=f"--device {name} was asked for, but PyTorch sees no CUDA GPU here; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise CifarkitError("device='mps' was asked for, but MPS is not available here; use device='cpu'",
                            cli="--device mps was asked for, but MPS is not available here; use --device cpu")
    return torch.device(f"cuda:{local_rank}" if name == "cuda" else name)


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
BF16_CAPABILITY = (8, 0)  # Ampere: the first NVIDIA GPUs with bf16 tensor cores and cuDNN bf16 convolutions
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # CPUs that multiply bf16 in hardware


def choose_precision(device_type: str, *, cuda_capability: tuple[int, int] | None = None,
                     cpu_flags: frozenset[str] | set[str] | None = None) -> str:
    """The precision that trains fastest without loss on this hardware: "bf16", "fp16" or "fp32".

        choose_precision("cuda", cuda_capability=(7, 5))   # "fp16": a T4 has no bf16 tensor cores
        choose_precision("cpu", cpu_flags={"avx2"})        # "fp32"

    CUDA >= 8.0: bf16. CUDA below (T4, V100): fp16 with a gradient scaler, since PyTorch runs bf16 convolutions there
    without cuDNN, slowly or not at all. CPU with AVX512-BF16 or AMX: bf16; other CPUs: fp32 (fp16 and bf16 autocast
    run ~20x slower there). MPS: fp32, which PyTorch supports there on every macOS (bf16 needs macOS 14). None
    reads the machine (docs/design.md#precision).
    """
    if device_type == "cuda":
        if cuda_capability is None:
            cuda_capability = torch.cuda.get_device_capability()
        return "bf16" if tuple(cuda_capability) >= BF16_CAPABILITY else "fp16"
    if device_type == "cpu":
        flags = read_cpu_flags() if cpu_flags is None else cpu_flags
        return "bf16" if BF16_CPU_FLAGS & set(flags) else "fp32"
    return "fp32"


def resolve_precision(asked: str, device: torch.device) -> str:
    """What runs for --precision `asked` on `device`: auto follows `choose_precision`; an explicit choice is kept, and
    bf16 where the hardware has no bf16 units, or fp16 on a CPU, gets a one-line warning on stderr, then runs."""
    check_precision_name(asked)
    best = choose_precision(device.type)
    if asked == "auto":
        return best
    if asked == "bf16" and best != "bf16":
        say(f"warning: --precision bf16 on {device.type} without bf16 units runs emulated and slow; "
            f"--precision auto picks {best} here")
    if asked == "fp16" and device.type == "cpu":  # docs/design.md#precision: no fast fp16 training kernels on CPUs
        say(f"warning: --precision fp16 on cpu has no fast fp16 training kernels in PyTorch (17x slower "
            f"than fp32 or more, measured); --precision auto picks {best} here")
    return asked


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """`with autocast(precision, device):` runs the forward pass in bf16 or fp16 ("fp32": autocast off)."""
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES.get(precision, torch.bfloat16),
                          enabled=precision in AUTOCAST_DTYPES)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """The loss scaler of a run in `precision`: on for fp16, whose 5 exponent bits flush gradients below 6e-8 to
    zero unless the loss is scaled up first; off (a pass-through) for bf16 and fp32, which have fp32's range."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


@contextlib.contextmanager
def backward_kernels(scaler: torch.amp.GradScaler, device: torch.device) -> Iterator[None]:
    """Inside, a backward pass in fp16 (the scaler on) on a CPU takes PyTorch's own convolution kernels, not oneDNN's,
    whose fp16 weight gradient is about 6x slower on CPUs with AVX512-FP16 (docs/design.md#precision); other CPUs
    take PyTorch's kernels for fp16 anyway. Every other case is left as it is. The flag is restored on the way out."""
    if not (scaler.is_enabled() and device.type == "cpu"):
        yield
        return
    was = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = was


def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> bool:
    """Gradients of `loss` and one optimizer step, through `scaler`; True when the scaler skipped the step.

    fp16's scaler starts high and halves its scale at each step whose gradients overflow (inf or NaN), leaving
    the weights as they were: a skipped step is that search, not a failure. Off, it is backward() and step().
    Whether the step ran is seen by an optimizer hook, on the host: no read of the device beyond the one that
    GradScaler.step makes itself (its inf check) to decide.
    """
    optimizer.zero_grad(set_to_none=True)
    with backward_kernels(scaler, loss.device):
        scaler.scale(loss).backward()
    stepped: list[bool] = []
    hook = optimizer.register_step_post_hook(lambda *_: stepped.append(True))
    try:
        scaler.step(optimizer)
    finally:
        hook.remove()
    scaler.update()
    return not stepped


HOST_SYNC_EVERY = 25  # steps between the loop's reads of a GPU or MPS device


def host_sync_every(device: torch.device) -> int:
    """Steps between the training loop's reads of the device (loss check, stop check, progress bar), all at the same
    steps: every step on the CPU, where a read costs nothing; every 25 elsewhere, since a read drains the queue."""
    return 1 if device.type == "cpu" else HOST_SYNC_EVERY


CUBLAS_WORKSPACE = ":4096:8"  # what cuBLAS needs to pick reproducible kernels (CUDA >= 10.2)


@contextlib.contextmanager
def backend_settings(device: torch.device, *, deterministic: bool = False) -> Iterator[None]:
    """The process-wide switches of one run, set on entry and restored on exit, so a caller's process keeps its own.

    deterministic: torch.use_deterministic_algorithms(True) (an op without a deterministic kernel raises),
    CUBLAS_WORKSPACE_CONFIG (unless set already; it must be set before the process's first cuBLAS call) and no
    cuDNN autotuning: two runs on the same machine and software give the same bits. Otherwise, on CUDA,
    cudnn.benchmark: the shapes are fixed, so cuDNN times its kernels once and keeps the fastest.
    """
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    try:
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
        if saved[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[4]
