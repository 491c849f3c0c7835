"""Time sentence-transformers on the `attend bench embed` case.

Prints {"sentences_per_s": ...}: `--batch` sentences of `--tokens` word pieces each,
encoded with the model folder given (offline), median over `--reps` runs.
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sentence_transformers  # noqa: E402
import torch  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="folder with model.safetensors")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = sentence_transformers.SentenceTransformer(args.model, device="cpu")
    # "word " is one word piece in the uncased vocabulary; [CLS] and [SEP] add two.
    sentence = " ".join(["word"] * (args.tokens - 2))
    batch = [sentence] * args.batch
    model.encode(batch, batch_size=args.batch)
    times = []
    for _ in range(args.reps):
        start = time.perf_counter()
        model.encode(batch, batch_size=args.batch)
        times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "sentences_per_s": args.batch / statistics.median(times),
                "peer": "sentence-transformers",
                "version": sentence_transformers.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
