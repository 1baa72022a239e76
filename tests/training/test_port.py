"""kvid-port: each family's golden weights, saved as a `.pth` in the family's official checkpoint
layout (without torch), ported into a workdir whose float export reproduces the golden logits;
errors in one line with exit code 2; the int8 conversion of a ported workdir."""

import json
import pathlib
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from kvid.data.workdir import load_workdir
from tests.fixtures.checkpoints import torch_zip
from tests.helpers import golden_tolerance, load_golden

KVID_PORT = pathlib.Path(sys.executable).parent / "kvid-port"
KVID_CONVERT = pathlib.Path(sys.executable).parent / "kvid-convert"


def _run(*args: str, tool=KVID_PORT) -> subprocess.CompletedProcess:
    assert tool.exists(), f"{tool.name} is not installed: pip install -e . again"
    return subprocess.run(
        [str(tool), *map(str, args)], capture_output=True, text=True, timeout=1200
    )


def _official_checkpoint(golden_dir, family, path, edit=None):
    """The golden weights of `family` as a `.pth` in its official layout; `edit` may change the
    state_dict first."""
    _, _, state_dict = load_golden(golden_dir, family)
    if edit is not None:
        state_dict = edit(dict(state_dict))
    torch_zip.save(torch_zip.official_layout(family, state_dict), str(path))
    return path


def _port(golden_dir, family, tmp_path, *extra):
    checkpoint = _official_checkpoint(golden_dir, family, tmp_path / f"{family}.pth")
    workdir = tmp_path / f"{family}_workdir"
    result = _run(
        f"--family={family}",
        f"--config={golden_dir / f'{family}.json'}",
        f"--checkpoint={checkpoint}",
        f"--workdir={workdir}",
        *extra,
    )
    assert result.returncode == 0, result.stderr
    return workdir


def _float_export_logits(workdir, clip):
    import tensorflow as tf

    from kvid.data.workdir import INPUT_NAME, OUTPUT_NAME, SIGNATURE_KEY

    serve = tf.saved_model.load(str(workdir / "export" / "float")).signatures[SIGNATURE_KEY]
    return serve(**{INPUT_NAME: tf.constant(clip)})[OUTPUT_NAME].numpy()


def _assert_golden_logits(workdir, golden_dir, family):
    arrays, _, _ = load_golden(golden_dir, family)
    clip = arrays["input_uint8"].astype(np.float32) / np.float32(255.0)
    logits = _float_export_logits(workdir, clip)
    assert np.abs(logits - arrays["logits"]).max() <= golden_tolerance(arrays["logits"])
    return clip, logits


def test_ported_xvit_workdir_reproduces_the_golden_logits_and_rebuilds(golden_dir, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"action {i}\n" for i in range(10)))
    workdir = _port(golden_dir, "xvit", tmp_path, f"--labels={labels}", "--frame_stride=2")
    clip, logits = _assert_golden_logits(workdir, golden_dir, "xvit")

    parsed = load_workdir(str(workdir))
    assert parsed.input_shape == (8, 224, 224, 3)
    assert parsed.labels[0] == "action 0" and parsed.num_classes == 10
    assert parsed.frame_stride == 2
    meta = json.loads((golden_dir / "xvit.json").read_text())
    assert parsed.reference["family"] == "xvit"
    assert parsed.reference["constructor"] == meta["constructor"]
    assert parsed.reference["num_frames"] == 8 and parsed.reference["image_size"] == 224
    port = json.loads((workdir / "port.json").read_text())
    assert port["num_tensors"] == len(meta["state_dict_entries"])

    # The fine-tuning contract: model.json's reference rebuilds the architecture, and
    # export/float.weights.h5 loads into it.
    from kvid.models.reference_build import build_reference_model

    model = build_reference_model(parsed.reference)
    model.load_weights(str(workdir / "export" / "float.weights.h5"))
    rebuilt = model(clip, training=False).numpy()
    assert np.abs(rebuilt - logits).max() <= golden_tolerance(logits)


