"""A paper's official PyTorch checkpoint -> a kvid workdir that kvid-convert, kvid-eval and
`kvid-train --init_from` take.

    kvid-port --family=posmlp --config=posmlp_video_s16_ssv1 \\
        --checkpoint=checkpoint_epoch_00050.pyth --workdir=/tmp/posmlp_ssv1 --labels=labels.txt

The checkpoint is read without PyTorch and without running code from it
(`kvid.models.checkpoints`): the official layouts of each family (timm, mmcv, PySlowFast, a DDP
`module.` prefix) are unwrapped to the reference state_dict. `--config` is the reference
configuration the checkpoint was trained with: a released configuration's name
(`kvid.models.list_reference_configs()`), or a JSON file with `family` and `constructor` (the
layout of the golden JSON files, optionally with `num_frames`, `image_size` and `normalization`).
The kvid model is built with `kvid.models.from_reference`; every tensor of the checkpoint must be
used and every weight of the model found, or the port fails naming them.

The workdir holds what a trained one holds for the deploy tools: model.json (with `reference`,
the configuration that rebuilds the model: `kvid.models.reference_build`), label_map.json,
export/float (SavedModel) and export/float.weights.h5; and port.json, where the weights came from.
docs/porting.md gives the command for each family.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from absl import flags

import kvid.cli

TOOL = "kvid-port"
PORT_JSON = "port.json"


def define_flags(flag_values: flags.FlagValues) -> list[str]:
    """Defines kvid-port's flags on `flag_values` and returns their names."""
    before = set(flag_values)
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "family", None, "Model family: mobile_former, dualformer, xvit or posmlp.", **fv
    )
    flags.DEFINE_string(
        "config",
        None,
        "Reference configuration: a released one's name (kvid.models.list_reference_configs()) "
        "or a JSON file with family and constructor (the golden JSON layout).",
        **fv,
    )
    flags.DEFINE_string(
        "checkpoint",
        None,
        "The official checkpoint (.pth/.pyth/.pt/.ckpt, .npz, .safetensors).",
        **fv,
    )
    flags.DEFINE_string("workdir", None, "Output workdir (must not hold a model.json yet).", **fv)
    flags.DEFINE_integer(
        "num_frames", None, "Frames of the input clip (default: the configuration's).", **fv
    )
    flags.DEFINE_integer(
        "image_size", None, "Input height and width (default: the configuration's).", **fv
    )
    flags.DEFINE_string(
        "labels",
        None,
        "Class names: text (one a line) or JSON (a list, or {classes: [...]}); default "
        "class_0..class_N-1.",
        **fv,
    )
    flags.DEFINE_list(
        "input_mean",
        None,
        "Per-channel mean of the [0, 1] input the checkpoint was trained on (default: the "
        "configuration's normalization, else none).",
        **fv,
    )
    flags.DEFINE_list(
        "input_std",
        None,
        "Per-channel std of the [0, 1] input (default: the configuration's normalization, else 1).",
        **fv,
    )
    flags.DEFINE_integer(
        "frame_stride", 1, "Frame stride of the clips, recorded in model.json.", **fv
    )
    flags.DEFINE_string(
        "data_dir", None, "Dataset recorded in model.json (kvid-convert and kvid-eval).", **fv
    )
    flags.DEFINE_bool(
        "inflate",
        False,
        "Mobile-Former: build a Video Mobile-Former from the image checkpoint "
        "(kvid.models.mobile_former.inflate).",
        **fv,
    )
    return sorted(set(flag_values) - before)


def _floats(values, flag: str) -> tuple[float, float, float]:
    try:
        parsed = tuple(float(v) for v in values)
    except ValueError:
        raise ValueError(f"--{flag}={','.join(values)}: not numbers") from None
    if len(parsed) != 3:
        raise ValueError(f"--{flag}={','.join(values)}: give 3 values (R,G,B)")
    return parsed


