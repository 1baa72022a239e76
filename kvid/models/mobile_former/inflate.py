"""An image Mobile-Former checkpoint (`AAboys/MobileFormer`) inflated into a Video Mobile-Former.

The video model has the image model's blocks, widths, bridge and head, with (2+1)D depthwise
convolutions: every depthwise convolution of a bridged block gets a temporal depthwise kernel
after its spatial one, as in the video presets (presets.py). Inflation copies every image weight
into the same layer of the video model and starts each temporal kernel as the identity (centre
tap 1, the others 0), so that on a clip of T identical frames the video model computes what the
image model computes on that frame:

- the spatial convolutions, batch norms, dynamic ReLUs and Former->Mobile run per frame;
- Mobile->Former keeps the reference ("full") attention over all `T * H * W` positions: T equal
  copies of every key leave its softmax-weighted average unchanged;
- the head averages over frames and positions, which is the image model's spatial average;
- a `stem_temporal_kernel` > 1 stem (a `k x 3 x 3` convolution over stacked frames) gets the
  image stem kernel on its centre frame and zeros on the others.

The factorized bridge of the video presets is not used: it average-pools the keys, which the
image model does not do (to deploy in int8, fine-tune with `bridge_formulation="factorized"`).

    reference = kvid.models.reference_config("mobile_former_508m_in1k")
    video = inflate_from_reference(reference, state_dict, num_frames=8, image_size=224,
                                   input_mean=reference["normalization"]["mean"],
                                   input_std=reference["normalization"]["std"])
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kvid.backend import keras
from kvid.models.mobile_former.model import build
from kvid.models.mobile_former.presets import DEFAULTS, Block
from kvid.models.mobile_former.reference import build_from_reference, reference_config
from kvid.models.porting import StateDict


def _error(message: str) -> ValueError:
    return ValueError(f"inflate_from_reference(mobile_former): {message}")


def inflated_config(
    reference: Mapping,
    num_frames: int,
    image_size: int | None = None,
    input_mean=(0.0, 0.0, 0.0),
    input_std=(1.0, 1.0, 1.0),
    temporal_kernel: int = 3,
    time_halved_at: int | None = None,
    stem_temporal_kernel: int = 1,
) -> tuple[dict, int]:
    """The video model's kvid fields and classifier width for an image reference configuration.

    Args:
      reference: `{"family": "mobile_former", "constructor": {"kwargs": ...}}`.
      num_frames: frames of the video input.
      image_size: input resolution (default: the constructor's `img_size`, else 224).
      input_mean, input_std: normalization applied to the [0, 1] input.
      temporal_kernel: temporal taps of every bridged block's depthwise convolutions (odd).
      time_halved_at: the n-th spatially downsampling block (1-based) also halves time, as the
        video presets do at the 3rd; None keeps every frame.
      stem_temporal_kernel: frames the stem convolution spans (odd; 1: a per-frame stem).
    """
    if reference.get("family") != "mobile_former":
        raise _error(f"family {reference.get('family')!r} is not an image Mobile-Former.")
    for name, value in (("num_frames", num_frames), ("temporal_kernel", temporal_kernel),
                        ("stem_temporal_kernel", stem_temporal_kernel)):  # fmt: skip
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _error(f"{name} must be a positive int, got {value!r}.")
    for name, value in (("temporal_kernel", temporal_kernel),
                        ("stem_temporal_kernel", stem_temporal_kernel)):  # fmt: skip
        if value % 2 == 0:
            raise _error(f"{name} must be odd (a centre tap to start from), got {value}.")
    kwargs = dict(reference["constructor"]["kwargs"])
    num_classes = kwargs.pop("num_classes", 1000)
    cfg = dict(DEFAULTS, **reference_config(kwargs, image_size, input_mean, input_std))
    downsampling = [i for i, b in enumerate(cfg["blocks"]) if b.stride > 1]
    if time_halved_at is not None and not 1 <= time_halved_at <= len(downsampling):
        raise _error(
            f"time_halved_at={time_halved_at!r}: the model has {len(downsampling)} downsampling "
            "blocks (1-based), or None."
        )
    halved = downsampling[time_halved_at - 1] if time_halved_at else None
    if halved is not None and num_frames % 2:
        raise _error(f"num_frames={num_frames} must be even when time_halved_at is set.")
    blocks = []
    for index, block in enumerate(cfg["blocks"]):
        bridged = not (block.expand1 == 1 or block.expand2 == 0)
        blocks.append(
            Block(
                *block[:5],
                temporal_kernel=temporal_kernel if bridged else 1,
                temporal_stride=2 if index == halved else 1,
            )
        )
    cfg.update(
        num_frames=num_frames,
        image_input=False,
        blocks=tuple(blocks),
        stem_temporal_kernel=stem_temporal_kernel,
        bridge_formulation="full",
    )
    return cfg, num_classes


def build_inflated(reference: Mapping, num_frames: int, **options) -> keras.Model:
    """The inflated video model of an image reference configuration, without its weights.

    `options` are `inflated_config`'s (image_size, input_mean, input_std, temporal_kernel,
    time_halved_at, stem_temporal_kernel); the same options give the same layers and weight
    shapes as `inflate_from_reference`, so its saved weights load into this model.
    """
    cfg, num_classes = inflated_config(reference, num_frames, **options)
    return build("mobile_former_inflated", cfg, num_classes)


def _relative_names(layer) -> dict[str, object]:
    """A layer's weights by their name inside the layer (e.g. `spatial/depthwise_kernel`)."""
    out = {}
    for weight in layer.weights:
        name = weight.name.split(":")[0]
        out[name.split(f"{layer.name}/", 1)[-1]] = weight
    return out


