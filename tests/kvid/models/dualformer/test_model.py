"""DualFormer: golden parity with the reference code, presets, costs, QAT and int8."""

import numpy as np
import pytest

import kvid
from kvid.backend import keras
from kvid.models import dualformer
from kvid.models.dualformer.model import num_keys
from tests.conftest import REPO_ROOT
from tests.helpers import (
    convert_int8,
    cosine,
    flat_graph_ops,
    golden_tolerance,
    int8_vs_keras_cosines,
    load_golden,
    qat_train_step,
    smooth_clips,
)

# backbone params / matrix-op MACs per 32x224x224 view (docs/design.md section 6)
REFERENCE_PRESETS = {
    "dualformer_tiny": (21.77e6, 59.86e9),
    "dualformer_small": (48.91e6, 158.26e9),
    "dualformer_base": (86.84e6, 267.39e9),
}
MOBILE_PRESETS = ("dualformer_mobile_s", "dualformer_mobile_m")
# Reduced inputs: each preset plus the windows/pyramids that tile its maps (32x64x64 and 8x64x64).
GOLDEN_TAPS = ("patch_embed0", "stage0_block0_after_peg", "stage0_out", "stage2_out",
               "backbone_out")  # fmt: skip


def _reference(meta):
    return {"family": meta["family"], "constructor": meta["constructor"]}


@pytest.fixture(scope="module")
def golden():
    """The golden configuration built once from its reference configuration and weights."""
    from tests.conftest import require_golden_dir

    arrays, meta, state_dict = load_golden(require_golden_dir(), "dualformer")
    model = kvid.models.from_reference(_reference(meta), state_dict)
    return arrays, meta, state_dict, model


def test_golden_parity_logits_and_intermediates(golden):
    arrays, meta, _, model = golden
    assert kvid.profile.count_params(model) == meta["parameter_count"]
    x = arrays["input_uint8"].astype(np.float32) / np.float32(255.0)
    taps = [model.get_layer(model.kvid_endpoints[name]).output for name in GOLDEN_TAPS]
    results = keras.Model(model.input, taps + [model.output])(x, training=False)
    for name, value in zip(GOLDEN_TAPS, results[:-1], strict=False):
        expected = arrays[f"feat__{name}"]
        assert np.abs(value.numpy() - expected).max() <= golden_tolerance(expected), name
    assert np.abs(results[-1].numpy() - arrays["logits"]).max() <= golden_tolerance(
        arrays["logits"]
    )


def test_golden_parity_fails_on_a_porting_mistake(golden):
    """A PEG whose time taps are reversed (a subtle porting mistake) breaks parity."""
    arrays, _, _, model = golden
    x = arrays["input_uint8"].astype(np.float32) / np.float32(255.0)
    stage0 = keras.Model(model.input, model.get_layer("stage0_peg").output)
    peg = model.get_layer("stage0_peg").spatial
    kernel = peg.get_weights()[0]
    expected = arrays["feat__stage0_block0_after_peg"]
    try:
        peg.set_weights([kernel[..., ::-1]])
        assert np.abs(stage0(x, training=False).numpy() - expected).max() > 10 * golden_tolerance(
            expected
        )
    finally:
        peg.set_weights([kernel])


def test_from_reference_rejects_unused_missing_or_unsupported(golden):
    from kvid.models.dualformer import reference as dualformer_reference
    from kvid.models.porting import StateDict

    _, meta, state_dict, model = golden
    cfg = dict(dualformer.DEFAULTS, **dualformer_reference.reference_config(
        meta["constructor"]["backbone_kwargs"], None, None, (0, 0, 0), (1, 1, 1)))  # fmt: skip
    weights = model.get_weights()
    with pytest.raises(ValueError, match="not loaded.*extra"):
        dualformer_reference.load_weights(model, cfg, StateDict(dict(state_dict, extra=[0.0])))
    missing = {k: v for k, v in state_dict.items() if k != "backbone.pos_block.3.proj.0.bias"}
    with pytest.raises(KeyError, match="pos_block.3.proj.0.bias"):
        dualformer_reference.load_weights(model, cfg, StateDict(missing))
    model.set_weights(weights)
    constructor = dict(meta["constructor"])
    constructor["backbone_kwargs"] = dict(constructor["backbone_kwargs"], in_chans=2)
    with pytest.raises(ValueError, match="in_chans"):
        kvid.models.from_reference({"family": "dualformer", "constructor": constructor}, {})
    constructor["backbone_kwargs"] = dict(meta["constructor"]["backbone_kwargs"],
                                          local_sizes=[[8, 7, 7]] * 3 + [[8, 4, 4]])  # fmt: skip
    with pytest.raises(ValueError, match="stage 3 window_sizes"):
        kvid.models.from_reference({"family": "dualformer", "constructor": constructor}, {})


