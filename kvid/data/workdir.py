"""The workdir contract: what `training/train.py` writes and the deploy tools read.

```
WORKDIR/model.json            preset, num_classes, overrides, input_shape [T, H, W, 3], labels,
                              order_pairs, normalization, data_dir,
                              input {num_frames, image_size, frame_stride},
                              reference (a ported workdir's only: see `model_json`)
WORKDIR/label_map.json        class names in label order
WORKDIR/export/float/         SavedModel, signature serving_default: "video" -> "logits"
WORKDIR/export/qat/           the same for the quantization-aware model (optional)
WORKDIR/export/{float,qat}.weights.h5   Keras weights of the same models
```
`model_json` builds the one `model.json` document and `load_workdir` parses it; both sides use
this module, so the format is written down once. Every error names the workdir and the file that
is missing or broken. (Training's own files, checkpoints and logs, are described in
`training/workdir.py`.)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

MODEL_JSON = "model.json"
LABEL_MAP_JSON = "label_map.json"
# The exported SavedModels' serving signature.
SIGNATURE_KEY = "serving_default"
INPUT_NAME = "video"
OUTPUT_NAME = "logits"
_REQUIRED_KEYS = ("num_classes", "input_shape", "labels")


class WorkdirError(ValueError):
    """The workdir is missing a file or a field that a command needs."""


def model_json(
    *,
    preset: str,
    num_classes: int,
    overrides: dict[str, Any],
    num_frames: int,
    image_size: Sequence[int],
    frame_stride: int,
    labels: Sequence[str],
    order_pairs: Sequence[Sequence[str]],
    normalization: dict[str, Any],
    data_dir: str,
    reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `model.json` document: how to rebuild the model and how to feed it.

    Args:
      preset: the kvid preset; `kvid.models.create(preset, num_classes, **overrides)` rebuilds
        the model whose weights are in `export/`.
      num_classes: classifier width.
      overrides: preset fields changed from the preset (they include the input size).
      num_frames, image_size, frame_stride: the clips the model was trained on: `num_frames`
        frames `frame_stride` apart, `image_size` (height, width).
      labels: class names in label order.
      order_pairs: class pairs that are each other's time reversal (evaluation reports them).
      normalization: {"mean", "std"} of the input normalisation inside the model (informative).
      data_dir: the dataset the model was trained on (for calibration and evaluation).
      reference: for a model ported from a reference checkpoint (`kvid-port`), the reference
        configuration it was built from: `{"family", "constructor", "num_frames", "image_size",
        "normalization": {"mean", "std"}}` (plus `"inflate"` for an image checkpoint inflated to
        video). `kvid.models.reference_build.build_reference_model(reference)` rebuilds the
        model whose weights are in `export/`; `preset` then names no registered preset.
        Omitted (the key is absent) for a trained workdir.
    """
    height, width = (int(v) for v in image_size)
    document = {
        "preset": preset,
        "num_classes": int(num_classes),
        "overrides": dict(overrides),
        "input_shape": [int(num_frames), height, width, 3],
        "labels": [str(label) for label in labels],
        "order_pairs": [list(pair) for pair in order_pairs],
        "normalization": dict(normalization),
        "data_dir": data_dir,
        "input": {
            "num_frames": int(num_frames),
            "image_size": [height, width],
            "frame_stride": int(frame_stride),
        },
    }
    if reference is not None:
        document["reference"] = dict(reference)
    return document


def write_json(file_path: str, value: Any) -> None:
    """Writes `value` as indented JSON, atomically (temporary file, then rename)."""
    tmp_path = file_path + ".tmp"
    with open(tmp_path, "w", encoding="utf-8") as file:
        json.dump(value, file, indent=2)
        file.write("\n")
    os.replace(tmp_path, file_path)


def is_saved_model(path: str) -> bool:
    """True when `path` is a directory holding a SavedModel."""
    return os.path.isfile(os.path.join(path, "saved_model.pb")) or os.path.isfile(
        os.path.join(path, "saved_model.pbtxt")
    )


@dataclasses.dataclass(frozen=True)
class Workdir:
    """A parsed workdir: the contents of `model.json` plus resolved export paths."""

    path: str
    preset: str | None
    num_classes: int
    input_shape: tuple[int, int, int, int]
    labels: tuple[str, ...]
    order_pairs: tuple[tuple[int, int], ...]
    normalization: dict[str, Any] | None
    data_dir: str | None
    frame_stride: int
    raw: dict[str, Any]
    # The reference configuration of a ported workdir (`model_json`'s `reference`); None for a
    # trained one.
    reference: dict[str, Any] | None = None

    @property
    def export_dir(self) -> str:
        return os.path.join(self.path, "export")

    @property
    def float_saved_model(self) -> str:
        return os.path.join(self.export_dir, "float")

    @property
    def qat_saved_model(self) -> str:
        return os.path.join(self.export_dir, "qat")

    @property
    def has_float(self) -> bool:
        return is_saved_model(self.float_saved_model)

    @property
    def has_qat(self) -> bool:
        return is_saved_model(self.qat_saved_model)

    @property
    def num_frames(self) -> int:
        return self.input_shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.input_shape[1], self.input_shape[2]

    def require_float(self) -> str:
        """Path of the float SavedModel; raises naming the workdir when it is absent."""
        if not self.has_float:
            raise WorkdirError(
                f"workdir {self.path}: no float SavedModel at {self.float_saved_model} "
                "(expected saved_model.pb; has training/train.py finished and exported?)"
            )
        return self.float_saved_model

    def require_data_dir(self) -> str:
        if not self.data_dir:
            raise WorkdirError(f"workdir {self.path}: {MODEL_JSON} has no 'data_dir'")
        if not os.path.isdir(self.data_dir):
            raise WorkdirError(
                f"workdir {self.path}: data_dir {self.data_dir!r} from {MODEL_JSON} does not exist"
            )
        return self.data_dir


