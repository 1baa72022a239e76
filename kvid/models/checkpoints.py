"""Reading the papers' PyTorch checkpoints without PyTorch, and without running code from them.

    raw = load_checkpoint("checkpoint_epoch_00050.pyth")      # dicts, lists, numbers, arrays
    state_dict = unwrap_state_dict(raw, "posmlp", where=...)   # reference name -> np.ndarray
    state_dict = read_checkpoint(path, family="posmlp")        # both steps

Formats, told apart by their first bytes (not by the file name: PySlowFast writes `.pyth`, timm
`.pth.tar`):

- PyTorch's zip format (`torch.save` since torch 1.6): `<archive>/data.pkl` is a pickle whose
  tensors refer, by key, to raw storages `<archive>/data/<key>`, in the byte order of
  `<archive>/byteorder` (little when absent). The pickle is read by `_RestrictedUnpickler`, whose
  `find_class` resolves only the globals in `_GLOBALS`: `collections.OrderedDict`, PyTorch's
  tensor and parameter rebuild functions and storage types, `argparse.Namespace` (timm saves its
  arguments), and numpy's scalar and array rebuilders (mmcv meta). Each is mapped to a function
  of this module that builds plain data; any other global (e.g. `os.system`, `builtins.eval`) is
  refused with a `ValueError` naming the file and the global, before anything is called.
- PyTorch's legacy format (torch < 1.6, or `_use_new_zipfile_serialization=False`): the same
  restricted pickle, with the storages stored after it. The older tar format (torch < 0.4) is
  refused with a message saying how to re-save the file.
- `.npz` (numpy, `allow_pickle=False`): every array under its name; the golden files' `input_uint8`,
  `logits` and `feat__*` entries are not weights and are left out.
- `.safetensors`: the JSON header parsed here (no dependency), arrays read from the byte buffer.

What each family's official code saves (documented in docs/porting.md), and what
`unwrap_state_dict` takes from it:

- Mobile-Former (timm `CheckpointSaver`): `{"epoch", "arch", "state_dict", "optimizer",
  "version", "args", ...}`, or a bare state_dict (timm's cleaned checkpoints).
- DualFormer (mmcv `save_checkpoint`): `{"meta", "state_dict", "optimizer"[, "amp"]}` with the
  Recognizer3D names `backbone.*` and `cls_head.*`, which are the reference names kvid ports;
  a token-labelling run also holds its annotation model under `teacher.*`, which is left out.
- XViT and PosMLP-Video (PySlowFast `save_checkpoint`): `{"epoch", "model_state",
  "optimizer_state", "cfg"[, "scaler"]}`; `cfg` is the YAML text of the run's config.
- A `module.` prefix on every name (a model saved inside DistributedDataParallel) is removed.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

# The first bytes of a legacy (non-zip) torch.save file: pickle protocol 2, then the magic
# number 0x1950a86a20f9469cfc6c as a 10-byte LONG1.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_ZIP_MAGIC = b"PK\x03\x04"

# PyTorch storage type -> numpy dtype ("bfloat16" is widened to float32 when read).
_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "UntypedStorage": "uint8",
}
_TORCH_DTYPES = {
    "float64": "float64",
    "double": "float64",
    "float32": "float32",
    "float": "float32",
    "float16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "int64": "int64",
    "long": "int64",
    "int32": "int32",
    "int": "int32",
    "int16": "int16",
    "short": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "bool": "bool",
}
_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
# Entries of a golden .npz that are not weights.
_NPZ_NON_WEIGHTS = ("input_uint8", "logits")
_NPZ_NON_WEIGHT_PREFIX = "feat__"

# Where each layout keeps the model's weights, tried in this order.
_WEIGHT_KEYS = ("model_state", "state_dict", "model", "module")
# A name every checkpoint of the family holds (a family's checkpoint is told from another's).
_FAMILY_MARKERS = {
    "mobile_former": "tokens.weight",
    "dualformer": "backbone.patch_embeds.0.proj.weight",
    "xvit": "base_model.patch_embed.proj.weight",
    "posmlp": "patch_embed1.proj1.weight",
}
# Entries a family's official checkpoints hold beside the model kvid ports.
_FAMILY_EXTRA_PREFIXES = {"dualformer": ("teacher.",)}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that holds no model of the requested family."""


