"""The README's commands run as written.

Every `bash` / `python` block of the README carries a marker on the line above it:
`<!-- runnable -->`, or `<!-- not run by the README test: REASON -->` (the test command itself, a
benchmark that wants an idle machine, a block that needs an Edge TPU or a cloud runner). The
runnable blocks run in order in one scratch folder, as a user would run them from the repository
root, with two changes that keep them small: the virtualenv / pip prefix of the set-up command is
dropped (this environment is that install), and `python training/train.py ...` gets one more
flagfile that shrinks the dataset, the model and the schedule. The own-videos block finds a few
generated videos in `my_videos/`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
RUNNABLE = "<!-- runnable -->"
NOT_RUN = re.compile(r"<!-- not run by the README test: (.+) -->")
FENCE = re.compile(r"^```(\w*)\s*$")
COMMAND_LANGUAGES = ("bash", "sh", "shell", "python")

# Appended to every train.py command: a 1/50 default dataset, 4-frame clips, a fraction of an
# epoch; for Video Mobile-Former also a two-block model on 32x32 frames. Only the main job keeps
# its QAT phase (the others convert by post-training quantization): QAT is tested there and in the
# training tests. Later flags win over the README's flagfile.
TINY_FLAGS = """\
--dataset_scale=0.02
--num_frames=4
--batch_size=4
--epochs=0.5
--warmup_epochs=0.1
--qat_epochs=0.5
"""
TINY_VMF_FLAGS = """\
--model_overrides=blocks=(("dna3",2,8,2,0,1,1),("dna3",4,16,2,4,3,1))
--model_overrides=token_dim=32
--model_overrides=head_features=64
--image_size=32
"""
MAIN_TRAIN_COMMAND = "python training/train.py --flagfile=vmf.flags"
SETUP_PREFIX = re.compile(r"^(python3 -m venv \S+|\. \S+/bin/activate|pip install .*)$")


def readme_blocks() -> list[tuple[str, str, str]]:
    """(language, marker line, code) of every fenced block, in order."""
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start = i + 1
        end = next(j for j in range(start, len(lines)) if lines[j].startswith("```"))
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        blocks.append((match.group(1), previous.strip(), "\n".join(lines[start:end])))
        i = end + 1
    return blocks


def shell_commands(code: str) -> list[str]:
    """The commands of a bash block: continuations joined, `&&` chains split, set-up dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    commands = []
    for line in joined.splitlines():
        line = line.split(" # ")[0].strip()
        for command in (c.strip() for c in line.split("&&")):
            if command and not SETUP_PREFIX.match(command):
                commands.append(command)
    return commands


def test_every_command_block_is_marked():
    blocks = [b for b in readme_blocks() if b[0] in COMMAND_LANGUAGES]
    assert blocks, "the README has no command blocks"
    unmarked = [code.splitlines()[0] for _, marker, code in blocks if not _is_marked(marker)]
    assert not unmarked, f"README blocks without a runnable / not-run marker: {unmarked}"
    assert sum(marker == RUNNABLE for _, marker, _ in blocks) >= 4


def _is_marked(marker: str) -> bool:
    return marker == RUNNABLE or bool(NOT_RUN.fullmatch(marker))


def test_setup_commands_are_one_command_each():
    setup = [code for lang, _, code in readme_blocks() if lang == "bash"][:2]
    for code in setup:
        assert code.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install -e ")
        # One command: line continuations only, no second command line.
        assert all(line.endswith("\\") for line in code.splitlines()[:-1]), code


def _write_my_videos(folder: Path) -> None:
    """Two classes of short videos: a bright square moving right or left."""
    from kvid_training.synthetic import write_video

    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("val", 1)):
        rows = ["path,label"]
        for label in ("right", "left"):
            for i in range(count):
                frames = rng.integers(0, 60, size=(10, 40, 48, 3), dtype=np.uint8)
                for t in range(10):
                    x = 4 + 3 * t if label == "right" else 40 - 3 * t
                    frames[t, 14:26, x : x + 8] = 230
                name = f"{split}_{label}_{i}.mp4"
                write_video(str(folder / name), frames)
                rows.append(f"{name},{label}")
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")


def test_readme_runnable_blocks_run_as_written(tmp_path):
    work = tmp_path / "clone"
    work.mkdir()
    for name in ("training", "benchmarks"):  # the paths a user's commands use from the root
        (work / name).symlink_to(REPO_ROOT / name)
    _write_my_videos(work / "my_videos")
    shutil.copy(work / "my_videos" / "val_left_0.mp4", work / "my_videos" / "clip.mp4")
    tiny, tiny_vmf = tmp_path / "tiny.flags", tmp_path / "tiny_vmf.flags"
    tiny.write_text(TINY_FLAGS)
    tiny_vmf.write_text(TINY_VMF_FLAGS)
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")

    ran, outputs = [], {}
    for language, marker, code in readme_blocks():
        if language not in COMMAND_LANGUAGES or marker != RUNNABLE:
            continue
        if language == "python":
            runs = [[sys.executable, "-c", code]]
        else:
            runs = []
            for command in shell_commands(code):
                if command.startswith("python training/train.py"):
                    extra = f" --flagfile={tiny}"
                    if "--flagfile=vmf.flags" in command:
                        extra += f" --flagfile={tiny_vmf}"
                    if command != MAIN_TRAIN_COMMAND:
                        extra += " --qat_epochs=0"
                    command += extra
                runs.append(["bash", "-c", command])
        for argv in runs:
            result = subprocess.run(
                argv, cwd=work, env=env, capture_output=True, text=True, timeout=900
            )
            shown = argv[-1][:200]
            assert result.returncode == 0, (
                f"{shown}\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
            )
            assert "Traceback" not in result.stderr, f"{shown}\n{result.stderr[-3000:]}"
            ran.append(argv[-1])
            outputs[argv[-1]] = result.stdout

    assert any("kvid-prepare" in command for command in ran)
    assert any(command.startswith("kvid-edgetpu-check") for command in ran)
    (classified,) = [out for command, out in outputs.items() if command.startswith("kvid-classify")]
    ranked = [line.split()[1] for line in classified.splitlines()[1:]]
    labels = json.loads((work / "data" / "default" / "dataset.json").read_text())["classes"]
    assert len(ranked) == 5 and set(ranked) <= set(labels), classified
    for run in ("vmf_tiny", "mine"):
        export = work / "runs" / run / "export"
        assert (export / "model_int8.tflite").stat().st_size > 0
        assert (export / "model_int8.json").is_file()
        assert (work / "runs" / run / "eval" / "eval_model_int8.json").is_file()


@pytest.mark.parametrize(
    "code, expected",
    [
        (
            "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && \\\n"
            "  python training/train.py --flagfile=vmf.flags && \\\n  kvid-convert --int8",
            ["python training/train.py --flagfile=vmf.flags", "kvid-convert --int8"],
        ),
        ("kvid-a --x=1   # note\nkvid-b", ["kvid-a --x=1", "kvid-b"]),
    ],
)
def test_shell_commands(code, expected):
    assert shell_commands(code) == expected