def load_workdir(path: str) -> Workdir:
    """Parses `path/model.json`.

    Raises:
      WorkdirError: the directory or model.json is missing, unreadable, or lacks a required key.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isfile(path):
        raise WorkdirError(f"workdir {path} is a file; pass the folder training/train.py wrote")
    if not os.path.isdir(path):
        raise WorkdirError(f"workdir {path} does not exist")
    json_path = os.path.join(path, MODEL_JSON)
    if not os.path.isfile(json_path):
        raise WorkdirError(f"workdir {path}: missing {MODEL_JSON} (written by training/train.py)")
    try:
        with open(json_path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as error:
        raise WorkdirError(f"workdir {path}: {MODEL_JSON} is not valid JSON: {error}") from error
    missing = [key for key in _REQUIRED_KEYS if key not in raw]
    if missing:
        raise WorkdirError(f"workdir {path}: {MODEL_JSON} lacks {', '.join(missing)}")

    input_shape = tuple(int(d) for d in raw["input_shape"])
    if len(input_shape) != 4 or input_shape[-1] != 3:
        raise WorkdirError(
            f"workdir {path}: {MODEL_JSON} input_shape {list(input_shape)} is not [T, H, W, 3]"
        )
    labels = tuple(str(label) for label in raw["labels"])
    if len(labels) != int(raw["num_classes"]):
        raise WorkdirError(
            f"workdir {path}: {MODEL_JSON} has {len(labels)} labels but "
            f"num_classes={raw['num_classes']}"
        )
    input_info = raw.get("input") or {}
    data_dir = raw.get("data_dir")
    if data_dir and not os.path.isabs(data_dir):
        # A relative data_dir is taken relative to the workdir, not to wherever we run from.
        data_dir = os.path.join(path, data_dir)
    return Workdir(
        path=path,
        preset=raw.get("preset"),
        num_classes=int(raw["num_classes"]),
        input_shape=input_shape,  # type: ignore[arg-type]
        labels=labels,
        order_pairs=resolve_order_pairs(raw.get("order_pairs") or (), labels, json_path),
        normalization=raw.get("normalization"),
        data_dir=data_dir,
        frame_stride=int(input_info.get("frame_stride", 1)),
        raw=raw,
        reference=_read_reference(raw.get("reference"), json_path),
    )


def _read_reference(reference: Any, where: str) -> dict[str, Any] | None:
    """model.json's optional `reference`, checked to name a family and a constructor."""
    if reference is None:
        return None
    if not isinstance(reference, dict) or not {"family", "constructor"} <= set(reference):
        raise WorkdirError(f"{where}: 'reference' is not an object with 'family' and 'constructor'")
    return dict(reference)


def resolve_order_pairs(
    pairs: Sequence[Sequence[int | str]], labels: Sequence[str], where: str = "order_pairs"
) -> tuple[tuple[int, int], ...]:
    """Order pairs as class indices; each member may be an index or a class name (dataset.json
    and model.json store names)."""
    index = {name: i for i, name in enumerate(labels)}

    def resolve(member: int | str) -> int:
        if isinstance(member, str) and member in index:
            return index[member]
        try:
            value = int(member)
        except (TypeError, ValueError):
            raise WorkdirError(f"{where}: order pair member {member!r} is not a class") from None
        if not 0 <= value < len(labels):
            raise WorkdirError(f"{where}: order pair index {value} out of range")
        return value

    resolved = []
    for pair in pairs:
        if len(pair) != 2:
            raise WorkdirError(f"{where}: order pair {list(pair)} does not have two classes")
        resolved.append((resolve(pair[0]), resolve(pair[1])))
    return tuple(resolved)


def read_labels(path: str) -> list[str]:
    """Class names from a file: JSON (a list, or a dict with "classes"/"labels") or plain text
    with one name per line."""
    if not os.path.isfile(path):
        raise WorkdirError(f"labels file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(parsed, dict):
        for key in ("classes", "labels"):
            if key in parsed:
                return [str(name) for name in parsed[key]]
        raise WorkdirError(f"labels file {path}: JSON object has neither 'classes' nor 'labels'")
    if isinstance(parsed, list):
        return [str(name) for name in parsed]
    raise WorkdirError(f"labels file {path}: expected a JSON list or object")