# ------------------------------------------------------------------------------------------------
# The builders the restricted unpickler maps PyTorch's and numpy's globals to
# ------------------------------------------------------------------------------------------------
class _StorageType:
    """Stands for a `torch.<Type>Storage` class or a `torch.<dtype>` object in the pickle."""

    def __init__(self, name: str, dtype: str):
        self.name = name
        self.dtype = dtype


class _Storage:
    """A storage read from the archive: a flat numpy array (bfloat16 already widened)."""

    def __init__(self, array: np.ndarray):
        self.array = array


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> np.ndarray:
    """`torch._utils._rebuild_tensor(_v2)`: a strided view of a storage, copied into a new array.

    The view is checked to lie inside the storage (a crafted file could otherwise make numpy read
    memory outside it).
    """
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor refers to something that is not a storage")
    flat = storage.array
    size = tuple(int(d) for d in size)
    stride = tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
        raise pickle.UnpicklingError(f"tensor of size {size} has strides {stride}")
    if 0 in size:
        return np.zeros(size, flat.dtype)
    last = offset + sum((d - 1) * s for d, s in zip(size, stride))
    if last >= flat.size:
        raise pickle.UnpicklingError(
            f"tensor of size {size}, strides {stride}, offset {offset} reads past its storage of "
            f"{flat.size} elements"
        )
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size, strides=[s * flat.itemsize for s in stride], writeable=False
    )
    return np.array(view)


def _rebuild_parameter(data, *unused) -> np.ndarray:
    """`torch._utils._rebuild_parameter(_with_state)`: a Parameter is its data."""
    if not isinstance(data, np.ndarray):
        raise pickle.UnpicklingError("a parameter holds something that is not a tensor")
    return data


def _torch_global(name: str) -> Any:
    if name in _STORAGE_DTYPES:
        return _StorageType(name, _STORAGE_DTYPES[name])
    return _StorageType(name, _TORCH_DTYPES[name])


class _NumpyDtype:
    """`numpy.dtype(name, align, copy)` followed by its `__setstate__` (the byte order)."""

    def __init__(self, name, align=False, copy=True):
        self.dtype = np.dtype(str(name))

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in "<>|=":
            self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(dtype, data=None):
    """`numpy.core.multiarray.scalar(dtype, bytes)`: one value."""
    if not isinstance(dtype, _NumpyDtype) or not isinstance(data, bytes):
        raise pickle.UnpicklingError("numpy scalar without a dtype and its bytes")
    return np.frombuffer(data, dtype.dtype, count=1)[0]


class _NumpyArray:
    """`numpy.core.multiarray._reconstruct(ndarray, shape, dtype)` and its `__setstate__`."""

    array: np.ndarray | None = None

    def __init__(self, cls=None, shape=(0,), dtype=None):
        self.array = None

    def __setstate__(self, state):
        _, shape, dtype, fortran, data = state
        if not isinstance(dtype, _NumpyDtype) or not isinstance(data, bytes):
            raise pickle.UnpicklingError("numpy array without a dtype and its bytes")
        array = np.frombuffer(data, dtype.dtype, count=int(np.prod(shape, dtype=np.int64)))
        self.array = array.reshape(shape, order="F" if fortran else "C").copy()


def _numpy_ndarray_marker(*unused):
    """`numpy.ndarray` only appears as the first argument of `_reconstruct`."""
    raise pickle.UnpicklingError("numpy.ndarray is only read through _reconstruct")


