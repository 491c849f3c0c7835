"""Time PyTorch's CPU scaled_dot_product_attention on one attend benchmark case.

Prints one JSON object: {"ms": median milliseconds per call, "peer": "torch", "version": ...}.

Prefill (the attend kernel cases): q, k, v of shape [batch, heads, seq_len, head_dim]
(torch's layout), causal, optionally a sliding window of `--window LEFT` keys before the
query, passed as a boolean mask because SDPA has no window argument.
Decode (`--kv-len L --q-len 1`): one query against L keys with grouped-query heads.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--seq-len", type=int, required=True, help="query length")
    p.add_argument("--kv-len", type=int, help="key length (default: seq-len)")
    p.add_argument("--heads", type=int, required=True)
    p.add_argument("--kv-heads", type=int)
    p.add_argument("--head-dim", type=int, required=True)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--window", type=int, help="keys visible before the query (left)")
    p.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5, help="timed calls; the median is printed")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    return p.parse_args()


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    q_len = args.seq_len
    kv_len = args.kv_len or q_len
    kv_heads = args.kv_heads or args.heads
    q = torch.randn(1, args.heads, q_len, args.head_dim, dtype=dtype)
    k = torch.randn(1, kv_heads, kv_len, args.head_dim, dtype=dtype)
    v = torch.randn(1, kv_heads, kv_len, args.head_dim, dtype=dtype)

    kwargs = {}
    if kv_heads != args.heads:
        kwargs["enable_gqa"] = True
    if args.window is not None:
        # Bottom-right aligned: query i sits at position i + kv_len - q_len.
        pos = torch.arange(q_len).unsqueeze(1) + (kv_len - q_len)
        key = torch.arange(kv_len).unsqueeze(0)
        mask = (key <= pos) & (key >= pos - args.window)
        kwargs["attn_mask"] = mask
    elif args.causal and q_len == kv_len:
        kwargs["is_causal"] = True
    elif args.causal:
        pos = torch.arange(q_len).unsqueeze(1) + (kv_len - q_len)
        kwargs["attn_mask"] = torch.arange(kv_len).unsqueeze(0) <= pos

    times = []
    with torch.inference_mode():
        for _ in range(args.warmup):
            F.scaled_dot_product_attention(q, k, v, **kwargs)
        for _ in range(args.reps):
            start = time.perf_counter()
            F.scaled_dot_product_attention(q, k, v, **kwargs)
            times.append((time.perf_counter() - start) * 1e3)
    print(json.dumps({"ms": statistics.median(times), "peer": "torch", "version": torch.__version__}))


if __name__ == "__main__":
    main()
