#!/usr/bin/env python3
"""Write an exact float64 reference for SmolLM2 from its GGUF weights.

A plain numpy forward pass of the Llama architecture. The weights are
dequantised with `gguf.quants.dequantize` and every product runs in float64,
so, unlike llama.cpp, the activations are never quantised to 8 bits. This is
the reference an engine with exact f32 arithmetic on the same weights should
match most closely.

Architecture (Llama as llama.cpp reads a GGUF with general.architecture=llama):
  x = token_embd[ids]
  per layer:  h = rmsnorm(x) * attn_norm
              q, k, v = h Wq^T, h Wk^T, h Wv^T
              RoPE on q, k with pairs (2i, 2i+1) of each head, angle
              p * base^(-2i/head_dim), base = llama.rope.freq_base. The GGUF
              converter permutes the Q and K rows of the Hugging Face weights
              so that this interleaved rotation equals Hugging Face's
              half-split `rotate_half` on the original weights.
              causal softmax(q k^T / sqrt(head_dim)) v, query head h reading
              kv head h // (n_heads / n_kv_heads)
              x += o Wo^T
              h = rmsnorm(x) * ffn_norm
              x += (silu(h Wgate^T) * (h Wup^T)) Wdown^T
  logits = (rmsnorm(x) * output_norm) token_embd^T   (tied embeddings)
  rmsnorm(x) = x / sqrt(mean(x^2) + eps), eps = llama.attention.layer_norm_rms_epsilon

Usage (from the repository root, after llama_cpp_reference.py):
    /work/refenv/bin/python scripts/reference/numpy_llama.py [--models DIR]

It reads the token ids and prompts from smollm2_llamacpp.json, so both
references score the same tokens, and writes smollm2_numpy.json and
smollm2_numpy_fullrow.json. It also runs llama.cpp and transformers (which
un-permutes Q and K and uses half-split RoPE) on the same ids and records how
far each is from this reference.
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

FIXTURE_DIR = llama_ref.FIXTURE_DIR
REPO_ROOT = llama_ref.REPO_ROOT
ROW_STRIDE = 16
FULL_ROW_DECIMALS = 2
PPL_N_CTX = 512


class LlamaNumpy:
    """Float64 Llama forward pass over dequantised GGUF weights."""

    def __init__(self, path):
        reader = gguf.GGUFReader(str(path))
        fields = reader.fields
        if fields["general.architecture"].contents() != "llama":
            raise ValueError(f"{path}: expected general.architecture 'llama'")
        self.n_layers = int(fields["llama.block_count"].contents())
        self.n_heads = int(fields["llama.attention.head_count"].contents())
        self.n_kv_heads = int(fields["llama.attention.head_count_kv"].contents())
        self.hidden = int(fields["llama.embedding_length"].contents())
        self.head_dim = self.hidden // self.n_heads
        self.rope_base = float(fields["llama.rope.freq_base"].contents())
        self.eps = float(fields["llama.attention.layer_norm_rms_epsilon"].contents())
        self.weights = {
            tensor.name: gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float64)
            for tensor in reader.tensors
        }
        if "output.weight" in self.weights:
            raise ValueError(f"{path}: has output.weight; this reference assumes tied embeddings")

    def rmsnorm(self, x, weight):
        return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + self.eps) * weight

    def rope_interleaved(self, x, positions):
        """Rotate pairs (2i, 2i+1) of each head. x: [n_tokens, heads, head_dim]."""
        half = self.head_dim // 2
        inv_freq = self.rope_base ** (-np.arange(half, dtype=np.float64) * 2.0 / self.head_dim)
        angles = positions[:, None].astype(np.float64) * inv_freq[None, :]
        cos = np.cos(angles)[:, None, :]
        sin = np.sin(angles)[:, None, :]
        even = x[..., 0::2]
        odd = x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    def attention(self, q, k, v):
        """Causal grouped-query attention. q: [n, n_heads, d]; k, v: [n, n_kv_heads, d]."""
        n_tokens = q.shape[0]
        group = self.n_heads // self.n_kv_heads
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(self.head_dim)
        future = np.triu(np.ones((n_tokens, n_tokens), dtype=bool), k=1)
        scores[:, future] = -np.inf
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        return np.einsum("hqk,khd->qhd", probs, v)

    def forward(self, ids, last_only=False):
        """Logits for every position ([n, vocab]) or only the last one ([1, vocab])."""
        w = self.weights
        n_tokens = len(ids)
        positions = np.arange(n_tokens)
        x = w["token_embd.weight"][np.asarray(ids)]
        for layer in range(self.n_layers):
            prefix = f"blk.{layer}."
            h = self.rmsnorm(x, w[prefix + "attn_norm.weight"])
            q = (h @ w[prefix + "attn_q.weight"].T).reshape(n_tokens, self.n_heads, self.head_dim)
            k = (h @ w[prefix + "attn_k.weight"].T).reshape(n_tokens, self.n_kv_heads, self.head_dim)
            v = (h @ w[prefix + "attn_v.weight"].T).reshape(n_tokens, self.n_kv_heads, self.head_dim)
            q = self.rope_interleaved(q, positions)
            k = self.rope_interleaved(k, positions)
            attn = self.attention(q, k, v).reshape(n_tokens, self.hidden)
            x = x + attn @ w[prefix + "attn_output.weight"].T

            h = self.rmsnorm(x, w[prefix + "ffn_norm.weight"])
            gate = h @ w[prefix + "ffn_gate.weight"].T
            up = h @ w[prefix + "ffn_up.weight"].T
            x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w[prefix + "ffn_down.weight"].T
        if last_only:
            x = x[-1:]
        x = self.rmsnorm(x, w["output_norm.weight"])
        return x @ w["token_embd.weight"].T

    def greedy(self, prompt_ids, new_tokens, eog_ids):
        """Greedy decoding by recomputing the whole sequence for every new token."""
        ids = list(prompt_ids)
        generated, margins = [], []
        stop_reason = "max_tokens"
        for _ in range(new_tokens):
            row = self.forward(ids, last_only=True)[0]
            (first, _), (first_logit, second_logit) = llama_ref.top_k(row, 2)
            generated.append(first)
            margins.append(llama_ref.round_sig(first_logit - second_logit, 4))
            if first in eog_ids:
                stop_reason = "end_of_generation"
                break
            ids.append(first)
        return generated, margins, stop_reason


def compare_with_llamacpp(exact, approx):
    """Measure how far llama.cpp's logits are from the float64 reference on the same ids."""
    diff = np.abs(exact - approx)
    top1_exact = exact.argmax(axis=1)
    top1_approx = approx.argmax(axis=1)
    sorted_exact = np.sort(exact, axis=1)
    margin = sorted_exact[:, -1] - sorted_exact[:, -2]
    confident = margin > 0.5
    agree = top1_exact == top1_approx
    # Logits relative to each row's log-sum-exp (log-probabilities) remove a shared offset.
    def log_softmax(rows):
        top = rows.max(axis=1, keepdims=True)
        return rows - top - np.log(np.exp(rows - top).sum(axis=1, keepdims=True))

    logprob_diff = np.abs(log_softmax(exact) - log_softmax(approx.astype(np.float64)))
    top5_exact = np.argsort(-exact, axis=1)[:, :5]
    top5_diff = np.abs(np.take_along_axis(exact, top5_exact, 1) - np.take_along_axis(approx, top5_exact, 1))
    round_sig = llama_ref.round_sig
    return {
        "positions": int(exact.shape[0]),
        "top1_agreement": float(agree.mean()),
        "top1_disagreeing_positions": [int(i) for i in np.nonzero(~agree)[0]],
        "top1_agreement_where_margin_gt_0.5": float(agree[confident].mean()),
        "positions_with_margin_gt_0.5": int(confident.sum()),
        "max_abs_logit_diff": round_sig(diff.max(), 4),
        "p99_abs_logit_diff": round_sig(np.percentile(diff, 99), 4),
        "mean_abs_logit_diff": round_sig(diff.mean(), 4),
        "max_abs_top5_logit_diff": round_sig(top5_diff.max(), 4),
        "max_abs_logprob_diff_top5": round_sig(
            np.take_along_axis(logprob_diff, top5_exact, 1).max(), 4
        ),
    }


