"""Tests of `train.py --init_from`: weights copied by path, the head replaced or kept, position
tables resized as the papers' code resizes them, and label maps checked on resume.

Source workdirs are written directly with the workdir writers (a model with random weights,
model.json, label_map.json and export/float.weights.h5), so no test trains a source model. The
weights are drawn at random, unlike any fresh initialisation, so a weight left uncopied shows.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from absl import flags

import kvid
from kvid.data.workdir import LABEL_MAP_JSON, MODEL_JSON, load_workdir, model_json, write_json
from kvid.models import transfer
from kvid_training import train, workdir
from tests.training.test_train import TINY_CLASSES, run_train, tiny_data_dir  # noqa: F401 (a fixture)

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_LABELS = ["a", "b", "c", "d", "e"]
# vmf_smoke.flags' two-block vmf_tiny at 4 x 32 x 32.
SMOKE_OVERRIDES = dict(
    blocks=(("dna3", 2, 8, 2, 0, 1, 1), ("dna3", 4, 16, 2, 4, 3, 1)),
    token_dim=32,
    head_features=64,
    dropout_rate=0.0,
)


def _randomize(model) -> None:
    """Random weights, positive (batch norm variances stay valid) and unlike any initialiser."""
    rng = np.random.default_rng(7)
    model.set_weights(
        [rng.uniform(0.1, 1.0, size=w.shape).astype(np.float32) for w in model.get_weights()]
    )


def write_source(root: str, preset: str, labels: list[str], **overrides):
    """A trained-like workdir of `preset` (random weights); returns its model."""
    model = kvid.models.create(preset, num_classes=len(labels), **overrides)
    _randomize(model)
    fields = kvid.models.get_preset(preset, **overrides)
    os.makedirs(os.path.join(root, "export"), exist_ok=True)
    size = fields["image_size"]
    write_json(
        os.path.join(root, MODEL_JSON),
        model_json(
            preset=preset,
            num_classes=len(labels),
            overrides=overrides,
            num_frames=fields["num_frames"],
            image_size=(size, size),
            frame_stride=1,
            labels=labels,
            order_pairs=[],
            normalization={"mean": fields["input_mean"], "std": fields["input_std"]},
            data_dir="data",
        ),
    )
    write_json(os.path.join(root, LABEL_MAP_JSON), labels)
    workdir.save_weights(model, os.path.join(root, "export", "float.weights.h5"))
    return model


def weights_by_path(model) -> dict[str, np.ndarray]:
    return {
        f"{layer.name}/{transfer._weight_name(layer, w)}": w.numpy()
        for layer in model.layers
        for w in layer.weights
    }


def parse(*args: str) -> flags.FlagValues:
    flag_values = flags.FlagValues()
    train.define_flags(flag_values)
    flag_values(["train.py", "--workdir=/tmp/unused", *args])
    return flag_values


def init_model(source_dir: str, classes: list[str], *args: str):
    """What train.py does with --init_from, in process: config, model, weights."""
    fv = parse(f"--init_from={source_dir}", *args)
    source, fields = train._init_source(source_dir, fv["preset"])
    info = {"classes": classes, "splits": {"train": 8, "val": 4}}
    cfg = train.config_from_flags(
        fv,
        preset_fields=fields,
        dataset_info=info,
        **train._source_architecture(source),
    )
    keras.utils.set_random_seed(0)
    model = train.build_model(cfg)
    assert train.initialize_from(cfg, model, source, classes, "DATA/dataset.json")
    return cfg, model


@pytest.fixture(scope="module")
def vmf_source(tmp_path_factory) -> tuple[str, dict]:
    root = str(tmp_path_factory.mktemp("vmf_source"))
    model = write_source(
        root, "vmf_tiny", SOURCE_LABELS, num_frames=4, image_size=32, **SMOKE_OVERRIDES
    )
    return root, weights_by_path(model)


# --- (a), (b): the head -------------------------------------------------------------------------


def test_other_classes_get_a_new_head_and_every_other_weight(vmf_source, caplog):
    source_dir, source_weights = vmf_source
    caplog.set_level("INFO", logger="absl")
    cfg, model = init_model(source_dir, TINY_CLASSES)
    assert cfg.preset == "vmf_tiny" and cfg.init_from == source_dir
    assert cfg.model_kwargs["token_dim"] == 32 and cfg.num_frames == 4  # the source's model
    weights = weights_by_path(model)
    assert weights.keys() == source_weights.keys()
    for path, value in weights.items():
        if path.startswith("logits/"):
            assert value.shape[-1] == 3
            assert not np.any(np.isin(value, source_weights[path]))  # freshly initialised
        else:
            np.testing.assert_array_equal(value, source_weights[path], err_msg=path)
    (line,) = [r.getMessage() for r in caplog.records if "classification head" in r.getMessage()]
    assert "new classification head logits" in line
    assert f"{source_dir}/label_map.json" in line and "DATA/dataset.json" in line


def test_same_label_map_keeps_the_head(vmf_source, caplog):
    source_dir, source_weights = vmf_source
    caplog.set_level("INFO", logger="absl")
    _, model = init_model(source_dir, SOURCE_LABELS)
    weights = weights_by_path(model)
    for path, value in weights.items():
        np.testing.assert_array_equal(value, source_weights[path], err_msg=path)
    assert any("classification head logits kept" in r.getMessage() for r in caplog.records)


def test_a_permuted_label_map_gets_a_new_head(vmf_source, caplog):
    source_dir, source_weights = vmf_source
    caplog.set_level("INFO", logger="absl")
    _, model = init_model(source_dir, SOURCE_LABELS[::-1])
    kernel = model.get_layer("logits").kernel.numpy()
    assert kernel.shape == source_weights["logits/kernel"].shape
    assert not np.array_equal(kernel, source_weights["logits/kernel"])
    assert any("the same classes in another order" in r.getMessage() for r in caplog.records)


def test_preset_flag_must_match_the_source(vmf_source):
    source_dir, _ = vmf_source
    fv = parse(f"--init_from={source_dir}", "--preset=xvit_tiny")
    with pytest.raises(train.app.UsageError, match=r"^--preset=xvit_tiny: --init_from=.* vmf_tiny"):
        train._init_source(source_dir, fv["preset"])


def test_missing_weights_and_unmappable_layers_are_named(vmf_source, tmp_path):
    source_dir, _ = vmf_source
    bare = str(tmp_path / "bare")
    shutil.copytree(source_dir, bare)
    os.remove(os.path.join(bare, "export", "float.weights.h5"))
    with pytest.raises(train.app.UsageError, match=r"float\.weights\.h5"):
        init_model(bare, TINY_CLASSES)
    # Another architecture: the first layer without a counterpart is named.
    inputs = keras.Input((4,))
    one = keras.Model(
        inputs, keras.layers.Dense(3, name="logits")(keras.layers.Dense(8, name="a")(inputs))
    )
    other = keras.Model(
        inputs, keras.layers.Dense(3, name="logits")(keras.layers.Dense(8, name="b")(inputs))
    )
    with pytest.raises(transfer.TransferError, match="^layer a .* no layer of that name"):
        transfer.transfer_weights(one, other)


# --- (c): position tables -----------------------------------------------------------------------


def torch_resize_1d(values: np.ndarray, size: int, mode: str) -> np.ndarray:
    """PyTorch's `F.interpolate(align_corners=False)` along axis 0, written pixel by pixel from
    its definition (upsample_linear1d / upsample_bicubic2d), independently of kvid's matrices."""
    a = -0.75
    n = values.shape[0]
    out = np.zeros((size, *values.shape[1:]))
    for i in range(size):
        src = (i + 0.5) * n / size - 0.5
        if mode == "linear":
            src = max(src, 0.0)
            i0 = int(src)
            i1 = min(i0 + 1, n - 1)
            out[i] = (1 - (src - i0)) * values[i0] + (src - i0) * values[i1]
        else:
            i0 = int(np.floor(src))
            t = src - i0
            for k, x in zip(range(-1, 3), (t + 1, t, 1 - t, 2 - t)):
                x = abs(x)
                w = (
                    ((a + 2) * x - (a + 3)) * x * x + 1
                    if x <= 1
                    else ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
                )
                out[i] += w * values[min(max(i0 + k, 0), n - 1)]
    return out


