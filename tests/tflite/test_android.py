"""`python -m kvid_tflite.android`: the Kotlin constants of docs/android.md come from the model.

The doc's generated block is the command's output on the sidecar JSON of the model the doc was
written for (kept under fixtures/android/); the same command on a converted `.tflite` reads its
embedded metadata and agrees with the sidecar and with the interpreter's tensors.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from kvid_tflite.litert import TFLiteModel, read_description
from tests.helpers import run_kvid_convert

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(REPO_ROOT, "docs", "android.md")
BLOCK = re.compile(
    r"<!-- begin generated: python -m kvid_tflite\.android (?P<args>[^>]*?) -->\n"
    r"```kotlin\n(?P<code>.*?)```\n<!-- end generated -->",
    re.DOTALL,
)


def _android(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kvid_tflite.android", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )


def test_the_docs_generated_block_is_the_commands_output():
    with open(DOC, encoding="utf-8") as f:
        blocks = list(BLOCK.finditer(f.read()))
    assert len(blocks) == 1, "docs/android.md has one generated block"
    done = _android(*blocks[0]["args"].split())
    assert done.returncode == 0, done.stderr
    assert done.stdout == blocks[0]["code"], "regenerate the block with the command it names"


def test_model_metadata_gives_the_sidecars_constants_and_the_tensors_shapes(
    float_workdir, fake_clip_sources, helpers
):
    assert run_kvid_convert(f"--workdir={float_workdir}", "--int8", "--num_test_clips=2") == 0
    stem = os.path.join(float_workdir, "export", "model_int8")
    from_model = _android(f"--model={stem}.tflite")
    from_sidecar = _android(f"--metadata={stem}.json")
    assert from_model.returncode == 0 and from_sidecar.returncode == 0, from_model.stderr
    code = from_model.stdout
    assert code.splitlines()[1:] == from_sidecar.stdout.splitlines()[1:]  # line 0 names the file
    model, description = TFLiteModel(stem + ".tflite"), read_description(stem + ".tflite")
    frames, height, width, _ = helpers.CLIP_SHAPE
    shape = ", ".join(str(d) for d in model.input_shape)
    assert f"val INPUT_SHAPE = intArrayOf({shape})" in code
    assert f"const val NUM_FRAMES = {frames}" in code
    assert f"const val FRAME_HEIGHT = {height}" in code and f"FRAME_WIDTH = {width}" in code
    assert f"const val NUM_CLASSES = {model.output_shape[-1]}" in code
    assert f"const val FRAME_STRIDE = {description['input']['frame_stride']}" in code
    labels = re.search(r"val LABELS = arrayOf\(\n(.*?)\n    \)", code, re.DOTALL)[1]
    assert [line.strip().strip('",') for line in labels.splitlines()] == helpers.LABELS


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "pass either --model=M.tflite or --metadata=M.json"),
        (["--model=/nonexistent/m.tflite"], "/nonexistent/m.tflite: no such file"),
        (["--metadata=README.md"], "--metadata=README.md: not JSON"),
        (["--model=README.md"], "README.md: not a TFLite flatbuffer"),
    ],
)
def test_bad_input_is_one_line(args, message):
    done = _android(*args)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
