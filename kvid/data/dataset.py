"""The stored dataset format: TFRecord shards of `tf.train.SequenceExample`, and `dataset.json`.

This is the Model Garden / DMVR video format (`official/vision/dataloaders/video_input.py`): one
SequenceExample per clip, the context `clip/label/index`, `clip/label/text`, `clip/id`,
`clip/num_frames`, and the feature list `image/encoded` with one JPEG per frame. Shards are named
`{split}-{i:05d}-of-{n:05d}.tfrecord`; `dataset.json` beside them describes the dataset (classes
in label order, the clips of each split, order and flip pairs, the stored frame size).
`kvid-prepare` writes it, the input pipeline (`kvid.data.pipeline`) reads it.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Sequence

# TensorFlow is imported inside the functions that need it: the decode workers of kvid-prepare
# import this module, and loading TensorFlow there would cost seconds per worker.


DATASET_INFO = "dataset.json"


# The class order beside the shards, in the format of a workdir's label_map.json (a JSON list of
# class names in label order), so that a dataset's and a model's label maps can be diffed.
LABEL_MAP = "label_map.json"


SHARD_SUFFIX = ".tfrecord"


LABEL_INDEX_KEY = "clip/label/index"


LABEL_TEXT_KEY = "clip/label/text"


CLIP_ID_KEY = "clip/id"


NUM_FRAMES_KEY = "clip/num_frames"


IMAGE_KEY = "image/encoded"


def shard_pattern(data_dir: str, split: str) -> str:
    """Glob pattern of a split's shards: `{split}-{i:05d}-of-{n:05d}.tfrecord`."""
    return os.path.join(data_dir, f"{split}-*-of-*{SHARD_SUFFIX}")


def shard_path(data_dir: str, split: str, index: int, num_shards: int) -> str:
    """Path of shard `index` of `num_shards`: `{split}-{index:05d}-of-{num_shards:05d}.tfrecord`."""
    return os.path.join(data_dir, f"{split}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}")


def encode_clip(
    jpeg_frames: Sequence[bytes], label_index: int, label_text: str, clip_id: str
) -> bytes:
    """Serializes one clip as a `tf.train.SequenceExample` in the Model Garden / DMVR layout."""
    import tensorflow as tf

    example = tf.train.SequenceExample()
    context = example.context.feature
    context[LABEL_INDEX_KEY].int64_list.value.append(label_index)
    context[LABEL_TEXT_KEY].bytes_list.value.append(label_text.encode("utf-8"))
    context[CLIP_ID_KEY].bytes_list.value.append(clip_id.encode("utf-8"))
    context[NUM_FRAMES_KEY].int64_list.value.append(len(jpeg_frames))
    images = example.feature_lists.feature_list[IMAGE_KEY]
    for jpeg in jpeg_frames:
        images.feature.add().bytes_list.value.append(jpeg)
    return example.SerializeToString(deterministic=True)


def write_dataset_info(
    out_dir: str,
    classes: Sequence[str],
    order_pairs: Sequence[Sequence[str]],
    flip_pairs: Sequence[Sequence[str]],
    counts: dict[str, int],
    num_frames: int,
    frame_size: Sequence[int] | None,
    flip_breaks: Sequence[str] = (),
    generator: dict | None = None,
) -> str:
    """Writes `dataset.json`, the description of a prepared dataset that the pipeline reads.

    Args:
      classes: ordered class names; a clip's label is its index in this list.
      order_pairs: [a, b] class pairs whose clips are each other's time reversal.
      flip_pairs: [a, b] class pairs that a horizontal flip swaps (the pipeline remaps labels).
      counts: number of clips per split.
      num_frames: frames of the shortest stored clip.
      frame_size: [height, width] of the stored frames, None if clips differ.
      flip_breaks: classes that a horizontal flip turns into no class (never flipped).
      generator: metadata of a generated dataset (name, version, seed, scale, ...).

    Returns:
      The path of the written file. It is written atomically, so its presence marks a complete
      dataset.
    """
    classes = list(classes)
    known = set(classes)
    flipped = [name for pair in flip_pairs for name in pair]
    for kind, names in (
        ("order_pairs", [n for p in order_pairs for n in p]),
        ("flip_pairs", flipped),
        ("flip_breaks", list(flip_breaks)),
    ):
        unknown = sorted(set(names) - known)
        if unknown:
            raise ValueError(
                f"{kind} names classes that do not exist: {unknown}; classes: {classes}."
            )
    for kind, pairs in (("order_pairs", order_pairs), ("flip_pairs", flip_pairs)):
        for pair in pairs:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ValueError(f"{kind} entries must be two different classes, got {pair!r}.")
    if len(set(flipped)) != len(flipped) or set(flipped) & set(flip_breaks):
        raise ValueError("A class can be in at most one flip pair and not also in flip_breaks.")
    info = dict(
        classes=classes,
        order_pairs=[list(p) for p in order_pairs],
        flip_pairs=[list(p) for p in flip_pairs],
        flip_breaks=list(flip_breaks),
        splits=dict(counts),
        num_frames=int(num_frames),
        frame_size=None if frame_size is None else [int(frame_size[0]), int(frame_size[1])],
    )
    if generator is not None:
        info["generator"] = dict(generator)
    path = os.path.join(out_dir, DATASET_INFO)
    os.makedirs(out_dir, exist_ok=True)
    write_label_map(out_dir, classes)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    os.replace(path + ".tmp", path)
    return path


