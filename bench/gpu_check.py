"""The checks that need a CUDA GPU, in one run of a few minutes; prints a table, exits 1 if a check fails.

  1. One epoch in bf16 and one in fp16 (`fit`, batched augmentation, CIFAR-10-sized synthetic data), images/s
     against the bare loop (model, Adam, cross-entropy, GradScaler in fp16) on one fixed batch in the same precision.
  2. fp16 training steps (batches from the device pipeline, train_step, the loop's sums) under
     torch.cuda.set_sync_debug_mode("error"): any synchronising call raises, except GradScaler.step's own read of
     its inf flag, which is allowed and counted.
  3. Two `--deterministic` runs, compared bit for bit (every tensor of model.pt).

Needs torch with CUDA, numpy, tqdm, matplotlib and pillow; not albumentations, cv2 or torchinfo (the data pipeline
is the batched one, no plots). Run it as bench/gpu_check.sh, or PYTHONPATH=src python bench/gpu_check.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NEEDED = ("torch", "numpy", "tqdm", "matplotlib", "PIL")


def refuse(message: str) -> None:
    print(f"gpu_check: {message}; nothing was run", file=sys.stderr)
    sys.exit(2)


def bare_loop_rate(precision: str, batch: int, steps: int) -> float:
    """Images/s of the barest loop on one fixed random batch, in `precision`, channels_last, cuDNN autotuned."""
    import torch
    import torch.nn.functional as F

    from cifarkit.device import autocast, backend_settings, grad_scaler
    from cifarkit.models import build_model

    dev = torch.device("cuda")
    with backend_settings(dev):
        torch.manual_seed(0)
        model = build_model(device=dev, channels_last=True).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        scaler = grad_scaler(precision, dev)
        x = torch.randn(batch, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,), device=dev)

        def run(n: int) -> None:
            for _ in range(n):
                opt.zero_grad(set_to_none=True)
                with autocast(precision, dev):
                    loss = F.cross_entropy(model(x), y)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            torch.cuda.synchronize()

        run(10)  # cuDNN autotuning, allocator
        t0 = time.perf_counter()
        run(steps)
        return steps * batch / (time.perf_counter() - t0)


def epoch(out: Path, data: Any, precision: str, **extra: Any) -> dict[str, Any]:
    """One epoch of `fit` on the GPU: metrics.json."""
    from cifarkit.config import TrainConfig
    from cifarkit.train import fit

    config = TrainConfig(out=str(out), epochs=1, lr_min=4e-4, lr_max=4e-3, device="cuda", augment="batched",
                         precision=precision, plots=False, **extra)
    return fit(config, data=data, progress=False).metrics


def fp16_steps_under_sync_error(data: Any, steps: int) -> tuple[int, int]:
    """(steps run, GradScaler inf reads) of fp16 steps with synchronising calls made errors."""
    import torch

    from cifarkit.data import normalization
    from cifarkit.data.loaders import DeviceBatches
    from cifarkit.device import backend_settings, grad_scaler
    from cifarkit.models import build_model
    from cifarkit.schedule import one_cycle
    from cifarkit.train import train_step

    dev = torch.device("cuda")
    mean, std = normalization("true")
    batches = DeviceBatches(data.train_images, data.train_labels, batch_size=512, mean=mean, std=std, device=dev,
                            channels_last=True)
    model = build_model(device=dev, channels_last=True).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    sched = one_cycle(opt, lr_min=1e-4, lr_max=1e-3, epochs=1, steps_per_epoch=len(batches), peak_epoch=0.5)
    scaler = grad_scaler("fp16", dev)
    reads = [0]
    real_maybe_step = torch.amp.GradScaler._maybe_opt_step

    def allowed_read(self: Any, optimizer: Any, state: Any, *args: Any, **kwargs: Any) -> Any:
        """GradScaler.step's one read of its inf flag, allowed; the optimizer step itself runs under "error"."""
        torch.cuda.set_sync_debug_mode(0)
        found = sum(v.item() for v in state["found_inf_per_device"].values())
        reads[0] += 1
        torch.cuda.set_sync_debug_mode("error")
        return None if found else optimizer.step(*args, **kwargs)

    sums = torch.zeros(4, device=dev)
    it = iter(batches.epoch(0))
    done = 0
    with backend_settings(dev):
        for _ in range(5):  # warm-up: the epoch's order goes to the device, cuDNN autotunes (both synchronise)
            x, y = next(it)
            train_step(model, opt, sched, x, y, precision="fp16", scaler=scaler)
        torch.cuda.synchronize()
        torch.amp.GradScaler._maybe_opt_step = allowed_read  # type: ignore[method-assign]
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(steps):
                x, y = next(it)
                _, batch_sums, _ = train_step(model, opt, sched, x, y, precision="fp16", scaler=scaler)
                sums[:3] += batch_sums
                sums[3] += len(y)
                done += 1
        finally:
            torch.cuda.set_sync_debug_mode(0)
            torch.amp.GradScaler._maybe_opt_step = real_maybe_step  # type: ignore[method-assign]
    return done, reads[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=50_000, help="synthetic training images (default 50000)")
    args = parser.parse_args()
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        refuse(f"missing Python packages: {', '.join(missing)} (pip install {' '.join(missing)})")
    import torch

    if not torch.cuda.is_available():
        refuse("no CUDA GPU here (torch.cuda.is_available() is False)")
    from cifarkit.data import make_synthetic

    capability = torch.cuda.get_device_capability()
    print(f"gpu_check: {torch.cuda.get_device_name()} (compute capability {capability[0]}.{capability[1]}), "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    data = make_synthetic(n_train=args.train_images, n_test=10_000)
    rows: list[tuple[str, str, bool]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("bf16", "fp16"):
            if precision == "bf16" and capability < (8, 0):
                rows.append(("bf16 epoch", "skipped: no bf16 tensor cores below compute capability 8.0", True))
                continue
            m = epoch(Path(tmp) / precision, data, precision)
            bare = bare_loop_rate(precision, 512, 50)
            rows.append((f"{precision} epoch, images/s", f"{m['images_per_second']:8.0f} fit (bare loop {bare:.0f}, "
                         f"ratio {m['images_per_second'] / bare:.3f}; {m['skipped_steps']} skipped steps)", True))
        try:
            steps, reads = fp16_steps_under_sync_error(data, 40)
            rows.append(("fp16 steps, sync debug \"error\"", f"{steps} steps, no synchronising call but GradScaler's "
                         f"{reads} inf reads (one per step)", reads == steps))
        except RuntimeError as e:
            rows.append(("fp16 steps, sync debug \"error\"", f"FAILED: {str(e).splitlines()[0][:120]}", False))
        runs = [Path(tmp) / f"det{i}" for i in range(2)]
        for run in runs:
            epoch(run, data, "auto", deterministic=True, subset=10_000)
        a, b = (torch.load(run / "model.pt", map_location="cpu", weights_only=True) for run in runs)
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        recorded = json.loads((runs[0] / "config.json").read_text())["deterministic"]
        rows.append(("two --deterministic runs", f"model.pt {'bitwise equal' if same else 'DIFFERENT'} (1 epoch of "
                     f"10000 images; config.json deterministic={recorded})", same and recorded is True))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'check'.ljust(width)}  {'ok':4}  result")
    for name, result, ok in rows:
        print(f"{name.ljust(width)}  {'yes' if ok else 'NO':4}  {result}")
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