VARIANTS = sorted(p.stem for p in (REPO_ROOT / "tests" / "golden").glob("dualformer_*.json"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_from_reference_builds_other_reference_configurations(variant):
    """Other widths, depths, stage counts, frame counts, pyramids and batch 2, each checked
    against the reference PyTorch code's logits (tests/golden/, made with its constructor)."""
    arrays, meta, state_dict = load_golden(REPO_ROOT / "tests" / "golden", variant)
    model = kvid.models.from_reference(_reference(meta), state_dict)
    x = arrays["input_uint8"].astype(np.float32) / np.float32(255.0)
    logits = model(x, training=False).numpy()
    assert np.abs(logits - arrays["logits"]).max() <= golden_tolerance(arrays["logits"])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFERENCE_PRESETS))
def test_reference_presets_match_reference_params_and_macs(name):
    ref_params, ref_macs = REFERENCE_PRESETS[name]
    report = kvid.profile.profile(kvid.models.create(name, num_classes=None))
    assert abs(report.params / ref_params - 1) < 0.01, report.params
    assert abs(report.macs / ref_macs - 1) < 0.02, report.macs


def test_reference_softmax_spans_and_mobile_presets_stay_small():
    keys = num_keys(kvid.models.get_preset("dualformer_tiny"))
    assert [stage[:2] for stage in keys] == [[392, 456], [392, 456], [392, 392], [392, 784]]
    for name in (*MOBILE_PRESETS, "dualformer_cpu"):
        assert max(max(stage) for stage in num_keys(kvid.models.get_preset(name))) <= 64


@pytest.mark.slow
@pytest.mark.parametrize("name", MOBILE_PRESETS)
def test_mobile_presets_are_in_the_mobile_regime(name):
    cfg = kvid.models.get_preset(name)
    assert 8 <= cfg["num_frames"] <= 16
    macs = kvid.profile.count_macs(kvid.models.create(name, num_classes=None))
    assert 0.5e9 <= macs <= 2e9, macs


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_cpu_form_choices_build_the_ops_they_name(norm):
    """Mobile presets: no input normalization op, ReLU MLPs, the factorized PEG; `norm="batch"`
    replaces every LayerNorm (blocks, embeddings, final, pooled keys) by batch norm."""
    from kvid.layers import LayerNorm

    small = dict(num_frames=4, image_size=64, depths=(2, 1, 1, 1), window_sizes=((2, 2, 2),) * 4,
                 fine_pyramid_sizes=((2, 2, 2),) * 4,
                 coarse_pyramid_sizes=((1, 2, 2), None, None, None))  # fmt: skip
    model = kvid.models.create("dualformer_mobile_s", num_classes=5, norm=norm, **small)
    gelu_ops = {"Gelu", "Erf", "Erfc"}  # the exact GELU traces as Erfc
    assert not {op.type for op in flat_graph_ops(model)} & gelu_ops
    if norm == "layer":  # the check above sees a GELU MLP
        gelu = kvid.models.create(
            "dualformer_mobile_s", num_classes=5, mlp_activation="gelu", **small
        )
        assert {op.type for op in flat_graph_ops(gelu)} & gelu_ops
    normalize = model.get_layer("normalize")
    clip = np.random.default_rng(0).random((1, 2, 4, 4, 3), dtype=np.float32)
    assert normalize.is_identity
    np.testing.assert_array_equal(normalize(clip), clip)
    assert model.get_layer("stage0_peg").form == "factorized"
    norms = [m for m in model.submodules if isinstance(m, LayerNorm)]
    batch_norms = [m for m in model.submodules if isinstance(m, keras.layers.BatchNormalization)]
    if norm == "layer":
        assert len(norms) == 2 * 5 + 4 + 1 + 1  # 5 layers, 4 embeddings, final, pooled keys
    else:
        assert not norms and len(batch_norms) >= 2 * 5 + 4 + 1 + 1
    with pytest.raises(ValueError, match="dualformer_mobile_s: norm must be 'layer' or 'batch'"):
        kvid.models.create("dualformer_mobile_s", num_classes=5, norm="group", **small)
    with pytest.raises(ValueError, match="mlp_activation must be 'gelu' or 'relu'"):
        kvid.models.create("dualformer_mobile_s", num_classes=5, mlp_activation="swish", **small)


