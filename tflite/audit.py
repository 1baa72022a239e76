"""Op audit of a `.tflite`: every op, its version and the dtypes it reads and writes.

The cpu target promises a fully int8 graph (docs/design.md section 3). The converter does not keep
that promise by itself: an op without an int8 kernel (CONV_3D, a LayerNorm's NEG) is silently
left in float32 between DEQUANTIZE and QUANTIZE. `check_int8` turns that into an error.

A *float op* is any op with a float32/float16/float64 input or output tensor, except:
  - QUANTIZE reading a float model input and DEQUANTIZE writing a float model output (the model
    boundary of a float-I/O model; impossible with int8 I/O);
  - DEQUANTIZE of a constant float16 tensor (the stored weights of a `--float16` model).

Usable as a function (`audit_model`, `check_int8`) and as a command:
  python -m kvid_tflite.audit model_int8.tflite [--int8]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from typing import Any

import numpy as np

from kvid_tflite.litert import TFLiteModel, read_operator_codes

FLOAT_DTYPES = ("float16", "float32", "float64")
# Ops that only move between float and integer domains: a float island's real culprit is the
# compute op between them, so failure messages name that op first.
_CONVERSION_OPS = ("QUANTIZE", "DEQUANTIZE")


class AuditError(RuntimeError):
    """A model breaks the int8 contract. The message is one line naming the first culprit."""


def _tensor_record(detail: dict[str, Any], constant: bool) -> dict[str, Any]:
    scale, zero_point = detail["quantization"]
    return {
        "index": int(detail["index"]),
        "name": detail["name"],
        "dtype": np.dtype(detail["dtype"]).name,
        "shape": [int(d) for d in detail["shape"]],
        "constant": constant,
        "scale": float(scale),
        "zero_point": int(zero_point),
    }


def audit_model(model: str | os.PathLike | bytes) -> dict[str, Any]:
    """Lists every op of subgraph 0 with its dtypes and flags float ops.

    Args:
      model: path to a `.tflite`, or its bytes.

    Returns:
      A JSON-serialisable dict:
        ops: [{index, name, version, inputs: [tensor], outputs: [tensor], float: bool}], where a
          tensor is {index, name, dtype, shape, constant, scale, zero_point};
        inputs / outputs: the model's I/O tensors;
        counts: {"NAME:dtype": n} by op name and the dtype of its first non-constant input
          (first input when all are constant, output for ops without inputs);
        num_ops, float_ops: [op index, ...].
    """
    # No delegate: the audit must see the graph's own nodes, not XNNPACK's fused partitions.
    tflite = TFLiteModel(model, use_xnnpack=False)
    details = {int(d["index"]): d for d in tflite.tensor_details()}
    ops_details = tflite.ops_details()
    codes = read_operator_codes(tflite.model_content)
    produced = {int(i) for op in ops_details for i in op["outputs"]}
    input_indices, output_indices = tflite.model_io_indices()

    def tensor(index: int) -> dict[str, Any]:
        # A tensor that no op writes and that is not a model input is a constant (weights, shapes).
        constant = index not in produced and index not in input_indices
        return _tensor_record(details[index], constant)

    ops = []
    for op in ops_details:
        index = int(op["index"])
        code = codes[index] if index < len(codes) else {"name": op["op_name"], "version": None}
        # The node order of an undelegated interpreter is the flatbuffer's operator order; keep the
        # version only when the names agree so a mismatch never mislabels an op.
        version = code["version"] if code["name"] == op["op_name"] else None
        record = {
            "index": index,
            "name": op["op_name"],
            "version": version,
            # -1 marks an omitted optional input (e.g. FULLY_CONNECTED without bias).
            "inputs": [tensor(int(i)) for i in op["inputs"] if i >= 0],
            "outputs": [tensor(int(i)) for i in op["outputs"] if i >= 0],
        }
        record["float"] = _is_float_op(record, input_indices, output_indices)
        ops.append(record)

    counts: collections.Counter[str] = collections.Counter()
    for op in ops:
        # Key on the activation dtype; an op that reads only constants (the float16 weight
        # DEQUANTIZE) is keyed on the constant's dtype.
        keyed = [t for t in op["inputs"] if not t["constant"]] or op["inputs"] or op["outputs"]
        counts[f"{op['name']}:{keyed[0]['dtype'] if keyed else 'none'}"] += 1
    return {
        "num_ops": len(ops),
        "inputs": [tensor(int(i)) for i in input_indices],
        "outputs": [tensor(int(i)) for i in output_indices],
        "counts": dict(sorted(counts.items())),
        "float_ops": [op["index"] for op in ops if op["float"]],
        "ops": ops,
    }


def _is_float_op(op: dict[str, Any], model_inputs, model_outputs) -> bool:
    float_inputs = [t for t in op["inputs"] if t["dtype"] in FLOAT_DTYPES]
    float_outputs = [t for t in op["outputs"] if t["dtype"] in FLOAT_DTYPES]
    if not float_inputs and not float_outputs:
        return False
    if op["name"] == "QUANTIZE" and all(t["index"] in model_inputs for t in float_inputs):
        return bool(float_outputs)  # quantizing the float model input is the boundary
    if op["name"] == "DEQUANTIZE":
        if all(t["index"] in model_outputs for t in float_outputs) and not float_inputs:
            return False
        if all(t["constant"] and t["dtype"] == "float16" for t in op["inputs"]):
            return False
    return True


def describe_op(op: dict[str, Any]) -> str:
    """One-line description: `CONV_3D (op 1, v1) in [float32 'a', ...] out [float32 'b']`."""

    def tensors(records):
        return ", ".join(f"{t['dtype']} '{t['name']}'" for t in records)

    version = f", v{op['version']}" if op.get("version") is not None else ""
    return (
        f"{op['name']} (op {op['index']}{version}) "
        f"in [{tensors(op['inputs'])}] out [{tensors(op['outputs'])}]"
    )


def _requantize_pairs(ops: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """DEQUANTIZE ops whose float output feeds exactly one op, a QUANTIZE: an int8 -> int8
    rescale done through float32 (e.g. a QAT input FakeQuant whose range is not the int8 input's).
    Maps the DEQUANTIZE's op index to that QUANTIZE."""
    consumers: dict[int, list[dict[str, Any]]] = {}
    for op in ops:
        for t in op["inputs"]:
            consumers.setdefault(t["index"], []).append(op)
    pairs = {}
    for op in ops:
        if op["name"] == "DEQUANTIZE" and op["outputs"]:
            after = consumers.get(op["outputs"][0]["index"], [])
            if len(after) == 1 and after[0]["name"] == "QUANTIZE":
                pairs[op["index"]] = after[0]
    return pairs


def _describe_requantize(dequantize: dict[str, Any], quantize: dict[str, Any]) -> str:
    source, target = dequantize["inputs"][0], quantize["outputs"][0]
    return (
        f"int8 requantization through float32: DEQUANTIZE (op {dequantize['index']}) -> QUANTIZE "
        f"(op {quantize['index']}) of '{source['name']}' from scale {source['scale']:.6g} zero "
        f"point {source['zero_point']} to scale {target['scale']:.6g} zero point "
        f"{target['zero_point']}"
    )


def int8_problems(audit: dict[str, Any]) -> list[str]:
    """Every way the audited model breaks the full-int8 contract; empty when it holds.

    Non-int8 model inputs/outputs come first, then float compute ops, then DEQUANTIZE ->
    QUANTIZE pairs that rescale int8 through float32, then the QUANTIZE/DEQUANTIZE that wrap the
    compute ops (the compute op is what needs fixing, so it is named first).
    """
    problems = []
    for kind in ("inputs", "outputs"):
        for t in audit[kind]:
            if t["dtype"] != "int8":
                problems.append(f"model {kind[:-1]} '{t['name']}' is {t['dtype']}, not int8")
    float_ops = [op for op in audit["ops"] if op["float"]]
    requantize = _requantize_pairs(float_ops)
    paired = set(requantize) | {op["index"] for op in requantize.values()}
    problems += [
        f"float op {describe_op(op)}" for op in float_ops if op["name"] not in _CONVERSION_OPS
    ]
    problems += [
        _describe_requantize(op, requantize[op["index"]])
        for op in float_ops
        if op["index"] in requantize
    ]
    problems += [
        f"float op {describe_op(op)}"
        for op in float_ops
        if op["name"] in _CONVERSION_OPS and op["index"] not in paired
    ]
    return problems


def check_int8(audit: dict[str, Any]) -> None:
    """Raises `AuditError` with one line naming the first problem if the model is not full int8."""
    problems = int8_problems(audit)
    if problems:
        num_float = len(audit["float_ops"])
        raise AuditError(
            f"int8 audit FAILED ({num_float} float op(s) of {audit['num_ops']}): {problems[0]}"
        )


def format_counts(audit: dict[str, Any]) -> str:
    """Op counts as `CONV_2D:int8 x3, MEAN:int8 x1`."""
    return ", ".join(f"{key} x{n}" for key, n in audit["counts"].items())


def main(argv: list[str] | None = None) -> int:
    """`python -m kvid_tflite.audit MODEL [--int8] [--json]`; exit 1 when `--int8` fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="path to a .tflite")
    parser.add_argument("--int8", action="store_true", help="fail unless full int8 with int8 I/O")
    parser.add_argument("--json", action="store_true", help="print the full audit as JSON")
    args = parser.parse_args(argv)
    audit = audit_model(args.model)
    if args.json:
        print(json.dumps(audit, indent=1))
    else:
        for op in audit["ops"]:
            print(("FLOAT " if op["float"] else "      ") + describe_op(op))
        print(f"{audit['num_ops']} ops: {format_counts(audit)}")
    if args.int8:
        try:
            check_int8(audit)
        except AuditError as error:
            print(f"FAILURE: {error}", file=sys.stderr)
            return 1
        print("int8 audit passed: int8 I/O, zero float ops")
    return 0


if __name__ == "__main__":
    sys.exit(main())
