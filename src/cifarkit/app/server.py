"""`cifarkit app RUN`: a local web app (Gradio) over a trained run: predict, Grad-CAM, misclassified test images.

Needs the optional extra `app` (INSTALL says how). The logic lives in `cifarkit.app.views` as plain functions;
this module only lays them out and serves them:

    >>> from cifarkit.app.views import load_explainer
    >>> from cifarkit.app.server import build_app, launch
    >>> demo = build_app(load_explainer("runs/baseline"))   # a gr.Blocks; nothing served yet
    >>> launch(demo, host="127.0.0.1", port=7860)            # blocks until Ctrl+C

It binds to 127.0.0.1 (this machine only) unless a host is given, and has no login: serve it on a network only
where everyone on that network may use it.
"""

# No `from __future__ import annotations`: Gradio reads the gr.SelectData annotation of a handler at run time.

import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

from cifarkit.app.uploads import BOUNDS, MAX_BYTES, MAX_FILES
from cifarkit.app.views import (GRADCAM_LAYERS, MAX_GRADCAM, MAX_MISCLASSIFIED, MAX_TOP, Explainer, gradcam_view,
                                load_explainer, misclassified_view, predict_view)
from cifarkit.config import check_device_name
from cifarkit.errors import CifarkitError, pip_install
from cifarkit.net import check_address
from cifarkit.run import find_weights

INSTALL = f"the app needs Gradio: {pip_install('app')}"
# Gradio's galleries cut captions to one line ("...") inside square tiles, and keep 450 px for a gallery of height
# "auto", which left an empty band under one row of tiles. Here a tile is its image with the whole caption under it,
# and a gallery is as tall as its rows.
GALLERIES = ("#examples", "#gradcam-gallery", "#mis-gallery")


def _css(selector: str, rules: str) -> str:
    return ", ".join(f"{g} {selector}" for g in GALLERIES) + " { " + rules + " }\n"


APP_CSS = (_css(".grid-wrap", "min-height: 0; max-height: none;")
           + _css(".gallery-item", "height: auto;")
           + _css(".thumbnail-item", "aspect-ratio: auto; height: auto; display: flex; flex-direction: column;")
           + _css(".thumbnail-item > img", "width: 100%; height: auto;")
           + _css(".caption-label", "position: static; max-width: none; white-space: normal; overflow: visible; "
                  "text-overflow: clip; opacity: 1; border: none; background: none; text-align: center;"))
UPLOAD_NOTE = ("Any size and colour mode: each image is converted to RGB and resized to 32x32 pixels (bilinear), "
               f"as `cifarkit predict` does, and shown here as the model sees it. Limits: {BOUNDS}.")


def _gradio() -> Any:
    try:
        import gradio
    except ImportError:
        raise CifarkitError(INSTALL) from None
    return gradio


def write_examples(ex: Explainer, folder: Path) -> list[tuple[Path, str]]:
    """The first test image of each class as folder/example-<class>.png; returns (path, class) pairs."""
    from PIL import Image

    out = []
    for name, image in ex.examples():
        path = Path(folder) / f"example-{name}.png"
        Image.fromarray(image).save(path)
        out.append((path, name))
    return out


def clamp_js(inputs: Sequence[Any]) -> str:
    """A browser-side step for an event: a number typed past a slider's ends is brought back into its range before
    it is sent (Gradio would refuse it with an error); other inputs pass unchanged."""
    gr = _gradio()
    args = [f"a{i}" for i in range(len(inputs))]
    values = [f"Math.min({c.maximum}, Math.max({c.minimum}, {a}))" if isinstance(c, gr.Slider) else a
              for a, c in zip(args, inputs)]
    return f"({', '.join(args)}) => [{', '.join(values)}]"