def test_cpu_preset_keeps_transposes_and_batch_matmuls_within_the_converter_ranks():
    model = kvid.models.create("dualformer_cpu", num_classes=14)
    assert model.input_shape == (None, 8, 64, 64, 3) and model.output_shape == (None, 14)
    ops = flat_graph_ops(model)
    assert not [op.type for op in ops if op.type.startswith("Conv3D")]
    assert max(op.inputs[0].shape.rank for op in ops if op.type == "Transpose") <= 6
    assert max(op.inputs[0].shape.rank for op in ops if op.type.startswith("BatchMatMul")) <= 4


def test_window_position_bias_adds_one_table_per_local_window_layer():
    plain = kvid.models.create("dualformer_cpu", num_classes=14)
    biased = kvid.models.create("dualformer_cpu", num_classes=14, window_position_bias=True)
    config = dualformer.resolve_config("dualformer_cpu", {})
    tables = 0
    for stage, depth in enumerate(config["depths"]):
        t, h, w = config["window_sizes"][stage]
        lw_layers = (depth + 1) // 2  # LW-MSA at even indices
        tables += lw_layers * (2 * t - 1) * (2 * h - 1) * (2 * w - 1) * config["num_heads"][stage]
    assert biased.count_params() - plain.count_params() == tables
    assert biased.get_layer("stage0_layer0_attn").relative_position_bias
    assert not plain.get_layer("stage0_layer0_attn").relative_position_bias


@pytest.mark.parametrize("shift_div", [0, 4])
def test_stem_shift_widens_the_first_tubelets_temporal_reach(shift_div):
    # dualformer_cpu's first tubelet spans frames 0-1. Each stem shift pulls channels from the
    # next frame, so with two shifted stem layers token 0 also reads frames 2 and 3, never 4.
    model = kvid.models.create("dualformer_cpu", num_classes=14, stem_shift_div=shift_div)
    embed = keras.Model(model.input, model.get_layer(model.kvid_endpoints["patch_embed0"]).output)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (1, 8, 64, 64, 3)).astype("float32")
    base = embed(x).numpy()[:, 0]
    changed = []
    for frame in range(8):
        y = x.copy()
        y[:, frame] = rng.uniform(0, 1, (64, 64, 3))
        changed.append(not np.allclose(embed(y).numpy()[:, 0], base, atol=1e-6))
    reach = 4 if shift_div else 2
    assert changed == [True] * reach + [False] * (8 - reach)
    shifts = [layer.name for layer in model.layers if isinstance(layer, kvid.layers.TemporalShift)]
    assert shifts == (["conv_stem0_shift", "conv_stem1_shift"] if shift_div else [])


@pytest.mark.parametrize("kernel, shift_div", [(0, 0), (3, 0), (0, 4), (3, 4)])
def test_mlp_conv_and_shift_reach_exactly_their_neighbours(kernel, shift_div):
    # The MLP half of a layer is per token. Its depthwise conv reaches the k x k neighbours in
    # the same frame (padding "same"); the temporal shift before fc1 reaches the same position
    # one frame earlier and later.
    model = kvid.models.create(
        "dualformer_cpu", num_classes=14, mlp_dwconv=kernel, mlp_shift_div=shift_div
    )
    mlp = keras.Model(
        model.get_layer("stage0_layer0_add1").output, model.get_layer("stage0_layer0_add2").output
    )
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (1, 4, 16, 16, 16)).astype("float32")
    y = x.copy()
    y[0, 1, 5, 9] += rng.normal(0, 1, 16)
    moved = np.abs(mlp(y).numpy() - mlp(x).numpy()).max(axis=-1)[0] > 1e-6
    expected = np.zeros((4, 16, 16), bool)
    half, frames = kernel // 2, slice(0, 3) if shift_div else slice(1, 2)
    expected[frames, 5 - half : 6 + half, 9 - half : 10 + half] = True
    np.testing.assert_array_equal(moved, expected)
    names = [layer.name for layer in model.layers]
    assert sum(n.endswith("_dwconv") for n in names) == (8 if kernel else 0)
    assert sum(n.endswith("_mlp_shift") for n in names) == (8 if shift_div else 0)


