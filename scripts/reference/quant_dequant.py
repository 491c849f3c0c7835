#!/usr/bin/env python3
"""Write dequantisation fixtures from the real model files with the `gguf` package.

Outputs, under crates/attend-models/tests/fixtures/:
- quant_rows.json and quant_rows.bin: for one tensor per (file, type), a few
  rows' byte offsets in the file and their dequantised f32 values
  (little-endian, back to back in the .bin, in the order of the JSON entries);
- quant_tensors.json: for every tensor of a supported type in both files, its
  offset, type and shape, with the f64 sum and sum of squares of its
  dequantised values, so a test can check whole files.

Run: /work/refenv/bin/python scripts/reference/quant_dequant.py
(reads $ATTEND_MODELS, default ~/.cache/attend/models)
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

FILES = ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"]
SUPPORTED = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K"}
OUT = Path(__file__).resolve().parents[2] / "crates/attend-models/tests/fixtures"


def main() -> None:
    models = Path(os.environ.get("ATTEND_MODELS", Path.home() / ".cache/attend/models"))
    rows_index = []
    rows_values = []
    tensors_index = []
    for file_name in FILES:
        path = models / file_name
        if not path.exists():
            sys.exit(f"{path} is missing; run scripts/fetch-models.sh")
        reader = GGUFReader(path)
        picked_types = set()
        for tensor in reader.tensors:
            type_name = tensor.tensor_type.name
            if type_name not in SUPPORTED:
                continue
            # GGUF dims run innermost first: [cols, rows] for a matrix.
            dims = [int(d) for d in tensor.shape]
            cols = dims[0]
            rows = int(np.prod(dims[1:])) if len(dims) > 1 else 1
            raw = np.asarray(tensor.data).reshape(rows, -1)
            row_bytes = raw.shape[1] * raw.itemsize
            values = dequantize(raw.view(np.uint8), tensor.tensor_type).reshape(rows, cols)
            values = values.astype(np.float32)
            tensors_index.append(
                {
                    "file": file_name,
                    "name": tensor.name,
                    "type": type_name,
                    "rows": rows,
                    "cols": cols,
                    "offset": int(tensor.data_offset),
                    "sum": float(values.astype(np.float64).sum()),
                    "sum_squares": float(np.square(values.astype(np.float64)).sum()),
                }
            )
            if type_name in picked_types:
                continue
            picked_types.add(type_name)
            row_indices = sorted({0, min(1, rows - 1), rows // 2, rows - 1})
            for row_idx in row_indices:
                rows_index.append(
                    {
                        "file": file_name,
                        "name": tensor.name,
                        "type": type_name,
                        "row": row_idx,
                        "cols": cols,
                        "offset": int(tensor.data_offset) + row_idx * row_bytes,
                        "row_bytes": row_bytes,
                    }
                )
                rows_values.append(values[row_idx])

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "quant_rows.json").write_text(json.dumps(rows_index, indent=1) + "\n")
    np.concatenate(rows_values).astype("<f4").tofile(OUT / "quant_rows.bin")
    (OUT / "quant_tensors.json").write_text(json.dumps(tensors_index, indent=1) + "\n")


if __name__ == "__main__":
    main()
