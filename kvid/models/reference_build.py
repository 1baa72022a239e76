"""The architecture of a reference configuration, without weights.

`kvid.models.from_reference` builds a family's kvid model from a reference configuration and loads
the reference PyTorch weights into it. A workdir written from a reference checkpoint (`kvid-port`)
records that configuration in its `model.json` (`reference`: family, constructor, num_frames,
image_size, normalization); `build_reference_model` rebuilds the same Keras model, with the same
layers in the same order, so that `export/float.weights.h5` loads into it:

    reference = kvid.data.workdir.load_workdir(path).reference
    model = build_reference_model(reference)
    model.load_weights(os.path.join(path, "export", "float.weights.h5"))

Each family's part repeats only the configuration half of its `build_from_reference` (in
`kvid/models/<family>/reference.py`): the reference constructor translated into kvid fields, then
the family's `build`; a test checks that both give the same weight shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvid.backend import keras


def _normalization(reference: Mapping[str, Any]) -> tuple[tuple, tuple]:
    normalization = reference.get("normalization") or {}
    mean = normalization.get("mean") or (0.0, 0.0, 0.0)
    std = normalization.get("std") or (1.0, 1.0, 1.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _mobile_former(reference, image_size, num_frames, mean, std):
    from kvid.models.mobile_former import reference as ref
    from kvid.models.mobile_former.presets import DEFAULTS

    if num_frames is not None:
        raise ValueError(
            "build_reference_model(mobile_former): an image reference has no num_frames "
            "(a video model inflated from it is built by kvid.models.mobile_former.inflate)"
        )
    kwargs = dict(reference["constructor"]["kwargs"])
    num_classes = kwargs.pop("num_classes", 1000)
    cfg = dict(DEFAULTS, **ref.reference_config(kwargs, image_size, mean, std))
    return "mobile_former_reference", cfg, num_classes, ref.build


def _dualformer(reference, image_size, num_frames, mean, std):
    from kvid.models.dualformer import reference as ref
    from kvid.models.dualformer.model import check_config
    from kvid.models.dualformer.presets import DEFAULTS

    constructor = reference["constructor"]
    kwargs = dict(constructor.get("backbone_kwargs", constructor.get("kwargs", {})))
    head = constructor.get("head_kwargs")
    num_classes = head["num_classes"] if head else None
    kwargs.pop("num_classes", None)
    cfg = dict(DEFAULTS, **ref.reference_config(kwargs, image_size, num_frames, mean, std))
    check_config("dualformer_reference", cfg, exact_pyramids=False)
    return "dualformer_reference", cfg, num_classes, ref.build


def _xvit(reference, image_size, num_frames, mean, std):
    from kvid.models.xvit import reference as ref
    from kvid.models.xvit.model import check_config
    from kvid.models.xvit.presets import DEFAULTS

    constructor = reference["constructor"]
    if image_size not in (None, 224):
        raise ValueError(
            f"build_reference_model(xvit): image_size={image_size!r} is not supported "
            "(supported: 224)."
        )
    cfg = dict(DEFAULTS, **ref.reference_config(constructor, num_frames, mean, std))
    check_config("xvit_reference", cfg)
    num_classes = int(constructor.get("cfg", {}).get("MODEL.NUM_CLASSES", 400))
    return "xvit_reference", cfg, num_classes, ref.build


def _posmlp(reference, image_size, num_frames, mean, std):
    from kvid.models.posmlp import reference as ref
    from kvid.models.posmlp.model import resolve_config

    cfg_in = reference["constructor"]["cfg"]
    num_classes = int(cfg_in.get("MODEL", {}).get("NUM_CLASSES", 400))
    cfg = resolve_config(
        "posmlp_video_s16", ref.reference_config(cfg_in, image_size, num_frames, mean, std)
    )
    return "posmlp_reference", cfg, num_classes, ref.build


def _inflated(reference, image_size, num_frames, mean, std, num_classes):
    """A Video Mobile-Former inflated from an image reference (`"inflate": true`), with the
    default (2+1)D layout of `kvid.models.mobile_former.inflate.inflate_from_reference`."""
    from kvid.models.mobile_former.inflate import inflated_config
    from kvid.models.mobile_former.model import build

    if reference.get("family") != "mobile_former" or not num_frames:
        raise ValueError(
            "build_reference_model: an inflated reference is a mobile_former one with num_frames."
        )
    cfg, reference_classes = inflated_config(
        reference,
        int(num_frames),
        image_size=None if image_size is None else int(image_size),
        input_mean=mean,
        input_std=std,
    )
    return build("mobile_former_inflated", cfg, num_classes or reference_classes)


_FAMILIES = {
    "mobile_former": _mobile_former,
    "dualformer": _dualformer,
    "xvit": _xvit,
    "posmlp": _posmlp,
}


def build_reference_model(
    reference: Mapping[str, Any],
    image_size: int | None = None,
    num_frames: int | None = None,
    num_classes: int | None = None,
) -> keras.Model:
    """Builds the kvid model of a reference configuration, with freshly initialised weights.

    Args:
      reference: `{"family", "constructor"}` as `from_reference` takes it, optionally with
        `num_frames`, `image_size` and `normalization` ({"mean", "std"}) as a ported workdir's
        `model.json` records them; with `"inflate": true`, the Video Mobile-Former that
        `kvid.models.mobile_former.inflate.inflate_from_reference` builds from an image reference.
      image_size, num_frames: the input (default: the reference's entries, else as
        `from_reference` resolves them).
      num_classes: classifier width (default: the reference classifier's). Another width gives
        the same backbone with a new classifier, e.g. for fine-tuning on other classes.

    Returns:
      The model `from_reference(reference, state_dict, ...)` would build, without its weights.
    """
    family = reference.get("family")
    if family not in _FAMILIES:
        raise ValueError(
            f"build_reference_model: unsupported family {family!r}; supported: {sorted(_FAMILIES)}."
        )
    if image_size is None:
        image_size = reference.get("image_size")
    if num_frames is None and (family != "mobile_former" or reference.get("inflate")):
        num_frames = reference.get("num_frames")
    mean, std = _normalization(reference)
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}.")
    if reference.get("inflate"):
        return _inflated(reference, image_size, num_frames, mean, std, num_classes)
    name, cfg, reference_classes, build = _FAMILIES[family](
        reference,
        None if image_size is None else int(image_size),
        None if num_frames is None else int(num_frames),
        mean,
        std,
    )
    return build(name, cfg, num_classes or reference_classes)


def reference_fields(reference: Mapping[str, Any]) -> dict[str, Any]:
    """The kvid fields (`kvid.models.create` overrides of the family's model) of a reference
    configuration at its recorded input; an inflated reference gives the Video Mobile-Former's."""
    family = reference.get("family")
    if family not in _FAMILIES:
        raise ValueError(f"unsupported reference family {family!r}")
    mean, std = _normalization(reference)
    image_size = reference.get("image_size")
    if reference.get("inflate"):
        # a Video Mobile-Former inflated from an image checkpoint (kvid-port --inflate)
        from kvid.models.mobile_former.inflate import inflated_config

        fields, _ = inflated_config(
            reference,
            int(reference["num_frames"]),
            image_size=None if image_size is None else int(image_size),
            input_mean=mean,
            input_std=std,
        )
        return fields
    num_frames = None if family == "mobile_former" else reference.get("num_frames")
    _, fields, _, _ = _FAMILIES[family](
        reference,
        None if image_size is None else int(image_size),
        None if num_frames is None else int(num_frames),
        mean,
        std,
    )
    return fields


__all__ = ["build_reference_model", "reference_fields"]
