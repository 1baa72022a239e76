"""Shards are complete or absent: a failed write keeps the split's previous shards."""

import glob
import os

import pytest

from kvid.data import dataset


def _examples(count, fail_at=None):
    for i in range(count):
        if i == fail_at:
            raise RuntimeError("decoder died")
        yield dataset.encode_clip([b"\xff\xd8jpeg"], i % 2, "a", f"clip{i}")


def test_failed_write_keeps_the_previous_shards_and_leaves_no_partial_file(tmp_path):
    folder = str(tmp_path)
    first = dataset.write_shards(_examples(6), folder, "train", 2)
    before = {path: open(path, "rb").read() for path in first}
    with pytest.raises(RuntimeError, match="decoder died"):
        dataset.write_shards(_examples(9, fail_at=5), folder, "train", 3)
    assert sorted(glob.glob(dataset.shard_pattern(folder, "train"))) == sorted(first)
    assert {path: open(path, "rb").read() for path in first} == before
    assert not [name for name in os.listdir(folder) if name.endswith(".partial")]


def test_rewrite_with_another_shard_count_replaces_the_split_only(tmp_path):
    folder = str(tmp_path)
    dataset.write_shards(_examples(6), folder, "train", 3)
    dataset.write_shards(_examples(2), folder, "val", 1)
    # A run killed while writing left a partial file: the next run removes it.
    (tmp_path / "train-00000-of-00002.tfrecord.partial").write_bytes(b"half")
    paths = dataset.write_shards(_examples(6), folder, "train", 2)
    assert sorted(glob.glob(dataset.shard_pattern(folder, "train"))) == sorted(paths)
    assert len(glob.glob(dataset.shard_pattern(folder, "val"))) == 1
    assert sorted(os.listdir(folder)) == [
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
        "val-00000-of-00001.tfrecord",
    ]
