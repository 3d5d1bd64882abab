"""Batched, device-resident augmentation with exactly the albumentations pipeline's semantics (see transforms.py).

The whole training set lives on the device as uint8 NHWC (50,000 x 3 KiB = 147 MiB). Each batch is built by one
gather: every output pixel's source pixel is computed by index arithmetic from the batch's random parameters, so
padding, cropping and flipping cost one indexed read of 3 bytes per pixel, with no per-image Python loop:

    pad 4 (reflect = cv2.BORDER_REFLECT_101 = F.pad "reflect", or zero = the mean after normalising)
    -> random 32x32 crop, top-left offsets uniform over 0..8 in each axis (albumentations RandomCrop)
    -> horizontal flip with p = 0.5
    -> CutOut: with p = cutout_p one size x size hole, top-left uniform over 0..32-size in each axis so the hole
       lies fully inside the image (albumentations 2.0.8 CoarseDropout: integers(0, height - hole + 1)),
       filled with 0 after normalising, i.e. the dataset mean
    -> normalise with the dataset mean / std.

Randomness comes from a CPU torch.Generator seeded from (seed, epoch, step, rank): any step of any epoch can be
replayed alone (exact mid-epoch resume), and CPU and CUDA runs draw the same batches.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cifarkit.data.stats import check_pad_mode
from cifarkit.errors import CifarkitError

PAD = 4  # pixels of padding on every side before the crop (32 -> 40 -> crop 32)


@dataclass(frozen=True)
class AugmentParams:
    """One batch's random draws (int64 CPU or device tensors, one row per image)."""

    offsets: torch.Tensor  # [B, 2] crop top-left (dy, dx) in the padded image, each in 0..2*PAD
    flip: torch.Tensor  # [B] bool: mirror left-right
    cutout: torch.Tensor  # [B] bool: cut one hole
    hole: torch.Tensor  # [B, 2] hole top-left (y, x) in the output image, each in 0..size-cutout_size


def sample_params(batch: int, generator: torch.Generator, *, height: int = 32, width: int = 32,
                  cutout_size: int = 8, cutout_p: float = 0.5) -> AugmentParams:
    """Draw one batch's parameters from `generator` (on the generator's device)."""
    dev = generator.device
    offsets = torch.randint(0, 2 * PAD + 1, (batch, 2), generator=generator, device=dev)
    flip = torch.rand(batch, generator=generator, device=dev) < 0.5
    cutout = torch.rand(batch, generator=generator, device=dev) < cutout_p
    # Same rule as CoarseDropout: top-left uniform over 0..H-h inclusive, so the hole never leaves the image.
    hy = torch.randint(0, max(height - cutout_size, 0) + 1, (batch,), generator=generator, device=dev)
    hx = torch.randint(0, max(width - cutout_size, 0) + 1, (batch,), generator=generator, device=dev)
    return AugmentParams(offsets, flip, cutout & (cutout_size > 0), torch.stack([hy, hx], dim=1))


