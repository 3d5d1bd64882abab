"""A trained model at work, apart from training: the model file that describes itself (model_file.py), the one
preprocessing step and probabilities (preprocess.py), test loss and accuracy (evaluation.py), and `open_run`, the one
handle on a trained run, with the public `load_model` and `predict` (trained_run.py).

    from cifarkit.inference import open_run
    run = open_run("runs/a")                       # a run folder, model.pt, checkpoints/last.pt, or model.pt alone
    probs = run.predict_proba(images_uint8_nhwc)   # float32 [N, classes]
"""

from cifarkit.inference.evaluation import evaluate
from cifarkit.inference.model_file import MODEL_FORMAT, ModelFile, load_model_file, read_model_file, save_model
from cifarkit.inference.preprocess import ImageLike, Preprocess, as_images, predict_proba, preprocess
from cifarkit.inference.trained_run import LoadedModel, OpenRun, load_model, open_run, predict

__all__ = ["MODEL_FORMAT", "ImageLike", "LoadedModel", "ModelFile", "OpenRun", "Preprocess", "as_images", "evaluate",
           "load_model", "load_model_file", "open_run", "predict", "predict_proba", "preprocess", "read_model_file",
           "save_model"]