def build_app(ex: Explainer, examples: Sequence[tuple[Path, str]] = ()) -> Any:
    """The app as a gr.Blocks (not launched). `examples`: (image file, class) pairs offered for one click."""
    gr = _gradio()
    with gr.Blocks(title="cifarkit", analytics_enabled=False) as demo:
        gr.Markdown(ex.header, elem_id="run-header")

        gr.Markdown("## Predict")
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="Images", file_count="multiple", type="filepath", elem_id="uploads")
                gr.Markdown(UPLOAD_NOTE)
                top_k = gr.Slider(1, MAX_TOP, value=5, step=1, label=f"Top classes (1 to {MAX_TOP})",
                                  elem_id="top-k")
            with gr.Column(scale=2):
                notes = gr.Markdown(elem_id="upload-notes")
                slots = []  # per upload: a row (hidden while unused), what the model sees, the top classes
                for i in range(MAX_FILES):
                    with gr.Row(visible=False) as row:
                        slots += [row, gr.Image(height=140, width=140, interactive=False, elem_id=f"input-{i}",
                                                buttons=[]), gr.Label(elem_id=f"prediction-{i}")]
        example_gallery = gr.Gallery([(str(p), name) for p, name in examples], label=(
            "Examples: one test image per class from the run's test data (click one to classify it)"),
            columns=10, height="auto", object_fit="contain", allow_preview=False, elem_id="examples", interactive=False)

        gr.Markdown("## Grad-CAM\nWhere the evidence for the predicted class lies: 0 none, 1 the image's strongest. "
                    "layer3 is the map the classifier reads (4x4, coarse); layer2, layer1 and prep are finer "
                    "and increasingly show edges rather than the class.")
        with gr.Row():
            cam_on = gr.Checkbox(label="Show Grad-CAM", elem_id="gradcam-on")
            cam_n = gr.Slider(1, MAX_GRADCAM, value=4, step=1, elem_id="gradcam-count",
                              label=f"Images: your uploads first, then test images (at most {MAX_GRADCAM})")
            layer = gr.Radio(list(GRADCAM_LAYERS), value="layer3", label="Layer (coarse to fine)",
                             elem_id="gradcam-layer")
            opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Heatmap opacity", elem_id="gradcam-opacity")
        cam_gallery = gr.Gallery(label="Grad-CAM overlays", columns=4, height="auto", object_fit="contain",
                                 format="png", elem_id="gradcam-gallery")

        gr.Markdown("## Misclassified test images\nThe run's test images that the model gets wrong, highest loss "
                    "(lowest probability of the true class) first.")
        with gr.Row():
            mis_on = gr.Checkbox(label="Show misclassified", elem_id="mis-on")
            mis_n = gr.Slider(1, MAX_MISCLASSIFIED, value=10, step=1, elem_id="mis-count",
                              label=f"How many (at most {MAX_MISCLASSIFIED})")
            mis_cam = gr.Checkbox(label="With Grad-CAM (layer and opacity above)", elem_id="mis-gradcam")
        mis_summary = gr.Markdown(elem_id="mis-summary")
        mis_gallery = gr.Gallery(label="Misclassified", columns=5, height="auto", object_fit="contain",
                                 format="png", elem_id="mis-gallery")

        def on_predict(paths: list[str] | None, k: float) -> list[Any]:
            found, note = predict_view(ex, paths, int(k))
            out: list[Any] = [note]
            for slot in found:
                out += [gr.update(visible=True), gr.update(value=slot.image, label=slot.name),
                        gr.update(value=slot.top, label=f"{slot.name}: top {len(slot.top)}")]
            for _ in range(MAX_FILES - len(found)):
                out += [gr.update(visible=False), None, None]
            return out

        def on_gradcam(paths: list[str] | None, on: bool, n: float, lay: str, alpha: float) -> Any:
            return gradcam_view(ex, paths, int(n), lay, float(alpha)) if on else []

        def on_misclassified(on: bool, n: float, cam: bool, lay: str, alpha: float) -> tuple[Any, str]:
            if not on:
                return [], ""
            return misclassified_view(ex, int(n), gradcam=cam, layer=lay, opacity=float(alpha))

        def on_example(event: gr.SelectData) -> list[str]:
            return [str(examples[event.index][0])]

        inputs = [files, top_k]
        gr.on([files.change, top_k.change], on_predict, inputs, [notes, *slots], js=clamp_js(inputs),
              trigger_mode="always_last")
        inputs = [files, cam_on, cam_n, layer, opacity]
        gr.on([files.change, cam_on.change, cam_n.change, layer.change, opacity.change], on_gradcam, inputs,
              cam_gallery, js=clamp_js(inputs), trigger_mode="always_last")
        inputs = [mis_on, mis_n, mis_cam, layer, opacity]
        gr.on([mis_on.change, mis_n.change, mis_cam.change, layer.change, opacity.change], on_misclassified, inputs,
              [mis_gallery, mis_summary], js=clamp_js(inputs), trigger_mode="always_last")
        example_gallery.select(on_example, None, files)
    return demo


def launch(demo: Any, *, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> str:
    """Serve `demo` on host:port, print its URL, and (block=True) wait until Ctrl+C. Returns the URL."""
    from PIL import Image

    # The server's own process: a decompression-bomb warning from any image decoder must never reach the console
    # (uploads are checked before decoding; this covers the rest).
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        _, url, _ = demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
                                show_error=True, max_file_size=MAX_BYTES, css=APP_CSS)
    except OSError:  # taken since check_address tried it: Gradio's own advice names its environment variables
        check_address(host, port)
        raise CifarkitError(f"cannot serve on {host}:{port}: choose another --port") from None
    reach = "this machine only" if host in ("127.0.0.1", "localhost", "::1") else f"every machine that reaches {host}"
    print(f"cifarkit app: {url} (bound to {host}:{port}, {reach}; Ctrl+C stops it)", flush=True)
    if block:
        try:
            demo.block_thread()
        finally:
            demo.close()
    return url


def app_command(weights: Path, *, data: str | None, device: str, host: str, port: int) -> int:
    """`cifarkit app`: load the run (or say in one line why not), write its examples, serve until Ctrl+C."""
    check_address(host, port)  # before Gradio (seconds to import), the model and the data load
    check_device_name(device)
    find_weights(weights)
    _gradio()
    ex = load_explainer(weights, data=data, device=device)
    with tempfile.TemporaryDirectory(prefix="cifarkit-app-") as folder:
        launch(build_app(ex, write_examples(ex, Path(folder))), host=host, port=port)
    return 0
