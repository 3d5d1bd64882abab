"""Models: the assignment's custom ResNet, its factory and mode switch."""

from cifarkit.models.custom_resnet import CustomResNet
from cifarkit.models.factory import build_model, is_channels_last
from cifarkit.models.modes import eval_mode, train_mode

__all__ = ["CustomResNet", "build_model", "eval_mode", "is_channels_last", "train_mode"]
