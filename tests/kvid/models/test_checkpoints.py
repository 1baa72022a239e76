"""Reading PyTorch checkpoints without PyTorch: files written by torch 2.13 (tests/fixtures/
checkpoints, made by make_fixtures.py), the official layouts of each family, and files that must
be refused without running anything."""

import json
import pathlib
import struct
import tarfile
import zipfile

import numpy as np
import pytest

from kvid.models import checkpoints
from tests.fixtures.checkpoints import torch_zip

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "checkpoints"
LAYOUTS = ["bare", "timm", "pyslowfast", "mmaction", "ddp"]


@pytest.fixture(scope="module")
def expected():
    with np.load(FIXTURES / "expected.npz") as arrays:
        return {name: arrays[name] for name in arrays.files}


def _expected_of(expected, stem):
    prefix = f"{stem}/"
    return {k[len(prefix) :]: v for k, v in expected.items() if k.startswith(prefix)}


@pytest.mark.parametrize("stem", LAYOUTS)
def test_reads_what_torch_saved(stem, expected):
    state_dict = checkpoints.read_checkpoint(str(FIXTURES / f"{stem}.pth"))
    want = _expected_of(expected, stem)
    if stem == "ddp":
        want = {k[len("module.") :]: v for k, v in want.items()}
    assert sorted(state_dict) == sorted(want)
    for name, value in want.items():
        assert state_dict[name].dtype == value.dtype, name
        assert state_dict[name].shape == value.shape, name
        np.testing.assert_array_equal(state_dict[name], value, err_msg=name)


def test_views_dtypes_and_parameters_come_back_as_saved(expected):
    state_dict = checkpoints.read_checkpoint(str(FIXTURES / "bare.pth"))
    # fc.weight was saved as a transposed view: the reader applies the strides.
    np.testing.assert_array_equal(state_dict["fc.weight"], expected["bare/fc.weight"])
    assert state_dict["fc.weight"].shape == (4, 6)
    # Two views of one storage at different offsets (a row and a column).
    shared = np.arange(24, dtype=np.float32).reshape(4, 6)
    np.testing.assert_array_equal(state_dict["norm.running_mean"], shared[1])
    np.testing.assert_array_equal(state_dict["norm.running_var"], shared[:, 2])
    assert state_dict["fc.bias"].dtype == np.float16
    assert state_dict["norm.weight"].dtype == np.float32  # bfloat16, widened
    assert state_dict["norm.num_batches_tracked"].shape == ()
    assert state_dict["norm.num_batches_tracked"] == 7
    assert state_dict["pos.relative_position_index"].dtype == np.int64
    assert state_dict["mask"].dtype == np.bool_
    assert state_dict["head.weight"].shape == (2, 3)  # a Parameter is its data


def test_the_rest_of_a_checkpoint_loads_as_plain_data():
    timm = checkpoints.load_checkpoint(str(FIXTURES / "timm.pth"))
    assert timm["epoch"] == 299 and timm["args"].model == "mobile-former-26m"
    assert timm["optimizer"]["param_groups"][0]["params"] == [0, 1]
    slowfast = checkpoints.load_checkpoint(str(FIXTURES / "pyslowfast.pth"))
    assert "NUM_CLASSES: 174" in slowfast["cfg"]
    assert slowfast["scaler"]["scale"] == 65536.0
    assert slowfast["optimizer_state"]["state"][0]["exp_avg"].shape == (3, 2)
    mmaction = checkpoints.load_checkpoint(str(FIXTURES / "mmaction.pth"))
    assert mmaction["meta"]["hook_msgs"]["best_score"] == pytest.approx(0.795)
    np.testing.assert_array_equal(mmaction["meta"]["class_counts"], [0, 1, 2])


def test_legacy_format_reads_the_same_tensors(expected):
    state_dict = checkpoints.read_checkpoint(str(FIXTURES / "legacy.pth"))
    want = _expected_of(expected, "bare")
    assert sorted(state_dict) == sorted(want)
    for name, value in want.items():
        assert state_dict[name].dtype == value.dtype, name
        np.testing.assert_array_equal(state_dict[name], value, err_msg=name)


@pytest.mark.parametrize(
    "module,name", [("os", "system"), ("builtins", "eval"), ("subprocess", "call")]
)
def test_a_global_that_is_not_data_is_refused_and_nothing_runs(tmp_path, monkeypatch, module, name):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    # Calling the global with "touch" would name a file or run code; nothing may happen.
    torch_zip.save({"w": np.ones(2, np.float32)}, str(path), None, torch_zip.Global(module, name))
    with pytest.raises(ValueError) as error:
        checkpoints.load_checkpoint(str(path))
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message and f"{module}.{name}" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pth"]


