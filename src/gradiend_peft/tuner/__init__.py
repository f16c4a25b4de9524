"""The GRADIEND PEFT method, in peft's tuner layout: config, layers, tuner."""

from .config import GradiendConfig
from .layer import Conv1DLayer, Embedding, GradiendLayer, Linear
from .model import GradiendModel

__all__ = ["Conv1DLayer", "Embedding", "GradiendConfig", "GradiendLayer", "GradiendModel", "Linear"]
