"""The one-cycle schedule: LRMIN at the first step, LRMAX at the end of the peak epoch, LRMIN at the last step,
linear in between, never below LRMIN (no annihilation)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from cifarkit.schedule import one_cycle, peak_step_of, schedule_lrs


def run_scheduler(epochs: int, steps: int, peak: float, final_div: float = 1.0) -> list[float]:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=123.0)
    sched = one_cycle(opt, lr_min=1e-4, lr_max=1e-2, epochs=epochs, steps_per_epoch=steps, peak_epoch=peak,
                      final_div=final_div)
    lrs = []
    for _ in range(epochs * steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_assignment_schedule_first_peak_last_steps() -> None:
    """24 epochs x 98 steps, peak 5: step 0 uses 1e-4, the last step of epoch 5 uses 1e-2, the last step 1e-4."""
    lrs = run_scheduler(24, 98, 5)
    assert lrs[0] == pytest.approx(1e-4)
    assert peak_step_of(5, 98) == 5 * 98 - 1
    assert lrs[5 * 98 - 1] == pytest.approx(1e-2)
    assert max(lrs) == pytest.approx(1e-2) and int(np.argmax(lrs)) == 5 * 98 - 1
    assert lrs[-1] == pytest.approx(1e-4)
    assert min(lrs) >= 1e-4 * (1 - 1e-9)


def test_schedule_is_linear_on_both_sides() -> None:
    """Equal LR increments on the way up and equal decrements on the way down."""
    lrs = np.array(run_scheduler(6, 10, 2))
    up, down = np.diff(lrs[:20]), np.diff(lrs[19:])
    assert np.allclose(up, up[0]) and up[0] > 0
    assert np.allclose(down, down[0]) and down[0] < 0


def test_fractional_peak_for_short_runs() -> None:
    """A 2-epoch run with peak 0.5 peaks halfway through the first epoch."""
    lrs = run_scheduler(2, 10, 0.5)
    assert int(np.argmax(lrs)) == 4 and lrs[4] == pytest.approx(1e-2)


def test_reference_variant_ends_at_lr_min_over_100() -> None:
    """final_div=100 reproduces the reference's final LR of LRMIN/100."""
    lrs = run_scheduler(4, 10, 1, final_div=100)
    assert lrs[-1] == pytest.approx(1e-6)


def test_pure_function_matches_the_scheduler_and_resumes_from_state() -> None:
    """schedule_lrs and what the optimizer sees both equal the schedule worked out by hand for 3 epochs x 7 steps
    with the peak at the end of epoch 1: 7 evenly spaced LRs from 1e-4 up to 1e-2 (steps 0-6), then 14 evenly spaced
    steps down to 1e-4 (steps 7-20); a scheduler restored from state_dict continues the sequence."""
    expected = np.r_[np.linspace(1e-4, 1e-2, 7), np.linspace(1e-2, 1e-4, 15)[1:]]
    assert expected[9] == pytest.approx(1e-2 - 3 * (1e-2 - 1e-4) / 14)  # step 9: 3 of the 14 steps down
    assert np.allclose(schedule_lrs(lr_min=1e-4, lr_max=1e-2, epochs=3, steps_per_epoch=7, peak_epoch=1), expected,
                       rtol=1e-12, atol=0)
    assert np.allclose(run_scheduler(3, 7, 1), expected, rtol=1e-9, atol=0)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    sched = one_cycle(opt, lr_min=1e-4, lr_max=1e-2, epochs=3, steps_per_epoch=7, peak_epoch=1)
    for _ in range(9):
        opt.step()
        sched.step()
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    sched2 = one_cycle(opt2, lr_min=1e-4, lr_max=1e-2, epochs=3, steps_per_epoch=7, peak_epoch=1)
    opt2.load_state_dict(opt.state_dict())  # as train.py resumes: optimizer, then scheduler
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(expected[9])
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(expected[10])


def test_a_peak_at_the_first_step_still_reaches_lr_max() -> None:
    """A run so short that the peak falls on step 0 starts at LRMAX rather than never using it."""
    lrs = schedule_lrs(lr_min=1e-4, lr_max=1e-2, epochs=1, steps_per_epoch=3, peak_epoch=0.2)
    assert lrs[0] == pytest.approx(1e-2) and lrs[-1] == pytest.approx(1e-4)


def test_cycled_beta1_mirrors_the_lr_and_resumes() -> None:
    """With momentum=(0.85, 0.95) Adam's beta1 is 0.95 at LRMIN (first and last step), 0.85 at the peak, linear in
    the LR between (beta2 untouched); an optimizer and scheduler restored from a weights_only checkpoint carry on
    with the same betas."""
    def run(steps: int, opt: torch.optim.Optimizer, sched) -> list[tuple[float, float]]:
        seen = []
        for _ in range(steps):
            group = opt.param_groups[0]
            seen.append((group["lr"], group["betas"][0]))
            assert group["betas"][1] == 0.999
            opt.step()
            sched.step()
        return seen

    def make() -> tuple[torch.optim.Optimizer, object]:
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
        return opt, one_cycle(opt, lr_min=1e-4, lr_max=1e-2, epochs=3, steps_per_epoch=7, peak_epoch=1,
                              momentum=(0.85, 0.95))

    opt, sched = make()
    seen = run(21, opt, sched)
    lrs, beta1 = np.array(seen).T
    assert beta1[0] == pytest.approx(0.95) and beta1[-1] == pytest.approx(0.95)
    assert beta1[6] == pytest.approx(0.85) and lrs[6] == pytest.approx(1e-2)
    assert np.allclose(beta1, 0.95 - 0.10 * (lrs - 1e-4) / (1e-2 - 1e-4))
    opt, sched = make()
    run(9, opt, sched)
    buffer = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # as checkpoints load: plain data only
    opt2, sched2 = make()
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert np.allclose(run(12, opt2, sched2), seen[9:])


def test_without_momentum_cycle_beta1_stays_adams_default() -> None:
    """momentum=None leaves Adam's beta1 at 0.9 on every step; (0.9, 0.9) is the same constant."""
    for momentum in (None, (0.9, 0.9)):
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
        sched = one_cycle(opt, lr_min=1e-4, lr_max=1e-2, epochs=2, steps_per_epoch=5, peak_epoch=1,
                          momentum=momentum)
        for _ in range(10):
            assert opt.param_groups[0]["betas"] == (0.9, 0.999)
            opt.step()
            sched.step()
