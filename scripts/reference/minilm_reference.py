#!/usr/bin/env python3
"""Write the all-MiniLM-L6-v2 reference fixture: token ids and sentence embeddings.

The embeddings come from sentence-transformers, loaded offline from the model
folder, on the CPU with a fixed thread count. The token ids come from the
folder's tokenizer.json through the `tokenizers` package, with its built-in
truncation (128) and padding (128) turned off, so the ids are the full
tokenization with [CLS] and [SEP].

Usage (from the repository root):
    /work/refenv/bin/python scripts/reference/minilm_reference.py [--models DIR]

The output is crates/attend-models/tests/fixtures/minilm_embeddings.json.
"""

import argparse
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import sentence_transformers
import tokenizers
import torch
import transformers
from sentence_transformers import SentenceTransformer

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_PATH = REPO_ROOT / "crates" / "attend-models" / "tests" / "fixtures" / "minilm_embeddings.json"
N_THREADS = 2
SIGNIFICANT_DIGITS = 6

LONG_SENTENCE = " ".join(
    f"Step {i}: the river carries sand from the hills to the sea, and the tide "
    f"brings some of it back again."
    for i in range(1, 21)
)

SENTENCES = [
    ("empty", ""),
    ("plain", "The cat sat quietly on the warm windowsill."),
    ("question", "How long should bread dough rise before baking?"),
    ("accented", "Café crème, naïve façade, über jalapeño, smörgåsbord."),
    ("cjk_japanese", "東京は日本の首都です。"),
    ("cjk_chinese", "我今天早上喝了一杯绿茶。"),
    ("emoji", "I love pizza 🍕 and sunny days ☀️!"),
    ("mixed_case", "MiXeD CaSe WoRdS and ALL CAPS stay THE SAME after lowercasing?"),
    ("whitespace", "  tabs\tand\nnewlines   between   words  "),
    ("digits", "Version 3.14.159 was released on 2024-05-06 for 1,000 users."),
    ("long", LONG_SENTENCE),
]


def round_sig(value, digits=SIGNIFICANT_DIGITS):
    value = float(value)
    return value if value == 0.0 else float(f"{value:.{digits}g}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_models = os.environ.get("ATTEND_MODELS", str(Path.home() / ".cache/attend/models"))
    parser.add_argument("--models", type=Path, default=Path(default_models))
    args = parser.parse_args()
    model_dir = args.models / "all-MiniLM-L6-v2"

    torch.set_num_threads(N_THREADS)
    torch.manual_seed(0)

    tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()

    model = SentenceTransformer(str(model_dir), device="cpu")
    max_seq_length = model.max_seq_length
    texts = [text for _, text in SENTENCES]

    # One batch with all sentences (padded by sentence-transformers) ...
    batched = model.encode(texts, batch_size=len(texts), convert_to_numpy=True)
    # ... and each sentence alone, to record how much batching moves the reference.
    single = np.stack([model.encode([text], convert_to_numpy=True)[0] for text in texts])

    # The same model in float64: the float32 result's distance from exact arithmetic.
    model64 = SentenceTransformer(str(model_dir), device="cpu").double()
    exact = model64.encode(texts, batch_size=len(texts), convert_to_numpy=True)

    # sentence-transformers' own tokenization, to confirm where it truncates.
    features = model.preprocess(texts)
    used_lengths = features["attention_mask"].sum(dim=1).tolist()
    used_ids = features["input_ids"].tolist()

    records = []
    for idx, (name, text) in enumerate(SENTENCES):
        ids = tokenizer.encode(text).ids
        used = int(used_lengths[idx])
        if used != min(len(ids), max_seq_length):
            raise RuntimeError(f"{name}: sentence-transformers used {used} tokens of {len(ids)}")
        records.append(
            {
                "name": name,
                "text": text,
                "ids": ids,
                "n_tokens": len(ids),
                "n_tokens_used": used,
                "truncated": len(ids) > max_seq_length,
                # The ids the model saw: after truncation the last one is [SEP] again.
                "ids_used": used_ids[idx][:used],
                "embedding": [round_sig(v) for v in batched[idx]],
            }
        )

    def cosine_rows(a, b):
        a = a.astype(np.float64)
        b = b.astype(np.float64)
        return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    payload = {
        "generator": {
            "script": "scripts/reference/minilm_reference.py",
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "sentence_transformers": sentence_transformers.__version__,
                "tokenizers": tokenizers.__version__,
                "numpy": np.__version__,
            },
            "settings": {"device": "cpu", "torch_threads": N_THREADS, "dtype": "float32"},
            "embedding_rounding": f"{SIGNIFICANT_DIGITS} significant digits",
        },
        "model": {"folder": "all-MiniLM-L6-v2", "max_seq_length": max_seq_length, "dim": int(batched.shape[1])},
        "pooling": "mean over tokens with attention_mask 1, then L2 normalisation",
        "checks": {
            "min_cosine_batched_vs_single": round_sig(cosine_rows(batched, single).min(), 10),
            "min_cosine_float32_vs_float64": round_sig(cosine_rows(batched, exact).min(), 10),
            "max_abs_diff_float32_vs_float64": round_sig(np.abs(batched - exact).max(), 4),
        },
        "sentences": records,
    }
    with open(FIXTURE_PATH, "w", encoding="utf-8") as file:
        json.dump(payload, file, ensure_ascii=False, separators=(",", ":"))
        file.write("\n")
    print(f"wrote {FIXTURE_PATH.relative_to(REPO_ROOT)} ({FIXTURE_PATH.stat().st_size} bytes)", file=sys.stderr)
    print(json.dumps(payload["checks"]), file=sys.stderr)


if __name__ == "__main__":
    main()
