"""What several test modules share: the CLI run in-process with its output captured, the one-error-line check, and
`slow_fixture`, the mark that makes every test requesting a fixture slow (conftest.py reads it at collection)."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import pytest

F = TypeVar("F", bound=Callable[..., Any])

SLOW_ATTRIBUTE = "cifarkit_slow_fixture"  # set on a fixture's function; conftest.py marks its users slow

# The shared short run (conftest.py's `short_run`): `cifarkit train SHORT_RUN_ARGS`, `--data synthetic` drawing
# SHORT_SYNTHETIC (train, test) images. 2 epochs of SHORT_STEPS_PER_EPOCH steps.
SHORT_SYNTHETIC = (64, 32)
SHORT_RUN_ARGS = ["--data", "synthetic", "--subset", "32", "--test-subset", "16", "--batch-size", "8", "--epochs", "2",
                  "--lr-min", "1e-4", "--lr-max", "1e-3", "--no-plots"]
SHORT_STEPS_PER_EPOCH = 32 // 8


def slow_fixture(*args: Any, **kwargs: Any) -> Any:
    """`@slow_fixture(scope=...)` or `@slow_fixture`: a pytest fixture that trains (or launches a process, a server,
    a browser); every test that requests it, directly or through another fixture, is marked `slow`."""

    def wrap(function: F) -> F:
        setattr(function, SLOW_ATTRIBUTE, True)
        return pytest.fixture(**kwargs)(function)  # type: ignore[no-any-return]

    if len(args) == 1 and callable(args[0]) and not kwargs:
        return wrap(args[0])
    return wrap


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`cifarkit ARGV` in this process: (exit code, stdout, stderr), with nothing printed before it mixed in."""
    from cifarkit.cli import main

    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(code: int, err: str, *fragments: str) -> None:
    """Exit code 2 and stderr exactly one `error: ...` line holding every fragment, no traceback."""
    assert code == 2, err
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def drawn_images(figure: Any) -> list[Any]:
    """The arrays a matplotlib figure shows with imshow, axes by axes in drawing order (what a gallery put in it)."""
    import numpy as np

    return [np.asarray(image.get_array()) for ax in figure.axes for image in ax.images]


def drawn_lines(ax: Any) -> list[tuple[Any, Any]]:
    """(x, y) of every line an axes draws, in drawing order, as float arrays."""
    import numpy as np

    return [(np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)) for line in ax.lines]


def predictions_by_hand(run: Any, images: Any) -> Any:
    """The classes a run's model.pt gives `images` (uint8 N x 32 x 32 x 3), by a forward pass written here rather
    than the product's: the weights in a fresh CustomResNet in eval mode, each pixel (x / 255 - mean) / std with the
    run's normalisation, autocast in the run's precision (auto: what `choose_precision` picks for this CPU), argmax."""
    import json

    import numpy as np
    import torch

    from cifarkit.data import normalization
    from cifarkit.device import choose_precision
    from cifarkit.models import CustomResNet

    config = json.loads((run / "config.json").read_text())
    model = CustomResNet()
    model.load_state_dict(torch.load(run / "model.pt", weights_only=True)["weights"])  # model.pt's named fields
    mean, std = (np.asarray(v, dtype=np.float32) for v in normalization(config["std"]))
    x = torch.from_numpy(((np.asarray(images, dtype=np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2).copy())
    precision = choose_precision("cpu") if config["precision"] == "auto" else config["precision"]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        return model.eval()(x).float().argmax(1).numpy()


def unread_run(tmp_path: Any) -> Any:
    """A run folder whose model.pt is an empty file: any command that reads it fails, so a test that passes with it
    shows that its refusal comes before the weights are read."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_bytes(b"")
    return run


def untrained_run(folder: Any, seed: int = 0) -> Any:
    """A run folder without training: model.pt (named fields, as fit writes it) holds a seeded, untrained
    CustomResNet, and config.json records `--data synthetic`. For tests whose promise is about arguments, refusals or files, not the network's numbers."""
    import torch

    from cifarkit.config import TrainConfig
    from cifarkit.data import resolve_data
    from cifarkit.models import CustomResNet

    from cifarkit.inference import save_model
    from cifarkit.run import write_config

    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    config = TrainConfig(data="synthetic", data_fingerprint=resolve_data("synthetic").fingerprint, out=str(folder),
                         test_subset=4)
    save_model(folder / "model.pt", CustomResNet(), config, resolve_data("synthetic").classes)  # as fit writes it
    write_config(folder, config)
    return folder


def png_pixels(path: Any) -> Any:
    """A PNG's pixels as an H x W x 3 int array."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int32)


def colour_pixels(pixels: Any, colour: str, tolerance: int = 12) -> int:
    """How many pixels are within `tolerance` (per channel, 0-255) of a matplotlib colour ("tab:blue")."""
    import numpy as np
    from matplotlib.colors import to_rgb

    target = np.round(np.asarray(to_rgb(colour)) * 255).astype(np.int32)
    return int((np.abs(pixels - target) <= tolerance).all(axis=-1).sum())