def torch_bicubic(grid: np.ndarray, size: int) -> np.ndarray:
    rows = torch_resize_1d(grid, size, "cubic")
    return np.swapaxes(torch_resize_1d(np.swapaxes(rows, 0, 1), size, "cubic"), 0, 1)


def test_xvit_position_embeddings_follow_frames_and_resolution(tmp_path):
    source_model = write_source(str(tmp_path / "xvit"), "xvit_tiny", SOURCE_LABELS)  # 8 x 64 x 64
    source = load_workdir(str(tmp_path / "xvit"))
    target = transfer.build_workdir_model(source, num_classes=3, num_frames=4, image_size=48)
    report = transfer.transfer_weights(source_model, target)
    assert [path for path, _, _ in report.interpolated] == [
        "embed/position_embedding",
        "embed/temporal_embedding",
    ]
    assert report.reinitialized == ["logits/kernel", "logits/bias"]
    before, after = weights_by_path(source_model), weights_by_path(target)
    # Spatial grid 8x8 -> 6x6 patches, bicubic as XViT / timm; the class token's entry kept.
    position = before["embed/position_embedding"]
    expected = torch_bicubic(position[1:].reshape(8, 8, -1), 6).reshape(36, -1)
    np.testing.assert_allclose(after["embed/position_embedding"][0], position[0])
    np.testing.assert_allclose(after["embed/position_embedding"][1:], expected, atol=1e-5)
    # Temporal 8 -> 4 entries, linear: TensorFlow's half-pixel bilinear resize on a 1-wide image.
    temporal = before["embed/temporal_embedding"]
    direct = tf.image.resize(temporal[None, :, None, :], (4, 1), method="bilinear")[0, :, 0]
    np.testing.assert_allclose(after["embed/temporal_embedding"], direct.numpy(), atol=1e-6)
    for path, value in after.items():
        if path.startswith("embed/") and path != "embed/class_embedding":
            continue
        if not path.startswith("logits/"):
            np.testing.assert_array_equal(value, before[path], err_msg=path)


