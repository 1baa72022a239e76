"""An image Mobile-Former checkpoint inflated to video: identical frames give the image logits."""

import numpy as np
import pytest

import kvid
from kvid.models.mobile_former.inflate import (
    build_inflated,
    inflate_from_reference,
    inflated_config,
)
from tests.conftest import REPO_ROOT
from tests.helpers import golden_tolerance, load_golden

FRAMES, SIZE = 4, 64


def _reference(meta):
    return {"family": meta["family"], "constructor": meta["constructor"]}


def _temporal_layers(model):
    return [
        layer
        for layer in model.layers
        if getattr(layer, "temporal", None) is not None and hasattr(layer, "spatial")
    ]


def _max_diff(a, b):
    return float(np.abs(a - b).max())


def _repeat(frames):
    """A clip of FRAMES copies of each image: (batch, H, W, 3) -> (batch, FRAMES, H, W, 3)."""
    return np.repeat(frames[:, None], FRAMES, axis=1)


def test_identical_frames_give_the_reference_image_logits(golden_dir):
    """The golden configuration (the released mobile_former_26m factory) and its weights: the
    reference PyTorch logits of its image, from a clip of that image repeated."""
    arrays, meta, state_dict = load_golden(golden_dir, "mobile_former")
    reference = _reference(meta)
    size = arrays["input_uint8"].shape[1]
    video = inflate_from_reference(reference, state_dict, num_frames=FRAMES)
    assert video.input_shape == (None, FRAMES, size, size, 3)
    x = arrays["input_uint8"].astype(np.float32) / np.float32(255.0)
    logits = video(_repeat(x), training=False).numpy()
    assert _max_diff(logits, arrays["logits"]) <= golden_tolerance(arrays["logits"])

    # frames that differ: the clip is not the average of its frames (one set of tokens reads
    # the whole clip); per-frame logits are those of a clip of that frame repeated (above)
    clip = np.random.default_rng(0).random((2, FRAMES, size, size, 3), np.float32)
    video_logits = video(clip, training=False).numpy()
    frames = clip.transpose(1, 0, 2, 3, 4).reshape(-1, size, size, 3)  # frame-major
    per_frame = video(_repeat(frames), training=False).numpy().reshape(FRAMES, 2, -1).mean(0)
    assert _max_diff(video_logits, per_frame) > 1e-3

    temporal = _temporal_layers(video)
    blocks = inflated_config(reference, FRAMES)[0]["blocks"]
    # one depthwise convolution per bridged DnaBlock, two per bridged DnaBlock3
    assert len(temporal) == sum(1 + (b.kind == "dna3") for b in blocks if b.temporal_kernel > 1)
    for layer in temporal:
        kernel = layer.temporal.get_weights()[0]  # (k_t, 1, channels, 1)
        np.testing.assert_array_equal(kernel[1], np.ones_like(kernel[1]))
        np.testing.assert_array_equal(kernel[[0, 2]], np.zeros_like(kernel[[0, 2]]))

    # identity temporal kernels and a bridge over all positions ignore the frame order; a
    # temporal kernel that looks at the previous frame does not: the temporal layers are there
    reversed_logits = video(clip[:, ::-1], training=False).numpy()
    assert _max_diff(reversed_logits, video_logits) <= 1e-4
    layer = temporal[len(temporal) // 2]
    kernel = np.zeros_like(layer.temporal.get_weights()[0])
    kernel[0] = 1.0
    layer.temporal.set_weights([kernel])
    shifted = video(clip, training=False).numpy()
    assert _max_diff(shifted, video(clip[:, ::-1], training=False).numpy()) > 1e-3


FLAGS = REPO_ROOT / "tests" / "golden"


def test_inflation_options_keep_the_image_logits():
    """A reference variant (no dynamic gates, ReLU6 second activations, two class tokens, its
    PyTorch logits in tests/golden/) with a 3-frame stem, 5 temporal taps and time halved at the
    2nd downsampling."""
    arrays, meta, state_dict = load_golden(FLAGS, "mobile_former_flags")
    reference = _reference(meta)
    options = dict(temporal_kernel=5, time_halved_at=2, stem_temporal_kernel=3)
    size = arrays["input_uint8"].shape[1]
    video = inflate_from_reference(reference, state_dict, FRAMES, size, **options)
    x = arrays["input_uint8"].astype(np.float32) / np.float32(255.0)
    clip = _repeat(x)
    video_logits = video(clip, training=False).numpy()
    assert _max_diff(video_logits, arrays["logits"]) <= golden_tolerance(arrays["logits"])
    assert video.get_layer("stem").conv.kernel.shape[2] == 9  # 3 frames x RGB
    assert video.output_shape == (None, 5)


def test_every_tensor_is_consumed():
    _, meta, state_dict = load_golden(FLAGS, "mobile_former_flags")
    reference = _reference(meta)
    extra = dict(state_dict, **{"features.99.conv.0.weight": np.zeros((1, 1, 3, 3))})
    with pytest.raises(ValueError, match="not loaded: \\['features.99.conv.0.weight'\\]"):
        inflate_from_reference(reference, extra, FRAMES, SIZE)


@pytest.mark.slow
def test_build_inflated_gives_the_same_layers():
    """The architecture without weights: a saved inflated model's weights load into it."""
    arrays, meta, state_dict = load_golden(FLAGS, "mobile_former_flags")
    reference = _reference(meta)
    options = dict(temporal_kernel=5, time_halved_at=2, stem_temporal_kernel=3)
    video = inflate_from_reference(reference, state_dict, FRAMES, SIZE, **options)
    rebuilt = build_inflated(reference, FRAMES, image_size=SIZE, **options)
    assert [w.shape for w in rebuilt.weights] == [w.shape for w in video.weights]
    rebuilt.set_weights(video.get_weights())
    clip = np.random.default_rng(0).random((1, FRAMES, SIZE, SIZE, 3), np.float32)
    expected = video(clip, training=False).numpy()
    np.testing.assert_allclose(rebuilt(clip, training=False).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(num_frames=0), "num_frames must be a positive int"),
        (dict(temporal_kernel=2), "temporal_kernel must be odd"),
        (dict(stem_temporal_kernel=4), "stem_temporal_kernel must be odd"),
        (dict(time_halved_at=9), "time_halved_at=9: the model has 3 downsampling blocks"),
        (dict(num_frames=5, time_halved_at=1), "num_frames=5 must be even"),
    ],
)
def test_bad_options_name_the_problem(change, message):
    reference = _reference(load_golden(FLAGS, "mobile_former_flags")[1])
    arguments = {"num_frames": FRAMES, "image_size": SIZE, **change}
    with pytest.raises(ValueError, match=f"inflate_from_reference\\(mobile_former\\): {message}"):
        inflated_config(reference, **arguments)


def test_only_image_mobile_former_references_inflate():
    reference = kvid.models.reference_config("dualformer_tiny_k400")
    with pytest.raises(ValueError, match="'dualformer' is not an image Mobile-Former"):
        inflated_config(reference, FRAMES)
