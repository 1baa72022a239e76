"""kvid: efficient video recognition models for phones and the Coral Edge TPU.

Layers, model families and quantization-aware training for video classifiers that convert to
fully int8 TFLite. Public tensors are `(batch, frames, height, width, channels)`, channels last.
"""

from kvid import layers, models, profile, quantization

__version__ = "0.1.0"
__all__ = ["layers", "models", "profile", "quantization", "__version__"]