def test_config_errors_name_the_stage_and_field():
    with pytest.raises(ValueError, match=r"Unknown override\(s\) \['windows'\].*valid fields"):
        kvid.models.create("dualformer_cpu", num_classes=3, windows=2)
    with pytest.raises(
        ValueError, match="stage 0 window_sizes: window \\(8, 7, 7\\) does not tile"
    ):
        kvid.models.create("dualformer_tiny", num_classes=3, image_size=64)
    with pytest.raises(ValueError, match="stage 0 fine_pyramid_sizes.*do not tile"):
        kvid.models.create("dualformer_cpu", num_classes=3,
                           fine_pyramid_sizes=((2, 3, 3), (2, 4, 4), (2, 4, 4), (4, 2, 2)))  # fmt: skip
    with pytest.raises(ValueError, match="window_sizes needs 4 entries"):
        kvid.models.create("dualformer_cpu", num_classes=3, window_sizes=((2, 4, 4),))
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        kvid.models.create("dualformer_cpu", num_classes=3, num_frames=7)
    with pytest.raises(
        ValueError, match="mlp_shift_div='4,mlp_dwconv=3'.*expected int.*got a string. Give one"
    ):
        kvid.models.create("dualformer_cpu", num_classes=3, mlp_shift_div="4,mlp_dwconv=3")
    with pytest.raises(ValueError, match="dualformer_cpu: mlp_dwconv must be 0 .* odd"):
        kvid.models.create("dualformer_cpu", num_classes=3, mlp_dwconv=2)


# Every option outside the reference at once: their layers must quantize and convert too.
ALL_OPTIONS = dict(
    stem_shift_div=4,
    window_position_bias=True,
    position_embedding=True,
    mlp_dwconv=3,
    mlp_shift_div=4,
)


def _cpu_preset_qat(overrides):
    """The QAT entry point on the CPU preset: (QAT model, calibration clips), checked."""
    model = kvid.models.create("dualformer_cpu", num_classes=14, **overrides)
    qat = kvid.quantization.quantize_model(model)
    assert qat.input_shape == model.input_shape and qat.output_shape == model.output_shape
    wrapped = qat.get_layer("quant_stage0_layer1_attn").layer
    assert wrapped.quantized and {"scores", "fine", "coarse"} <= set(wrapped._ranges)
    assert qat.get_layer("quant_stage0_peg").layer._ranges  # in-layer requantization points
    calibration = smooth_clips(model.input_shape[1:], 8, seed=1)
    kvid.quantization.calibrate(qat, calibration)
    x = calibration[0]
    # fake quantization only rounds: the QAT model still computes the float model's function
    assert cosine(qat(x, training=False).numpy(), model(x, training=False).numpy()) > 0.98
    qat_train_step(qat, np.concatenate(calibration[:2]), np.array([0, 1]))
    return qat, calibration


def test_cpu_preset_quantization_aware_model_requantizes_inside_layers_and_trains():
    _cpu_preset_qat({})


# The conversion takes about a minute on 2 cores: slow tier.
@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{}, ALL_OPTIONS], ids=["preset", "all_options"])
def test_cpu_preset_qat_and_int8_has_int8_io_zero_float_ops_and_tracks_float(overrides):
    """The QAT entry point on the CPU preset, then its int8 conversion (the main job's path)."""
    from kvid_tflite.audit import audit_model, check_int8

    qat, calibration = _cpu_preset_qat(overrides)
    tflite_bytes = convert_int8(qat, calibration)
    audit = audit_model(tflite_bytes)
    check_int8(audit)
    assert audit["float_ops"] == []
    cosines = int8_vs_keras_cosines(tflite_bytes, qat, smooth_clips(qat.input_shape[1:], 4, 2))
    assert np.mean(cosines) >= 0.99, cosines