def write_label_map(out_dir: str, classes: Sequence[str]) -> str:
    """Writes `out_dir/label_map.json`: the class names in label order, byte for byte the format
    of a workdir's `label_map.json`. Written atomically; `out_dir` may be any path
    `tf.io.gfile` writes (gs://...). Returns its path."""
    import tensorflow as tf

    path = os.path.join(out_dir, LABEL_MAP)
    tf.io.gfile.makedirs(out_dir)
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write(json.dumps([str(name) for name in classes], indent=2) + "\n")
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
    return path


def stored_classes(data_dir: str) -> tuple[list[str], str] | None:
    """The class order a prepared dataset already has, and the file it comes from:
    `label_map.json`, else (a dataset prepared before label maps) `dataset.json`; None for a
    folder without either."""
    import tensorflow as tf

    for name, key in ((LABEL_MAP, None), (DATASET_INFO, "classes")):
        path = os.path.join(data_dir, name)
        if not tf.io.gfile.exists(path):
            continue
        try:
            with tf.io.gfile.GFile(path) as f:
                value = json.load(f)
            classes = value if key is None else value[key]
            if not isinstance(classes, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path}: not a kvid {name} (expected a list of classes).") from None
        return [str(name) for name in classes], path
    return None


def check_label_map(data_dir: str, classes: Sequence[str], source: str) -> None:
    """Raises ValueError, naming both, when `data_dir` already holds a dataset whose class order
    differs from `classes` (read from `source`): its shards' label indices mean other classes."""
    stored = stored_classes(data_dir)
    if stored is not None and list(stored[0]) != list(classes):
        raise ValueError(
            f"the classes of {source} {list(classes)} differ from the label map of the dataset "
            f"in {data_dir}, {stored[1]}: {stored[0]}; use another --out_dir, or --classes in "
            "that order."
        )


def read_dataset_info(data_dir: str) -> dict:
    """Reads `data_dir/dataset.json` (written by `write_dataset_info`)."""
    path = os.path.join(data_dir, DATASET_INFO)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"No {DATASET_INFO} in {data_dir!r}: prepare the data with kvid-prepare (or generate "
            "the default dataset with kvid_training.synthetic.ensure_default_dataset)."
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_shards(examples: Iterator[bytes], out_dir: str, split: str, num_shards: int) -> list[str]:
    """Writes serialized examples round-robin into `num_shards` shards; returns the shard paths.

    The shards are written under temporary names and renamed only once every example is written,
    so a run that is killed or fails part-way never leaves a file that reads as a complete shard,
    and the split's previous shards stay until then. Previous shards of the split are deleted
    just before the rename: one with another shard count would otherwise leave files that the
    split's glob pattern still matches (duplicated clips).
    """
    import tensorflow as tf

    os.makedirs(out_dir, exist_ok=True)
    paths = [shard_path(out_dir, split, i, num_shards) for i in range(num_shards)]
    # Leftovers of an earlier run that was killed while writing.
    for stale in tf.io.gfile.glob(os.path.join(out_dir, f"{split}-*-of-*{SHARD_SUFFIX}.partial")):
        tf.io.gfile.remove(stale)
    partial = [path + ".partial" for path in paths]
    writers = [tf.io.TFRecordWriter(path) for path in partial]
    try:
        for i, example in enumerate(examples):
            writers[i % num_shards].write(example)
    except BaseException:
        for writer in writers:
            writer.close()
        for path in partial:
            if tf.io.gfile.exists(path):
                tf.io.gfile.remove(path)
        raise
    for writer in writers:
        writer.close()
    for stale in tf.io.gfile.glob(shard_pattern(out_dir, split)):
        tf.io.gfile.remove(stale)
    for source, target in zip(partial, paths, strict=True):
        tf.io.gfile.rename(source, target, overwrite=True)
    return paths


def held_out_split(data_dir: str) -> str | None:
    """The split to measure a model on: "test", else "val"; None when there is neither.

    A split counts when `dataset.json` lists clips for it or, without `dataset.json`, when its
    shards are on disk.
    """
    info_path = os.path.join(data_dir, DATASET_INFO)
    splits = read_dataset_info(data_dir).get("splits", {}) if os.path.exists(info_path) else None
    for split in ("test", "val"):
        if splits is not None and splits.get(split):
            return split
        if splits is None and glob.glob(shard_pattern(data_dir, split)):
            return split
    return None