def _inflate_weight(layer_name: str, name: str, video_shape, image_value) -> np.ndarray:
    """The video value of a weight that has no same-shaped image counterpart."""
    if image_value is None:
        if name.endswith("temporal/depthwise_kernel"):  # (k_t, 1, channels, 1)
            value = np.zeros(video_shape, np.float32)
            value[video_shape[0] // 2] = 1.0
            return value
        raise _error(f"layer {layer_name!r}: weight {name!r} has no image counterpart.")
    kh, kw, in_channels, filters = image_value.shape if image_value.ndim == 4 else (0,) * 4
    if layer_name == "stem" and tuple(video_shape) == (kh, kw, video_shape[2], filters):
        frames = video_shape[2] // in_channels  # TemporalStack: channel (frame, rgb), frame-major
        value = np.zeros(video_shape, np.float32)
        centre = frames // 2 * in_channels
        value[:, :, centre : centre + in_channels] = image_value
        return value
    raise _error(
        f"layer {layer_name!r}: weight {name!r} has shape {tuple(video_shape)}, the image "
        f"model's {image_value.shape}."
    )


def inflate_weights(image: keras.Model, video: keras.Model) -> None:
    """Copies every weight of `image` into the same layer of `video`; temporal kernels start as
    the identity. Every weight on either side must be accounted for."""
    image_layers = {layer.name: layer for layer in image.layers}
    used = set()
    for layer in video.layers:
        if not layer.weights:
            continue
        if layer.name not in image_layers:
            raise _error(f"the video model's layer {layer.name!r} is not in the image model.")
        image_weights = _relative_names(image_layers[layer.name])
        for name, weight in _relative_names(layer).items():
            source = image_weights.get(name)
            value = None if source is None else source.numpy()
            if value is None or value.shape != tuple(weight.shape):
                value = _inflate_weight(layer.name, name, tuple(weight.shape), value)
            weight.assign(value)
            if source is not None:
                used.add(id(source))
    left = [w.name for w in image.weights if id(w) not in used]
    if left:
        raise _error(f"{len(left)} image weights have no place in the video model: {left[:5]}")


def inflate_from_reference(
    reference: Mapping,
    state_dict: Mapping[str, np.ndarray],
    num_frames: int,
    image_size: int | None = None,
    input_mean=(0.0, 0.0, 0.0),
    input_std=(1.0, 1.0, 1.0),
    *,
    temporal_kernel: int = 3,
    time_halved_at: int | None = None,
    stem_temporal_kernel: int = 1,
) -> keras.Model:
    """Builds a Video Mobile-Former from an image Mobile-Former reference checkpoint.

    Args:
      reference: `{"family": "mobile_former", "constructor": {"kwargs": ...}}`, the image
        reference configuration (e.g. `kvid.models.reference_config("mobile_former_508m_in1k")`).
      state_dict: the image checkpoint, reference parameter name -> array (PyTorch layout);
        every entry must be consumed, as in `kvid.models.from_reference`.
      num_frames: frames of the video input.
      image_size: input resolution (default: the constructor's `img_size`, else 224).
      input_mean, input_std: normalization the model applies to its [0, 1] input (the released
        checkpoints' are in the reference configuration's `normalization`).
      temporal_kernel, time_halved_at, stem_temporal_kernel: the (2+1)D layout (see
        `inflated_config`); by default 3 temporal taps in every bridged block, every frame kept,
        a per-frame stem.

    Returns:
      A functional model taking `(batch, num_frames, size, size, 3)` float32 in [0, 1] and
      returning logits; on a clip of identical frames they equal the image model's on one frame.
    """
    options = dict(
        image_size=image_size, input_mean=input_mean, input_std=input_std,
        temporal_kernel=temporal_kernel, time_halved_at=time_halved_at,
        stem_temporal_kernel=stem_temporal_kernel,
    )  # fmt: skip
    cfg, num_classes = inflated_config(reference, num_frames, **options)  # checked first
    image = build_from_reference(
        reference, StateDict(state_dict), image_size, None, input_mean, input_std
    )
    video = build("mobile_former_inflated", cfg, num_classes)
    inflate_weights(image, video)
    return video


__all__ = ["build_inflated", "inflate_from_reference", "inflate_weights", "inflated_config"]
