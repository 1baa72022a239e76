"""tf.data input pipeline over prepared TFRecord shards (docs/data.md).

Reads the SequenceExamples of `kvid.data.dataset` (one JPEG per frame), samples frames, decodes
only the sampled JPEGs in-graph and crops:

- train: a random clip of `num_frames` frames every `frame_stride` frames (stride optionally
  jittered), one random resized crop box shared by all frames of the clip, an optional
  label-aware horizontal flip. Yields `(video (B, T, H, W, 3), label (B,))`.
- eval: `num_clips` uniformly spaced clips x `num_crops` crops of every video, exactly once, in
  a fixed order. Yields `(video (B, V, T, H, W, 3), label (B,))`, `V = num_clips * num_crops`,
  clip-major (`v = clip * num_crops + crop`).

Clips shorter than the sampled span repeat their last frame (rather than looping back to the
start): looping would splice the end of a motion onto its beginning, and the default dataset's
classes are defined by temporal order.

Videos are float32 in [0, 1]; normalisation belongs to the model. With `deterministic=True`
every random choice is a stateless op seeded by `(seed, element index)` and parallel stages keep
their order, so two iterations give identical batches.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
from absl import logging

from kvid.data import dataset, sampling

AUTOTUNE = tf.data.AUTOTUNE
# Eval resizes so that the centre crop keeps 87.5% of the frame (the 224-of-256 ImageNet
# convention), but never upsamples a stored frame just for that: for the default 72x72 frames and
# a 64x64 model this is a plain 64x64 centre crop of the 72x72 frame. kvid.data.sampling states
# the same evaluation sampling in numpy (for kvid-classify); a test holds the two equal.
EVAL_CROP_FRACTION = sampling.EVAL_CROP_FRACTION
# Beyond this many shards, a wider interleave mixes no better but holds more open files.
_MAX_CYCLE_LENGTH = 16


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """What the input pipeline feeds the model, and how it samples and augments clips.

    Attributes:
      data_dir: folder with `dataset.json` and the `{split}-*-of-*.tfrecord` shards.
      num_frames: frames per clip fed to the model.
      image_size: (height, width) fed to the model; larger than the stored frames upsamples.
      batch_size: clips per batch.
      frame_stride: temporal stride between sampled frames.
      stride_jitter: train only: stride drawn uniformly from [stride - j, stride + j] (>= 1).
      num_clips: eval: uniformly spaced clips per video.
      num_crops: eval: 1 (centre) or 3 (start/centre/end along the frame's long side).
      min_crop_area: train random resized crop: area fraction range [min_crop_area, 1].
      aspect_ratio_range: train crop width / height range.
      flip: label-aware horizontal flip (train only): a flipped clip's label is remapped through
        dataset.json's `flip_pairs`; classes in `flip_breaks` are never flipped.
      deterministic: fixed order and fixed seeds: identical batches across runs.
      seed: seed of shuffling and augmentation.
      shuffle_buffer: clips in the train shuffle buffer.
    """

    data_dir: str
    num_frames: int
    image_size: tuple[int, int]
    batch_size: int
    frame_stride: int = 1
    stride_jitter: int = 0
    num_clips: int = 1
    num_crops: int = 1
    min_crop_area: float = 0.35
    aspect_ratio_range: tuple[float, float] = (0.75, 1.333)
    flip: bool = False
    deterministic: bool = False
    seed: int = 0
    shuffle_buffer: int = 1024

    def __post_init__(self):
        # Normalised once (e.g. lists from JSON or flags) so shapes below are plain int tuples.
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        object.__setattr__(
            self, "aspect_ratio_range", tuple(float(v) for v in self.aspect_ratio_range)
        )
        checks = [
            ("num_frames", self.num_frames >= 1),
            ("image_size", len(self.image_size) == 2 and min(self.image_size) >= 1),
            ("batch_size", self.batch_size >= 1),
            ("frame_stride", self.frame_stride >= 1),
            ("stride_jitter", self.stride_jitter >= 0),
            ("num_clips", self.num_clips >= 1),
            ("num_crops", self.num_crops in (1, 3)),
            ("min_crop_area", 0.0 < self.min_crop_area <= 1.0),
            (
                "aspect_ratio_range",
                len(self.aspect_ratio_range) == 2
                and 0.0 < self.aspect_ratio_range[0] <= self.aspect_ratio_range[1],
            ),
            ("shuffle_buffer", self.shuffle_buffer >= 1),
        ]
        for name, valid in checks:
            if not valid:
                raise ValueError(
                    f"InputConfig.{name} has an invalid value: {getattr(self, name)!r}."
                )


def _dataset_info(data_dir: str) -> dict:
    """dataset.json if present: shards written by other DMVR tools may come without one."""
    try:
        return dataset.read_dataset_info(data_dir)
    except FileNotFoundError:
        return {}


def _shard_files(data_dir: str, split: str) -> tuple[tf.data.Dataset, int]:
    if not tf.io.gfile.isdir(data_dir):
        raise FileNotFoundError(f"Data directory {data_dir!r} (split {split!r}) does not exist.")
    pattern = dataset.shard_pattern(data_dir, split)
    num_files = len(tf.io.gfile.glob(pattern))
    if not num_files:
        found = sorted(
            {
                os.path.basename(path).split("-")[0]
                for path in tf.io.gfile.glob(dataset.shard_pattern(data_dir, "*"))
            }
        )
        raise FileNotFoundError(
            f"No TFRecord shards for split {split!r} in {data_dir!r} (pattern {pattern}); "
            f"splits found there: {found}."
        )
    return tf.data.Dataset.list_files(pattern, shuffle=False), num_files


def _check_span(config: InputConfig, info: dict, max_stride: int) -> None:
    stored = info.get("num_frames")
    span = (config.num_frames - 1) * max_stride + 1
    if stored and span > 2 * stored:
        logging.warning(
            "%d frames at stride up to %d span %d frames, but the shortest clip in %s has %d: "
            "most sampled frames will repeat the last frame.",
            config.num_frames,
            max_stride,
            span,
            config.data_dir,
            stored,
        )


def _parse(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(JPEG strings (N,), label int32) of one serialized SequenceExample."""
    context, sequence = tf.io.parse_single_sequence_example(
        serialized,
        context_features={dataset.LABEL_INDEX_KEY: tf.io.FixedLenFeature([], tf.int64)},
        sequence_features={dataset.IMAGE_KEY: tf.io.FixedLenSequenceFeature([], tf.string)},
    )
    return sequence[dataset.IMAGE_KEY], tf.cast(context[dataset.LABEL_INDEX_KEY], tf.int32)


def _clip_indices(starts: tf.Tensor, num_frames: int, stride, num_available) -> tf.Tensor:
    """(clips, num_frames) frame indices; indices past the end repeat the last frame."""
    indices = starts[:, None] + tf.range(num_frames)[None, :] * stride
    return tf.minimum(indices, num_available - 1)


def _decode_frames(jpegs: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    """Decodes only the frames at `indices` (any shape), each distinct frame once: (K, h, w, 3)."""
    unique, position = tf.unique(tf.reshape(indices, [-1]))
    images = tf.map_fn(
        lambda jpeg: tf.io.decode_jpeg(jpeg, channels=3),
        tf.gather(jpegs, unique),
        fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
    )
    return tf.gather(images, position)


def _resize(frames: tf.Tensor, size) -> tf.Tensor:
    """uint8 frames -> float32 in [0, 1] at `size`; antialiased so large videos shrink cleanly."""
    resized = tf.image.resize(frames, size, method="bilinear", antialias=True)
    return tf.clip_by_value(resized / 255.0, 0.0, 1.0)


def _flip_tables(config: InputConfig, info: dict) -> tuple[tf.Tensor, tf.Tensor]:
    """(label after a flip, flip allowed) per class, from dataset.json's flip_pairs/flip_breaks."""
    classes = info.get("classes")
    if not classes:
        raise FileNotFoundError(
            f"flip=True needs {config.data_dir}/{dataset.DATASET_INFO}: its flip_pairs say which "
            "labels a horizontal flip swaps."
        )
    index = {name: i for i, name in enumerate(classes)}
    flipped = np.arange(len(classes), dtype=np.int32)
    for a, b in info.get("flip_pairs", []):
        flipped[index[a]], flipped[index[b]] = index[b], index[a]
    allowed = np.ones(len(classes), bool)
    for name in info.get("flip_breaks", []):
        allowed[index[name]] = False
    return tf.constant(flipped), tf.constant(allowed)


def _train_element(config: InputConfig, flip_tables, index: tf.Tensor, serialized: tf.Tensor):
    # One independent stateless stream per element and per decision: the same (seed, index)
    # always gives the same clip, crop and flip, whatever the parallelism.
    seeds = tf.random.experimental.stateless_split(
        tf.stack([tf.constant(config.seed, tf.int64), index]), num=4
    )
    jpegs, label = _parse(serialized)
    num_available = tf.shape(jpegs)[0]
    if config.stride_jitter:
        low = max(1, config.frame_stride - config.stride_jitter)
        high = config.frame_stride + config.stride_jitter
        stride = tf.random.stateless_uniform([], seeds[0], low, high + 1, dtype=tf.int32)
    else:
        stride = tf.constant(config.frame_stride, tf.int32)
    span = (config.num_frames - 1) * stride + 1
    last_start = tf.maximum(num_available - span, 0)
    start = tf.random.stateless_uniform([1], seeds[1], 0, last_start + 1, dtype=tf.int32)
    indices = _clip_indices(start, config.num_frames, stride, num_available)[0]
    frames = _decode_frames(jpegs, indices)

    # One crop box for the whole clip, so the crop adds no motion of its own.
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(frames)[1:],
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seeds[2],
        min_object_covered=0.0,
        aspect_ratio_range=config.aspect_ratio_range,
        area_range=(config.min_crop_area, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    frames = tf.slice(frames, [0, begin[0], begin[1], 0], [-1, size[0], size[1], -1])
    video = _resize(frames, config.image_size)

    if flip_tables is not None:
        flipped, allowed = flip_tables
        do_flip = tf.logical_and(
            tf.random.stateless_uniform([], seeds[3]) < 0.5, tf.gather(allowed, label)
        )
        video = tf.cond(do_flip, lambda: tf.reverse(video, axis=[2]), lambda: video)
        label = tf.where(do_flip, tf.gather(flipped, label), label)
    return tf.ensure_shape(video, [config.num_frames, *config.image_size, 3]), label


def _eval_element(config: InputConfig, serialized: tf.Tensor):
    jpegs, label = _parse(serialized)
    num_available = tf.shape(jpegs)[0]
    span = (config.num_frames - 1) * config.frame_stride + 1
    last_start = tf.maximum(num_available - span, 0)
    if config.num_clips == 1:
        starts = last_start[None] // 2  # the middle clip
    else:
        positions = tf.linspace(0.0, tf.cast(last_start, tf.float32), config.num_clips)
        starts = tf.cast(tf.round(positions), tf.int32)
    indices = _clip_indices(starts, config.num_frames, config.frame_stride, num_available)
    frames = _decode_frames(jpegs, indices)  # (num_clips * num_frames, h, w, 3)

    height, width = config.image_size
    shape = tf.cast(tf.shape(frames)[1:3], tf.float32)
    target = tf.constant([height, width], tf.float32)
    # Scale so the crop keeps EVAL_CROP_FRACTION of the tighter side, never upsampling beyond the
    # stored frame unless the model input itself is larger than the frame.
    scale = tf.minimum(tf.reduce_max(target / (shape * EVAL_CROP_FRACTION)), 1.0)
    scale = tf.maximum(scale, tf.reduce_max(target / shape))
    new_size = tf.cast(tf.math.ceil(shape * scale - 1e-3), tf.int32)
    new_size = tf.maximum(new_size, tf.constant([height, width]))
    video = _resize(frames, new_size)

    new_height, new_width = new_size[0], new_size[1]
    mid_y, mid_x = (new_height - height) // 2, (new_width - width) // 2
    if config.num_crops == 1:
        offsets = [(mid_y, mid_x)]
    else:  # start, centre and end along the long side (width when square)
        tall = new_height > new_width
        offsets = [
            (tf.where(tall, y, mid_y), tf.where(tall, mid_x, x))
            for y, x in ((0, 0), (mid_y, mid_x), (new_height - height, new_width - width))
        ]
    crops = tf.stack(
        [tf.slice(video, [0, y, x, 0], [-1, height, width, -1]) for y, x in offsets]
    )  # (crops, clips * frames, H, W, 3)
    crops = tf.reshape(
        crops, [config.num_crops, config.num_clips, config.num_frames, height, width, 3]
    )
    views = tf.reshape(
        tf.transpose(crops, [1, 0, 2, 3, 4, 5]),
        [config.num_clips * config.num_crops, config.num_frames, height, width, 3],
    )
    return views, label


def train_dataset(
    config: InputConfig,
    split: str = "train",
    repeat: bool = True,
    skip_clips: int = 0,
    num_shards: int = 1,
    shard_index: int = 0,
    shard_files: bool = True,
) -> tf.data.Dataset:
    """Shuffled, augmented training batches `(video (B, T, H, W, 3) float32, label (B,) int32)`.

    The last partial batch is dropped. With `repeat`, the stream is endless and the shuffle
    buffer mixes across epoch boundaries.

    `skip_clips` starts the stream that many clips in, as if they had been read: a training run
    that resumes at step s passes s x batch size and continues with the clips it would have read
    next (the same clips, crops and flips in deterministic mode). Skipped records are read but
    not decoded.

    `num_shards` > 1 gives shard `shard_index` of the stream, for one of several input pipelines
    (the workers of a multi-worker run): with `shard_files` it reads only every num_shards-th
    file, else it reads every file and keeps every num_shards-th clip of the whole stream, so the
    shards together hold exactly the clips of the unsharded stream (`skip_clips` then counts
    clips of the whole stream).
    """
    files, num_files = _shard_files(config.data_dir, split)
    if num_shards > 1 and shard_files:
        if num_files < num_shards:
            raise ValueError(
                f"{config.data_dir}: the {split} split has {num_files} files for {num_shards} "
                "input pipelines sharded by file"
            )
        files = files.shard(num_shards, shard_index)
        num_files = len(range(shard_index, num_files, num_shards))
    info = _dataset_info(config.data_dir)
    _check_span(config, info, config.frame_stride + config.stride_jitter)
    flip_tables = _flip_tables(config, info) if config.flip else None
    deterministic = config.deterministic
    # A fixed seed gives the same order in a new run; reshuffle_each_iteration=False also makes a
    # second iterator over this dataset replay it exactly (deterministic mode).
    files = files.shuffle(num_files, seed=config.seed, reshuffle_each_iteration=not deterministic)
    if repeat:
        files = files.repeat()
    records = files.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(num_files, _MAX_CYCLE_LENGTH),
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )
    records = records.shuffle(
        config.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=not deterministic
    )
    if skip_clips:
        records = records.skip(skip_clips)
    # Element indices seed the stateless augmentation (they keep growing across epochs, so every
    # epoch gets new crops).
    dataset = records.enumerate(start=skip_clips)
    if num_shards > 1 and not shard_files:
        dataset = dataset.shard(num_shards, shard_index)
    dataset = dataset.map(
        functools.partial(_train_element, config, flip_tables),
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )
    dataset = dataset.batch(config.batch_size, drop_remainder=True)
    return dataset.prefetch(AUTOTUNE)


def eval_dataset(config: InputConfig, split: str = "test") -> tf.data.Dataset:
    """Every clip of a split once, in a fixed order: `(video (B, V, T, H, W, 3), label (B,))`.

    `V = num_clips * num_crops` views per video (clip-major); the last batch may be smaller.
    """
    files, num_files = _shard_files(config.data_dir, split)
    _check_span(config, _dataset_info(config.data_dir), config.frame_stride)
    records = files.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(num_files, _MAX_CYCLE_LENGTH),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    dataset = records.map(
        functools.partial(_eval_element, config), num_parallel_calls=AUTOTUNE, deterministic=True
    )
    return dataset.batch(config.batch_size, drop_remainder=False).prefetch(AUTOTUNE)


def representative_clips(
    config: InputConfig, split: str = "train", count: int = 100
) -> Iterator[np.ndarray]:
    """Up to `count` single clips (1, T, H, W, 3) float32 (middle clip, centre crop).

    For int8 calibration: eval-style sampling matches what the deployed model sees, and the fixed
    eval order makes calibration reproducible.
    """
    single = dataclasses.replace(config, num_clips=1, num_crops=1, batch_size=1)
    for video, _ in eval_dataset(single, split).take(count):
        yield video.numpy()[0]


def num_examples(data_dir: str, split: str) -> int:
    """Number of clips in a split (from dataset.json; counted from the shards without one)."""
    info = _dataset_info(data_dir)
    if info:
        if split not in info.get("splits", {}):
            raise ValueError(
                f"Split {split!r} is not in {data_dir}/{dataset.DATASET_INFO}; splits: "
                f"{sorted(info.get('splits', {}))}."
            )
        return int(info["splits"][split])
    files, _ = _shard_files(data_dir, split)
    records = files.interleave(tf.data.TFRecordDataset, num_parallel_calls=AUTOTUNE)
    return int(records.reduce(np.int64(0), lambda count, _: count + 1))
