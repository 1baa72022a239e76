"""Loading an exported SavedModel and running it: the float side of every comparison.

`training/train.py` exports `serving_default: video (batch, T, H, W, 3) float32 -> logits`.
`tf.saved_model.load` restores the traced functions without kvid's Python layer classes, so a
model exported by any version of kvid still loads here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf

from kvid.data.workdir import (
    INPUT_NAME,
    OUTPUT_NAME,
    SIGNATURE_KEY,
    WorkdirError,
    is_saved_model,
)


@dataclasses.dataclass
class ServingModel:
    """A loaded SavedModel's serving signature.

    Attributes:
      path: the SavedModel directory.
      loaded: the restored object (keeps the variables alive).
      signature: the `serving_default` concrete function.
      input_key / output_key: the signature's input and output names.
      clip_shape: static `(T, H, W, 3)` of one clip.
    """

    path: str
    loaded: Any
    signature: Any
    input_key: str
    output_key: str
    clip_shape: tuple[int, ...]

    def __call__(self, video: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """Float video `(N, T, H, W, 3)` -> float32 logits `(N, classes)`, in chunks."""
        video = np.asarray(video, np.float32)
        outputs = []
        for start in range(0, video.shape[0], batch_size):
            chunk = tf.constant(video[start : start + batch_size])
            outputs.append(self.signature(**{self.input_key: chunk})[self.output_key].numpy())
        return np.concatenate(outputs, axis=0).astype(np.float32)

    def static_batch_function(self, batch_size: int = 1) -> Any:
        """A concrete function with a static batch: input `video`, dict output `logits`.

        The dict output and the TensorSpec name are what make the converted `.tflite` carry the
        signature `serving_default` with input `video` and output `logits` (measured).
        """
        spec = tf.TensorSpec([batch_size, *self.clip_shape], tf.float32, name=INPUT_NAME)
        signature, input_key, output_key = self.signature, self.input_key, self.output_key

        @tf.function(input_signature=[spec])
        def serving(video):
            return {OUTPUT_NAME: signature(**{input_key: video})[output_key]}

        return serving.get_concrete_function()

    def has_fake_quant(self) -> bool:
        """True when the graph holds FakeQuant ops, i.e. the model is quantization-aware."""
        graph_def = self.signature.graph.as_graph_def()
        nodes = list(graph_def.node)
        for function in graph_def.library.function:
            nodes.extend(function.node_def)
        return any(node.op.startswith("FakeQuantWithMinMax") for node in nodes)


def load_serving_model(path: str, clip_shape: tuple[int, ...] | None = None) -> ServingModel:
    """Loads `path` and resolves its serving signature.

    Args:
      path: a SavedModel directory.
      clip_shape: expected `(T, H, W, 3)`; required when the signature leaves a dim dynamic,
        checked against the signature otherwise.

    Raises:
      WorkdirError: not a SavedModel, no `serving_default`, or ambiguous inputs/outputs.
      ValueError: the clip shape disagrees with the signature.
    """
    if not is_saved_model(path):
        raise WorkdirError(f"{path} is not a SavedModel directory (no saved_model.pb)")
    loaded = tf.saved_model.load(path)
    if SIGNATURE_KEY not in loaded.signatures:
        raise WorkdirError(
            f"SavedModel {path} has no '{SIGNATURE_KEY}' signature "
            f"(has: {sorted(loaded.signatures.keys())})"
        )
    signature = loaded.signatures[SIGNATURE_KEY]
    _, input_specs = signature.structured_input_signature
    if len(input_specs) != 1:
        raise WorkdirError(f"SavedModel {path}: expected one input, got {sorted(input_specs)}")
    input_key = INPUT_NAME if INPUT_NAME in input_specs else next(iter(input_specs))
    outputs = signature.structured_outputs
    if OUTPUT_NAME in outputs:
        output_key = OUTPUT_NAME
    elif len(outputs) == 1:
        output_key = next(iter(outputs))
    else:
        raise WorkdirError(f"SavedModel {path}: no '{OUTPUT_NAME}' output among {sorted(outputs)}")
    signature_shape = list(input_specs[input_key].shape)[1:]
    if len(signature_shape) != 4:
        raise WorkdirError(
            f"SavedModel {path}: input '{input_key}' has shape {input_specs[input_key].shape}, "
            "expected (batch, T, H, W, 3)"
        )
    if clip_shape is not None:
        shape = tuple(int(d) for d in clip_shape)
        for have, want in zip(signature_shape, shape):
            if have is not None and have != want:
                raise ValueError(
                    f"SavedModel {path}: input shape {signature_shape} disagrees with "
                    f"expected clip shape {list(shape)}"
                )
    elif None in signature_shape:
        raise ValueError(
            f"SavedModel {path}: input shape {signature_shape} is not static; pass clip_shape"
        )
    else:
        shape = tuple(int(d) for d in signature_shape)
    return ServingModel(path, loaded, signature, input_key, output_key, shape)
