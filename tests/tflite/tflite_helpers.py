"""Test helpers for tests/tflite: tiny tf_keras video classifiers, exported the way
training/train.py exports, and fake workdirs.

Input (T, H, W, 3) = (4, 16, 16, 3); every model is a flat functional graph, and the SavedModel
signature is `serving_default: video (None, T, H, W, 3) float32 -> {"logits": ...}`, tracking
only the variables (as training/workdir.py's export_saved_model does).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
import tf_keras as keras

from kvid.data.workdir import MODEL_JSON, model_json, write_json

CLIP_SHAPE = (4, 16, 16, 3)
NUM_CLASSES = 5
LABELS = [f"class_{i}" for i in range(NUM_CLASSES)]
ORDER_PAIRS = [[0, 1], [2, 3]]


def build_classifier(kind: str = "conv2d", seed: int = 0) -> keras.Model:
    """conv2d: int8-friendly; conv3d: keeps a float CONV_3D in int8; first_frame: reads frame 0;
    attention: two batch matmuls between activations."""
    keras.utils.set_random_seed(seed)
    frames, height, width, _ = CLIP_SHAPE
    video = keras.Input(CLIP_SHAPE, name="video")
    if kind == "conv2d":
        x = keras.layers.Reshape((frames * height, width, 3))(video)  # frame-stacked view
        x = keras.layers.Conv2D(16, 3, padding="same")(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        # 16 x 64 = 1024 weights: the smallest tensor dynamic-range mode quantizes.
        x = keras.layers.Dense(64, activation="relu")(x)
    elif kind == "conv3d":
        x = keras.layers.Conv3D(4, 3, padding="same")(video)
        x = keras.layers.GlobalAveragePooling3D()(x)
    elif kind == "first_frame":
        x = keras.layers.Reshape((frames * height, width, 3))(video)
        x = keras.layers.Cropping2D(((0, (frames - 1) * height), (0, 0)))(x)  # frame 0 only
        x = keras.layers.GlobalAveragePooling2D()(x)
    elif kind == "attention":
        # Rank-5 int8 BATCH_MATMULs between activations (XNNPACK delegates them).
        x = keras.layers.Reshape((frames, 2, height * width // 2, 3))(video)
        x = keras.layers.Dense(8)(x)
        query = keras.layers.Dense(8)(x)
        attention = keras.layers.Lambda(
            lambda t: tf.nn.softmax(tf.matmul(t[0], t[1], transpose_b=True))
        )([query, x])
        x = keras.layers.Lambda(lambda t: tf.matmul(t[0], t[1]))([attention, x])
        x = keras.layers.Reshape((frames, height * width, 1, 8))(x)
        x = keras.layers.GlobalAveragePooling3D()(x)
    else:
        raise ValueError(kind)
    logits = keras.layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(video, logits)


def save_serving(model: keras.Model, path: str) -> str:
    """Exports `model` with the workdir contract's signature."""

    @tf.function(input_signature=[tf.TensorSpec([None, *CLIP_SHAPE], tf.float32, name="video")])
    def serve(video):
        return {"logits": model(video, training=False)}

    module = tf.Module()
    module.model_variables = list(model.variables)
    module.serve = serve
    tf.saved_model.save(module, path, signatures={"serving_default": serve})
    return path


def quantize_aware(model: keras.Model, seed: int = 0) -> keras.Model:
    """A tfmot QAT copy of `model` whose fake-quant ranges are set by a few zero-LR steps."""
    import tensorflow_model_optimization as tfmot

    qat = tfmot.quantization.keras.quantize_model(model)
    # Zero learning rate: weights stay those of the float model, only the ranges move.
    qat.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(True))
    rng = np.random.default_rng(seed)
    videos = rng.random((16, *CLIP_SHAPE), dtype=np.float32)
    qat.fit(videos, rng.integers(0, NUM_CLASSES, 16), batch_size=4, epochs=1, verbose=0)
    return qat


def random_clips(count: int, seed: int) -> list[np.ndarray]:
    """Float32 clips (1, T, H, W, 3) in [0, 1]."""
    rng = np.random.default_rng(seed)
    return [rng.random((1, *CLIP_SHAPE), dtype=np.float32) for _ in range(count)]


def write_workdir(root: str, float_model=None, qat_model=None, data_dir: str = "data") -> str:
    """A workdir with model.json and the exports given."""
    os.makedirs(os.path.join(root, "export"), exist_ok=True)
    write_json(
        os.path.join(root, MODEL_JSON),
        model_json(
            preset="toy",
            num_classes=NUM_CLASSES,
            overrides={},
            num_frames=CLIP_SHAPE[0],
            image_size=CLIP_SHAPE[1:3],
            frame_stride=1,
            labels=LABELS,
            # Class names, as training/train.py writes them (copied from dataset.json).
            order_pairs=[[LABELS[a], LABELS[b]] for a, b in ORDER_PAIRS],
            normalization={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
            data_dir=data_dir,
        ),
    )
    os.makedirs(os.path.join(root, data_dir), exist_ok=True)
    if float_model is not None:
        save_serving(float_model, os.path.join(root, "export", "float"))
    if qat_model is not None:
        save_serving(qat_model, os.path.join(root, "export", "qat"))
    return root


def converter_attention() -> tuple[keras.Model, np.random.Generator, bytes]:
    """Two activations multiplied, and its int8 model as the converter writes it: the keys pass
    a ReLU, so the right-hand operand of the BATCH_MATMUL has zero point -128 (XNNPACK refuses
    it). Returns the model, the random generator after the calibration clips, and the model."""
    from kvid_tflite.convert import convert_keras_model

    inputs = keras.Input((8, 16), batch_size=1)
    queries = keras.layers.Dense(16, name="queries")(inputs)
    keys = keras.layers.Dense(16, activation="relu", name="keys")(inputs)
    scores = tf.linalg.matmul(queries, keys, transpose_b=True)
    logits = keras.layers.Dense(4, name="head")(keras.layers.Flatten()(scores))
    model = keras.Model(inputs, logits)
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((1, 8, 16)).astype(np.float32) for _ in range(8)]
    return model, rng, convert_keras_model(model, "int8", lambda: calibration, symmetric_rhs=False)
