"""The resume policy, in one table: which fields a resumed run may change (checkpoint.RESUMABLE_FIELDS), which it
keeps from the checkpoint when left at their "find it" / "auto" value, and which it refuses to change."""

from __future__ import annotations

import dataclasses

import pytest

from cifarkit.checkpoint import RESUMABLE_FIELDS, resume_config
from cifarkit.config import TrainConfig
from cifarkit.errors import CifarkitError

SAVED = TrainConfig(data="/data/cifar", out="runs/a", epochs=5, lr_min=1e-6, lr_max=5e-3, precision="fp16",
                    workers=2, seed=3, augment="batched")

# (field, value given on resume, the value the resumed run uses; None: refused)
POLICY = [
    ("out", "runs/moved", "runs/moved"),  # the folder may have moved
    ("data", "/elsewhere/cifar", "/elsewhere/cifar"),  # the same data elsewhere; its fingerprint is checked apart
    ("device", "cpu", "cpu"),
    ("workers", 0, 0),
    ("plots", False, False),
    ("tensorboard", True, True),
    ("eval_batch_size", 256, 256),
    ("compile", True, True),
    ("extra", {"note": "resumed"}, {"note": "resumed"}),
    ("lr_min", None, 1e-6),  # left to the range test: the LRs the run found are kept
    ("lr_max", None, 5e-3),
    ("precision", "auto", "fp16"),  # auto keeps what ran
    ("precision", "fp32", None),  # another precision would train something else
    ("augment", "auto", "batched"),  # auto keeps the pipeline that ran, on any device (a CPU runs "batched" too)
    ("augment", "albumentations", None),  # another pipeline draws another random stream
    ("deterministic", True, None),  # a run is deterministic from its first step or not at all
    ("epochs", 24, None),
    ("lr_max", 1e-2, None),
    ("seed", 4, None),
    ("batch_size", 256, None),
    ("pad_mode", "zero", None),
    ("label_smoothing", 0.1, None),
]


@pytest.mark.parametrize("name, given, used", POLICY, ids=[f"{n}={g!r}" for n, g, _ in POLICY])
def test_resume_policy(name: str, given: object, used: object) -> None:
    """Each row: resuming SAVED with one field given as `given` uses `used`, or is refused in one line naming the
    field; every other field stays the saved one."""
    given_config = dataclasses.replace(SAVED, **{name: given})
    if used is None:
        with pytest.raises(CifarkitError, match=f"cannot resume: {name} is") as info:
            resume_config(SAVED, given_config)
        assert "\n" not in str(info.value)
        return
    merged = resume_config(SAVED, given_config)
    assert getattr(merged, name) == used
    assert dataclasses.replace(merged, **{name: getattr(SAVED, name)}) == SAVED


def test_the_table_covers_every_resumable_field() -> None:
    """Every field that may change on resume has a row above (a new one needs a decision and a row)."""
    assert RESUMABLE_FIELDS <= {name for name, _, used in POLICY if used is not None}
