"""Running Coral's `edgetpu_compiler` when it is installed, and reading what it says.

`parse_compiler_log(text)` reads the compiler's stdout (with `-s`) or the `.log` file it writes
beside the compiled model: version, sizes and on-chip memory, the number of Edge TPU subgraphs,
the ops that run on the Edge TPU and on the CPU, and the per-op-type table
("Operator / Count / Status") with the compiler's reason for every op it did not map
("Operation not supported", "More than one subgraph is not supported", "Operation is otherwise
supported, but not mapped due to some unspecified limitation", ...). A file the compiler refuses
("Model could not be parsed", "Compilation failed: ...") is reported with the compiler's lines.

`run_compiler(model, out_dir)` runs the compiler found on PATH; `compiler_section(model,
out_dir)` is what `kvid-convert --edgetpu` puts in its report: the parsed compilation, or, when
`edgetpu_compiler` is not on PATH, a section that says so and how to get it. It never claims a
compilation that did not happen. The compiler is x86-64 Linux only, from Coral's apt repository
(https://coral.ai/docs/edgetpu/compiler/); version 16.0.384591198 (2021) is the last.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import Any

COMPILER = "edgetpu_compiler"
INSTALL_HINT = (
    "install it from Coral's apt repository (x86-64 Debian/Ubuntu only): add "
    "'deb https://packages.cloud.google.com/apt coral-edgetpu-stable main', then "
    "'apt-get install edgetpu-compiler' (https://coral.ai/docs/edgetpu/compiler/)"
)
MAPPED = "Mapped to Edge TPU"
DEFAULT_TIMEOUT_S = 600

_TABLE_HEADER = re.compile(r"^\s*Operator\s+Count\s+Status\s*$")
_TABLE_ROW = re.compile(r"^\s*([A-Z][A-Z0-9_]*|edgetpu-custom-op)\s+(\d+)\s+(\S.*?)\s*$")
_FIELDS = {
    "compiler_version": (r"^Edge TPU Compiler version (\S+)", str),
    "input_model": (r"^Input(?: model)?: (.+?)\s*$", str),
    "input_size": (r"^Input size: (.+?)\s*$", str),
    "output_model": (r"^Output(?: model)?: (.+?)\s*$", str),
    "output_size": (r"^Output size: (.+?)\s*$", str),
    "on_chip_memory_used": (r"^On-chip memory used for caching model parameters: (.+?)\s*$", str),
    "on_chip_memory_remaining": (
        r"^On-chip memory remaining for caching model parameters: (.+?)\s*$",
        str,
    ),
    "off_chip_memory_used": (
        r"^Off-chip memory used for streaming uncached model parameters: (.+?)\s*$",
        str,
    ),
    "num_subgraphs": (r"^Number of Edge TPU subgraphs: (\d+)", int),
    "total_ops": (r"^Total number of operations: (\d+)", int),
    "ops_on_edgetpu": (r"^Number of operations that will run on Edge TPU: (\d+)", int),
    "ops_on_cpu": (r"^Number of operations that will run on CPU: (\d+)", int),
    "operation_log": (r"^Operation log: (.+?)\s*$", str),
}
_FAILURES = (
    re.compile(r"^(Compilation failed: .+?)\s*$"),
    re.compile(r"^(Model could not be parsed)\s*$"),
    re.compile(r"^(Internal compiler error\..*?)\s*$"),
    re.compile(r"^(Invalid model: .+?)\s*$"),
)


def parse_compiler_log(text: str) -> dict[str, Any]:
    """What an `edgetpu_compiler` output or `.log` file says, as a JSON-serialisable dict.

    Returns:
      `compiler_version`, `input_model`, `output_model`, sizes and memory (as printed, e.g.
      "5.90MiB"), `num_subgraphs`, `total_ops`, `ops_on_edgetpu`, `ops_on_cpu` (None when the
      text does not say; a successful compilation that does not say "not all operations are
      supported" ran every op on the Edge TPU); `operators`: the table rows in order, each `{op, count, status,
      mapped}`; `by_op`: per op type `{mapped, not_mapped, reasons: {status: count}}`;
      `mapped_ops` / `not_mapped_ops` (sums over the table); `reasons`: not-mapped count per
      status; `compiled`: the compiler says the model compiled; `failure`: its first failure
      line (None if none); `errors`: its `ERROR:` lines.
    """
    lines = text.splitlines()
    result: dict[str, Any] = {key: None for key in _FIELDS}
    for line in lines:
        for key, (pattern, kind) in _FIELDS.items():
            if result[key] is None:
                match = re.match(pattern, line.strip())
                if match:
                    result[key] = kind(match.group(1))
    operators = []
    in_table = False
    for line in lines:
        if _TABLE_HEADER.match(line):
            in_table = True
            continue
        if in_table:
            match = _TABLE_ROW.match(line)
            if match:
                op, count, status = match.group(1), int(match.group(2)), match.group(3)
                operators.append(
                    {"op": op, "count": count, "status": status, "mapped": status == MAPPED}
                )
            elif line.strip() and operators:
                in_table = False  # the table ends at the first line that is not a row
    by_op: dict[str, dict[str, Any]] = {}
    reasons: dict[str, int] = {}
    for row in operators:
        entry = by_op.setdefault(row["op"], {"mapped": 0, "not_mapped": 0, "reasons": {}})
        if row["mapped"]:
            entry["mapped"] += row["count"]
        else:
            entry["not_mapped"] += row["count"]
            entry["reasons"][row["status"]] = entry["reasons"].get(row["status"], 0) + row["count"]
            reasons[row["status"]] = reasons.get(row["status"], 0) + row["count"]
    if (
        result["ops_on_edgetpu"] is None
        and result["total_ops"] is not None
        and any(line.startswith("Model compiled successfully") for line in lines)
        and not any("not all operations are supported" in line for line in lines)
    ):  # the compiler prints the two counts only when some ops stay on the CPU
        result["ops_on_edgetpu"], result["ops_on_cpu"] = result["total_ops"], 0
    failure = None
    for line in lines:
        for pattern in _FAILURES:
            match = pattern.match(line.strip())
            if match and failure is None:
                failure = match.group(1)
    result.update(
        operators=operators,
        by_op=by_op,
        mapped_ops=sum(r["count"] for r in operators if r["mapped"]),
        not_mapped_ops=sum(r["count"] for r in operators if not r["mapped"]),
        reasons=reasons,
        compiled=any(line.strip().startswith("Model compiled successfully") for line in lines),
        failure=failure,
        errors=[line.strip() for line in lines if line.strip().startswith("ERROR:")],
    )
    return result


def find_compiler() -> str | None:
    """The path of `edgetpu_compiler` on PATH, or None."""
    return shutil.which(COMPILER)


def run_compiler(
    model: str, out_dir: str, compiler: str | None = None, timeout_s: int = DEFAULT_TIMEOUT_S
) -> dict[str, Any]:
    """Runs `edgetpu_compiler -s -o OUT_DIR MODEL` and parses its output.

    Returns the `parse_compiler_log` fields plus `command`, `returncode`, `stdout` (the
    compiler's own text), `log_file` (the `.log` it wrote, None if none) and `compiled_model`
    (the `_edgetpu.tflite` path when the compiler exited 0 and wrote it, else None). When the
    stdout has no op table the `.log` file's table is used.
    """
    compiler = compiler or find_compiler()
    if compiler is None:
        raise FileNotFoundError(f"{COMPILER} is not on PATH")
    command = [compiler, "-s", "-o", out_dir, model]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        output, returncode = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as error:
        output = error.stdout or ""
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        output += f"\n{COMPILER} did not finish in {timeout_s} s"
        returncode = None
    result = parse_compiler_log(output)
    stem = os.path.splitext(os.path.basename(model))[0]
    log_file = os.path.join(out_dir, stem + "_edgetpu.log")
    if os.path.exists(log_file):
        with open(log_file, encoding="utf-8", errors="replace") as f:
            logged = parse_compiler_log(f.read())
        if not result["operators"] and logged["operators"]:
            for key in ("operators", "by_op", "mapped_ops", "not_mapped_ops", "reasons"):
                result[key] = logged[key]
    else:
        log_file = None
    compiled_model = os.path.join(out_dir, stem + "_edgetpu.tflite")
    ok = returncode == 0 and os.path.exists(compiled_model)
    if returncode != 0 and result["failure"] is None:
        result["failure"] = (
            f"{COMPILER} exited with status {returncode}"
            if returncode is not None
            else f"{COMPILER} did not finish in {timeout_s} s"
        )
    result.update(
        command=command,
        returncode=returncode,
        stdout=output,
        log_file=log_file,
        compiled_model=compiled_model if ok else None,
        compiled=ok,
    )
    return result


def compiler_section(
    model: str, out_dir: str, timeout_s: int = DEFAULT_TIMEOUT_S
) -> dict[str, Any]:
    """The compiler part of an Edge TPU report: run and parsed, or why it was not run."""
    compiler = find_compiler()
    if compiler is None:
        return {
            "available": False,
            "compiled": False,
            "message": f"{COMPILER} is not on PATH: the model was not compiled; {INSTALL_HINT}",
        }
    return {
        "available": True,
        "path": compiler,
        **run_compiler(model, out_dir, compiler, timeout_s),
    }


def format_compiler_section(section: dict[str, Any]) -> list[str]:
    """Lines for people about a `compiler_section`."""
    if not section["available"]:
        return [section["message"]]
    version = section.get("compiler_version") or "unknown version"
    if not section["compiled"]:
        lines = [f"{COMPILER} ({version}) did not compile the model: {section['failure']}"]
        lines += [f"  {line}" for line in section["errors"]]
        return lines
    lines = [
        f"{COMPILER} ({version}) compiled {section['compiled_model']}: "
        f"{section['ops_on_edgetpu']} ops on the Edge TPU, {section['ops_on_cpu']} on the CPU, "
        f"{section['num_subgraphs']} Edge TPU subgraph(s); on-chip parameter memory "
        f"{section['on_chip_memory_used']} used, {section['on_chip_memory_remaining']} left"
    ]
    for op, entry in section["by_op"].items():
        line = f"  {op}: {entry['mapped']} mapped"
        if entry["not_mapped"]:
            line += (
                f", {entry['not_mapped']} not mapped ("
                + "; ".join(f"{count}: {status}" for status, count in entry["reasons"].items())
                + ")"
            )
        lines.append(line)
    return lines


def predicted_by_op(check: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per op type, how many ops the rule check puts on the Edge TPU and on the CPU."""
    table: dict[str, dict[str, int]] = {}
    for op in check["ops"]:
        entry = table.setdefault(op["name"], {"edgetpu": 0, "cpu": 0})
        entry["edgetpu" if op["edgetpu"] else "cpu"] += 1
    return table


def edgetpu_report(tflite_path: str, timeout_s: int = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """Rule check and (when installed) compilation of `tflite_path`, written beside it.

    Writes `<stem>.edgetpu.json` (the report) and `<stem>.edgetpu.md` (a short summary) next to
    the `.tflite`; the compiler, if on PATH, writes `<stem>_edgetpu.tflite` and its `.log` there.
    """
    from kvid_tflite.edgetpu import check_edgetpu, summarize

    check = check_edgetpu(tflite_path)
    out_dir = os.path.dirname(os.path.abspath(tflite_path))
    report = {
        "tflite": os.path.abspath(tflite_path),
        "rule_check": {**summarize(check), "by_op": predicted_by_op(check)},
        "compiler": compiler_section(tflite_path, out_dir, timeout_s),
    }
    stem = os.path.splitext(os.path.abspath(tflite_path))[0]
    report["json"], report["markdown"] = stem + ".edgetpu.json", stem + ".edgetpu.md"
    with open(report["json"], "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    with open(report["markdown"], "w", encoding="utf-8") as f:
        f.write(format_markdown(report))
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few lines for people about an `edgetpu_report` (the rule check, then the compiler)."""
    rules = report["rule_check"]
    lines = [
        f"  Edge TPU rule check ({rules['prediction']}): {rules['ops_before_cut']}/"
        f"{rules['num_ops']} ops, {100 * rules['mac_share']:.1f}% of MACs before the cut; "
        + (f"cut at {rules['first_blocker']}" if rules["first_blocker"] else "no rule broken")
    ]
    lines += ["  " + line for line in format_compiler_section(report["compiler"])]
    lines.append(f"  Edge TPU report: {report['json']}, {report['markdown']}")
    return lines


def format_markdown(report: dict[str, Any]) -> str:
    """The short Markdown summary of an `edgetpu_report`."""
    rules, compiler = report["rule_check"], report["compiler"]
    lines = [
        f"# Edge TPU report: {os.path.basename(report['tflite'])}",
        "",
        f"Rule check ({rules['prediction']}): {rules['ops_before_cut']}/{rules['num_ops']} ops "
        f"({100 * rules['op_share']:.1f}%) and {100 * rules['mac_share']:.1f}% of "
        f"{rules['macs']:,} MACs before the predicted cut; "
        + (f"cut at {rules['first_blocker']}." if rules["first_blocker"] else "no rule broken.")
        + (" The compiler is expected to refuse the file." if rules["compiler_refuses"] else ""),
        "",
        "Compiler: " + " ".join(format_compiler_section(compiler)[:1]),
        "",
        "| Op | Predicted Edge TPU | Predicted CPU | Compiler: mapped | Compiler: not mapped "
        "(reason) |",
        "|---|---|---|---|---|",
    ]
    compiled = compiler.get("by_op", {}) if compiler["available"] else {}
    for op in dict.fromkeys([*rules["by_op"], *compiled]):
        predicted = rules["by_op"].get(op, {"edgetpu": 0, "cpu": 0})
        if op in compiled:
            entry = compiled[op]
            mapped, not_mapped = str(entry["mapped"]), str(entry["not_mapped"])
            if entry["reasons"]:
                not_mapped += " (" + "; ".join(entry["reasons"]) + ")"
        else:
            mapped = not_mapped = "not compiled" if not compiled else "-"
        lines.append(
            f"| {op} | {predicted['edgetpu']} | {predicted['cpu']} | {mapped} | {not_mapped} |"
        )
    return "\n".join(lines) + "\n"


__all__ = [
    "COMPILER",
    "INSTALL_HINT",
    "compiler_section",
    "edgetpu_report",
    "format_markdown",
    "find_compiler",
    "format_compiler_section",
    "parse_compiler_log",
    "predicted_by_op",
    "summary_lines",
    "run_compiler",
]
