"""PosMLP-Video: golden parity with the reference code, presets, costs, forms, Edge TPU shape rules,
QAT and int8 conversion."""

import json

import numpy as np
import pytest

import kvid
from kvid.backend import keras
from kvid.models import posmlp
from kvid.models.posmlp.positional_gating import PositionalGating
from kvid.models.posmlp.presets import BLOCK_TYPES
from tests.helpers import (
    flat_graph_ops,
    golden_tolerance,
    load_golden,
    posmlp_small_overrides,
    smooth_clips,
)

PRESETS = kvid.models.list_presets("posmlp")
EDGETPU_PRESETS = [p for p in PRESETS if p.endswith("_edgetpu")]
# ops the Edge TPU does not run (docs/design.md section 3) or that the edgetpu presets must not
# contain
EDGETPU_FORBIDDEN_TF_OPS = {
    "Transpose", "BatchMatMulV2", "BatchMatMulV3", "Softmax", "Gelu", "Erf", "Rsqrt", "Einsum",
    "Conv3D",
}  # fmt: skip  # (the table lookups' GatherV2 is constant-folded: checked on the .tflite)
EDGETPU_FORBIDDEN_TFLITE_OPS = {
    "TRANSPOSE", "BATCH_MATMUL", "SOFTMAX", "GELU", "HARD_SWISH", "GATHER", "RSQRT", "CONV_3D",
}  # fmt: skip


def _reference(meta, **cfg_changes):
    cfg = json.loads(json.dumps(meta["constructor"]["cfg"]))
    for key, value in cfg_changes.items():
        section, _, field = key.rpartition(".")
        (cfg[section] if section else cfg)[field] = value
    return {"family": "posmlp", "constructor": {"cfg": cfg}}


# ------------------------------------------------------------------------------------------------
# Golden parity
# ------------------------------------------------------------------------------------------------
def test_golden_parity_logits_and_intermediates(golden_dir):
    arrays, meta, state_dict = load_golden(golden_dir, "posmlp")
    model = kvid.models.from_reference(_reference(meta), state_dict)
    assert kvid.profile.count_params(model) == meta["parameter_count"]
    endpoints = model.kvid_endpoints
    taps = {
        "stem": endpoints["stem"],
        "stage1_block0_spatial_branch": "stage0_block0_spatial",
        "stage1_block0_temporal_branch": "stage0_block0_temporal",
        "stage1_out": endpoints["stage0"],
        "stage3_out": endpoints["stage2"],
        "final_norm": endpoints["final_norm"],
    }
    outputs = [model.get_layer(name).output for name in taps.values()] + [model.output]
    x = arrays["input_uint8"].astype(np.float32) / np.float32(255.0)
    results = keras.Model(model.input, outputs)(x, training=False)
    for feature, value in zip(taps, results[:-1], strict=False):
        expected = arrays[f"feat__{feature}"]
        value = value.numpy().reshape(expected.shape)  # frame-stacked -> (B, T, H, W, C)
        assert np.abs(value - expected).max() <= golden_tolerance(expected), feature
    assert np.abs(results[-1].numpy() - arrays["logits"]).max() <= golden_tolerance(
        arrays["logits"]
    )


def test_golden_parity_fails_on_a_porting_mistake(golden_dir):
    """The parity check can fail: swapping U and V (fc1's halves) in one spatial unit breaks it."""
    arrays, meta, state_dict = load_golden(golden_dir, "posmlp")
    for suffix in ("weight", "bias"):
        key = f"blocks1.0.fc.encoder.fc1.{suffix}"
        half = state_dict[key].shape[0] // 2
        state_dict[key] = np.concatenate([state_dict[key][half:], state_dict[key][:half]])
    model = kvid.models.from_reference(_reference(meta), state_dict)
    x = arrays["input_uint8"].astype(np.float32) / np.float32(255.0)
    assert np.abs(model(x).numpy() - arrays["logits"]).max() > 100 * golden_tolerance(
        arrays["logits"]
    )


def test_from_reference_rejects_unused_missing_or_wrong_weights(golden_dir):
    _, meta, state_dict = load_golden(golden_dir, "posmlp")
    reference = _reference(meta)
    with pytest.raises(ValueError, match="not loaded"):
        kvid.models.from_reference(reference, dict(state_dict, extra=np.zeros(3)))
    index = "blocks2.0.fc.encoder.gate_unit.pos.window_relative_position_index"
    wrong = dict(state_dict, **{index: state_dict[index].T.copy()})
    with pytest.raises(ValueError, match="differs from kvid's index"):
        kvid.models.from_reference(reference, wrong)
    del state_dict["head.bias"]
    with pytest.raises(KeyError, match="head.bias"):
        kvid.models.from_reference(reference, state_dict)


def test_from_reference_rejects_unsupported_options(golden_dir):
    _, meta, state_dict = load_golden(golden_dir, "posmlp")
    with pytest.raises(ValueError, match="SHIFT"):
        kvid.models.from_reference(_reference(meta, **{"POSMLP_VIDEO.SHIFT": True}), state_dict)
    with pytest.raises(ValueError, match="WIN_SIZE_T"):
        kvid.models.from_reference(_reference(meta, WIN_SIZE_T=[16, 8, 8, 8]), state_dict)
    with pytest.raises(ValueError, match="unsupported family"):
        kvid.models.from_reference({"family": "nope", "constructor": {}}, state_dict)


