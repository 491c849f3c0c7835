#!/usr/bin/env python3
"""Write a float32 Gemma 3 reference from Hugging Face transformers.

transformers loads the GGUF file itself (model type gemma3_text) and runs its
own Gemma 3 code. Sliding layers use a 512-token window and RoPE base 10000,
and every sixth layer is global with the file's RoPE base. The code also
applies q/k RMSNorm, norms before and after attention and the MLP, the
sqrt(hidden) embedding scale and GELU (tanh) gating. Its GGUF kernels compute in float32 without quantising the
activations, unlike llama.cpp, so this is the tighter target for an engine that
computes in f32.

Usage (from the repository root, after llama_cpp_reference.py):
    /work/refenv/bin/python scripts/reference/transformers_gemma3_reference.py [--models DIR]

It reads the token ids and prompts from gemma3_llamacpp.json, so both references
score the same tokens, runs llama.cpp on them again to record how far apart the
two are, and writes gemma3_transformers.json.
"""

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llama_cpp_reference as llama_ref  # noqa: E402
from numpy_llama import compare_with_llamacpp  # noqa: E402

ROW_STRIDE = 64
N_THREADS = 2


def load(path):
    torch.set_num_threads(N_THREADS)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    model.eval()
    return model


def teacher_forced(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def greedy(model, prompt_ids, new_tokens, eog_ids):
    """Greedy decoding with transformers' own cache (a sliding cache for local layers)."""
    with torch.no_grad():
        output = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=sorted(eog_ids),
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
    generated = [int(t) for t in output.sequences[0, len(prompt_ids):]]
    margins = []
    for step_logits in output.logits:
        row = step_logits[0].double().numpy()
        _, (first_logit, second_logit) = llama_ref.top_k(row, 2)
        margins.append(llama_ref.round_sig(first_logit - second_logit, 4))
    stop_reason = "end_of_generation" if generated and generated[-1] in eog_ids else "max_tokens"
    return generated, margins, stop_reason


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_models = os.environ.get("ATTEND_MODELS", str(Path.home() / ".cache/attend/models"))
    parser.add_argument("--models", type=Path, default=Path(default_models))
    args = parser.parse_args()
    path = args.models / "gemma-3-270m-q4_k_m.gguf"

    source = json.loads((llama_ref.FIXTURE_DIR / "gemma3_llamacpp.json").read_text(encoding="utf-8"))
    ids = source["teacher_forced"]["ids"]

    llm = llama_ref.load_model(path, n_ctx=1024, flash_attn=False, kv_f32=True)
    llama_logits = llama_ref.teacher_forced_logits(llm, ids)
    eog_ids = {
        token
        for token in range(llm.n_vocab())
        if llama_ref.llama_cpp.llama_vocab_is_eog(llm._model.vocab, token)
    }
    del llm

    model = load(path)
    logits = teacher_forced(model, ids)
    top5_ids, top5_logits = [], []
    for row in logits:
        ids5, logits5 = llama_ref.top_k(row, 5)
        top5_ids.append(ids5)
        top5_logits.append(llama_ref.round_list(logits5))
    row_positions = [row["position"] for row in source["teacher_forced"]["rows"]]
    window = model.config.sliding_window
    check = compare_with_llamacpp(logits, llama_logits)
    agree = logits.argmax(axis=1) == llama_logits.argmax(axis=1)
    check["top1_agreement_positions_ge_window"] = float(agree[window:].mean())
    teacher = {
        "text": source["teacher_forced"]["text"],
        "ids": ids,
        "top1": [int(i) for i in logits.argmax(axis=1)],
        "top5_ids": top5_ids,
        "top5_logits": top5_logits,
        "rows": [llama_ref.row_summary(logits[p], p, ROW_STRIDE) for p in row_positions],
        "check_vs_llamacpp": check,
    }
    del logits, llama_logits

    cases = []
    for case in source["greedy"]:
        generated, margins, stop_reason = greedy(
            model, case["prompt_ids"], llama_ref.GREEDY_NEW_TOKENS, eog_ids
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

    config = model.config
    generator = {
        "script": "scripts/reference/transformers_gemma3_reference.py",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
        "settings": {
            "dtype": "float32",
            "torch_threads": N_THREADS,
            "attn_implementation": config._attn_implementation,
            "end_of_generation_ids": sorted(eog_ids),
        },
        "logit_rounding": f"{llama_ref.SIGNIFICANT_DIGITS} significant digits",
    }
    # The architecture constants transformers used, for the engine to compare with.
    architecture = {
        "layer_types": list(config.layer_types),
        "sliding_window": config.sliding_window,
        "rope_parameters": config.rope_parameters,
        "query_pre_attn_scalar": config.query_pre_attn_scalar,
        "hidden_activation": config.hidden_activation,
        "final_logit_softcapping": config.final_logit_softcapping,
        "attn_logit_softcapping": config.attn_logit_softcapping,
        "rms_norm_eps": config.rms_norm_eps,
    }
    llama_ref.write_json(
        "gemma3_transformers.json",
        {
            "generator": generator,
            "model": source["model"],
            "architecture": architecture,
            "teacher_forced": teacher,
            "greedy": cases,
        },
    )
    print(json.dumps(check), file=sys.stderr)
    print(json.dumps([(c["name"], c["same_as_llamacpp"]) for c in cases]), file=sys.stderr)


if __name__ == "__main__":
    main()
