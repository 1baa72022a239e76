"""The input lists of kvid-prepare: a CSV manifest, a folder per class, or Something-Something v2.

Each reader returns `Inputs`: one row per video with `line` (the manifest line, None where the
source has no lines), `path`, `label`, `label_index`, `id`, and `start` / `end` (seconds, None
for the whole video). Reading an input list only reads text and file names: it never opens a
video, and nothing in a user's files is run.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The videos of one split and the class list their `label_index` refers to."""

    rows: list[dict]
    classes: list[str]
    source: str  # what the rows were read from, for messages


def _row(line, path, label, index, clip_id, start=None, end=None) -> dict:
    return dict(
        line=line, path=path, label=label, label_index=index, id=clip_id, start=start, end=end
    )


def _class_index(classes: Sequence[str], where: str, label: str) -> int:
    try:
        return list(classes).index(label)
    except ValueError:
        raise ValueError(f"{where}: unknown label {label!r}; known classes: {classes}.") from None


def _seconds(text: str | None, where: str, column: str) -> float | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {column} {text!r} is not a number of seconds.") from None
    if not value >= 0:
        raise ValueError(f"{where}: {column} {text!r} must be a number of seconds >= 0.")
    return value


def read_manifest(csv_path: str, classes: Sequence[str] | None = None) -> Inputs:
    """Reads a `path,label[,id][,start,end]` CSV (the Kinetics layout, times in seconds).

    Relative paths resolve against the CSV's folder; a path with a scheme (gs://...) is kept as
    it is, for the Beam pipeline's workers to fetch. Without `classes`, the sorted set of labels
    in the CSV is used; with it, an unknown label is an error naming the file and line.
    """
    base = os.path.dirname(os.path.abspath(csv_path))
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = set(reader.fieldnames or ())
            missing = {"path", "label"} - fields
            if missing:
                raise ValueError(
                    f"{csv_path}: the header must name the columns path,label (optionally id, "
                    f"start,end); missing {sorted(missing)}, found {reader.fieldnames}."
                )
            records = [(reader.line_num, record) for record in reader]
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{csv_path}: not a UTF-8 CSV manifest ({error}).") from None
    except IsADirectoryError:
        raise ValueError(f"{csv_path}: a directory, not a CSV manifest.") from None
    if classes is None:
        classes = sorted({(record["label"] or "").strip() for _, record in records} - {""})
    classes = list(classes)
    rows = []
    for line, record in records:
        where = f"{csv_path}, line {line}"
        path, label = (record["path"] or "").strip(), (record["label"] or "").strip()
        if not path:
            raise ValueError(f"{where}: empty path.")
        if not label:
            raise ValueError(f"{where}: empty label (every video needs a class).")
        start = _seconds(record.get("start"), where, "start")
        end = _seconds(record.get("end"), where, "end")
        if start is not None and end is not None and end <= start:
            raise ValueError(f"{where}: end {end:g} s is not after start {start:g} s.")
        clip_id = (record.get("id") or "").strip() or path
        rows.append(
            _row(
                line,
                path if "://" in path else os.path.join(base, path),
                label,
                _class_index(classes, where, label),
                clip_id,
                start,
                end,
            )
        )
    return Inputs(rows, classes, csv_path)


def _visible(name: str) -> bool:
    return not name.startswith(".")


def read_folder(folder: str, classes: Sequence[str] | None = None) -> Inputs:
    """Reads a folder with one sub-folder per class; every visible entry in one is a video.

    Classes are the sub-folder names in sorted order (or `classes`, which must name exactly the
    sub-folders). Hidden names (starting with ".") are skipped. Any other entry of a class folder
    is an input, whatever its extension: FFmpeg recognises a video by its content, and an entry
    that is not a video ends in the failures file rather than being skipped unseen. A visible
    file beside the class folders belongs to no class: an error naming it.
    """
    if not os.path.isdir(folder):
        raise ValueError(f"--folder={folder}: not a folder.")
    folder = os.path.abspath(folder)
    entries = sorted(name for name in os.listdir(folder) if _visible(name))
    strays = [name for name in entries if not os.path.isdir(os.path.join(folder, name))]
    if strays:
        raise ValueError(
            f"{os.path.join(folder, strays[0])}: a file outside the class folders "
            f"({len(strays)} in all); put each video in the folder of its class."
        )
    found = entries
    if not found:
        raise ValueError(f"--folder={folder}: no class folder in it.")
    if classes is None:
        classes = found
    classes = list(classes)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(
            f"{os.path.join(folder, unknown[0])}: a folder that is not a class; "
            f"known classes: {classes}."
        )
    rows = []
    for label in found:
        class_dir = os.path.join(folder, label)
        for name in sorted(filter(_visible, os.listdir(class_dir))):
            rows.append(
                _row(
                    None,
                    os.path.join(class_dir, name),
                    label,
                    classes.index(label),
                    f"{label}/{name}",
                )
            )
    return Inputs(rows, classes, folder)


def ssv2_label(template: str) -> str:
    """Something-Something v2's class name: the template without its placeholder brackets."""
    return re.sub(r"[\[\]]", "", template)


def _read_json(path: str, flag: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{flag}={path}: no such file.") from None
    except IsADirectoryError:
        raise ValueError(f"{flag}={path}: a directory, not a JSON file.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a JSON file ({error}).") from None


def read_ssv2(annotations: str, video_dir: str, classes: Sequence[str] | None = None) -> Inputs:
    """Reads a Something-Something v2 annotation file (a JSON list of {"id", "template", ...}).

    The label of an entry is its template without brackets; `labels.json` beside the file maps
    each label to its index (a string) and so gives the class order. Videos are
    `<id>.webm` in `video_dir`. Rows have no `line` (messages name the entry's position).
    """
    entries = _read_json(annotations, "--ssv2_json")
    labels_path = os.path.join(os.path.dirname(os.path.abspath(annotations)), "labels.json")
    if classes is None:
        label_map = _read_json(labels_path, "labels.json")
        try:
            order = sorted((int(index), label) for label, index in label_map.items())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"{labels_path}: expected {{label: index string}}.") from None
        classes = [label for _, label in order]
        if [index for index, _ in order] != list(range(len(order))):
            raise ValueError(f"{labels_path}: the indices are not 0..{len(order) - 1}.")
    classes = list(classes)
    if not isinstance(entries, list):
        raise ValueError(f"{annotations}: expected a JSON list of annotations.")
    rows = []
    for number, entry in enumerate(entries, start=1):
        where = f"{annotations}, entry {number}"
        if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
            raise ValueError(f"{where}: expected an object with 'id' and 'template'.")
        label = ssv2_label(str(entry["template"]))
        clip_id = str(entry["id"])
        rows.append(
            _row(
                None,
                os.path.join(os.path.abspath(video_dir), f"{clip_id}.webm"),
                label,
                _class_index(classes, where, label),
                clip_id,
            )
        )
    return Inputs(rows, classes, annotations)