def reference_state_dict(cfg: dict, seed: int = 0) -> dict:
    """Random weights under the reference's `state_dict` names and shapes for a cfg
    (`PosMLP_Video.__init__` read independently of kvid)."""
    rng = np.random.default_rng(seed)
    video = cfg["POSMLP_VIDEO"]
    dims, layers, frames = video["EMBED_DIMS"], video["LAYERS"], cfg["WIN_SIZE_T"][0]
    shapes = {}

    def bn(prefix, c):
        for n in ("weight", "bias", "running_mean"):
            shapes[f"{prefix}.{n}"] = (c,)
        shapes[f"{prefix}.running_var"] = (c,)

    shapes["patch_embed1.proj1.weight"] = (dims[0] // 2, 3, 1, 3, 3)
    shapes["patch_embed1.proj1.bias"] = (dims[0] // 2,)
    bn("patch_embed1.norm1", dims[0] // 2)
    shapes["patch_embed1.proj2.weight"] = (dims[0], dims[0] // 2, 1, 3, 3)
    shapes["patch_embed1.proj2.bias"] = (dims[0],)
    bn("patch_embed1.norm2", dims[0])
    for stage in range(4):
        c, gamma, w = dims[stage], cfg["POSGAMMA"][stage], cfg["WIN_SIZE"][stage]
        if stage > 0 and (video["TRANSITIONS"][stage - 1] or dims[stage - 1] != c):
            p = f"patch_embed{stage + 1}"
            shapes[f"{p}.proj.weight"] = (c, dims[stage - 1], 1, 3, 3)
            for n in ("proj.bias", "norm.weight", "norm.bias"):
                shapes[f"{p}.{n}"] = (c,)
        for j in range(layers[stage]):
            for branch, n, rows in (
                ("fc", w * w, (2 * w - 1) ** 2),
                ("t_fc", frames, 2 * frames - 1),
            ):
                e = f"blocks{stage + 1}.{j}.{branch}.encoder"
                shapes.update({f"{e}.norm.weight": (c,), f"{e}.norm.bias": (c,)})
                shapes.update({f"{e}.fc1.weight": (2 * c, c), f"{e}.fc1.bias": (2 * c,)})
                shapes.update({f"{e}.fc2.weight": (c, c), f"{e}.fc2.bias": (c,)})
                shapes[f"{e}.gate_unit.pos.token_proj_n_bias"] = (1, n, 1)
                shapes[f"{e}.gate_unit.pos.window_relative_position_bias_table"] = (rows, gamma)
    shapes.update({"norm.weight": (dims[3],), "norm.bias": (dims[3],)})
    shapes.update({"head.weight": (cfg["MODEL"]["NUM_CLASSES"], dims[3])})
    shapes["head.bias"] = (cfg["MODEL"]["NUM_CLASSES"],)
    state = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    for key in state:
        if key.endswith("running_var"):
            state[key] = np.abs(state[key]) + 0.5
    return state


def test_from_reference_builds_other_reference_configurations(golden_dir):
    """Other frame counts, widths, depths, windows and transitions (no downsampling where the
    reference's TRANSITIONS is False and the widths agree), at batch 2."""
    _, meta, _ = load_golden(golden_dir, "posmlp")
    reference = _reference(
        meta,
        WIN_SIZE=[8, 8, 4, 4],
        WIN_SIZE_T=[8, 8, 8, 8],
        POSGAMMA=[4, 4, 8, 8],
        **{
            "POSMLP_VIDEO.EMBED_DIMS": [16, 16, 32, 32],
            "POSMLP_VIDEO.LAYERS": [2, 1, 1, 1],
            "POSMLP_VIDEO.TRANSITIONS": [False, True, False, True],
            "MODEL.NUM_CLASSES": 7,
            "DATA.TRAIN_CROP_SIZE": 64,
        },
    )
    state_dict = reference_state_dict(reference["constructor"]["cfg"])
    model = kvid.models.from_reference(reference, state_dict)
    assert model.input_shape == (None, 8, 64, 64, 3)
    assert kvid.profile.count_params(model) == sum(
        v.size for k, v in state_dict.items() if "running" not in k
    )
    assert "downsample1" not in [layer.name for layer in model.layers]
    x = np.random.default_rng(0).random((2, 8, 64, 64, 3), dtype=np.float32)
    logits = model(x, training=False).numpy()
    assert logits.shape == (2, 7) and np.all(np.isfinite(logits))
    np.testing.assert_allclose(model(x[1:]).numpy(), logits[1:], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Presets, forms, costs
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_s16_matches_reference_params_and_macs():
    """13.51M params, 40.17 GMACs per 16x224x224 view (docs/design.md section 6), 174 SSv1
    classes."""
    model = kvid.models.create("posmlp_video_s16", num_classes=174)
    report = kvid.profile.profile(model)
    assert abs(report.params / 13.51e6 - 1) < 0.01, report.params
    assert abs(report.macs / 40.17e9 - 1) < 0.02, report.macs
    deploy = kvid.profile.count_macs(posmlp.convert_form(model, "depthwise"))
    assert 1.2 * report.macs < deploy < 1.6 * report.macs, deploy  # (2w-1)^2 taps vs w^2 tokens


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
def test_block_types_give_equal_training_and_deploy_forms(block_type):
    model = kvid.models.create(
        "posmlp_video_tiny", num_classes=4, num_frames=4, block_type=block_type,
        temporal_windows=(2, 2, 2, 2) if block_type == "joint" else (None,) * 4,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for layer in model.layers:  # tables start near 0: give them weight
        if isinstance(layer, PositionalGating):
            layer.table.assign(rng.standard_normal(layer.table.shape) * 0.2)
            layer.token_bias.assign(rng.standard_normal(layer.token_bias.shape))
    x = rng.random((1, 4, 64, 64, 3), dtype=np.float32)
    expected = model(x).numpy()
    layouts = ("folded",) if block_type == "joint" else ("folded", "sliced")
    for layout in layouts:
        deploy = posmlp.convert_form(model, "depthwise", layout)
        np.testing.assert_allclose(deploy(x).numpy(), expected, atol=1e-4 * np.abs(expected).max())
    back = posmlp.convert_form(deploy, "matmul")
    np.testing.assert_allclose(back(x).numpy(), expected, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("name", EDGETPU_PRESETS)
def test_edgetpu_presets_obey_the_op_and_rank_rules(name):
    """At batch 1 every tensor after the input reshape has at most 3 dimensions above 1, and no
    op the Edge TPU lacks (transpose, batch matmul, softmax, GELU, LayerNorm's rsqrt) appears."""
    model = kvid.models.create(name, num_classes=5, **posmlp_small_overrides(name, frames=4))
    ops = flat_graph_ops(model)
    types = {op.type for op in ops}
    assert not types & EDGETPU_FORBIDDEN_TF_OPS, types & EDGETPU_FORBIDDEN_TF_OPS
    assert "DepthwiseConv2dNative" in types
    for op in ops:
        if op.type in ("Const", "Shape", "Placeholder", "ReadVariableOp", "Identity", "NoOp"):
            continue
        if any(t.name.startswith("video") for t in op.inputs):  # the (1, T, H, W, 3) input
            continue
        for tensor in op.outputs:
            if tensor.shape.rank is None or tensor.shape.rank <= 3:
                continue
            dims = [d for d in tensor.shape.as_list() if d != 1]
            assert len(dims) <= 3, (op.name, op.type, tensor.shape)


def test_create_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"window_sizes\[0\]=5 does not tile the 16x16 map"):
        kvid.models.create("posmlp_video_tiny", num_classes=3, window_sizes=(5, 8, 4, 2))
    with pytest.raises(ValueError, match=r"temporal_windows\[1\]=3 does not tile num_frames=8"):
        kvid.models.create(
            "posmlp_video_tiny", num_classes=3, temporal_windows=(None, 3, None, None)
        )
    with pytest.raises(ValueError, match=r"embed_dims\[2\]=90 is not divisible by gammas\[2\]"):
        kvid.models.create("posmlp_video_tiny", num_classes=3, embed_dims=(24, 48, 90, 192))
    with pytest.raises(ValueError, match="image_size 72 is not divisible"):
        kvid.models.create("posmlp_video_tiny", num_classes=3, image_size=72)
    with pytest.raises(ValueError, match=r"Unknown override\(s\) \['widths'\]"):
        kvid.models.create("posmlp_video_tiny", num_classes=3, widths=2)


# ------------------------------------------------------------------------------------------------
# QAT and int8
# ------------------------------------------------------------------------------------------------
def _tier(names, default):
    return [n if n in default else pytest.param(n, marks=pytest.mark.slow) for n in names]


# posmlp_video_tiny_edgetpu is trained, converted and checked in the default tier by the README
# test (frame-stacked layout, kvid-edgetpu-check).
@pytest.mark.parametrize("name", _tier(PRESETS, ()))
def test_int8_tflite_has_zero_float_ops(name):
    from kvid_tflite.audit import audit_model, int8_problems
    from kvid_tflite.convert import convert_keras_model

    overrides = posmlp_small_overrides(name, frames=4, size=32)
    model = kvid.models.create(name, num_classes=4, **overrides)
    clips = smooth_clips(model.input_shape[1:], 2)
    qat = kvid.quantization.calibrate(kvid.quantization.quantize_model(model), clips)
    audit = audit_model(convert_keras_model(qat, "int8", lambda: clips))
    assert int8_problems(audit) == []
    names = {key.split(":")[0] for key in audit["counts"]}
    assert "GATHER" not in names  # the relative-position lookups are folded away
    if name.endswith("_edgetpu"):
        assert not names & EDGETPU_FORBIDDEN_TFLITE_OPS, names & EDGETPU_FORBIDDEN_TFLITE_OPS
