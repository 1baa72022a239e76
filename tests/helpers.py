"""Helpers shared by the model and quantization tests: goldens, clips, int8 conversion, one QAT
step."""

import json

import numpy as np

import kvid
from kvid.backend import keras, tf
from kvid_tflite.convert import convert_keras_model
from kvid_tflite.litert import TFLiteModel


def golden_tolerance(reference):
    """Golden parity tolerance: `2e-5 * max(1, max|reference|)`."""
    return 2e-5 * max(1.0, float(np.abs(reference).max()))


def load_golden(golden_dir, name):
    """`<name>.npz` and `<name>.json` of the goldens: (arrays, meta, reference state_dict)."""
    arrays = np.load(golden_dir / f"{name}.npz")
    meta = json.loads((golden_dir / f"{name}.json").read_text())
    state_dict = {
        k: arrays[k]
        for k in arrays.files
        if k not in ("input_uint8", "logits") and not k.startswith("feat__")
    }
    return arrays, meta, state_dict


def flat_graph_ops(model):
    """Asserts that `model` is one flat graph (no nested models, no Lambda layers: tfmot rejects
    TFOpLambda) and returns the ops of its batch-1 inference graph, including those of every
    function the graph calls (keras layers may trace as functions)."""
    assert not [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    lambdas = [layer.name for layer in model.layers if "Lambda" in type(layer).__name__]
    assert not lambdas, lambdas
    spec = tf.TensorSpec((1, *model.input_shape[1:]))
    graph = tf.function(lambda v: model(v, training=False)).get_concrete_function(spec).graph
    ops = list(graph.get_operations())
    for function in graph._functions.values():
        ops += list(function.graph.get_operations()) if hasattr(function, "graph") else []
    return ops


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


def run_kvid_convert(*args: str) -> int:
    """Runs kvid-convert on `args`, parsed into fresh flag values (never the global FLAGS)."""
    from absl import flags

    from kvid_tflite import convert

    values = flags.FlagValues()
    convert.define_flags(values)
    values(["kvid-convert", *args])
    return convert.convert_from_flags(values)


def read_json(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# NumPy references of the layers' math.
def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_layer_norm(x, gamma, beta, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def np_dense(layer, x):
    w, b = layer.get_weights()
    return x @ w + b


def np_hard_sigmoid(x):
    return np.clip(x + 3, 0, 6) / 6


# ------------------------------------------------------------------------------------------------
# Small inputs: every preset at an input small enough for the default test tier
# ------------------------------------------------------------------------------------------------
def _divisor(side: int, at_most: int) -> int:
    return max(d for d in range(1, min(side, at_most) + 1) if side % d == 0)


# DualFormer's windows and pyramids must tile every stage, so a reduced input brings its own.
_DUALFORMER_SMALL = {
    "reference": dict(
        num_frames=16, image_size=64, window_sizes=((8, 4, 4),) * 3 + ((8, 2, 2),),
        fine_pyramid_sizes=((8, 4, 4), (8, 4, 4), (8, 2, 2), (16, 2, 2)),
        coarse_pyramid_sizes=((4, 2, 2), (4, 2, 2), None, None), coarse_first_kernel=(1, 4, 4),
    ),
    "mobile": dict(
        image_size=64, window_sizes=((2, 4, 4),) * 3 + ((2, 2, 2),),
        fine_pyramid_sizes=((2, 4, 4), (2, 4, 4), (2, 2, 2), (4, 2, 2)),
        coarse_pyramid_sizes=((1, 2, 2), None, None, None), num_frames=8,
    ),
}  # fmt: skip


def posmlp_small_overrides(name: str, frames: int = 4, size: int = 64) -> dict:
    """A reduced PosMLP-Video input, with windows that tile it (whole-frame windows stay so)."""
    windows = kvid.models.get_preset(name)["window_sizes"]
    sides = [size // 4 // 2**i for i in range(4)]
    return dict(
        num_frames=frames,
        image_size=size,
        window_sizes=tuple(None if w is None else _divisor(s, w) for w, s in zip(windows, sides)),
    )


def small_overrides(name: str) -> dict:
    """Overrides that run preset `name` at a small input (4-16 frames of 32-64 pixels)."""
    family, cfg = kvid.models.family_of(name), kvid.models.get_preset(name)
    if family == "mobile_former":
        return dict(image_size=64, **({} if cfg["image_input"] else dict(num_frames=4)))
    if family == "xvit":
        return dict(num_frames=4, image_size=2 * cfg["patch_size"])
    if family == "posmlp":
        return posmlp_small_overrides(name)
    if family == "dualformer":
        if cfg["image_size"] <= 64:
            return {}
        return dict(_DUALFORMER_SMALL["reference" if cfg["image_size"] >= 224 else "mobile"])
    raise ValueError(f"no small input known for family {family!r}")
