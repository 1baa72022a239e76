"""Session fixtures for tests/tflite; builders live in tflite_helpers.py (fixture `helpers`).

pytest runs with --import-mode=importlib (pyproject.toml), so test modules cannot import a
sibling module; conftest loads it by path once and hands it out as a fixture.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import tf_keras as keras

_SPEC = importlib.util.spec_from_file_location(
    "kvid_tests_tflite_helpers", os.path.join(os.path.dirname(__file__), "tflite_helpers.py")
)
h = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = h
_SPEC.loader.exec_module(h)


@pytest.fixture(scope="session")
def helpers():
    """The tflite_helpers module: CLIP_SHAPE, LABELS, build_classifier, random_clips, ..."""
    return h


@pytest.fixture(scope="session")
def float_model() -> keras.Model:
    return h.build_classifier("conv2d")


@pytest.fixture(scope="session")
def qat_workdir(tmp_path_factory, float_model) -> str:
    """Workdir with export/float and export/qat (QAT copy of the same weights)."""
    root = str(tmp_path_factory.mktemp("qat_workdir"))
    return h.write_workdir(root, float_model, h.quantize_aware(float_model))


@pytest.fixture(scope="session")
def float_workdir(tmp_path_factory, float_model) -> str:
    """Workdir with export/float only (int8 goes through PTQ)."""
    return h.write_workdir(str(tmp_path_factory.mktemp("float_workdir")), float_model)


@pytest.fixture(scope="session")
def conv3d_workdir(tmp_path_factory) -> str:
    return h.write_workdir(
        str(tmp_path_factory.mktemp("conv3d_workdir")), h.build_classifier("conv3d")
    )


@pytest.fixture
def fake_clip_sources(monkeypatch):
    """Replaces the CLI's pipeline glue with random clips (no dataset needed)."""
    from kvid_tflite import convert

    calls = {}

    def load_clip_sources(data_dir, clip_shape, frame_stride, num_calibration, num_test):
        calls.update(data_dir=data_dir, clip_shape=tuple(clip_shape), num_test=num_test)
        assert tuple(clip_shape) == h.CLIP_SHAPE
        return (lambda: iter(h.random_clips(num_calibration, seed=1))), h.random_clips(num_test, 2)

    monkeypatch.setattr(convert, "load_clip_sources", load_clip_sources)
    return calls
