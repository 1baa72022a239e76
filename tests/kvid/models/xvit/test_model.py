"""XViT: golden parity with the reference code, other reference configurations, presets, costs."""

import copy

import numpy as np
import pytest
from scipy.special import erf

import kvid
from kvid.backend import keras, tf
from kvid.models import xvit
from tests.helpers import (
    flat_graph_ops,
    golden_tolerance,
    load_golden,
    qat_train_step,
    smooth_clips,
)

REFERENCE_PARAMS, REFERENCE_MACS = 85.8e6, 281.0e9  # docs/design.md section 6 (fvcore on the code)
MOBILE_PRESETS = ("xvit_xs", "xvit_s", "xvit_m")


def _reference(meta, **cfg):
    constructor = copy.deepcopy(meta["constructor"])
    constructor["cfg"].update(cfg)
    return {"family": "xvit", "constructor": constructor}


# --- An independent NumPy port of the reference forward pass (PyTorch names and layouts). It
# reproduces the golden logits (test below), then checks configurations without stored outputs.


def _ln(x, sd, prefix, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * sd[f"{prefix}.weight"] + sd[f"{prefix}.bias"]


def _linear(x, sd, prefix):
    y = x @ sd[f"{prefix}.weight"].T
    return y + sd[f"{prefix}.bias"] if f"{prefix}.bias" in sd else y


def _gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _ref_shift(x, fold, segments):
    """TemporalShift on (B*T, N, C) with frames fastest, in chunks of `segments`."""
    bt, n, c = x.shape
    x = x.reshape(bt // segments, segments, n, c)
    out = np.zeros_like(x)
    out[:, :-1, :, :fold] = x[:, 1:, :, :fold]
    out[:, 1:, :, fold : 2 * fold] = x[:, :-1, :, fold : 2 * fold]
    out[:, :, :, 2 * fold :] = x[:, :, :, 2 * fold :]
    return out.reshape(bt, n, c)


def _ref_block(x, sd, prefix, heads, eps, shift=None):
    bt, n, c = x.shape
    d = c // heads
    qkv = _linear(_ln(x, sd, f"{prefix}.norm1", eps), sd, f"{prefix}.attn.qkv")
    qkv = qkv.reshape(bt, n, 3, heads, d).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # (BT, h, N, d)
    if shift is not None:  # flatten head-major, shift, split again
        fold, segments = shift
        k, v = (
            _ref_shift(a.transpose(0, 2, 1, 3).reshape(bt, n, c), fold, segments)
            .reshape(bt, n, heads, d)
            .transpose(0, 2, 1, 3)
            for a in (k, v)
        )
    scores = q @ k.transpose(0, 1, 3, 2) * d**-0.5
    attn = np.exp(scores - scores.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    out = (attn @ v).transpose(0, 2, 1, 3).reshape(bt, n, c)
    x = x + _linear(out, sd, f"{prefix}.attn.proj")
    hidden = _gelu(_linear(_ln(x, sd, f"{prefix}.norm2", eps), sd, f"{prefix}.mlp.fc1"))
    return x + _linear(hidden, sd, f"{prefix}.mlp.fc2")


def numpy_xvit(sd, clip, heads, head_heads, head_layers, shift_div, segments, locations, vit):
    """Logits of the reference XVIT (`vit` consensus, or `avg` when there is no VitHead)."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    b, t, hh, ww, _ = clip.shape
    w = sd["base_model.patch_embed.proj.weight"]
    c, p = w.shape[0], w.shape[-1]
    x = clip.reshape(b * t, hh // p, p, ww // p, p, 3).transpose(0, 1, 3, 5, 2, 4)
    x = (
        x.reshape(b * t, -1, 3 * p * p) @ w.reshape(c, -1).T
        + sd["base_model.patch_embed.proj.bias"]
    )
    cls = np.broadcast_to(sd["base_model.cls_token"], (b * t, 1, c))
    x = np.concatenate([cls, x], axis=1) + sd["base_model.pos_embed"]
    period = sd["base_model.temp_embed"].shape[1]
    x = (x.reshape(b * t // period, period, *x.shape[1:]) + sd["base_model.temp_embed"]).reshape(
        b * t, -1, c
    )
    depth = len({k.split(".")[2] for k in sd if k.startswith("base_model.blocks.")})
    for i in range(depth):
        shift = (c // shift_div, segments) if i in locations and shift_div else None
        x = _ref_block(x, sd, f"base_model.blocks.{i}", heads, 1e-6, shift)
    features = _ln(x, sd, "base_model.norm", 1e-6)[:, 0].reshape(b, t, c)
    if not vit:
        return _linear(features, sd, "new_fc").mean(1)
    z = np.concatenate([np.broadcast_to(sd["consensus.cls_token"], (b, 1, c)), features], axis=1)
    for i in range(head_layers):
        z = _ref_block(z, sd, f"consensus.temporal_encoder.{i}", head_heads, 1e-5)
    z = _gelu(_linear(_ln(z[:, 0], sd, "consensus.mlp_head.0", 1e-5), sd, "consensus.mlp_head.1"))
    return _linear(z, sd, "consensus.mlp_head.4")


def _numpy_logits(sd, clip, cfg):
    return numpy_xvit(
        sd,
        clip,
        heads=3,
        head_heads=cfg.get("TEMPORAL_HEAD.NUM_ATTENTION_HEADS", 3),
        head_layers=cfg.get("TEMPORAL_HEAD.NUM_HIDDEN_LAYERS", 1),
        shift_div=cfg.get("XVIT.SHIFT_DIV", 8) if cfg.get("XVIT.USE_XVIT", True) else 0,
        segments=cfg.get("XVIT.NUM_SEGMENTS", 8),
        locations=cfg.get("XVIT.LOCATIONS_LIST", list(range(15))),
        vit=cfg.get("XVIT.CONSENSUS_TYPE", "vit") == "vit",
    )


def test_golden_parity_logits_and_intermediates(golden_dir):
    arrays, meta, state_dict = load_golden(golden_dir, "xvit")
    model = kvid.models.from_reference(_reference(meta), state_dict)
    new_fc = state_dict["new_fc.weight"].size + state_dict["new_fc.bias"].size  # unused
    assert kvid.profile.count_params(model) == meta["parameter_count"] - new_fc
    x = arrays["input_uint8"].astype(np.float32) / np.float32(255.0)
    endpoints = model.kvid_endpoints
    taps = {
        "patch_embed": endpoints["patch_embed"],
        "block0_out": endpoints["block0"],
        "backbone_norm_out": endpoints["norm"],
        "temporal_encoder_out": endpoints["temporal_encoder"],
    }
    outputs = [model.get_layer(name).output for name in taps.values()] + [model.output]
    results = keras.Model(model.input, outputs)(x, training=False)
    for feature, value in zip(taps, results[:-1], strict=False):
        expected = arrays[f"feat__{feature}"]
        assert value.shape == expected.shape, feature
        assert np.abs(value.numpy() - expected).max() <= golden_tolerance(expected), feature
    logits = results[-1].numpy()
    assert np.abs(logits - arrays["logits"]).max() <= golden_tolerance(arrays["logits"])


def test_numpy_port_of_the_reference_reproduces_the_golden_logits(golden_dir):
    arrays, meta, state_dict = load_golden(golden_dir, "xvit")
    x = arrays["input_uint8"].astype(np.float64) / 255.0
    logits = _numpy_logits(state_dict, x, meta["constructor"]["cfg"])
    assert np.abs(logits - arrays["logits"]).max() <= golden_tolerance(arrays["logits"])


@pytest.mark.parametrize(
    "cfg",
    [{"XVIT.USE_XVIT": False}, {"XVIT.SHIFT_DIV": 4}, {"XVIT.LOCATIONS_LIST": [1]}],
    ids=["no_shift", "shift_div_4", "shift_in_block_1_only"],
)
def test_golden_parity_fails_on_a_shift_mistake(golden_dir, cfg):
    """The parity check can fail: the golden weights with another shift miss the logits."""
    arrays, meta, state_dict = load_golden(golden_dir, "xvit")
    model = kvid.models.from_reference(_reference(meta, **cfg), state_dict)
    x = arrays["input_uint8"].astype(np.float32) / np.float32(255.0)
    assert np.abs(model(x).numpy() - arrays["logits"]).max() > 100 * golden_tolerance(
        arrays["logits"]
    )


def _random_state_dict(golden, head_layers, head_heads, mlp_dim, classes, seed):
    """Golden backbone weights and a fresh head of the requested size (reference shapes)."""
    rng = np.random.default_rng(seed)
    sd = {k: v for k, v in golden.items() if not k.startswith("consensus.temporal_encoder")}
    c = golden["base_model.norm.weight"].shape[0]
    for i in range(head_layers):
        for key, shape in (
            ("norm1.weight", (c,)), ("norm1.bias", (c,)), ("attn.qkv.weight", (3 * c, c)),
            ("attn.proj.weight", (c, c)), ("attn.proj.bias", (c,)), ("norm2.weight", (c,)),
            ("norm2.bias", (c,)), ("mlp.fc1.weight", (4 * c, c)), ("mlp.fc1.bias", (4 * c,)),
            ("mlp.fc2.weight", (c, 4 * c)), ("mlp.fc2.bias", (c,)),
        ):  # fmt: skip
            scale = 1 / np.sqrt(shape[-1]) if "weight" in key and len(shape) == 2 else 0.2
            value = rng.standard_normal(shape) * scale
            sd[f"consensus.temporal_encoder.{i}.{key}"] = (
                value + (1.0 if key.startswith("norm") and key.endswith("weight") else 0.0)
            ).astype(np.float32)
    sd["consensus.mlp_head.1.weight"] = (rng.standard_normal((mlp_dim, c)) / np.sqrt(c)).astype(
        np.float32
    )
    sd["consensus.mlp_head.1.bias"] = rng.uniform(-0.2, 0.2, mlp_dim).astype(np.float32)
    sd["consensus.mlp_head.4.weight"] = (
        rng.standard_normal((classes, mlp_dim)) / np.sqrt(mlp_dim)
    ).astype(np.float32)
    sd["consensus.mlp_head.4.bias"] = rng.uniform(-0.2, 0.2, classes).astype(np.float32)
    sd["new_fc.weight"] = (rng.standard_normal((classes, c)) / np.sqrt(c)).astype(np.float32)
    sd["new_fc.bias"] = rng.uniform(-0.2, 0.2, classes).astype(np.float32)
    return sd


OTHER_CONFIGURATIONS = {
    # the released Kinetics form: 16 frames, shift in chunks of 8, temporal embedding of 8
    "k400_16_frames_segments_8": (16, {"XVIT.NUM_SEGMENTS": 8}),
    "ssv2_shift_div_4_head_6x2": (
        4,
        {
            "XVIT.SHIFT_DIV": 4,
            "XVIT.NUM_SEGMENTS": 4,
            "TEMPORAL_HEAD.NUM_ATTENTION_HEADS": 6,
            "TEMPORAL_HEAD.NUM_HIDDEN_LAYERS": 2,
            "TEMPORAL_HEAD.MLP_DIM": 128,
            "MODEL.NUM_CLASSES": 7,
        },
    ),  # fmt: skip
    "shift_in_block_1_avg_consensus": (
        4,
        {"XVIT.LOCATIONS_LIST": [1], "XVIT.NUM_SEGMENTS": 4, "XVIT.CONSENSUS_TYPE": "avg"},
    ),
}


@pytest.mark.parametrize("variant", sorted(OTHER_CONFIGURATIONS))
def test_from_reference_builds_other_reference_configurations(golden_dir, variant):
    """Other frame counts, chunked shifts, shift sizes and placements, head sizes and the `avg`
    consensus (batch 2), against the NumPy port of the reference."""
    arrays, meta, golden = load_golden(golden_dir, "xvit")
    frames, cfg = OTHER_CONFIGURATIONS[variant]
    cfg = dict(meta["constructor"]["cfg"], **cfg, **{"DATA.NUM_FRAMES": frames})
    head_heads = cfg.get("TEMPORAL_HEAD.NUM_ATTENTION_HEADS", 3)
    head_layers = cfg.get("TEMPORAL_HEAD.NUM_HIDDEN_LAYERS", 1)
    classes, mlp_dim = cfg["MODEL.NUM_CLASSES"], cfg["TEMPORAL_HEAD.MLP_DIM"]
    sd = _random_state_dict(golden, head_layers, head_heads, mlp_dim, classes, seed=7)
    if cfg["XVIT.CONSENSUS_TYPE"] != "vit":
        sd = {k: v for k, v in sd.items() if not k.startswith("consensus.")}
    if frames % 8:  # the temporal embedding has vit_num_frames entries
        sd["base_model.temp_embed"] = sd["base_model.temp_embed"][:, :frames]
    constructor = dict(meta["constructor"], cfg=cfg, vit_num_frames=min(frames, 8))
    model = kvid.models.from_reference({"family": "xvit", "constructor": constructor}, sd)
    batch = 2 if frames <= 4 else 1
    clip = np.random.default_rng(3).integers(0, 256, (batch, frames, 224, 224, 3))
    clip = clip.astype(np.float32)
    clip /= np.float32(255.0)
    expected = _numpy_logits(sd, clip.astype(np.float64), cfg)
    logits = model(clip, training=False).numpy()
    assert logits.shape == (batch, classes)
    assert np.abs(logits - expected).max() <= golden_tolerance(expected)


def test_from_reference_rejects_unused_or_missing_weights(golden_dir):
    _, meta, state_dict = load_golden(golden_dir, "xvit")
    with pytest.raises(ValueError, match="not loaded"):
        kvid.models.from_reference(_reference(meta), dict(state_dict, extra=np.zeros(3)))
    del state_dict["base_model.blocks.1.attn.qkv.bias"]
    with pytest.raises(KeyError, match="blocks.1.attn.qkv.bias"):
        kvid.models.from_reference(_reference(meta), state_dict)


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"XVIT.BEFORE_SOFTMAX": False}, "BEFORE_SOFTMAX"),
        ({"XVIT.BACKBONE.NORM_LAYER": "BN"}, "NORM_LAYER"),
        ({"XVIT.NUM_SEGMENTS": 3}, "NUM_SEGMENTS"),
    ],
)
def test_from_reference_rejects_unsupported_options(golden_dir, cfg, match):
    _, meta, state_dict = load_golden(golden_dir, "xvit")
    with pytest.raises(ValueError, match=match):
        kvid.models.from_reference(_reference(meta, **cfg), state_dict)


def test_reference_preset_matches_reference_params_and_macs():
    model = kvid.models.create("xvit_base_16x224", num_classes=None)
    report = kvid.profile.profile(model)
    assert abs(report.params / REFERENCE_PARAMS - 1) < 0.01, report.params
    assert abs(report.macs / REFERENCE_MACS - 1) < 0.02, report.macs
    # exactly a per-frame ViT-B/16 plus the shift's one-hot conv, 6 * T * S * C per layer
    frames, tokens, width, depth = 16, 197, 768, 12
    patches = (tokens - 1) * 3 * 16 * 16 * width
    layer = 12 * tokens * width**2 + 2 * tokens**2 * width
    assert report.macs == frames * (patches + depth * layer) + depth * 6 * frames * tokens * width


@pytest.mark.parametrize("name", MOBILE_PRESETS)
def test_mobile_presets_cost_and_int8_softmax_support(name):
    cfg = kvid.models.get_preset(name)
    report = kvid.profile.profile(kvid.models.create(name, num_classes=None))
    assert 0.5e9 <= report.macs <= 2.0e9, report.macs
    keys = (cfg["image_size"] // cfg["patch_size"]) ** 2 + 1
    assert keys <= 65  # each per-frame softmax stays small (docs/design.md section 7)


def _small(name):
    cfg = kvid.models.get_preset(name)
    return dict(num_frames=4, image_size=2 * cfg["patch_size"])


def test_xvit_tiny_is_one_flat_graph_without_gather_roll_or_conv3d():
    model = kvid.models.create("xvit_tiny", num_classes=10)
    assert model.input_shape == (None, 8, 64, 64, 3) and model.output_shape == (None, 10)
    op_types = {op.type for op in flat_graph_ops(model)}
    assert "DepthwiseConv2dNative" in op_types  # the shift
    assert not op_types & {"GatherV2", "GatherNd", "Roll", "Conv3D"}, op_types


def test_head_variants_and_summary_tokens_build():
    mean = kvid.models.create("xvit_tiny", num_classes=3, num_frames=4, head="mean")
    assert "head_cls" not in [layer.name for layer in mean.layers]
    for dropout_rate in (0.0, 0.5):  # the mean head has its classifier with and without dropout
        head = kvid.models.create(
            "xvit_tiny", num_classes=3, num_frames=4, head="mean", dropout_rate=dropout_rate
        )
        assert head.output_shape == (None, 3)
    summary = kvid.models.create("xvit_tiny", num_classes=3, num_frames=4, summary_tokens=True)
    plain = kvid.models.create("xvit_tiny", num_classes=3, num_frames=4)
    assert kvid.profile.count_params(summary) == kvid.profile.count_params(plain)
    assert kvid.profile.count_macs(summary) > kvid.profile.count_macs(plain)


def test_relu_mlp_builds_no_gelu_and_keeps_the_weights():
    """`mlp_activation="relu"` (xvit_xs, the CPU form) swaps every GELU (blocks, temporal head,
    head fc) for a ReLU and changes nothing else: same weights, each MLP is fc2(relu(fc1(x)))."""
    small = dict(num_classes=3, num_frames=4, image_size=32, depth=2)
    gelu = kvid.models.create("xvit_xs", mlp_activation="gelu", **small)
    relu = kvid.models.create("xvit_xs", **small)
    assert "Erfc" in {op.type for op in flat_graph_ops(gelu)}  # the exact GELU
    relu_ops = {op.type for op in flat_graph_ops(relu)}
    assert not relu_ops & {"Erfc", "Erf", "Gelu"} and "Relu" in relu_ops
    assert [w.shape for w in relu.weights] == [w.shape for w in gelu.weights]
    mlp = relu.get_layer("block1_mlp")
    assert mlp.get_config()["activation"] == "relu"
    x = np.random.default_rng(0).normal(size=(1, 4, 5, 192)).astype(np.float32)
    expected = mlp.fc2(np.maximum(mlp.fc1(x).numpy(), 0.0)).numpy()
    np.testing.assert_allclose(mlp(x).numpy(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="xvit_xs: mlp_activation 'swish' not in"):
        kvid.models.create("xvit_xs", mlp_activation="swish", **small)


def test_create_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"Unknown override\(s\) \['shift'\].*valid fields"):
        kvid.models.create("xvit_tiny", num_classes=3, shift=2)
    with pytest.raises(ValueError, match="image_size 60 is not divisible by patch_size 8"):
        kvid.models.create("xvit_tiny", num_classes=3, image_size=60)
    with pytest.raises(ValueError, match="num_frames 8 is not a multiple of num_segments 3"):
        kvid.models.create("xvit_tiny", num_classes=3, num_segments=3)
    with pytest.raises(ValueError, match="num_frames 8 is not a multiple of temporal_length 3"):
        kvid.models.create("xvit_tiny", num_classes=3, temporal_length=3)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        kvid.models.create("xvit_tiny", num_classes=3, num_heads=3)
    with pytest.raises(ValueError, match="head 'max'"):
        kvid.models.create("xvit_tiny", num_classes=3, head="max")
    assert set(xvit.PRESETS) <= set(kvid.models.list_presets())


# --- QAT and int8


def _int8_softmax_errors(model, clips):
    """Layer-local int8 errors (QuantizationDebugger, PTQ) of the model's SOFTMAX ops."""
    from kvid_tflite.layer_errors import debugger_layer_errors

    shape = model.input_shape[1:]
    spec = tf.TensorSpec([1, *shape], tf.float32, name="video")
    function = tf.function(
        lambda video: {"logits": model(video, training=False)}, input_signature=[spec]
    ).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([clip] for clip in clips)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    layers = debugger_layer_errors(converter, clips[:2])
    return [layer for layer in layers if layer["op"] == "SOFTMAX"]


def test_qat_attention_requantizes_inside_the_layer_and_trains():
    model = kvid.models.create("xvit_tiny", num_classes=4, **_small("xvit_tiny"))
    qat = kvid.quantization.quantize_model(model)
    attention = qat.get_layer("quant_block0_attn").layer
    assert attention.quantized and attention._ranges  # in-layer requantization points
    x = np.random.default_rng(0).random((2, *model.input_shape[1:]), dtype=np.float32)
    qat_train_step(qat, x, np.array([0, 1]), learning_rate=1e-3)
    assert np.all(np.isfinite(qat(x, training=False).numpy()))


def test_xvit_tiny_int8_has_int8_io_and_zero_float_ops():
    from kvid_tflite.audit import audit_model, check_int8
    from kvid_tflite.convert import convert_keras_model

    model = kvid.models.create("xvit_tiny", num_classes=10, num_frames=4, summary_tokens=True)
    rng = np.random.default_rng(1)
    clips = [rng.random((1, *model.input_shape[1:]), dtype=np.float32) for _ in range(4)]
    audit = audit_model(convert_keras_model(model, "int8", lambda: clips))
    check_int8(audit)  # raises naming the first float op or non-int8 I/O
    assert audit["float_ops"] == []
    ops = {op["name"] for op in audit["ops"]}
    assert "DEPTHWISE_CONV_2D" in ops  # the shift
    assert not ops & {"GATHER", "GATHER_ND", "CONV_3D", "TILE"}, ops


@pytest.mark.slow
@pytest.mark.parametrize("name", MOBILE_PRESETS)
def test_mobile_preset_softmax_tracks_float_in_int8(name):
    """Per-layer int8 error of every attention softmax: within budget at the presets' 37-65 keys
    per frame, over it with the reference's 197 keys (16-pixel patches at 224 px)."""

    model = kvid.models.create(name, num_classes=10, num_frames=4)
    errors = _int8_softmax_errors(model, smooth_clips(model.input_shape[1:], 6, seed=1))
    assert errors and max(e["relative_rmse"] for e in errors) <= 0.1, errors
    large = kvid.models.create(name, num_classes=10, num_frames=2, image_size=224, depth=2)
    errors = _int8_softmax_errors(large, smooth_clips(large.input_shape[1:], 6, seed=1))
    assert max(e["relative_rmse"] for e in errors) > 0.1, errors