def _codecs_encode(text, encoding="utf-8"):
    """`_codecs.encode(str, "latin1")`: how protocol 2 pickles `bytes`."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only read for bytes (latin1)")
    return text.encode("latin1")


_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("argparse", "Namespace"): argparse.Namespace,
    ("_codecs", "encode"): _codecs_encode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
}
for _name in list(_STORAGE_DTYPES) + list(_TORCH_DTYPES):
    _GLOBALS[("torch", _name)] = _torch_global(_name)
_GLOBALS[("torch.storage", "UntypedStorage")] = _torch_global("UntypedStorage")
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _GLOBALS[(_module, "scalar")] = _numpy_scalar
    _GLOBALS[(_module, "_reconstruct")] = _NumpyArray
_GLOBALS[("numpy", "dtype")] = _NumpyDtype
_GLOBALS[("numpy", "ndarray")] = _numpy_ndarray_marker


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles `data.pkl`, resolving only `_GLOBALS` and reading storages from the archive."""

    def __init__(self, file, read_storage):
        super().__init__(file)
        self._read_storage = read_storage
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid) -> _Storage:
        # ("storage", storage type, key, location, numel): the tensors of one storage share it.
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {str(pid)[:80]}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if len(pid) > 5 and pid[5] is not None:  # legacy storage views (torch < 1.0)
            raise pickle.UnpicklingError(f"storage {key} is a view of another storage")
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError("a storage of unknown type")
        if key not in self._storages:
            self._storages[key] = _Storage(self._read_storage(key, storage_type.dtype, numel))
        return self._storages[key]