def load_reference(config: str, family: str) -> tuple[dict[str, Any], str]:
    """The reference configuration `--config` names, and how to name it in messages.

    Raises:
      ValueError: not a file nor a known name, unreadable JSON, no constructor, another family.
    """
    import kvid.models

    if os.path.isfile(config) or config.endswith(".json"):
        if not os.path.isfile(config):
            raise ValueError(f"--config={config} does not exist")
        try:
            with open(config, encoding="utf-8") as file:
                reference = json.load(file)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"--config={config} is not valid JSON: {error}") from None
        where = f"--config={config}"
    elif hasattr(kvid.models, "list_reference_configs"):
        names = kvid.models.list_reference_configs()
        if config not in names:
            raise ValueError(
                f"--config={config} is neither a JSON file nor a released configuration "
                f"({', '.join(names)})"
            )
        reference = kvid.models.reference_config(config)
        where = f"--config={config}"
    else:  # a kvid without named configurations: JSON files only
        raise ValueError(f"--config={config} does not exist (give a JSON file)")
    if not isinstance(reference, dict) or "constructor" not in reference:
        raise ValueError(f"{where} has no 'constructor' (the reference constructor's arguments)")
    reference.setdefault("family", family)
    if reference["family"] != family:
        raise ValueError(f"{where} is a {reference['family']} configuration, not --family={family}")
    return reference, where


def _inflate_builder():
    """`kvid.models.mobile_former.inflate.inflate_from_reference`, if this kvid has it:
    `(reference, state_dict, num_frames=, image_size=, input_mean=, input_std=) -> model`."""
    try:
        from kvid.models.mobile_former import inflate
    except ImportError:
        raise ValueError("--inflate: not supported by this kvid") from None
    if not callable(getattr(inflate, "inflate_from_reference", None)):
        raise ValueError("--inflate: not supported by this kvid")
    return inflate.inflate_from_reference


def build_model(reference, state_dict, where: str, checkpoint: str, *, inflate: bool, **inputs):
    """`from_reference` (or the inflation) with the porting errors turned into one line."""
    import kvid.models

    build = _inflate_builder() if inflate else kvid.models.from_reference
    try:
        return build(reference, state_dict, **inputs)
    except KeyError as error:
        name = error.args[0] if error.args else error
        raise ValueError(
            f"--checkpoint={checkpoint} does not fit {where}: the model needs a tensor the "
            f"checkpoint lacks ({name})"
        ) from None
    except ValueError as error:  # unused tensors (named), a shape or an option that differs
        raise ValueError(f"--checkpoint={checkpoint} does not fit {where}: {error}") from None