def test_posmlp_temporal_tables_follow_the_frames(tmp_path):
    source_model = write_source(str(tmp_path / "posmlp"), "posmlp_video_tiny", SOURCE_LABELS)
    target = transfer.build_workdir_model(load_workdir(str(tmp_path / "posmlp")), num_frames=4)
    report = transfer.transfer_weights(source_model, target)
    assert report.reinitialized == []  # same classes: the head is copied
    resized = {path for path, _, _ in report.interpolated}
    assert resized == {
        f"{block}_temporal/{name}"
        for block in ("stage0_block0", "stage1_block0", "stage2_block0", "stage2_block1",
                      "stage3_block0")
        for name in ("relative_position_bias_table", "token_bias")
    }  # fmt: skip
    before, after = weights_by_path(source_model), weights_by_path(target)
    # A temporal window of 8 frames has 15 offsets; 4 frames 7: linear along the offsets.
    table = before["stage1_block0_temporal/relative_position_bias_table"]
    np.testing.assert_allclose(
        after["stage1_block0_temporal/relative_position_bias_table"],
        torch_resize_1d(table, 7, "linear"),
        atol=1e-6,
    )
    bias = before["stage1_block0_temporal/token_bias"]
    np.testing.assert_allclose(
        after["stage1_block0_temporal/token_bias"], torch_resize_1d(bias, 4, "linear"), atol=1e-6
    )
    for path, value in after.items():
        if path not in resized:
            np.testing.assert_array_equal(value, before[path], err_msg=path)