def _widen_bfloat16(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32: the same value, numpy has no bfloat16."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _frombuffer(data: bytes, dtype: str, count: int, byteorder: str, where: str) -> np.ndarray:
    stored = np.dtype("uint16" if dtype == "bfloat16" else dtype)
    stored = stored.newbyteorder("<" if byteorder == "little" else ">")
    if len(data) < count * stored.itemsize:
        raise CheckpointError(f"{where}: {len(data)} bytes hold fewer than {count} {dtype} values")
    array = np.frombuffer(data, stored, count=count).astype(stored.newbyteorder("="))
    return _widen_bfloat16(array) if dtype == "bfloat16" else array


def _unwrap_placeholders(value: Any) -> Any:
    """Replaces the numpy array placeholders by their arrays, in nested containers."""
    if isinstance(value, _NumpyArray):
        return value.array
    if isinstance(value, dict):
        for key in list(value):
            value[key] = _unwrap_placeholders(value[key])
        return value
    if isinstance(value, list):
        return [_unwrap_placeholders(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_unwrap_placeholders(v) for v in value)
    if isinstance(value, argparse.Namespace):
        for key, item in vars(value).items():
            setattr(value, key, _unwrap_placeholders(item))
    return value


def _load_torch_zip(path: str, archive: zipfile.ZipFile) -> Any:
    names = archive.namelist()
    pickles = [name for name in names if name.endswith("data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        raise CheckpointError(f"{path}: a zip file without one <archive>/data.pkl")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in names:
        byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise CheckpointError(f"{path}: byteorder {byteorder!r} is neither little nor big")

    def read_storage(key: str, dtype: str, numel: int) -> np.ndarray:
        member = f"{prefix}data/{key}"
        if member not in names:
            raise CheckpointError(f"{path}: storage {member} is missing")
        return _frombuffer(archive.read(member), dtype, numel, byteorder, f"{path}: {member}")

    unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), read_storage)
    return _unwrap_placeholders(_unpickle(path, unpickler))


class _ScoutingUnpickler(_RestrictedUnpickler):
    """Reads the legacy format's object pickle once for its storages' element sizes only:
    tensors are not built (the storages' bytes come after this pickle)."""

    def __init__(self, file):
        super().__init__(file, None)
        self.itemsizes: dict[str, int] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        return _ignore if found in (_rebuild_tensor, _rebuild_parameter) else found

    def persistent_load(self, pid) -> None:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unknown persistent id {str(pid)[:80]}")
        dtype = pid[1].dtype
        self.itemsizes[str(pid[2])] = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def _ignore(*unused) -> None:
    return None


def _unpickle(path: str, unpickler: pickle.Unpickler) -> Any:
    try:
        return unpickler.load()
    except _RefusedGlobal as error:
        raise CheckpointError(
            f"{path}: refused to load global {error} (a checkpoint holds tensors and plain data; "
            "nothing in it is executed)"
        ) from None
    except (pickle.UnpicklingError, TypeError, AttributeError, KeyError, EOFError) as error:
        raise CheckpointError(f"{path}: unreadable pickle: {error}") from None


def _load_torch_legacy(path: str) -> Any:
    """PyTorch's pre-1.6 format: pickles of the magic number, the protocol version and sys_info,
    then the object's pickle (storages by key), a pickle of the storage keys, then each storage as
    an int64 element count followed by its bytes.

    The object's pickle is read twice: once for the storages' element sizes (no tensor built),
    which locate the storages after it, then for the object itself.
    """
    with open(path, "rb") as file:
        data = file.read()
    stream = io.BytesIO(data)
    for _ in range(2):  # magic number, protocol version
        _unpickle(path, _RestrictedUnpickler(stream, None))
    sys_info = _unpickle(path, _RestrictedUnpickler(stream, None))
    little = not isinstance(sys_info, dict) or bool(sys_info.get("little_endian", True))
    start = stream.tell()
    scout = _ScoutingUnpickler(stream)
    _unpickle(path, scout)
    keys = _unpickle(path, _RestrictedUnpickler(stream, None))
    offsets: dict[str, tuple[int, int]] = {}
    cursor = stream.tell()
    for key in keys if isinstance(keys, list) else []:
        if str(key) not in scout.itemsizes or cursor + 8 > len(data):
            raise CheckpointError(f"{path}: legacy storage {key} cannot be located")
        (count,) = struct.unpack("<q" if little else ">q", data[cursor : cursor + 8])
        offsets[str(key)] = (cursor + 8, count)
        cursor += 8 + count * scout.itemsizes[str(key)]

    def read_storage(key: str, dtype: str, numel: int) -> np.ndarray:
        if key not in offsets:
            raise CheckpointError(f"{path}: legacy storage {key} is missing")
        begin, count = offsets[key]
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        chunk = data[begin : begin + count * itemsize]
        return _frombuffer(chunk, dtype, count, "little" if little else "big", f"{path}: {key}")

    stream.seek(start)
    return _unwrap_placeholders(_unpickle(path, _RestrictedUnpickler(stream, read_storage)))


def _load_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {
                name: arrays[name]
                for name in arrays.files
                if name not in _NPZ_NON_WEIGHTS and not name.startswith(_NPZ_NON_WEIGHT_PREFIX)
            }
    except ValueError as error:  # an object array needs pickle: refused
        raise CheckpointError(f"{path}: {error}") from None


def _load_safetensors(path: str, data: bytes) -> dict[str, np.ndarray]:
    (header_size,) = struct.unpack("<Q", data[:8])
    if header_size > len(data) - 8:
        raise CheckpointError(f"{path}: safetensors header of {header_size} bytes is cut off")
    try:
        header = json.loads(data[8 : 8 + header_size])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: unreadable safetensors header: {error}") from None
    body = data[8 + header_size :]
    arrays = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(entry.get("dtype"))
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {entry['dtype']}")
        begin, end = (int(v) for v in entry["data_offsets"])
        shape = tuple(int(d) for d in entry["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        if not 0 <= begin <= end <= len(body) or end - begin != count * itemsize:
            raise CheckpointError(f"{path}: tensor {name} has data offsets {[begin, end]}")
        where = f"{path}: {name}"
        arrays[name] = _frombuffer(body[begin:end], dtype, count, "little", where).reshape(shape)
    return arrays


def load_checkpoint(path: str) -> Any:
    """Everything a checkpoint file holds, as dicts, lists, numbers, strings and numpy arrays.

    Raises:
      CheckpointError (a ValueError): the file is missing, of an unknown or legacy format, or its
        pickle needs a global that is not plain data (named in the message; nothing was run).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as file:
        head = file.read(len(_LEGACY_MAGIC))
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                if any(name.endswith("data.pkl") for name in names):
                    return _load_torch_zip(path, archive)
        except zipfile.BadZipFile as error:
            raise CheckpointError(f"{path}: broken zip file: {error}") from None
        if all(name.endswith(".npy") for name in names):
            return _load_npz(path)
        raise CheckpointError(f"{path}: a zip file that is neither torch.save output nor .npz")
    if head.startswith(_LEGACY_MAGIC):
        return _load_torch_legacy(path)
    with open(path, "rb") as file:
        data = file.read()
    if len(data) >= 10 and data[8:9] == b"{":
        return _load_safetensors(path, data)
    if data[257:262] == b"ustar":
        raise CheckpointError(
            f"{path}: PyTorch's tar format (torch < 0.4); re-save it with a recent torch: "
            "torch.save(torch.load(path, map_location='cpu'), new_path)"
        )
    raise CheckpointError(
        f"{path}: not a checkpoint kvid reads (PyTorch zip from torch.save, .npz, .safetensors)"
    )


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in value.items())
    )


def _find_state_dict(obj: Any, where: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """The flat state_dict inside `obj` (and the keys leading to it), `module.` removed."""
    value, path = obj, []
    while not _is_state_dict(value):
        if not isinstance(value, Mapping):
            raise CheckpointError(f"{where}: holds a {type(value).__name__}, not a state_dict")
        key = next((k for k in _WEIGHT_KEYS if k in value), None)
        if key is None:
            found = ", ".join(repr(k) for k in list(value)[:8])
            raise CheckpointError(
                f"{where}: no state_dict found (looked for {', '.join(_WEIGHT_KEYS)} among {found})"
            )
        value, path = value[key], path + [key]
    state_dict = {str(k): v for k, v in value.items()}
    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict, path


def unwrap_state_dict(obj: Any, family: str, where: str = "checkpoint") -> dict[str, np.ndarray]:
    """The flat reference state_dict inside a loaded checkpoint.

    Args:
      obj: what `load_checkpoint` returned.
      family: the kvid family the checkpoint should hold (`kvid.models.list_families()`).
      where: the file, for error messages.

    Returns:
      Reference parameter name -> array, with the names of the family's reference model.

    Raises:
      CheckpointError: no state_dict found, or it holds no model of `family`.
    """
    if family not in _FAMILY_MARKERS:
        raise CheckpointError(f"unknown family {family!r}; known: {sorted(_FAMILY_MARKERS)}")
    state_dict, path = _find_state_dict(obj, where)
    extra = _FAMILY_EXTRA_PREFIXES.get(family, ())
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(extra)}
    marker = _FAMILY_MARKERS[family]
    if marker not in state_dict:
        holds = [f for f, m in _FAMILY_MARKERS.items() if m in state_dict]
        inside = f" (in {'/'.join(path)})" if path else ""
        looks = f"; it looks like a {holds[0]} checkpoint" if holds else ""
        raise CheckpointError(
            f"{where}: the state_dict{inside} holds no {family} model (no {marker!r}){looks}"
        )
    return state_dict


def read_checkpoint(path: str, family: str | None = None) -> dict[str, np.ndarray]:
    """The state_dict of a checkpoint file: `load_checkpoint`, then `unwrap_state_dict` (without
    `family`: the state_dict of any of the layouts above, its names unchecked)."""
    obj = load_checkpoint(path)
    if family is not None:
        return unwrap_state_dict(obj, family, where=path)
    return _find_state_dict(obj, path)[0]


__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "read_checkpoint",
    "unwrap_state_dict",
]
