"""Every console script in setup.py: `--help` lists its flags and exits 0; a missing file, an
empty file, random bytes and a bad flag each end in one line naming the problem, a non-zero
exit, and no traceback."""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _console_scripts() -> dict[str, str]:
    """name -> "module:function", read from setup.py's entry_points."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "entry_points":
            entries = ast.literal_eval(node.value)["console_scripts"]
            return dict(entry.split("=", 1) for entry in entries)
    raise AssertionError("setup.py declares no console_scripts")


SCRIPTS = _console_scripts()

# How each script is handed a file (every new console script needs a line here).
FILE_ARGUMENTS = {
    "kvid-train": lambda path, tmp: [f"--data_dir={path}", f"--workdir={tmp / 'run'}"],
    "kvid-convert": lambda path, tmp: ["--int8", f"--workdir={path}"],
    "kvid-eval": lambda path, tmp: [f"--model={path}", f"--data_dir={tmp}"],
    "kvid-prepare": lambda path, tmp: [f"--csv={path}", f"--out_dir={tmp / 'out'}", "--split=a"],
    "kvid-edgetpu-check": lambda path, tmp: [str(path)],
    "kvid-classify": lambda path, tmp: [f"--model={path}", str(tmp / "video.mp4")],
    "kvid-benchmark": lambda path, tmp: [f"--output_dir={tmp / 'out'}", str(path)],
    "kvid-port": lambda path, tmp: [
        "--family=posmlp",
        f"--config={tmp / 'config.json'}",
        f"--checkpoint={path}",
        f"--workdir={tmp / 'out'}",
    ],
}


def _run(script: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    executable = pathlib.Path(sys.executable).parent / script
    assert executable.exists(), f"{script} is not installed: pip install -e . again"
    return subprocess.run(
        [str(executable), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=dict(os.environ),
    )


def _assert_one_line_error(result: subprocess.CompletedProcess, script: str, mentions: str):
    output = result.stdout + result.stderr
    assert result.returncode not in (0, None), output
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{script}: error: "), lines[0]
    assert mentions in lines[0], lines[0]
    assert not result.stdout.strip(), result.stdout


def test_every_console_script_has_its_inputs_listed_here():
    assert set(SCRIPTS) == set(FILE_ARGUMENTS)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_lists_the_tools_own_flags_with_defaults_and_exits_0(script):
    result = _run(script, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "Traceback" not in text + result.stderr
    flags = [
        line.split(":")[0].strip() for line in text.splitlines() if line.strip().startswith("--")
    ]
    assert len(flags) >= 2, text
    assert "default" in text, text


@pytest.mark.parametrize("script", sorted(SCRIPTS))
@pytest.mark.parametrize("kind", ["missing", "empty", "random_bytes", "directory"])
def test_bad_file_is_one_line_naming_it(script, kind, tmp_path):
    path = tmp_path / f"input_{kind}"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random_bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "directory":
        path.mkdir()
    (tmp_path / "cwd").mkdir()
    result = _run(script, *FILE_ARGUMENTS[script](path, tmp_path), cwd=tmp_path / "cwd")
    _assert_one_line_error(result, script, path.name)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_bad_flag_is_one_line_naming_it(script, tmp_path):
    args = FILE_ARGUMENTS[script](tmp_path / "missing", tmp_path)
    result = _run(script, *args, "--no_such_flag=1", cwd=tmp_path)
    _assert_one_line_error(result, script, "no_such_flag")
