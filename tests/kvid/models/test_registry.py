"""Every registered preset: built small, run, round-tripped through its JSON config, its
overrides checked, and quantization-aware. Family claims (goldens, costs, forms) live in the
family folders beside this file."""

import numpy as np
import pytest

import kvid
from kvid.backend import keras
from kvid.models.registry import Family, Registry
from tests.helpers import flat_graph_ops, small_overrides

PRESETS = kvid.models.list_presets()
# The smallest preset of each family: its QAT build runs in the default tier, the others' in the
# slow tier.
SMALLEST = {
    "mobile_former": "vmf_tiny",
    "dualformer": "dualformer_cpu",
    "xvit": "xvit_tiny",
    "posmlp": "posmlp_video_tiny",
}


def _tiered(names, default):
    return [n if n in default else pytest.param(n, marks=pytest.mark.slow) for n in names]


def _distinct_at_small_input(names):
    """The presets whose configuration differs at the small input (vmf_xs and vmf_s differ only in
    input size, so they build the same model there): the others go to the slow tier. Of the image
    Mobile-Former presets, which share one code path, the smallest and the largest stay."""
    seen, default = set(), []
    for name in names:
        config = dict(kvid.models.get_preset(name), **small_overrides(name))
        key = repr(sorted(config.items()))
        image_middle = name.startswith("mobile_former_") and name not in (
            "mobile_former_26m",
            "mobile_former_508m",
        )
        if key not in seen and not image_middle:
            default.append(name)
        seen.add(key)
    return _tiered(names, default)


def _clip(model, batch=2, seed=0):
    return np.random.default_rng(seed).random((batch, *model.input_shape[1:]), dtype=np.float32)


def test_every_family_is_registered_with_presets():
    assert kvid.models.list_families() == sorted(SMALLEST)
    for family, smallest in SMALLEST.items():
        presets = kvid.models.list_presets(family)
        assert smallest in presets and all(kvid.models.family_of(p) == family for p in presets)
    assert len(PRESETS) == len(set(PRESETS)) >= 25
    with pytest.raises(ValueError, match="Unknown model family 'vit'.*xvit"):
        kvid.models.list_presets("vit")


def test_registry_refuses_a_preset_name_twice():
    registry = Registry()
    family = kvid.models.REGISTRY.family("xvit")
    registry.register(family)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(family)
    clone = Family("xvit_copy", family.presets, family.resolve_config, family.build, None)
    with pytest.raises(ValueError, match="xvit_tiny"):
        registry.register(clone)


@pytest.mark.parametrize("name", _distinct_at_small_input(PRESETS))
def test_preset_builds_and_runs_at_a_small_input_as_one_graph_without_conv3d(name):
    model = kvid.models.create(name, num_classes=5, **small_overrides(name))
    op_types = {op.type for op in flat_graph_ops(model)}  # one flat graph, no Lambda layers
    assert not any(t.startswith("Conv3D") for t in op_types), name
    logits = model(_clip(model), training=False).numpy()
    assert logits.shape == (2, 5) and np.all(np.isfinite(logits))


# Each build costs seconds (graph construction), so the JSON round trip and the backbone run for
# the smallest preset of each family in the default tier, for every preset in the slow tier.
@pytest.mark.parametrize("name", _tiered(PRESETS, SMALLEST.values()))
def test_preset_roundtrips_through_json_and_builds_a_backbone(name):
    overrides = small_overrides(name)
    model = kvid.models.create(name, num_classes=5, **overrides)
    x = _clip(model)
    logits = model(x, training=False).numpy()
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(x, training=False).numpy(), logits, rtol=1e-5, atol=1e-5)
    backbone = kvid.models.create(name, num_classes=None, **overrides)
    assert len(backbone.output_shape) == 2 and backbone.output_shape[0] is None


@pytest.mark.parametrize("name", PRESETS)
def test_bad_overrides_are_clear_errors(name):
    with pytest.raises(ValueError, match=rf"Unknown override\(s\) \['widht'\] for preset '{name}'"):
        kvid.models.create(name, num_classes=3, widht=2)
    with pytest.raises(ValueError, match="num_frames='8,image_size=64'.*expected int"):
        kvid.models.create(name, num_classes=3, num_frames="8,image_size=64")
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        kvid.models.create(name, num_classes=0)


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown preset 'vmf_huge'.*vmf_tiny"):
        kvid.models.create("vmf_huge", num_classes=3)


@pytest.mark.parametrize("name", _tiered(PRESETS, SMALLEST.values()))
def test_preset_builds_for_quantization_aware_training(name):
    model = kvid.models.create(name, num_classes=4, **small_overrides(name))
    qat = kvid.quantization.quantize_model(model)
    assert qat.input_shape == model.input_shape and qat.output_shape == model.output_shape
    wrapped = [layer for layer in qat.layers if layer.name.startswith("quant_")]
    assert len(wrapped) >= len(model.layers) // 2, (len(wrapped), len(model.layers))
    assert np.all(np.isfinite(qat(_clip(model), training=False).numpy()))


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_preset_runs_at_its_own_input(name):
    model = kvid.models.create(name, num_classes=5)
    logits = model(_clip(model, batch=1), training=False).numpy()
    assert logits.shape == (1, 5) and np.all(np.isfinite(logits))
