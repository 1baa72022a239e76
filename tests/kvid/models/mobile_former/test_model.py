"""Video Mobile-Former: golden parity with the reference code, presets, costs and errors."""

import numpy as np
import pytest

import kvid
from kvid.backend import keras
from kvid.models import mobile_former
from tests.conftest import REPO_ROOT
from tests.helpers import flat_graph_ops, golden_tolerance, load_golden

# reference params / matrix-op MACs (docs/design.md section 6, fvcore on the code)
IMAGE_PRESETS = {
    "mobile_former_508m": (13.98e6, 498.5e6),
    "mobile_former_294m": (11.42e6, 286.7e6),
    "mobile_former_151m": (7.60e6, 146.2e6),
    "mobile_former_52m": (3.47e6, 49.3e6),
    "mobile_former_26m": (3.23e6, 23.6e6),
}
VIDEO_PRESETS = [p for p in mobile_former.PRESETS if p.startswith("vmf_")]


def test_golden_parity_logits_and_intermediates(golden_dir):
    arrays, meta, state_dict = load_golden(golden_dir, "mobile_former")
    reference = {"family": meta["family"], "constructor": meta["constructor"]}
    model = kvid.models.from_reference(reference, state_dict)
    assert kvid.profile.count_params(model) == meta["parameter_count"]
    x = arrays["input_uint8"].astype(np.float32) / np.float32(255.0)
    endpoints = model.kvid_endpoints
    first = meta["first_bridge_block_index"]
    taps = {
        "stem": endpoints["stem"],
        "first_bridge_l2g_tokens": f"block{first}_m2f",
        "first_bridge_block_out": endpoints[f"block{first}"],
        "first_bridge_block_tokens": endpoints[f"block{first}_tokens"],
        "features_out": endpoints["features"],
        "final_tokens": endpoints["tokens"],
    }
    outputs = [model.get_layer(name).output for name in taps.values()] + [model.output]
    results = keras.Model(model.input, outputs)(x, training=False)
    for (feature, _), value in zip(taps.items(), results[:-1], strict=False):
        expected = arrays[f"feat__{feature}"]
        value = value.numpy().reshape(expected.shape)  # (B, 1, H, W, C) -> (B, H, W, C)
        assert np.abs(value - expected).max() <= golden_tolerance(expected), feature
    logits = results[-1].numpy()
    assert np.abs(logits - arrays["logits"]).max() <= golden_tolerance(arrays["logits"])


def test_golden_parity_fails_on_a_porting_mistake(golden_dir):
    """The parity check can fail: swapping the two DyReLU slope halves breaks it."""
    arrays, meta, state_dict = load_golden(golden_dir, "mobile_former")
    key = "features.1.hyper1.hyper.2.weight"
    half = state_dict[key].shape[0] // 2
    state_dict[key] = np.concatenate([state_dict[key][half:], state_dict[key][:half]])
    model = kvid.models.from_reference(
        {"family": meta["family"], "constructor": meta["constructor"]}, state_dict
    )
    x = arrays["input_uint8"].astype(np.float32) / np.float32(255.0)
    assert np.abs(model(x).numpy() - arrays["logits"]).max() > golden_tolerance(arrays["logits"])


def test_from_reference_rejects_unused_or_missing_weights(golden_dir):
    _, meta, state_dict = load_golden(golden_dir, "mobile_former")
    reference = {"family": meta["family"], "constructor": meta["constructor"]}
    with pytest.raises(ValueError, match="not loaded"):
        kvid.models.from_reference(reference, dict(state_dict, extra=np.zeros(3)))
    del state_dict["classifier.fc.0.bias"]
    with pytest.raises(KeyError, match="classifier.fc.0.bias"):
        kvid.models.from_reference(reference, state_dict)


def test_from_reference_rejects_unsupported_options(golden_dir):
    _, meta, state_dict = load_golden(golden_dir, "mobile_former")
    constructor = dict(meta["constructor"], kwargs=dict(meta["constructor"]["kwargs"]))
    constructor["kwargs"]["gbr_type"] = "mlp"
    with pytest.raises(ValueError, match="gbr_type"):
        kvid.models.from_reference({"family": "mobile_former", "constructor": constructor}, {})
    with pytest.raises(ValueError, match="unsupported family"):
        kvid.models.from_reference({"family": "nope", "constructor": constructor}, state_dict)


@pytest.mark.parametrize(
    "name",
    [n if n == "mobile_former_26m" else pytest.param(n, marks=pytest.mark.slow)
     for n in sorted(IMAGE_PRESETS)],
)  # fmt: skip
def test_image_presets_match_reference_params_and_macs(name):
    ref_params, ref_macs = IMAGE_PRESETS[name]
    report = kvid.profile.profile(kvid.models.create(name, num_classes=1000))
    assert abs(report.params / ref_params - 1) < 0.01, report.params
    assert abs(report.macs / ref_macs - 1) < 0.01, report.macs


def test_vmf_tiny_classifier_is_one_flat_graph():
    model = kvid.models.create("vmf_tiny", num_classes=10)
    assert model.input_shape == (None, 8, 64, 64, 3)
    assert model.output_shape == (None, 10)
    op_types = {op.type for op in flat_graph_ops(model)}
    assert "Conv2D" in op_types and not any(t.startswith("Conv3D") for t in op_types)


def test_video_presets_use_the_factorized_bridge_and_span_the_regime():
    for name in VIDEO_PRESETS:
        preset = kvid.models.get_preset(name)
        # the Edge TPU form has no attention bridge (kvid.models.mobile_former.edgetpu)
        assert preset["edgetpu"] or preset["bridge_formulation"] == "factorized", name
    for name in IMAGE_PRESETS:
        assert kvid.models.get_preset(name)["bridge_formulation"] == "full", name


def test_create_errors_name_the_problem():
    with pytest.raises(ValueError, match="image_size 60 is not divisible"):
        kvid.models.create("vmf_tiny", num_classes=3, image_size=60)
    with pytest.raises(ValueError, match="num_frames 3 is not divisible"):
        kvid.models.create("vmf_tiny", num_classes=3, num_frames=3)


VARIANTS = sorted(p.stem for p in (REPO_ROOT / "tests" / "golden").glob("mobile_former_*.json"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_from_reference_builds_other_reference_configurations(variant):
    """Other widths, repeats, groups, token sizes, heads, flags and batch 2, each checked
    against logits of the reference PyTorch code (tests/golden/, made with its constructor)."""
    golden = REPO_ROOT / "tests" / "golden"
    arrays, meta, state_dict = load_golden(golden, variant)
    model = kvid.models.from_reference(
        {"family": meta["family"], "constructor": meta["constructor"]},
        state_dict,
        image_size=arrays["input_uint8"].shape[1],
    )
    x = arrays["input_uint8"].astype(np.float32) / np.float32(255.0)
    logits = model(x, training=False).numpy()
    assert logits.shape == arrays["logits"].shape
    assert np.abs(logits - arrays["logits"]).max() <= golden_tolerance(arrays["logits"])


def test_variant_goldens_are_present():
    assert len(VARIANTS) >= 4, VARIANTS


def test_from_reference_rejects_attention_driven_slopes(golden_dir):
    _, meta, state_dict = load_golden(golden_dir, "mobile_former")
    constructor = dict(meta["constructor"], kwargs=dict(meta["constructor"]["kwargs"]))
    constructor["kwargs"]["hyper_token_id"] = -1
    with pytest.raises(ValueError, match="hyper_token_id"):
        kvid.models.from_reference({"family": "mobile_former", "constructor": constructor}, {})
