"""The Edge TPU rule check of presets, converted to int8 in the frame-stacked Edge TPU form.

Random weights, a couple of random calibration clips, a small input: what is checked is the graph,
not accuracy. Every `*_edgetpu` preset maps whole (no predicted cut); each family's smallest CPU
preset is cut somewhere and the report names where. These run in the slow tier (a conversion takes
20-90 s); the default tier converts vmf_tiny_edgetpu cut down to one bridged block.
"""

from __future__ import annotations

import numpy as np
import pytest

import kvid.models
from kvid.models.mobile_former import Block
from kvid_tflite.convert import convert_keras_model
from kvid_tflite.edgetpu import check_edgetpu, summarize
from kvid_tflite.litert import TFLiteModel
from tests.helpers import small_overrides

EDGETPU_PRESETS = [name for name in kvid.models.list_presets() if name.endswith("_edgetpu")]
SMALLEST_CPU = ["vmf_tiny", "dualformer_cpu", "xvit_tiny", "posmlp_video_tiny"]


def _edgetpu_report(name: str, **overrides) -> tuple[dict, bytes, tuple]:
    model = kvid.models.create(name, num_classes=5, **(overrides or small_overrides(name)))
    rng = np.random.default_rng(0)
    clips = [rng.random((1, *model.input_shape[1:]), dtype=np.float32) for _ in range(2)]
    content = convert_keras_model(model, "int8", lambda: iter(clips), "frame_stacked")
    layers = [layer.name for layer in model.layers]
    return check_edgetpu(content, layers), content, tuple(model.input_shape[1:])


def _check_maps_whole(name: str, **overrides) -> None:
    report, content, (frames, height, width, _) = _edgetpu_report(name, **overrides)
    assert TFLiteModel(content).input_shape == (1, frames * height, width, 3)
    assert report["cut"] is None, summarize(report)["first_blocker"]
    assert report["passed"] and report["mac_share"] == 1.0 and report["macs"] > 0
    assert not report["compiler_refuses"]


def test_a_cut_down_vmf_tiny_edgetpu_maps_whole():
    blocks = (Block("dna3", 4, 16, 2, 4, 3, 2),)
    _check_maps_whole("vmf_tiny_edgetpu", blocks=blocks, num_frames=4, image_size=32)


@pytest.mark.slow
@pytest.mark.parametrize("name", EDGETPU_PRESETS)
def test_edgetpu_preset_maps_whole(name):
    _check_maps_whole(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALLEST_CPU)
def test_cpu_preset_report_names_the_cut(name):
    report, _, _ = _edgetpu_report(name)
    summary = summarize(report)
    assert report["cut"] is not None and summary["first_blocker"]
    assert report["ops_before_cut"] < report["num_ops"] and 0.0 <= report["mac_share"] < 1.0
    assert summary["first_by_rule"]  # every broken rule is named with its first op
