"""kvid: efficient video recognition models for phones and the Coral Edge TPU.

Layers, model families and quantization-aware training for video classifiers that convert to
fully int8 TFLite. Public tensors are `(batch, frames, height, width, channels)`, channels last.

The submodules load on first use (`kvid.models`, `kvid.layers`, `kvid.quantization`,
`kvid.profile`, `kvid.data`), so that a tool that only reads a workdir or decodes a video does
not pay for importing TensorFlow.
"""

import importlib

__version__ = "0.1.0"
_SUBMODULES = ("data", "layers", "models", "profile", "quantization")
__all__ = [*_SUBMODULES, "__version__"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"kvid.{name}")
    raise AttributeError(f"module 'kvid' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
