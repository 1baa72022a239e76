"""Weights of one kvid model into another of the same architecture: fine-tuning's starting point.

`transfer_weights(source, target)` copies every weight of `source` into the weight of `target`
that has the same path (layer name + weight name). Weights whose shape depends on the input are
resized the way the papers' code resizes them, by per-family hooks keyed by layer class
(`kvid/models/<family>/transfer.py`):

- XViT (`SpaceTimeEmbedding`): the spatial position embedding's patch grid bicubically (the class
  token's entry kept), as XViT's `VisionTransformer` and timm's `resize_pos_embed` do; the temporal
  embedding linearly along time.
- PosMLP-Video (`PositionalGating`) and DualFormer's optional window bias (`LocalWindowAttention`):
  the relative-position tables as a `(2t-1, 2h-1, 2w-1)` grid of offsets, linearly along time and
  bicubically in space (Swin's resize of its bias table), and PosMLP's per-token bias the same way.
- DualFormer's optional absolute embedding (`PositionEmbedding`): spatial bicubic, temporal linear.
  Its GP-MSA pooling kernels follow the input size and cannot be resized (an error says which
  pyramid sizes keep them).
- Mobile-Former: no position table (its tokens do not depend on the input size); the Edge TPU
  form's bridges map each frame's grid cells and cannot change the number of frames.

The classification head (the `Dense` that produces the logits) is copied only when asked, and
then its shape must match. Anything else that cannot be mapped raises a `TransferError` naming the
layer: nothing is skipped silently.

Interpolation follows PyTorch's `F.interpolate(..., align_corners=False)` (bicubic with a = -0.75,
edges clamped), so a checkpoint resized here equals one resized by the reference code.
`build_workdir_model` rebuilds the model of any workdir: a trained one from its preset and
overrides, a ported one from its reference configuration; `workdir_architecture` gives both as a
preset and overrides, which a fine-tuned model is built from.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from kvid.backend import keras
from kvid.models import reference_build

# A hook resizes one weight: (weight name inside the layer, source value, source layer, target
# layer, target shape) -> the value for the target. It raises TransferError when it cannot.
Hook = Callable[[str, np.ndarray, Any, Any, tuple], np.ndarray]
_CUBIC_A = -0.75  # PyTorch's bicubic coefficient (timm and the reference code resize with it)


class TransferError(ValueError):
    """A weight of the source model has no place in the target model, or the other way round."""


@dataclasses.dataclass
class TransferReport:
    """What `transfer_weights` did, weight by weight (paths are `layer/weight`).

    Attributes:
      copied: weights copied unchanged.
      interpolated: (path, source shape, target shape) of the weights resized.
      reinitialized: weights of the target kept as initialised (the new classification head).
      head: name of the classification head layer, or None when the model has none.
    """

    copied: list[str] = dataclasses.field(default_factory=list)
    interpolated: list[tuple[str, tuple, tuple]] = dataclasses.field(default_factory=list)
    reinitialized: list[str] = dataclasses.field(default_factory=list)
    head: str | None = None

    def summary(self) -> str:
        """One line: counts, and every interpolated or re-initialised weight by name."""
        parts = [f"copied {len(self.copied)} weights"]
        if self.interpolated:
            resized = ", ".join(
                f"{path} {list(before)} -> {list(after)}"
                for path, before, after in self.interpolated
            )
            parts.append(f"interpolated {len(self.interpolated)} ({resized})")
        if self.reinitialized:
            parts.append(
                f"re-initialised {len(self.reinitialized)} ({', '.join(self.reinitialized)})"
            )
        return "; ".join(parts)


# ------------------------------------------------------------------------------------------------
# Interpolation (PyTorch's align_corners=False conventions)
# ------------------------------------------------------------------------------------------------
def _cubic_weights(t: np.ndarray, a: float = _CUBIC_A) -> np.ndarray:
    """Keys' cubic convolution weights of the 4 taps around a point at fraction `t` in [0, 1)."""

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def resize_matrix(in_size: int, out_size: int, method: str) -> np.ndarray:
    """`(out_size, in_size)` matrix of a 1-D resize: "linear" or "cubic", align_corners=False.

    Equals PyTorch's `F.interpolate(mode="linear" | "bicubic", align_corners=False)` along one
    axis (bicubic is separable): sample `i` reads source position `(i + 0.5) * in / out - 0.5`,
    out-of-range taps are clamped to the edge. Equal sizes give the identity.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize_matrix: sizes must be positive, got {in_size} -> {out_size}")
    scale = in_size / out_size
    matrix = np.zeros((out_size, in_size), np.float64)
    position = (np.arange(out_size) + 0.5) * scale - 0.5
    if method == "linear":
        position = np.maximum(position, 0.0)
        low = np.floor(position).astype(int)
        frac = position - low
        high = np.minimum(low + 1, in_size - 1)
        rows = np.arange(out_size)
        np.add.at(matrix, (rows, low), 1.0 - frac)
        np.add.at(matrix, (rows, high), frac)
    elif method == "cubic":
        low = np.floor(position).astype(int)
        weights = _cubic_weights(position - low)
        for tap in range(4):
            columns = np.clip(low - 1 + tap, 0, in_size - 1)
            np.add.at(matrix, (np.arange(out_size), columns), weights[:, tap])
    else:
        raise ValueError(f"resize_matrix: method {method!r} is not 'linear' or 'cubic'")
    return matrix


def resize_grid(values: np.ndarray, size: Sequence[int], methods: Sequence[str]) -> np.ndarray:
    """Resizes the leading `len(size)` axes of `values` (a grid of vectors), one axis at a time.

    Args:
      values: `(*grid, *channels)`.
      size: the new grid.
      methods: "linear" or "cubic" per grid axis ("cubic" on two axes is PyTorch's bicubic).
    """
    values = np.asarray(values, np.float64)
    for axis, (new, method) in enumerate(zip(size, methods)):
        if values.shape[axis] != new:
            matrix = resize_matrix(values.shape[axis], int(new), method)
            values = np.moveaxis(np.tensordot(matrix, values, axes=([1], [axis])), 0, axis)
    return values


def resize_relative_table(
    table: np.ndarray, window: Sequence[int], new_window: Sequence[int]
) -> np.ndarray:
    """A `((2t-1)(2h-1)(2w-1), groups)` relative-position table of a `(t, h, w)` window, resized
    to `new_window`: offsets linearly along time, bicubically in space (Swin's table resize)."""
    shape = [2 * int(k) - 1 for k in window]
    new_shape = [2 * int(k) - 1 for k in new_window]
    grid = np.asarray(table).reshape(*shape, -1)
    resized = resize_grid(grid, new_shape, ("linear", "cubic", "cubic"))
    return resized.reshape(math.prod(new_shape), -1)


def resize_window_bias(
    bias: np.ndarray, window: Sequence[int], new_window: Sequence[int]
) -> np.ndarray:
    """A per-token bias of a `(t, h, w)` window (raster order) resized to `new_window`."""
    grid = np.asarray(bias).reshape(*(int(k) for k in window), 1)
    resized = resize_grid(grid, [int(k) for k in new_window], ("linear", "cubic", "cubic"))
    return resized.reshape(-1)


# ------------------------------------------------------------------------------------------------
# Transfer
# ------------------------------------------------------------------------------------------------
def _hooks() -> dict[type, Hook]:
    """Layer class -> resize hook, from every family (imported here: they import this module)."""
    from kvid.models.dualformer import transfer as dualformer_transfer
    from kvid.models.mobile_former import transfer as mobile_former_transfer
    from kvid.models.posmlp import transfer as posmlp_transfer
    from kvid.models.xvit import transfer as xvit_transfer

    hooks: dict[type, Hook] = {}
    for module in (xvit_transfer, posmlp_transfer, dualformer_transfer, mobile_former_transfer):
        hooks.update(module.HOOKS)
    return hooks


def _weight_name(layer: keras.layers.Layer, variable) -> str:
    """A weight's name inside its layer (`proj/kernel`): the variable name without the layer's
    scope and the `:0` suffix."""
    name = variable.name.rsplit(":", 1)[0]
    prefix = layer.name + "/"
    return name[len(prefix) :] if name.startswith(prefix) else name


def _layer_weights(model: keras.Model) -> dict[str, tuple[keras.layers.Layer, dict[str, Any]]]:
    """layer name -> (layer, {weight name: variable}) for the layers that hold weights."""
    layers = {}
    for layer in model.layers:
        if layer.weights:
            layers[layer.name] = (layer, {_weight_name(layer, w): w for w in layer.weights})
    return layers


def head_layer(model: keras.Model) -> str | None:
    """The classification head: the `Dense` layer that produces the model's output, or None."""
    outputs = model.outputs
    if len(outputs) != 1:
        return None
    layer = outputs[0]._keras_history.layer
    return layer.name if isinstance(layer, keras.layers.Dense) else None


def transfer_weights(
    source_model: keras.Model,
    target_model: keras.Model,
    *,
    keep_head: bool | None = None,
) -> TransferReport:
    """Copies `source_model`'s weights into `target_model` by path; resizes input-size tables.

    Args:
      source_model: the trained (or ported) model.
      target_model: the same architecture, possibly for another input size or number of
        classes, freshly built (its head's initial weights are kept when the head is new).
      keep_head: copy the classification head (its shape must then match); False keeps the
        target's new head; None (default) keeps the source's head when the shapes match.

    Returns:
      What was copied, interpolated and left initialised.

    Raises:
      TransferError: a layer or weight exists on one side only, or changed shape in a way no
        family hook can map; the message names the layer.
    """
    hooks = _hooks()
    source = _layer_weights(source_model)
    target = _layer_weights(target_model)
    only_source = [name for name in source if name not in target]
    only_target = [name for name in target if name not in source]
    if only_source or only_target:
        side, other, names, layers = (
            ("source", "target", only_source, source)
            if only_source
            else ("target", "source", only_target, target)
        )
        more = len(only_source) + len(only_target) - 1
        raise TransferError(
            f"layer {names[0]} ({type(layers[names[0]][0]).__name__}) of the {side} model has no "
            f"layer of that name in the {other} model" + (f" ({more} more differ)" if more else "")
        )
    head = head_layer(target_model)
    source_head = head_layer(source_model)
    if head != source_head:
        raise TransferError(
            f"the target's classification head is {head!r}, the source's {source_head!r}"
        )
    if head is not None and keep_head is None:
        keep_head = all(
            tuple(variable.shape) == tuple(source[head][1][name].shape)
            for name, variable in target[head][1].items()
        )
    report = TransferReport(head=head)
    assignments = []
    for layer_name, (target_layer, target_variables) in target.items():
        source_layer, source_variables = source[layer_name]
        if set(source_variables) != set(target_variables):
            missing = sorted(set(source_variables) ^ set(target_variables))
            raise TransferError(
                f"layer {layer_name} ({type(target_layer).__name__}): weights {missing} exist in "
                "only one of the two models"
            )
        for weight_name, variable in target_variables.items():
            path = f"{layer_name}/{weight_name}"
            if layer_name == head and not keep_head:
                report.reinitialized.append(path)
                continue
            value = np.asarray(source_variables[weight_name].numpy())
            shape = tuple(int(d) for d in variable.shape)
            if value.shape == shape:
                report.copied.append(path)
            elif layer_name == head:
                raise TransferError(
                    f"layer {layer_name}: the classification head has shape {list(value.shape)} "
                    f"in the source and {list(shape)} here; it can only be re-initialised"
                )
            else:
                hook = next(
                    (hooks[cls] for cls in type(target_layer).__mro__ if cls in hooks), None
                )
                if hook is None:
                    raise TransferError(
                        f"layer {layer_name} ({type(target_layer).__name__}): weight "
                        f"{weight_name} is {list(value.shape)} in the source and {list(shape)} "
                        "here, and kvid knows no way to resize it"
                    )
                resized = np.asarray(hook(weight_name, value, source_layer, target_layer, shape))
                if resized.shape != shape:
                    raise TransferError(
                        f"layer {layer_name}: resizing {weight_name} gave {list(resized.shape)}, "
                        f"not {list(shape)}"
                    )
                value = resized
                report.interpolated.append(
                    (path, tuple(source_variables[weight_name].shape), shape)
                )
            assignments.append((variable, value.astype(variable.dtype.as_numpy_dtype)))
    keras.backend.batch_set_value(assignments)
    return report


# ------------------------------------------------------------------------------------------------
# The model of a workdir
# ------------------------------------------------------------------------------------------------
def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples presets use, recursively."""
    if isinstance(value, list | tuple):
        return tuple(_tuples(item) for item in value)
    return value


def workdir_overrides(workdir) -> dict[str, Any]:
    """A trained workdir's `kvid.models.create` overrides (model.json's, lists as tuples)."""
    return {key: _tuples(value) for key, value in (workdir.raw.get("overrides") or {}).items()}


def workdir_architecture(workdir) -> tuple[str, dict[str, Any]]:
    """`(preset, overrides)` that `kvid.models.create` builds a workdir's architecture from.

    A trained workdir's are its own (model.json). A ported one's reference configuration is
    translated into kvid fields and written as the closest preset of its family plus the fields
    that differ, so a model fine-tuned from it is an ordinary kvid model at any input size (the
    reference configuration itself may tie its windows to one input).

    Raises:
      ValueError: the preset is unknown, or the reference configuration is not supported.
    """
    from kvid import models

    if workdir.reference is None:
        if workdir.preset not in models.list_presets():
            raise ValueError(
                f"workdir {workdir.path}: model.json names preset {workdir.preset!r}, which kvid "
                "does not have"
            )
        return workdir.preset, workdir_overrides(workdir)
    try:
        fields = {
            key: _tuples(value)
            for key, value in reference_build.reference_fields(workdir.reference).items()
        }
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"workdir {workdir.path}: model.json's reference configuration: {error}"
        ) from error

    def differences(preset: str) -> dict[str, Any]:
        preset_fields = models.get_preset(preset)
        return {
            key: value
            for key, value in fields.items()
            if key in preset_fields and _tuples(preset_fields[key]) != value
        }

    presets = models.list_presets(workdir.reference["family"])
    best = min(presets, key=lambda name: (len(differences(name)), name))
    return best, differences(best)


def build_workdir_model(
    workdir,
    *,
    num_classes: int | None = None,
    num_frames: int | None = None,
    image_size: int | Sequence[int] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> keras.Model:
    """The model of a workdir (`kvid.data.workdir.load_workdir`), freshly initialised.

    Its weights, `export/float.weights.h5`, load into the model built with the defaults: a
    trained workdir's from its preset and overrides, a ported one's from its reference
    configuration (`kvid.models.reference_build`). Another input or overrides build
    `workdir_architecture`'s preset with them.

    Args:
      workdir: the parsed workdir.
      num_classes: classifier width (default: the workdir's).
      num_frames, image_size: another input (default: the workdir's).
      overrides: more preset fields to change.

    Raises:
      ValueError: the workdir's preset is unknown, or the model rejects the input or overrides.
    """
    from kvid import models

    num_classes = workdir.num_classes if num_classes is None else num_classes
    same_input = num_frames in (None, workdir.num_frames) and (
        image_size is None or _side(image_size, workdir.path) == workdir.image_size[0]
    )
    if workdir.reference is not None and same_input and not overrides:
        from kvid.models.reference_build import build_reference_model

        return build_reference_model(workdir.reference, num_classes=num_classes)
    preset, kwargs = workdir_architecture(workdir)
    kwargs.update(overrides or {})
    if num_frames is not None:
        kwargs["num_frames"] = int(num_frames)
    if image_size is not None:
        stored = kwargs.get("image_size", models.get_preset(preset).get("image_size"))
        side = _side(image_size, workdir.path)
        kwargs["image_size"] = side if isinstance(stored, int) else (side, side)
    return models.create(preset, num_classes=num_classes, **kwargs)


def _side(image_size: int | Sequence[int], where: str) -> int:
    """The side of a square input size."""
    if isinstance(image_size, int):
        return image_size
    height, width = (int(v) for v in image_size)
    if height != width:
        raise ValueError(f"{where}: the model takes square frames, not {height}x{width}")
    return height


__all__ = [
    "TransferError",
    "TransferReport",
    "build_workdir_model",
    "head_layer",
    "resize_grid",
    "resize_matrix",
    "resize_relative_table",
    "resize_window_bias",
    "transfer_weights",
    "workdir_architecture",
    "workdir_overrides",
]