def transformers_logits(path, ids):
    """Logits from Hugging Face transformers' own Llama code on the same GGUF file.

    transformers un-permutes the Q and K rows and uses half-split RoPE, so its
    agreement with this script checks the permutation and RoPE layout above.
    Its GGUF kernels compute in float32.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    torch.set_num_threads(2)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double().numpy()
    return logits, transformers.__version__, torch.__version__


def compare_with_transformers(exact, other):
    diff = np.abs(exact - other)
    return {
        "top1_agreement": float((exact.argmax(axis=1) == other.argmax(axis=1)).mean()),
        "max_abs_logit_diff": llama_ref.round_sig(diff.max(), 4),
        "mean_abs_logit_diff": llama_ref.round_sig(diff.mean(), 4),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_models = os.environ.get("ATTEND_MODELS", str(Path.home() / ".cache/attend/models"))
    parser.add_argument("--models", type=Path, default=Path(default_models))
    args = parser.parse_args()
    path = args.models / "SmolLM2-135M-Instruct.Q4_1.gguf"

    source = json.loads((FIXTURE_DIR / "smollm2_llamacpp.json").read_text(encoding="utf-8"))
    ids = source["teacher_forced"]["ids"]
    model = LlamaNumpy(path)
    logits = model.forward(ids)

    top5_ids, top5_logits = [], []
    for row in logits:
        ids5, logits5 = llama_ref.top_k(row, 5)
        top5_ids.append(ids5)
        top5_logits.append(llama_ref.round_list(logits5))
    row_positions = [row["position"] for row in source["teacher_forced"]["rows"]]
    teacher = {
        "text": source["teacher_forced"]["text"],
        "ids": ids,
        "top1": [int(i) for i in logits.argmax(axis=1)],
        "top5_ids": top5_ids,
        "top5_logits": top5_logits,
        "rows": [llama_ref.row_summary(logits[p], p, ROW_STRIDE) for p in row_positions],
    }

    llm = llama_ref.load_model(path, n_ctx=1024, flash_attn=False, kv_f32=True)
    teacher["check_vs_llamacpp"] = compare_with_llamacpp(
        logits, llama_ref.teacher_forced_logits(llm, ids)
    )
    # Perplexity of ppl_text.txt by llama.cpp's method, with exact arithmetic.
    ppl_tokens = llama_ref.tokenize(
        llm, llama_ref.PPL_TEXT_PATH.read_text(encoding="utf-8"), parse_special=False
    )
    add_bos = bool(llama_ref.llama_cpp.llama_vocab_get_add_bos(llm._model.vocab))
    perplexity = llama_ref.perplexity_of_tokens(
        ppl_tokens, add_bos, llm.token_bos(), PPL_N_CTX, model.forward
    )

    hf_logits, hf_version, torch_version = transformers_logits(path, ids)
    teacher["check_vs_transformers_float32"] = compare_with_transformers(logits, hf_logits)
    del hf_logits
    eog_ids = {
        token
        for token in range(llm.n_vocab())
        if llama_ref.llama_cpp.llama_vocab_is_eog(llm._model.vocab, token)
    }
    del llm

    cases = []
    for case in source["greedy"]:
        generated, margins, stop_reason = model.greedy(
            case["prompt_ids"], llama_ref.GREEDY_NEW_TOKENS, eog_ids
        )
        cases.append(
            {
                "name": case["name"],
                "prompt_ids": case["prompt_ids"],
                "generated_ids": generated,
                "top1_margins": margins,
                "stop_reason": stop_reason,
                "same_as_llamacpp": generated == case["generated_ids"],
            }
        )

    generator = {
        "script": "scripts/reference/numpy_llama.py",
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "gguf": importlib.metadata.version("gguf"),
            "transformers_for_check": hf_version,
            "torch_for_check": torch_version,
        },
        "settings": {
            "dtype": "float64",
            "weights": "gguf.quants.dequantize of the file's tensors",
            "activation_quantisation": "none",
            "end_of_generation_ids": sorted(eog_ids),
        },
        "logit_rounding": f"{llama_ref.SIGNIFICANT_DIGITS} significant digits",
    }
    llama_ref.write_json(
        "smollm2_numpy.json",
        {
            "generator": generator,
            "model": source["model"],
            "teacher_forced": teacher,
            "greedy": cases,
            "perplexity": perplexity,
        },
    )

    last = len(ids) - 1
    llama_ref.write_json(
        "smollm2_numpy_fullrow.json",
        {
            "generator": generator,
            "model": source["model"],
            "ids": ids,
            "position": last,
            "logits_rounding": f"{FULL_ROW_DECIMALS} decimal places",
            "logits": [round(float(v), FULL_ROW_DECIMALS) for v in logits[last]],
        },
    )
    print(json.dumps(teacher["check_vs_llamacpp"]), file=sys.stderr)
    print(json.dumps(teacher["check_vs_transformers_float32"]), file=sys.stderr)
    print(json.dumps(perplexity), file=sys.stderr)
    print(json.dumps([(c["name"], c["same_as_llamacpp"]) for c in cases]), file=sys.stderr)


if __name__ == "__main__":
    main()