@pytest.mark.parametrize("family", ["posmlp", "dualformer", "mobile_former"])
@pytest.mark.slow
def test_ported_workdir_reproduces_the_golden_logits(golden_dir, tmp_path, family):
    extra = []
    if family == "mobile_former":
        try:
            from kvid.models.mobile_former import inflate  # noqa: F401
        except ImportError:
            pytest.skip("this kvid has no kvid.models.mobile_former.inflate")
        extra = ["--inflate", "--num_frames=4"]
    workdir = _port(golden_dir, family, tmp_path, *extra)
    if family == "mobile_former":
        # The inflated model sees the golden image as a still clip.
        arrays, _, _ = load_golden(golden_dir, family)
        image = arrays["input_uint8"].astype(np.float32) / np.float32(255.0)
        clip = np.repeat(image[:, None], 4, axis=1)
        logits = _float_export_logits(workdir, clip)
        assert np.abs(logits - arrays["logits"]).max() <= golden_tolerance(arrays["logits"])
    else:
        clip, logits = _assert_golden_logits(workdir, golden_dir, family)
    reference = load_workdir(str(workdir)).reference
    assert reference["family"] == family
    assert bool(reference.get("inflate")) == (family == "mobile_former")

    from kvid.models.reference_build import build_reference_model

    model = build_reference_model(reference)
    model.load_weights(str(workdir / "export" / "float.weights.h5"))
    rebuilt = model(clip, training=False).numpy()
    assert np.abs(rebuilt - logits).max() <= golden_tolerance(logits)


def _assert_one_line_error(result, *words):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kvid-port: error: "), lines[0]
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def _args(golden_dir, family, checkpoint, workdir, config_family=None):
    config = golden_dir / f"{config_family or family}.json"
    return [f"--family={family}", f"--config={config}", f"--checkpoint={checkpoint}",
            f"--workdir={workdir}"]  # fmt: skip


def test_missing_checkpoint_and_old_torch_format(golden_dir, tmp_path):
    missing = tmp_path / "missing.pth"
    _assert_one_line_error(
        _run(*_args(golden_dir, "xvit", missing, tmp_path / "w")), "missing.pth", "does not exist"
    )
    # torch < 0.4 saved a tar archive.
    old = tmp_path / "old.pth"
    (tmp_path / "pickle").write_bytes(b"\x80\x02}q\x00.")
    with tarfile.open(old, "w") as tar:
        tar.add(tmp_path / "pickle", arcname="pickle")
    _assert_one_line_error(
        _run(*_args(golden_dir, "xvit", old, tmp_path / "w")), "old.pth", "torch < 0.4"
    )
    assert not (tmp_path / "w" / "model.json").exists()


def test_unused_and_missing_tensors_are_named(golden_dir, tmp_path):
    def add(state_dict):
        return dict(state_dict, **{"base_model.extra.weight": np.ones(3, np.float32)})

    extra = _official_checkpoint(golden_dir, "xvit", tmp_path / "extra.pth", add)
    result = _run(*_args(golden_dir, "xvit", extra, tmp_path / "w"))
    _assert_one_line_error(result, "extra.pth", "base_model.extra.weight", "xvit.json")

    def drop(state_dict):
        del state_dict["consensus.mlp_head.4.weight"]
        return state_dict

    short = _official_checkpoint(golden_dir, "xvit", tmp_path / "short.pth", drop)
    result = _run(*_args(golden_dir, "xvit", short, tmp_path / "w"))
    _assert_one_line_error(result, "short.pth", "consensus.mlp_head.4.weight")
    assert not (tmp_path / "w" / "model.json").exists()


def test_wrong_family_is_named(golden_dir, tmp_path):
    checkpoint = _official_checkpoint(golden_dir, "xvit", tmp_path / "xvit.pth")
    # A XViT checkpoint given as PosMLP: named by what it holds.
    result = _run(*_args(golden_dir, "posmlp", checkpoint, tmp_path / "w"))
    _assert_one_line_error(result, "xvit.pth", "no posmlp model", "looks like a xvit checkpoint")
    # The right checkpoint with another family's configuration.
    result = _run(*_args(golden_dir, "xvit", checkpoint, tmp_path / "w", config_family="posmlp"))
    _assert_one_line_error(result, "posmlp.json", "is a posmlp configuration")


def _int8_cosine(workdir, data_dir):
    result = _run(
        "--int8",
        f"--workdir={workdir}",
        f"--data_dir={data_dir}",
        "--num_calibration_clips=32",
        "--num_test_clips=16",
        "--num_debug_clips=2",
        tool=KVID_CONVERT,
    )
    assert result.returncode in (0, 1), result.stderr  # 1: the int8 audit found float ops
    report = json.loads((workdir / "export" / "model_int8.report.json").read_text())
    return report["fidelity"]


@pytest.mark.slow
def test_int8_conversion_of_the_ported_posmlp_keeps_its_logits(golden_dir, tmp_path):
    from kvid_training import synthetic

    data_dir = synthetic.ensure_default_dataset(str(tmp_path / "data"), scale=0.1)
    workdir = _port(golden_dir, "posmlp", tmp_path, f"--data_dir={data_dir}")
    fidelity = _int8_cosine(workdir, data_dir)
    assert fidelity["float"]["cosine_mean"] >= 0.99, fidelity