def test_a_pickle_that_would_write_a_canary_is_refused(tmp_path):
    canary = tmp_path / "canary"
    path = tmp_path / "evil.pth"
    # builtins.exec of code that writes the canary.
    code = f"open({str(canary)!r}, 'w').write('ran')"
    payload = (
        b"\x80\x02cbuiltins\nexec\nq\x00X"
        + struct.pack("<I", len(code))
        + code.encode()
        + b"\x85R."
    )
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/byteorder", "little")
    with pytest.raises(ValueError, match="builtins.exec"):
        checkpoints.load_checkpoint(str(path))
    assert not canary.exists()


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path):
    path = tmp_path / "oob.pth"
    torch_zip.save({"w": np.ones(4, np.float32)}, str(path))
    # Rewrite the tensor's size from (4,) to (400,): the storage still holds 4 floats.
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    pickled = members["archive/data.pkl"]
    assert pickled.count(b"K\x04\x85") == 1  # the size tuple (4,)
    members["archive/data.pkl"] = pickled.replace(b"K\x04\x85", b"M\x90\x01\x85")
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(ValueError, match="reads past its storage"):
        checkpoints.load_checkpoint(str(path))


def test_npz_and_safetensors(tmp_path):
    weights = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.int64([3])}
    np.savez(tmp_path / "w.npz", **weights, input_uint8=np.zeros(3, np.uint8), feat__x=np.ones(1))
    read = checkpoints.read_checkpoint(str(tmp_path / "w.npz"))
    assert sorted(read) == ["a.weight", "b"]  # a golden file's inputs and outputs are left out
    np.testing.assert_array_equal(read["a.weight"], weights["a.weight"])

    half = np.float16([1.5, -2.0])
    bf16 = (np.float32([0.5, 3.0]).view(np.uint32) >> 16).astype(np.uint16)
    blobs = [weights["a.weight"].tobytes(), half.tobytes(), bf16.tobytes()]
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape, blob in zip(
        ["a.weight", "h", "bf"], ["F32", "F16", "BF16"], [[2, 3], [2], [2]], blobs
    ):
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [offset, offset + len(blob)],
        }
        offset += len(blob)
    text = json.dumps(header).encode()
    (tmp_path / "w.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    read = checkpoints.read_checkpoint(str(tmp_path / "w.safetensors"))
    np.testing.assert_array_equal(read["a.weight"], weights["a.weight"])
    np.testing.assert_array_equal(read["h"], half)
    np.testing.assert_array_equal(read["bf"], np.float32([0.5, 3.0]))


def test_unreadable_files_are_named_in_one_line(tmp_path):
    tar_path = tmp_path / "old.pth"
    member = tmp_path / "pickle"
    member.write_bytes(b"\x80\x02}q\x00.")
    with tarfile.open(tar_path, "w") as tar:
        tar.add(member, arcname="pickle")
    (tmp_path / "text.pth").write_text("not a checkpoint at all")
    cases = {
        str(tmp_path / "missing.pth"): "does not exist",
        str(tar_path): "torch < 0.4",
        str(tmp_path / "text.pth"): "not a checkpoint kvid reads",
    }
    for path, reason in cases.items():
        with pytest.raises(ValueError) as error:
            checkpoints.load_checkpoint(path)
        assert reason in str(error.value) and path in str(error.value)
        assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "family,layout_key,marker",
    [
        ("mobile_former", "state_dict", "tokens.weight"),
        ("dualformer", "state_dict", "backbone.patch_embeds.0.proj.weight"),
        ("xvit", "model_state", "base_model.patch_embed.proj.weight"),
        ("posmlp", "model_state", "patch_embed1.proj1.weight"),
    ],
)
def test_official_layouts_unwrap_to_the_reference_names(tmp_path, family, layout_key, marker):
    state_dict = {marker: np.ones((2, 3), np.float32), "head.bias": np.zeros(2, np.float32)}
    layout = torch_zip.official_layout(family, state_dict)
    assert layout_key in layout
    path = str(tmp_path / f"{family}.pth")
    torch_zip.save(layout, path)
    read = checkpoints.read_checkpoint(path, family)
    assert sorted(read) == sorted(state_dict)


def test_ddp_prefix_teacher_and_wrong_family(tmp_path):
    ddp = {"module.patch_embed1.proj1.weight": np.ones(2, np.float32)}
    assert list(checkpoints.unwrap_state_dict(ddp, "posmlp")) == ["patch_embed1.proj1.weight"]
    # A DualFormer token-labelling run keeps its annotation model under teacher.*.
    tl = {
        "state_dict": {
            "backbone.patch_embeds.0.proj.weight": np.ones(2, np.float32),
            "teacher.backbone.patch_embeds.0.proj.weight": np.ones(2, np.float32),
        }
    }
    assert list(checkpoints.unwrap_state_dict(tl, "dualformer")) == [
        "backbone.patch_embeds.0.proj.weight"
    ]
    with pytest.raises(ValueError, match="holds no xvit model.*looks like a posmlp checkpoint"):
        checkpoints.unwrap_state_dict({"model_state": ddp}, "xvit", where="x.pyth")
    with pytest.raises(ValueError, match="no state_dict found"):
        checkpoints.unwrap_state_dict({"epoch": 3, "cfg": "..."}, "xvit", where="x.pyth")
