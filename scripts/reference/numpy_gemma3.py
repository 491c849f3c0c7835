#!/usr/bin/env python3
"""Write an exact float64 reference for Gemma 3 270M from its GGUF weights.

A plain numpy forward pass, written from the Gemma 3 definition in Hugging Face
transformers 5.25 (models/gemma3/modeling_gemma3.py) and the constants that
transformers derives for this file (recorded in gemma3_transformers.json):

  x = token_embd[ids] * sqrt(hidden)
  per layer:  h = rmsnorm(x) * attn_norm
              q, k, v = h Wq^T, h Wk^T, h Wv^T          (4 query heads, 1 kv head, dim 256)
              q = rmsnorm(q) * attn_q_norm, k = rmsnorm(k) * attn_k_norm   (per head)
              RoPE half-split: pairs (i, i + 128), angle p * base^(-2i/256);
              base 1e6 (gemma3.rope.freq_base) on global layers, 10000 on sliding ones
              softmax(q k^T * query_pre_attn_scalar^-0.5) v, causal; a sliding layer's
              query at p sees keys p-511 ..= p (window 512)
              x += rmsnorm(o Wo^T) * post_attention_norm
              h = rmsnorm(x) * ffn_norm
              x += rmsnorm((gelu_tanh(h Wgate^T) * (h Wup^T)) Wdown^T) * post_ffw_norm
  logits = (rmsnorm(x) * output_norm) token_embd^T      (tied, no final softcap)

Layers 5, 11 and 17 (every sixth) are global, the rest sliding. Hugging Face's
Gemma RMSNorm multiplies by (1 + weight). The GGUF stores weight + 1 (transformers'
GGUF loader subtracts 1 from every norm.weight of gemma2/gemma3 files, in
modeling_gguf_pytorch_utils.Gemma2TensorProcessor), so the norms here multiply by
the stored value as it is.

Usage (from the repository root, after the llama.cpp and transformers scripts):
    /work/refenv/bin/python scripts/reference/numpy_gemma3.py [--models DIR]

It scores the ids of gemma3_llamacpp.json and writes gemma3_numpy.json, with the
agreement against both other references.
"""

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "2")

import argparse
import importlib.metadata
import json
import platform
import sys
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llama_cpp_reference as llama_ref  # noqa: E402

ROW_STRIDE = 64
SLIDING_WINDOW = 512
GLOBAL_LAYER_PERIOD = 6
SLIDING_ROPE_BASE = 10000.0
QUERY_PRE_ATTN_SCALAR = 256.0


class Gemma3Numpy:
    """Float64 Gemma 3 forward pass over dequantised GGUF weights."""

    def __init__(self, path):
        reader = gguf.GGUFReader(str(path))
        fields = reader.fields
        if fields["general.architecture"].contents() != "gemma3":
            raise ValueError(f"{path}: expected general.architecture 'gemma3'")
        self.n_layers = int(fields["gemma3.block_count"].contents())
        self.n_heads = int(fields["gemma3.attention.head_count"].contents())
        self.n_kv_heads = int(fields["gemma3.attention.head_count_kv"].contents())
        self.head_dim = int(fields["gemma3.attention.key_length"].contents())
        self.hidden = int(fields["gemma3.embedding_length"].contents())
        self.global_rope_base = float(fields["gemma3.rope.freq_base"].contents())
        self.eps = float(fields["gemma3.attention.layer_norm_rms_epsilon"].contents())
        window = int(fields["gemma3.attention.sliding_window"].contents())
        if window != SLIDING_WINDOW:
            raise ValueError(f"{path}: sliding window {window}, expected {SLIDING_WINDOW}")
        self.weights = {
            tensor.name: gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float64)
            for tensor in reader.tensors
        }

    def rmsnorm(self, x, weight):
        return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + self.eps) * weight

    def rope_half_split(self, x, positions, base):
        """Rotate pairs (i, i + head_dim/2) of each head. x: [n_tokens, heads, head_dim]."""
        half = self.head_dim // 2
        inv_freq = base ** (-np.arange(half, dtype=np.float64) * 2.0 / self.head_dim)
        angles = positions[:, None].astype(np.float64) * inv_freq[None, :]
        cos = np.cos(angles)[:, None, :]
        sin = np.sin(angles)[:, None, :]
        first, second = x[..., :half], x[..., half:]
        return np.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)

    def attention(self, q, k, v, sliding):
        """Causal attention, windowed on sliding layers. q: [n, n_heads, d]; k, v: [n, n_kv_heads, d]."""
        n_tokens = q.shape[0]
        group = self.n_heads // self.n_kv_heads
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) * QUERY_PRE_ATTN_SCALAR**-0.5
        query_idx = np.arange(n_tokens)[:, None]
        key_idx = np.arange(n_tokens)[None, :]
        hidden_keys = key_idx > query_idx
        if sliding:
            hidden_keys |= key_idx <= query_idx - SLIDING_WINDOW
        scores[:, hidden_keys] = -np.inf
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        return np.einsum("hqk,khd->qhd", probs, v)

    @staticmethod
    def gelu_tanh(x):
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))

    def forward(self, ids):
        """Logits for every position: [n, vocab]."""
        w = self.weights
        n_tokens = len(ids)
        positions = np.arange(n_tokens)
        x = w["token_embd.weight"][np.asarray(ids)] * np.sqrt(self.hidden)
        for layer in range(self.n_layers):
            prefix = f"blk.{layer}."
            sliding = (layer + 1) % GLOBAL_LAYER_PERIOD != 0
            base = SLIDING_ROPE_BASE if sliding else self.global_rope_base

            h = self.rmsnorm(x, w[prefix + "attn_norm.weight"])
            q = (h @ w[prefix + "attn_q.weight"].T).reshape(n_tokens, self.n_heads, self.head_dim)
            k = (h @ w[prefix + "attn_k.weight"].T).reshape(n_tokens, self.n_kv_heads, self.head_dim)
            v = (h @ w[prefix + "attn_v.weight"].T).reshape(n_tokens, self.n_kv_heads, self.head_dim)
            q = self.rope_half_split(self.rmsnorm(q, w[prefix + "attn_q_norm.weight"]), positions, base)
            k = self.rope_half_split(self.rmsnorm(k, w[prefix + "attn_k_norm.weight"]), positions, base)
            attn = self.attention(q, k, v, sliding).reshape(n_tokens, self.n_heads * self.head_dim)
            attn = attn @ w[prefix + "attn_output.weight"].T
            x = x + self.rmsnorm(attn, w[prefix + "post_attention_norm.weight"])

            h = self.rmsnorm(x, w[prefix + "ffn_norm.weight"])
            gate = self.gelu_tanh(h @ w[prefix + "ffn_gate.weight"].T)
            mlp = (gate * (h @ w[prefix + "ffn_up.weight"].T)) @ w[prefix + "ffn_down.weight"].T
            x = x + self.rmsnorm(mlp, w[prefix + "post_ffw_norm.weight"])
        x = self.rmsnorm(x, w["output_norm.weight"])
        return x @ w["token_embd.weight"].T