def write_ported(root: str, golden_dir, golden: str, **extra) -> tuple[dict, object]:
    """A workdir as kvid-port writes it: model.json with the reference configuration of a
    golden file (its small reference model), random weights."""
    from kvid.models.reference_build import build_reference_model

    with open(os.path.join(golden_dir, f"{golden}.json"), encoding="utf-8") as file:
        golden_json = json.load(file)
    reference = {
        "family": golden_json["family"],
        "constructor": golden_json["constructor"],
        "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3},
        **extra,
    }
    model = build_reference_model(reference)
    _randomize(model)
    frames, height, width, _ = (int(d) for d in model.input.shape[1:])
    reference.update(num_frames=frames, image_size=height)
    labels = [f"k{i}" for i in range(int(model.output.shape[-1]))]
    os.makedirs(os.path.join(root, "export"), exist_ok=True)
    write_json(
        os.path.join(root, MODEL_JSON),
        model_json(
            preset=f"{golden}_reference", num_classes=len(labels), overrides={},
            num_frames=frames, image_size=(height, width), frame_stride=1, labels=labels,
            order_pairs=[], normalization=reference["normalization"], data_dir="",
            reference=reference,
        ),
    )  # fmt: skip
    workdir.save_weights(model, os.path.join(root, "export", "float.weights.h5"))
    return reference, model


def test_a_ported_xvit_fine_tunes_at_another_input(tmp_path, golden_dir):
    """The reference configuration becomes an xvit preset plus overrides, at 4 x 64 x 64."""
    root = str(tmp_path / "ported")
    _, source_model = write_ported(root, golden_dir, "xvit")
    cfg, model = init_model(
        root, TINY_CLASSES, "--num_frames=4", "--image_size=64",
        # the reference shifts and embeds time in periods of 8 frames: 4 at 4 frames
        "--model_overrides=num_segments=4", "--model_overrides=temporal_length=4",
    )  # fmt: skip
    assert cfg.preset in kvid.models.list_presets("xvit")
    assert cfg.model_kwargs["embed_dim"] == 96 and cfg.model_kwargs["depth"] == 2
    before, after = weights_by_path(source_model), weights_by_path(model)
    assert after.keys() == before.keys()
    position = before["embed/position_embedding"]  # 14 x 14 patches at 224 -> 4 x 4 at 64
    expected = torch_bicubic(position[1:].reshape(14, 14, -1), 4).reshape(16, -1)
    np.testing.assert_allclose(after["embed/position_embedding"][1:], expected, atol=1e-5)
    temporal = before["embed/temporal_embedding"]
    np.testing.assert_allclose(
        after["embed/temporal_embedding"], torch_resize_1d(temporal, 4, "linear"), atol=1e-6
    )
    for path, value in after.items():
        if path not in ("embed/position_embedding", "embed/temporal_embedding", "logits/kernel",
                        "logits/bias"):  # fmt: skip
            np.testing.assert_array_equal(value, before[path], err_msg=path)


@pytest.mark.slow
def test_an_inflated_mobile_former_fine_tunes_at_other_frames(tmp_path, golden_dir):
    """An image checkpoint inflated to 8 frames (kvid-port --inflate), fine-tuned at 4."""
    root = str(tmp_path / "inflated")
    _, source_model = write_ported(root, golden_dir, "mobile_former", inflate=True, num_frames=8)
    cfg, model = init_model(root, TINY_CLASSES, "--num_frames=4")
    assert cfg.preset in kvid.models.list_presets("mobile_former") and cfg.num_frames == 4
    before, after = weights_by_path(source_model), weights_by_path(model)
    assert after.keys() == before.keys()
    for path, value in after.items():
        if not path.startswith("logits/"):
            np.testing.assert_array_equal(value, before[path], err_msg=path)


# --- end to end: train.py, resume, label maps ---------------------------------------------------


