"""Models: the assignment's custom ResNet."""

from cifarkit.models.custom_resnet import CustomResNet

__all__ = ["CustomResNet"]
