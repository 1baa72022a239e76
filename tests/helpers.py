"""Helpers shared by the model and quantization tests: clips, int8 conversion, one QAT step."""

import numpy as np

from kvid.backend import keras, tf
from kvid_tflite.convert import convert_keras_model
from kvid_tflite.litert import TFLiteModel


def smooth_clips(shape, count, seed=0):
    """Low-frequency random clips in [0, 1]: feature maps with structure, unlike white noise."""
    rng = np.random.default_rng(seed)
    frames, height, width, _ = shape
    clips = []
    for _ in range(count):
        small = rng.random((frames, 4, 4, 3)).astype(np.float32)
        clips.append(tf.image.resize(small, (height, width)).numpy()[None].clip(0, 1))
    return clips


def convert_int8(model, calibration):
    return convert_keras_model(model, "int8", lambda: calibration)


def cosine(a, b):
    a, b = a.ravel(), b.ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def int8_vs_keras_cosines(tflite_bytes, model, clips):
    runner = TFLiteModel(tflite_bytes)
    return [cosine(runner(clip), model(clip, training=False).numpy()) for clip in clips]


def qat_train_step(qat, x, labels, learning_rate=1e-2):
    """One eager SGD step of a QAT model; asserts a finite loss and that the weights moved.

    (A compiled `fit` traces the whole graph first: several times slower for one step.)
    """
    before = [w.numpy().copy() for w in qat.trainable_weights]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(labels, qat(x, training=True))
    grads = tape.gradient(loss, qat.trainable_weights)
    keras.optimizers.SGD(learning_rate).apply_gradients(zip(grads, qat.trainable_weights))
    assert np.isfinite(loss.numpy())
    assert any(not np.allclose(b, w.numpy()) for b, w in zip(before, qat.trainable_weights))