@pytest.mark.slow
def test_train_py_starts_from_the_source_then_resumes_from_its_checkpoint(
    vmf_source,
    tiny_data_dir,  # noqa: F811 (the fixture imported from test_train)
    tmp_path,
):
    source_dir, source_weights = vmf_source
    run_dir = str(tmp_path / "run")
    command = [
        f"--init_from={source_dir}",
        f"--data_dir={tiny_data_dir}",
        f"--workdir={run_dir}",
        "--steps=1",
        "--qat_steps=0",
        "--batch_size=4",
        "--learning_rate=0",  # the exported weights stay the copied ones
        "--verbose=0",
    ]
    first = run_train(*command)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "new classification head logits" in first.stderr
    assert "copied 89 weights; re-initialised 2 (logits/kernel, logits/bias)" in first.stderr
    written = load_workdir(run_dir)
    assert written.preset == "vmf_tiny" and written.labels == tuple(TINY_CLASSES)
    assert written.raw["overrides"]["token_dim"] == 32
    exported = kvid.models.create("vmf_tiny", num_classes=3, num_frames=4, image_size=32,
                                  **SMOKE_OVERRIDES)  # fmt: skip
    exported.load_weights(os.path.join(run_dir, "export", "float.weights.h5"))
    for path, value in weights_by_path(exported).items():
        if not path.startswith("logits/") and "moving_" not in path:
            np.testing.assert_array_equal(value, source_weights[path], err_msg=path)

    resumed = run_train(*command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"--init_from={source_dir} is ignored: the run resumes from its checkpoints" in (
        resumed.stderr
    )
    assert "classification head" not in resumed.stderr


def test_resuming_on_another_label_map_is_refused(tmp_path):
    """A workdir trained on one label map, and the same --data_dir now holding another order."""
    data_dir, run_dir = tmp_path / "data", tmp_path / "run"
    data_dir.mkdir()
    run_dir.mkdir()
    (run_dir / LABEL_MAP_JSON).write_text(json.dumps(TINY_CLASSES))
    info = {"classes": TINY_CLASSES[::-1], "splits": {"train": 8, "val": 4}}
    (data_dir / "dataset.json").write_text(json.dumps(info))
    refused = run_train(
        f"--data_dir={data_dir}", f"--workdir={run_dir}", "--num_frames=4", "--image_size=32",
        "--batch_size=4", "--steps=1",
    )  # fmt: skip
    last_line = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert last_line == (
        f"train.py: error: {run_dir}/label_map.json differs from the classes of "
        f"{data_dir}/dataset.json (the same classes in another order): this workdir was trained "
        "on another label map; use a new --workdir or the dataset it was trained on"
    )
    assert sorted(os.listdir(run_dir)) == [LABEL_MAP_JSON]  # nothing written


def test_tables_the_papers_cannot_resize_are_errors_naming_the_layer():
    """DualFormer's GP-MSA pooling kernels and the Edge TPU Mobile-Former bridges."""
    from types import SimpleNamespace

    from kvid.models.dualformer.transfer import refuse_pyramid_kernel
    from kvid.models.mobile_former.transfer import refuse_frame_maps

    pyramid = SimpleNamespace(
        name="stage0_layer1_attn", fine_pyramid_size=(2, 4, 4), coarse_pyramid_size=None
    )
    with pytest.raises(transfer.TransferError, match=r"^layer stage0_layer1_attn: fine/conv.*"
                       r"fine_pyramid_sizes"):  # fmt: skip
        refuse_pyramid_kernel("fine/conv/depthwise_kernel", np.zeros((8, 4, 16, 1)), pyramid,
                              pyramid, (16, 4, 16, 1))  # fmt: skip
    source = SimpleNamespace(name="block1_m2f", num_frames=8)
    target = SimpleNamespace(name="block1_m2f", num_frames=4)
    with pytest.raises(transfer.TransferError, match=r"^layer block1_m2f: .*--num_frames=8"):
        refuse_frame_maps("update/kernel", np.zeros((512, 384)), source, target, (256, 384))
