"""Time llama.cpp (through llama-cpp-python) on the `attend bench generate` case.

Prints one JSON object with prefill_tokens_per_s and decode_tokens_per_s.
The method follows llama-bench's pp/tg at depth: the cache is first filled with
`--depth` tokens (untimed), then `--prompt-tokens` tokens are evaluated in one batch
(prefill), then `--gen-tokens` tokens are evaluated one at a time (decode). Token ids
are fixed pseudo-random ids, so no tokenizer or sampler time is counted. A short
untimed warm-up comes first, as in llama-bench.
"""

import argparse
import json
import random
import time

import llama_cpp

# ggml_type ids of the K/V storage types both engines offer (ggml.h: GGML_TYPE_F16 = 1,
# GGML_TYPE_BF16 = 30); llama-cpp-python exports only some of them as constants.
GGML_KV_TYPES = {"f16": 1, "bf16": 30}


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--depth", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--flash-attn", type=int, default=1)
    p.add_argument(
        "--kv-dtype",
        choices=sorted(GGML_KV_TYPES),
        default="f16",
        help="storage type of the K/V cache, as attend's --kv-dtype",
    )
    return p.parse_args()


def main():
    args = parse_args()
    n_ctx = args.depth + args.prompt_tokens + args.gen_tokens + 16
    llm = llama_cpp.Llama(
        model_path=args.model,
        n_ctx=n_ctx,
        n_batch=max(512, args.prompt_tokens),
        n_ubatch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        flash_attn=bool(args.flash_attn),
        type_k=GGML_KV_TYPES[args.kv_dtype],
        type_v=GGML_KV_TYPES[args.kv_dtype],
        verbose=False,
    )
    rng = random.Random(0)
    vocab = llm.n_vocab()
    ids = [rng.randrange(100, vocab) for _ in range(args.depth + args.prompt_tokens)]

    # Untimed warm-up as llama-bench does it (a short batch and one token), so that the
    # first touch of the memory-mapped weights and the graph set-up are not timed.
    llm.reset()
    llm.eval(ids[: min(32, len(ids))])
    llm.eval(ids[:1])
    llm.reset()
    if args.depth:
        llm.eval(ids[: args.depth])
    start = time.perf_counter()
    llm.eval(ids[args.depth :])
    prefill_s = time.perf_counter() - start

    start = time.perf_counter()
    for i in range(args.gen_tokens):
        llm.eval([ids[i % len(ids)]])
    decode_s = time.perf_counter() - start
    print(
        json.dumps(
            {
                "prefill_tokens_per_s": args.prompt_tokens / prefill_s,
                "decode_tokens_per_s": args.gen_tokens / decode_s,
                "kv_dtype": args.kv_dtype,
                "peer": "llama.cpp",
                "version": llama_cpp.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