def _affine(mean: Sequence[float], std: Sequence[float], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with (v / 255 - mean) / std = v * scale + shift, per channel (float32 [3]), cached per device:
    building them is a host-to-device copy, which on CUDA would wait for the GPU once per batch."""
    return _affine_cached(tuple(float(v) for v in mean), tuple(float(v) for v in std), torch.device(device))


@functools.lru_cache(maxsize=16)
def _affine_cached(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    # Python floats are doubles: the same values as float64 tensors, with no float64 tensor (MPS has none).
    scale = [1.0 / (255.0 * s) for s in std]
    shift = [-m / s for m, s in zip(mean, std)]
    return (torch.tensor(scale, dtype=torch.float32, device=device),
            torch.tensor(shift, dtype=torch.float32, device=device))


def _source_index(out_pos: torch.Tensor, offset: torch.Tensor, size: int, pad_mode: str
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Source coordinates [B, size] in the unpadded image for output positions [B, size] and crop offsets [B].

    Returns the clamped indices and, for zero padding, the mask of positions that fall inside the image.
    """
    src = out_pos + (offset - PAD)[:, None]
    if pad_mode == "reflect":
        # BORDER_REFLECT_101 (edge not repeated): -1 -> 1, size -> size - 2.
        src = src.abs()
        return torch.where(src > size - 1, 2 * (size - 1) - src, src), None
    inside = (src >= 0) & (src <= size - 1)
    return src.clamp(0, size - 1), inside


def apply_params(images_uint8_nhwc: torch.Tensor, params: AugmentParams, *, mean: Sequence[float],
                 std: Sequence[float], pad_mode: str = "reflect", cutout_size: int = 8,
                 channels_last: bool = False, index: torch.Tensor | None = None) -> torch.Tensor:
    """Augment with given parameters: pad, crop, flip, cut out, normalise. Returns float32 [B, 3, H, W].

    `index` (int64 [B], on the images' device) picks the batch's rows of `images_uint8_nhwc` inside the same gather,
    so a DeviceBatches step reads the dataset once; without it the whole input is the batch.
    """
    check_pad_mode(pad_mode)
    _check_images(images_uint8_nhwc)
    n, h, w, c = images_uint8_nhwc.shape
    dev = images_uint8_nhwc.device
    rows_idx = torch.arange(n, device=dev) if index is None else index
    b = rows_idx.shape[0]
    offsets = params.offsets.to(dev)
    flip = params.flip.to(dev)
    ar_h = torch.arange(h, device=dev).expand(b, h)
    ar_w = torch.arange(w, device=dev).expand(b, w)
    # A flipped output column j shows crop column w-1-j; flipping the index is free, flipping pixels is not.
    cols_out = torch.where(flip[:, None], (w - 1) - ar_w, ar_w)
    rows, row_ok = _source_index(ar_h, offsets[:, 0], h, pad_mode)
    cols, col_ok = _source_index(cols_out, offsets[:, 1], w, pad_mode)
    flat = (rows_idx * (h * w))[:, None, None] + rows[:, :, None] * w + cols[:, None, :]  # [B, H, W] pixel index
    pixels = images_uint8_nhwc.reshape(n * h * w, c).index_select(0, flat.reshape(-1)).view(b, h, w, c)
    scale, shift = _affine(mean, std, dev)
    out = torch.addcmul(shift, pixels.to(torch.float32), scale)  # [B, H, W, C] normalised

    keep: torch.Tensor | None = None  # False where the output is 0 (= the mean): zero padding and the hole
    if row_ok is not None and col_ok is not None:
        keep = row_ok[:, :, None] & col_ok[:, None, :]
    # Skipping the hole mask when no image has a hole reads the flags on the host: only when they are already there.
    if cutout_size > 0 and (params.cutout.device.type != "cpu" or bool(params.cutout.any())):
        hole = params.hole.to(dev)
        in_y = (ar_h >= hole[:, :1]) & (ar_h < hole[:, :1] + cutout_size)
        in_x = (ar_w >= hole[:, 1:]) & (ar_w < hole[:, 1:] + cutout_size)
        cut = params.cutout.to(dev)[:, None, None] & in_y[:, :, None] & in_x[:, None, :]
        keep = ~cut if keep is None else keep & ~cut
    if keep is not None:
        out.mul_(keep[..., None])  # in place: one pass over the batch, no new [B, H, W, C] buffer
    out = out.permute(0, 3, 1, 2)  # NCHW view of NHWC memory: already channels_last
    return out if channels_last else out.contiguous()


def params_to(params: AugmentParams, device: torch.device) -> AugmentParams:
    """The parameters on `device`. To CUDA as one pinned, non-blocking copy: a plain .to() from pageable memory
    waits for the GPU to finish its queue, which would stall the training loop once per step."""
    if device.type != "cuda":
        return AugmentParams(*(t.to(device) for t in (params.offsets, params.flip, params.cutout, params.hole)))
    packed = torch.cat([params.offsets, params.flip[:, None].long(), params.cutout[:, None].long(), params.hole], 1)
    packed = packed.pin_memory().to(device, non_blocking=True)
    return AugmentParams(packed[:, 0:2], packed[:, 2].bool(), packed[:, 3].bool(), packed[:, 4:6])


def normalize_batch(images_uint8_nhwc: torch.Tensor, mean: Sequence[float], std: Sequence[float], *,
                    channels_last: bool = False) -> torch.Tensor:
    """Evaluation input: uint8 NHWC -> normalised float32 [B, 3, H, W] (no augmentation)."""
    _check_images(images_uint8_nhwc)
    return normalize_affine(images_uint8_nhwc, *_affine(mean, std, images_uint8_nhwc.device),
                            channels_last=channels_last)


def normalize_affine(images_uint8_nhwc: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, *,
                     channels_last: bool = False) -> torch.Tensor:
    """normalize_batch with its (scale, shift) given (`affine`): what a traced graph holds as buffers."""
    out = torch.addcmul(shift, images_uint8_nhwc.to(torch.float32), scale).permute(0, 3, 1, 2)
    return out if channels_last else out.contiguous()


def affine(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), float32 [3] on the CPU, with (v / 255 - mean) / std = v * scale + shift."""
    scale, shift = _affine(mean, std, torch.device("cpu"))
    return scale.clone(), shift.clone()


def _check_images(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
        raise CifarkitError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {tuple(images.shape)}")
