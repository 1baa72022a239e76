"""What every kvid console script shares: quiet native logs, a `--help` that lists the tool's own
flags, and bad input reported in one line.

A console script calls `run_tool` from its `run()`:

    def run() -> None:
        kvid.cli.run_tool("kvid-convert", __doc__, define_flags, main)

- Native log noise (TensorFlow's C++ start-up lines, the CUDA probe on a CPU-only machine, the
  TFLite converter's MLIR output) and TensorFlow's Python warnings are hidden unless the command
  line asks for `--verbosity=1` (or more). The tool's own messages are printed as usual.
- `--help` (also `-h`, `--helpfull`) prints the tool's description and its flags with their
  defaults, and exits 0.
- A flag that does not parse, or an error the tool raises for bad input (`UsageError`,
  `ValueError`, `OSError`), ends the run with `TOOL: error: MESSAGE` on one line and exit code 2;
  `--verbosity=1` shows the traceback instead.

This module imports neither TensorFlow nor the tools: a tool validates its input before it loads
anything heavy.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from absl import app, flags
from absl import logging as absl_logging

_HELP_ARGS = ("--help", "-h", "-help", "--helpfull", "-helpfull", "-?")
# Packages whose INFO lines a user wants to see (the tools' progress); other libraries' INFO
# lines (TensorFlow's SavedModel writer, the converter) are dropped unless --verbosity asks.
_OWN_PACKAGES = ("kvid", "kvid_training", "kvid_tflite", "training", "tflite")


class ToolError(Exception):
    """Bad input found by a tool: reported as one line naming the file or flag, exit code 2."""


def verbosity(argv: Sequence[str]) -> int:
    """The `--verbosity` / `-v` value on a command line (0 when absent or unreadable)."""
    value = 0
    for i, arg in enumerate(argv):
        for name in ("--verbosity", "-verbosity", "--v", "-v"):
            if arg == name and i + 1 < len(argv):
                text = argv[i + 1]
            elif arg.startswith(name + "="):
                text = arg.partition("=")[2]
            else:
                continue
            try:
                value = int(text)
            except ValueError:
                pass
    return value


def silence_native_logs() -> None:
    """Sends what native libraries write to the process's stderr (fd 2) to /dev/null.

    Python's `sys.stderr` keeps writing to the real stderr, so the tool's own messages and
    errors still show. Must run before TensorFlow is imported: its first lines are printed while
    it loads, before its own log level applies.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.stderr.flush()
    try:
        kept = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no fd 2 (e.g. a closed stderr): nothing to silence
        return
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(kept, "w", buffering=1, encoding="utf-8", errors="replace")
    # Child processes (decode workers) inherit fd 2, so they are silenced too; their errors are
    # reported by the parent, per file.


class _OwnInfoOnly(std_logging.Filter):
    """Keeps warnings and errors of everyone, INFO lines of kvid's own modules only."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno >= std_logging.WARNING:
            return True
        path = record.pathname.replace("\\", "/")
        return any(f"/{package}/" in path for package in _OWN_PACKAGES)


def _quiet_python_logs() -> None:
    handler = absl_logging.get_absl_handler()
    handler.python_handler.stream = sys.stderr
    handler.addFilter(_OwnInfoOnly())
    # TensorFlow's Python warnings ("WARNING:tensorflow:...") go through this logger.
    std_logging.getLogger("tensorflow").setLevel(std_logging.ERROR)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    import warnings

    warnings.filterwarnings("ignore")


def report_error(tool: str, message: object) -> None:
    """Writes `TOOL: error: MESSAGE` as one line on stderr (the run goes on)."""
    text = " ".join(str(message).split()) or type(message).__name__
    sys.stderr.flush()
    sys.stderr.write(f"{tool}: error: {text}\n")
    sys.stderr.flush()


def fail(tool: str, message: object) -> NoReturn:
    """Ends the run with one line on stderr and exit code 2."""
    report_error(tool, message)
    sys.exit(2)


def help_text(
    tool: str, description: str, flag_values: flags.FlagValues, names: Sequence[str]
) -> str:
    """The tool's description and each of its flags with its default, as `--help` prints them."""
    lines = [description.strip(), "", f"Flags of {tool} (--verbosity=1 shows library logs):"]
    for name in sorted(names):
        flag = flag_values[name]
        kind = flag.flag_type()
        default = flag.default_as_str.strip("'") if flag.default is not None else "none"
        lines.append(f"  --{name}: {flag.help}")
        lines.append(f"    ({kind}; default: {default})")
    return "\n".join(lines)


def run_tool(
    tool: str,
    description: str,
    define_flags: Callable[[flags.FlagValues], Sequence[str]],
    main: Callable[[list[str]], int | None],
    argv: Sequence[str] | None = None,
    positional: bool = False,
) -> NoReturn:
    """Runs a console script: flags defined and parsed, `main(argv)` called, its exit code used.

    Args:
      tool: the command's name, the prefix of its error lines.
      description: what the command does, with examples (shown by `--help`).
      define_flags: defines the tool's flags on the given FlagValues and returns their names.
      main: the tool; gets the positional arguments (argv[0] first) and returns an exit code.
      argv: the command line (default: sys.argv).
      positional: whether the tool takes positional arguments (else any is an error).
    """
    argv = list(sys.argv if argv is None else argv)
    verbose = verbosity(argv) >= 1
    if not verbose:
        silence_native_logs()
    names = list(define_flags(flags.FLAGS))
    if any(arg in _HELP_ARGS for arg in argv[1:]):
        print(help_text(tool, description, flags.FLAGS, names))
        sys.exit(0)

    def parse(args: list[str]) -> list[str]:
        try:
            return flags.FLAGS(args)
        except flags.Error as error:
            fail(tool, error)
        except UnicodeDecodeError:  # a --flagfile that is not text
            flagfiles = [a for a in args if a.lstrip("-").startswith("flagfile=")]
            fail(tool, f"{' '.join(flagfiles) or 'a flagfile'}: not a text flagfile")

    def wrapped(args: list[str]) -> None:
        if not verbose:
            _quiet_python_logs()
        if len(args) > 1 and not positional:
            fail(tool, f"unexpected arguments: {' '.join(args[1:])} (flags start with --)")
        try:
            code = main(args)
        except (ToolError, app.UsageError, ValueError, OSError) as error:
            if verbose:
                traceback.print_exc()
            fail(tool, error)
        except KeyboardInterrupt:
            sys.stderr.write(f"{tool}: interrupted\n")
            sys.exit(130)
        sys.exit(code or 0)

    app.run(wrapped, argv=argv, flags_parser=parse)
    raise AssertionError("unreachable: app.run exits")
