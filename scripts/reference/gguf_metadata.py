#!/usr/bin/env python3
"""Write the GGUF reference fixture for the reader's real-file tests.

Reads each model with the `gguf` Python package (the reader that ships with
llama.cpp's conversion scripts) and records what the Rust reader must agree
with: the header fields, every scalar metadata entry with its type, the
length and a few elements of every array, and the full tensor table (name,
ggml type, dims in ggml order, offset relative to the data section).

Usage: /work/refenv/bin/python scripts/reference/gguf_metadata.py
       [--models DIR] [--out crates/attend-models/tests/fixtures/gguf_models.json]
"""

import argparse
import importlib.metadata
import json
import os
from pathlib import Path

import gguf
import numpy as np

MODELS = ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"]

# Array elements recorded from each end of every array.
EDGE_ITEMS = 3

VALUE_TYPE_NAMES = {
    gguf.GGUFValueType.UINT8: "u8",
    gguf.GGUFValueType.INT8: "i8",
    gguf.GGUFValueType.UINT16: "u16",
    gguf.GGUFValueType.INT16: "i16",
    gguf.GGUFValueType.UINT32: "u32",
    gguf.GGUFValueType.INT32: "i32",
    gguf.GGUFValueType.FLOAT32: "f32",
    gguf.GGUFValueType.BOOL: "bool",
    gguf.GGUFValueType.STRING: "string",
    gguf.GGUFValueType.ARRAY: "array",
    gguf.GGUFValueType.UINT64: "u64",
    gguf.GGUFValueType.INT64: "i64",
    gguf.GGUFValueType.FLOAT64: "f64",
}


def plain(value):
    """Converts numpy scalars to JSON numbers; f32 widens to f64 exactly."""
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return int(value)
    return value


def describe_model(path: Path) -> dict:
    reader = gguf.GGUFReader(path)
    metadata = {}
    arrays = {}
    header = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            header[key.removeprefix("GGUF.")] = plain(field.contents())
            continue
        value_type = VALUE_TYPE_NAMES[field.types[0]]
        if value_type != "array":
            metadata[key] = {"type": value_type, "value": plain(field.contents())}
            continue
        elem_type = VALUE_TYPE_NAMES[field.types[1]]
        items = [plain(v) for v in field.contents()]
        arrays[key] = {
            "elem_type": elem_type,
            "len": len(items),
            "head": items[:EDGE_ITEMS],
            "tail": items[-EDGE_ITEMS:] if len(items) > EDGE_ITEMS else [],
        }

    tensors = [
        {
            "name": t.name,
            "type": t.tensor_type.name,
            "dims": [int(d) for d in t.shape],
            "offset": int(t.data_offset) - int(reader.data_offset),
            "size_bytes": int(t.n_bytes),
        }
        for t in reader.tensors
    ]
    return {
        "file": path.name,
        "file_bytes": os.path.getsize(path),
        "version": header["version"],
        "alignment": int(reader.alignment),
        "data_offset": int(reader.data_offset),
        "metadata": metadata,
        "arrays": arrays,
        "tensors": tensors,
    }


def main():
    default_models = os.environ.get(
        "ATTEND_MODELS", str(Path.home() / ".cache/attend/models")
    )
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=default_models)
    parser.add_argument(
        "--out", default="crates/attend-models/tests/fixtures/gguf_models.json"
    )
    args = parser.parse_args()

    fixture = {
        "generator": "scripts/reference/gguf_metadata.py with gguf "
        + importlib.metadata.version("gguf"),
        "models": [describe_model(Path(args.models) / name) for name in MODELS],
    }
    with open(args.out, "w", encoding="utf-8") as out:
        out.write(dump(fixture))


def dump(fixture: dict) -> str:
    """Indents the fixture but keeps each tensor on one line, so the file
    stays short and diffs read one tensor per line."""
    placeholder = "@TENSORS{}@"
    tensor_lines = []
    for idx, model in enumerate(fixture["models"]):
        lines = [json.dumps(t, ensure_ascii=False) for t in model["tensors"]]
        tensor_lines.append("[\n    " + ",\n    ".join(lines) + "\n   ]")
        model["tensors"] = placeholder.format(idx)
    text = json.dumps(fixture, indent=1, ensure_ascii=False)
    for idx, block in enumerate(tensor_lines):
        text = text.replace(json.dumps(placeholder.format(idx)), block)
    return text + "\n"


if __name__ == "__main__":
    main()