def compare_with_fixture(logits, other):
    """Compare full logits with another fixture's top-1, top-5 and sampled rows."""
    top1 = logits.argmax(axis=1)
    other_top1 = np.array(other["top1"])
    sorted_logits = np.sort(logits, axis=1)
    margin = sorted_logits[:, -1] - sorted_logits[:, -2]
    confident = margin > 0.5
    agree = top1 == other_top1
    other_ids = np.array(other["top5_ids"])
    top5_diff = np.abs(np.take_along_axis(logits, other_ids, 1) - np.array(other["top5_logits"]))
    row_diffs = []
    for row in other["rows"]:
        sampled = logits[row["position"], :: row["sample_stride"]]
        row_diffs.append(np.abs(sampled - np.array(row["sample_logits"])))
    row_diffs = np.concatenate(row_diffs)
    round_sig = llama_ref.round_sig
    return {
        "top1_agreement": float(agree.mean()),
        "top1_disagreeing_positions": [int(i) for i in np.nonzero(~agree)[0]],
        "top1_agreement_where_margin_gt_0.5": float(agree[confident].mean()),
        "positions_with_margin_gt_0.5": int(confident.sum()),
        "top1_agreement_positions_ge_window": float(agree[SLIDING_WINDOW:].mean()),
        "max_abs_diff_at_other_top5": round_sig(top5_diff.max(), 4),
        "mean_abs_diff_at_other_top5": round_sig(top5_diff.mean(), 4),
        "max_abs_diff_sampled_rows": round_sig(row_diffs.max(), 4),
        "mean_abs_diff_sampled_rows": round_sig(row_diffs.mean(), 4),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_models = os.environ.get("ATTEND_MODELS", str(Path.home() / ".cache/attend/models"))
    parser.add_argument("--models", type=Path, default=Path(default_models))
    args = parser.parse_args()
    path = args.models / "gemma-3-270m-q4_k_m.gguf"

    fixture_dir = llama_ref.FIXTURE_DIR
    llamacpp = json.loads((fixture_dir / "gemma3_llamacpp.json").read_text(encoding="utf-8"))
    hf = json.loads((fixture_dir / "gemma3_transformers.json").read_text(encoding="utf-8"))
    ids = llamacpp["teacher_forced"]["ids"]

    logits = Gemma3Numpy(path).forward(ids)
    top5_ids, top5_logits = [], []
    for row in logits:
        ids5, logits5 = llama_ref.top_k(row, 5)
        top5_ids.append(ids5)
        top5_logits.append(llama_ref.round_list(logits5))
    row_positions = [row["position"] for row in llamacpp["teacher_forced"]["rows"]]
    teacher = {
        "text": llamacpp["teacher_forced"]["text"],
        "ids": ids,
        "top1": [int(i) for i in logits.argmax(axis=1)],
        "top5_ids": top5_ids,
        "top5_logits": top5_logits,
        "rows": [llama_ref.row_summary(logits[p], p, ROW_STRIDE) for p in row_positions],
        "check_vs_llamacpp": compare_with_fixture(logits, llamacpp["teacher_forced"]),
        "check_vs_transformers_float32": compare_with_fixture(logits, hf["teacher_forced"]),
    }
    generator = {
        "script": "scripts/reference/numpy_gemma3.py",
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "gguf": importlib.metadata.version("gguf"),
        },
        "settings": {
            "dtype": "float64",
            "weights": "gguf.quants.dequantize of the file's tensors",
            "activation_quantisation": "none",
        },
        "logit_rounding": f"{llama_ref.SIGNIFICANT_DIGITS} significant digits",
    }
    llama_ref.write_json(
        "gemma3_numpy.json",
        {"generator": generator, "model": llamacpp["model"], "teacher_forced": teacher},
    )
    print(json.dumps(teacher["check_vs_llamacpp"]), file=sys.stderr)
    print(json.dumps(teacher["check_vs_transformers_float32"]), file=sys.stderr)


if __name__ == "__main__":
    main()