def port(
    *,
    family: str,
    config: str,
    checkpoint: str,
    workdir: str,
    num_frames: int | None = None,
    image_size: int | None = None,
    labels: str | None = None,
    input_mean=None,
    input_std=None,
    frame_stride: int = 1,
    data_dir: str | None = None,
    inflate: bool = False,
) -> dict[str, Any]:
    """Ports `checkpoint` into `workdir` and returns port.json's contents.

    Raises:
      ValueError, OSError: bad input, named in the message (one line).
    """
    # What needs no TensorFlow is checked before it loads (kvid.models imports it).
    if os.path.exists(os.path.join(workdir, "model.json")):
        raise ValueError(f"--workdir={workdir} already holds a model.json; give a new folder")
    if os.path.isfile(workdir):
        raise ValueError(f"--workdir={workdir} is a file")
    if os.path.isdir(checkpoint):
        raise ValueError(f"--checkpoint={checkpoint} is a directory, not a checkpoint file")
    if not os.path.exists(checkpoint):
        raise ValueError(f"--checkpoint={checkpoint} does not exist")
    import kvid.models
    from kvid.models import checkpoints

    if family not in kvid.models.list_families():
        raise ValueError(f"--family={family}: not one of {', '.join(kvid.models.list_families())}")
    if family == "mobile_former" and not inflate:
        raise ValueError(
            "--family=mobile_former: the checkpoints are image models; a workdir takes clips, "
            "so pass --inflate to build a Video Mobile-Former from one"
        )
    if inflate and family != "mobile_former":
        raise ValueError(f"--inflate: only for --family=mobile_former, not {family}")
    if inflate and not num_frames:
        raise ValueError("--inflate: give --num_frames, the frames of the video model's clips")
    state_dict = checkpoints.read_checkpoint(checkpoint, family)
    reference, where = load_reference(config, family)
    if inflate:
        _inflate_builder()  # before the long build: fails at once on a kvid without inflation

    normalization = reference.get("normalization") or {}
    mean = _floats(input_mean, "input_mean") if input_mean else normalization.get("mean")
    std = _floats(input_std, "input_std") if input_std else normalization.get("std")
    mean = tuple(float(v) for v in (mean or (0.0, 0.0, 0.0)))
    std = tuple(float(v) for v in (std or (1.0, 1.0, 1.0)))
    num_frames = num_frames or reference.get("num_frames")
    image_size = image_size or reference.get("image_size")
    label_names = None
    if labels:
        from kvid.data.workdir import read_labels

        label_names = read_labels(labels)

    model = build_model(
        reference,
        state_dict,
        where,
        checkpoint,
        inflate=inflate,
        image_size=image_size,
        num_frames=num_frames,
        input_mean=mean,
        input_std=std,
    )
    input_shape = [int(d) for d in model.input_shape[1:]]
    if len(input_shape) != 4:
        raise ValueError(f"{where}: builds a model of input {input_shape}, not a clip [T, H, W, 3]")
    num_classes = int(model.output_shape[-1])
    if label_names is None:
        label_names = [f"class_{i}" for i in range(num_classes)]
    elif len(label_names) != num_classes:
        raise ValueError(
            f"--labels={labels} names {len(label_names)} classes; the checkpoint's classifier "
            f"has {num_classes}"
        )
    frames, height, width, _ = input_shape
    recorded = {
        "family": family,
        "constructor": reference["constructor"],
        "num_frames": frames,
        "image_size": height,
        "normalization": {"mean": list(mean), "std": list(std)},
        "config": config,
    }
    if inflate:
        recorded["inflate"] = True
    summary = {
        "checkpoint": os.path.abspath(checkpoint),
        "sha256": _sha256(checkpoint),
        "config": config,
        "family": family,
        "num_tensors": len(state_dict),
        "num_classes": num_classes,
        "input_shape": input_shape,
    }
    _write_workdir(
        model, workdir, recorded, label_names, input_shape, frame_stride, data_dir, summary
    )
    return summary


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_workdir(
    model, workdir, reference, labels, input_shape, frame_stride, data_dir, summary
) -> None:
    """model.json, label_map.json, export/float (SavedModel), export/float.weights.h5, port.json,
    each written atomically, model.json last (its presence marks a finished port)."""
    from kvid.data.workdir import LABEL_MAP_JSON, MODEL_JSON, model_json, write_json
    from kvid_training import workdir as workdir_lib

    os.makedirs(os.path.join(workdir, "export"), exist_ok=True)
    workdir_lib.save_weights(model, os.path.join(workdir, "export", "float.weights.h5"))
    workdir_lib.export_saved_model(model, os.path.join(workdir, "export", "float"), input_shape)
    write_json(os.path.join(workdir, LABEL_MAP_JSON), list(labels))
    write_json(os.path.join(workdir, PORT_JSON), summary)
    frames, height, width, _ = input_shape
    write_json(
        os.path.join(workdir, MODEL_JSON),
        model_json(
            preset=f"{reference['family']}_reference",
            num_classes=len(labels),
            overrides={},
            num_frames=frames,
            image_size=(height, width),
            frame_stride=frame_stride,
            labels=labels,
            order_pairs=[],
            normalization=dict(reference["normalization"]),
            data_dir=data_dir or "",
            reference=reference,
        ),
    )


def port_from_flags(values: flags.FlagValues) -> int:
    """The command on parsed flags."""
    missing = [
        name for name in ("family", "config", "checkpoint", "workdir") if not values[name].value
    ]
    if missing:
        raise ValueError(f"missing {', '.join('--' + name for name in missing)}")
    if values.frame_stride < 1:
        raise ValueError(f"--frame_stride={values.frame_stride}: must be at least 1")
    for name in ("num_frames", "image_size"):
        if values[name].value is not None and values[name].value < 1:
            raise ValueError(f"--{name}={values[name].value}: must be positive")
    summary = port(
        family=values.family,
        config=values.config,
        checkpoint=values.checkpoint,
        workdir=values.workdir,
        num_frames=values.num_frames,
        image_size=values.image_size,
        labels=values.labels,
        input_mean=values.input_mean,
        input_std=values.input_std,
        frame_stride=values.frame_stride,
        data_dir=values.data_dir,
        inflate=values.inflate,
    )
    frames, height, width, _ = summary["input_shape"]
    print(
        f"{TOOL}: {summary['num_tensors']} tensors of {values.checkpoint} -> {values.workdir} "
        f"({summary['family']}, {frames}x{height}x{width}, {summary['num_classes']} classes)"
    )
    return 0


def run() -> None:
    """Console-script entry point (`kvid-port`)."""
    kvid.cli.run_tool(TOOL, __doc__, define_flags, lambda argv: port_from_flags(flags.FLAGS))


if __name__ == "__main__":
    run()
