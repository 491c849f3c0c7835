#!/usr/bin/env python3
"""Write llama.cpp reference fixtures for SmolLM2 and Gemma 3.

The engine tests compare their tokenizer ids, teacher-forced logits, greedy
continuations and perplexity against these files, so the tests need no Python.
llama.cpp runs through llama-cpp-python on the CPU with a fixed thread count.
Greedy decoding picks the argmax of llama.cpp's logits in this script, so no
sampler state is involved.

Usage (from the repository root):
    /work/refenv/bin/python scripts/reference/llama_cpp_reference.py [--models DIR]

The output goes to crates/attend-models/tests/fixtures/. See README.md next to
this script for the field names.
"""

import argparse
import ctypes
import hashlib
import json
import math
import os
import platform
import sys
from pathlib import Path

import jinja2
import llama_cpp
import llama_cpp.llama_cpp as llama_cpp_raw
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_DIR = REPO_ROOT / "crates" / "attend-models" / "tests" / "fixtures"
PPL_TEXT_PATH = FIXTURE_DIR / "ppl_text.txt"

N_THREADS = 2
N_BATCH = 512
SIGNIFICANT_DIGITS = 5
GREEDY_NEW_TOKENS = 32

# About 300 SmolLM2 tokens of plain English, written for this project.
TEACHER_TEXT_SHORT = (
    "On a bright spring morning the market square fills up long before the church "
    "bell rings eight. Farmers set out crates of early radishes, bunches of spring "
    "onions and the first small strawberries, which are still more sour than sweet. "
    "A baker sells round loaves with a dark crust next to trays of buttered rolls, and "
    "the smell of warm bread drifts across the stalls. Near the fountain an old man "
    "sharpens knives on a foot-driven wheel, and children stop to watch the sparks.\n\n"
    "By ten o'clock the sky has clouded over. The wind turns and comes from the west, "
    "carrying the cool, damp smell that comes before rain. Traders glance upward and "
    "pull their canvas covers tight, while shoppers hurry to finish their lists. When "
    "the first heavy drops fall, most people crowd under the arches of the town hall "
    "and wait. The shower lasts barely a quarter of an hour. Afterwards the stones of "
    "the square shine, the gutters run with water, and the air feels fresh and clean.\n\n"
    "At home, the vegetables go into a simple soup. The onions are softened in a little "
    "oil with a pinch of salt, then the radishes, a few potatoes and a handful of peas "
    "are added with enough water to cover them. After twenty minutes of gentle "
    "simmering the soup is seasoned with pepper and fresh herbs and served with a thick "
    "slice of the morning's bread."
)

PLAIN_PROMPTS = [
    ("colors", "The three primary colors of light are"),
    ("code", "def add(a, b):\n"),
]
CHAT_QUESTION = "What is the boiling point of water at sea level?"


def round_sig(value, digits=SIGNIFICANT_DIGITS):
    """Round a float to `digits` significant digits for compact JSON."""
    value = float(value)
    if value == 0.0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")


def round_list(values, digits=SIGNIFICANT_DIGITS):
    return [round_sig(v, digits) for v in values]


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_params_without_extra_buffers():
    """Model parameters with llama.cpp's extra weight buffer types turned off.

    With them on, the bundled llama.cpp routes matrix products through its AMX
    kernel (ggml_backend_amx_mul_mat), which crashes with SIGSEGV on the
    development machine (Xeon with AMX, llama-cpp-python 0.3.36). Turning them off
    keeps llama.cpp's ordinary CPU kernels.
    """
    params = DEFAULT_MODEL_PARAMS()
    params.use_extra_bufts = False
    return params


# Llama.__init__ reads its model parameters from this function.
DEFAULT_MODEL_PARAMS = llama_cpp_raw.llama_model_default_params
llama_cpp_raw.llama_model_default_params = model_params_without_extra_buffers


def load_model(path, n_ctx, flash_attn, kv_f32, swa_full=False):
    """Load a model with logits for every position and pinned threads."""
    kv_type = llama_cpp.GGML_TYPE_F32 if kv_f32 else llama_cpp.GGML_TYPE_F16
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=N_BATCH,
        n_ubatch=N_BATCH,
        n_threads=N_THREADS,
        n_threads_batch=N_THREADS,
        logits_all=True,
        flash_attn=flash_attn,
        type_k=kv_type,
        type_v=kv_type,
        swa_full=swa_full,
        seed=0,
        verbose=False,
    )


def run_settings(flash_attn, kv_f32, swa_full):
    return {
        "n_threads": N_THREADS,
        "n_batch": N_BATCH,
        "n_ubatch": N_BATCH,
        "flash_attn": flash_attn,
        "kv_cache_type": "f32" if kv_f32 else "f16",
        "swa_full": swa_full,
        "use_extra_bufts": False,
    }


def tokenize(llm, text, parse_special):
    # add_bos=True applies the file's own rule (tokenizer.ggml.add_bos_token).
    return llm.tokenize(text.encode("utf-8"), add_bos=True, special=parse_special)


def teacher_forced_logits(llm, ids):
    """Evaluate `ids` from an empty cache. Row i contains the logits after ids[..=i]."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def top_k(row, k):
    ids = np.argsort(-row, kind="stable")[:k]
    return [int(i) for i in ids], [float(row[i]) for i in ids]


def row_summary(row, position, stride):
    """Describe a full logit row: exact whole-row statistics plus every `stride`-th logit."""
    row64 = row.astype(np.float64)
    max_logit = float(row64.max())
    logsumexp = max_logit + float(np.log(np.exp(row64 - max_logit).sum()))
    return {
        "position": position,
        "argmax": int(np.argmax(row)),
        "max": round_sig(max_logit),
        "logsumexp": round_sig(logsumexp),
        "mean": round_sig(row64.mean()),
        "std": round_sig(row64.std()),
        "sample_stride": stride,
        "sample_logits": round_list(row[::stride]),
    }


def teacher_forced_record(llm, text, row_positions, row_stride):
    ids = tokenize(llm, text, parse_special=False)
    logits = teacher_forced_logits(llm, ids)
    top5_ids, top5_logits = [], []
    for row in logits:
        ids5, logits5 = top_k(row, 5)
        top5_ids.append(ids5)
        top5_logits.append(round_list(logits5))
    positions = [p if p >= 0 else len(ids) + p for p in row_positions]
    record = {
        "text": text,
        "ids": [int(i) for i in ids],
        "top1": [int(i) for i in logits.argmax(axis=1)],
        "top5_ids": top5_ids,
        "top5_logits": top5_logits,
        "rows": [row_summary(logits[p], p, row_stride) for p in positions],
    }
    return record, logits


def compare_logits(primary, other):
    """Measure how far a second llama.cpp configuration is from the primary one."""
    top1_primary = primary.argmax(axis=1)
    top1_other = other.argmax(axis=1)
    return {
        "top1_agreement": float((top1_primary == top1_other).mean()),
        "max_abs_logit_diff": round_sig(np.abs(primary - other).max()),
        "mean_abs_logit_diff": round_sig(np.abs(primary - other).mean()),
    }


def greedy(llm, prompt_ids, new_tokens):
    """Greedy decoding through llama.cpp's KV cache, stopping on end-of-generation tokens."""
    vocab = llm._model.vocab
    llm.reset()
    llm.eval(prompt_ids)
    generated, margins = [], []
    stop_reason = "max_tokens"
    for _ in range(new_tokens):
        row = llm.scores[llm.n_tokens - 1]
        (first, second), (first_logit, second_logit) = top_k(row, 2)
        generated.append(first)
        margins.append(round_sig(first_logit - second_logit, 4))
        if llama_cpp.llama_vocab_is_eog(vocab, first):
            stop_reason = "end_of_generation"
            break
        llm.eval([first])
    text = llm.detokenize(generated).decode("utf-8", errors="replace")
    return generated, margins, stop_reason, text


def render_file_template(llm, messages):
    """Render the GGUF's tokenizer.chat_template with jinja2 (None if the file has none)."""
    template = llm.metadata.get("tokenizer.chat_template")
    if template is None:
        return None
    environment = jinja2.Environment(loader=jinja2.BaseLoader())
    return environment.from_string(template).render(
        messages=messages, add_generation_prompt=True
    )


def render_builtin_template(name, messages):
    """Render one of llama.cpp's built-in chat templates (llama_chat_apply_template)."""
    encoded = [
        (m["role"].encode("utf-8"), m["content"].encode("utf-8")) for m in messages
    ]
    array = (llama_cpp.llama_chat_message * len(encoded))()
    for slot, (role, content) in zip(array, encoded):
        slot.role = role
        slot.content = content
    size = 4096
    buffer = ctypes.create_string_buffer(size)
    written = llama_cpp.llama_chat_apply_template(
        name.encode("utf-8"), array, len(encoded), True, buffer, size
    )
    if written < 0 or written > size:
        raise RuntimeError(f"llama_chat_apply_template({name!r}) returned {written}")
    return buffer.raw[:written].decode("utf-8")


def greedy_record(llm, name, prompt, rendered, template_source):
    parse_special = rendered is not None
    text_in = rendered if rendered is not None else prompt
    prompt_ids = tokenize(llm, text_in, parse_special=parse_special)
    generated, margins, stop_reason, text = greedy(llm, prompt_ids, GREEDY_NEW_TOKENS)
    return {
        "name": name,
        "prompt": prompt,
        "chat": rendered is not None,
        "template_source": template_source,
        "rendered_prompt": rendered,
        "parse_special": parse_special,
        "prompt_ids": [int(i) for i in prompt_ids],
        "generated_ids": generated,
        "top1_margins": margins,
        "stop_reason": stop_reason,
        "text": text,
    }


def perplexity(llm, text, n_ctx):
    """Perplexity as llama.cpp's perplexity tool computes it.

    The text is tokenized once with the file's BOS rule and cut into
    floor(n_tokens / n_ctx) chunks. Each chunk runs from an empty cache; when the
    file adds BOS, the chunk's first token is replaced by BOS. Only the second
    half is scored: logits rows n_ctx/2 .. n_ctx-2 predict the tokens after them,
    n_ctx - 1 - n_ctx/2 tokens per chunk. The standard error is the one the tool
    prints: ppl * sqrt((E[nll^2] - E[nll]^2) / (count - 1)).
    """
    tokens = tokenize(llm, text, parse_special=False)
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(llm._model.vocab))
    return perplexity_of_tokens(
        tokens, add_bos, llm.token_bos(), n_ctx, lambda chunk: teacher_forced_logits(llm, chunk)
    )


def perplexity_of_tokens(tokens, add_bos, bos, n_ctx, chunk_logits):
    """Score `tokens` as `perplexity` describes, with `chunk_logits(chunk) -> [n_ctx, vocab]`."""
    n_chunks = len(tokens) // n_ctx
    first = n_ctx // 2
    nll_sum, nll2_sum, count = 0.0, 0.0, 0
    chunk_ppl = []
    for chunk_idx in range(n_chunks):
        start = chunk_idx * n_ctx
        chunk = list(tokens[start : start + n_ctx])
        if add_bos:
            chunk[0] = bos
        logits = np.asarray(chunk_logits(chunk), dtype=np.float64)
        for i in range(first, n_ctx - 1):
            row = logits[i]
            target = tokens[start + i + 1]
            max_logit = row.max()
            log_prob = row[target] - max_logit - math.log(np.exp(row - max_logit).sum())
            nll_sum += -log_prob
            nll2_sum += log_prob * log_prob
            count += 1
        chunk_ppl.append(round_sig(math.exp(nll_sum / count), 6))
    mean_nll = nll_sum / count
    variance = nll2_sum / count - mean_nll * mean_nll
    ppl = math.exp(mean_nll)
    return {
        "text_file": str(PPL_TEXT_PATH.relative_to(REPO_ROOT)),
        "n_ctx": n_ctx,
        "n_tokens": len(tokens),
        "add_bos": add_bos,
        "bos_id": bos,
        "chunks": n_chunks,
        "scored_tokens": count,
        "mean_nll": round_sig(mean_nll, 8),
        "ppl": round_sig(ppl, 8),
        "ppl_stderr": round_sig(ppl * math.sqrt(variance / (count - 1)), 6),
        "running_ppl_after_each_chunk": chunk_ppl,
    }


def versions():
    return {
        "python": platform.python_version(),
        "llama_cpp_python": llama_cpp.__version__,
        "numpy": np.__version__,
        "jinja2": jinja2.__version__,
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(),
    }


def model_record(path, llm):
    vocab = llm._model.vocab
    return {
        "file": path.name,
        "sha256": sha256_of(path),
        "n_vocab": llm.n_vocab(),
        "bos_id": llm.token_bos(),
        "eos_id": llm.token_eos(),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
    }


def write_json(name, payload):
    path = FIXTURE_DIR / name
    with open(path, "w", encoding="utf-8") as file:
        json.dump(payload, file, ensure_ascii=False, separators=(",", ":"))
        file.write("\n")
    print(f"wrote {path.relative_to(REPO_ROOT)} ({path.stat().st_size} bytes)", file=sys.stderr)


def generator_record(settings):
    return {
        "script": "scripts/reference/llama_cpp_reference.py",
        "versions": versions(),
        "settings": settings,
        "logit_rounding": f"{SIGNIFICANT_DIGITS} significant digits",
    }


def smollm2(models_dir):
    path = models_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"
    settings = run_settings(flash_attn=False, kv_f32=True, swa_full=False)
    llm = load_model(path, n_ctx=1024, flash_attn=False, kv_f32=True)
    teacher, logits = teacher_forced_record(
        llm, TEACHER_TEXT_SHORT, row_positions=[0, 100, 200, -1], row_stride=16
    )

    cases = [greedy_record(llm, name, prompt, None, None) for name, prompt in PLAIN_PROMPTS]
    messages = [{"role": "user", "content": CHAT_QUESTION}]
    rendered = render_file_template(llm, messages)
    cases.append(
        greedy_record(
            llm,
            "chat",
            CHAT_QUESTION,
            rendered,
            "tokenizer.chat_template from the GGUF, rendered with jinja2 "
            "(add_generation_prompt=True)",
        )
    )
    model = model_record(path, llm)
    del llm

    # llama.cpp's command-line defaults: flash attention on, f16 KV cache.
    other = load_model(path, n_ctx=1024, flash_attn=True, kv_f32=False)
    teacher["check_flash_attn_on_kv_f16"] = compare_logits(
        logits, teacher_forced_logits(other, teacher["ids"])
    )
    del other

    write_json(
        "smollm2_llamacpp.json",
        {
            "generator": generator_record(settings),
            "model": model,
            "teacher_forced": teacher,
            "greedy": cases,
        },
    )

    ppl_llm = load_model(path, n_ctx=512, flash_attn=False, kv_f32=True)
    text = PPL_TEXT_PATH.read_text(encoding="utf-8")
    write_json(
        "smollm2_perplexity.json",
        {
            "generator": generator_record(run_settings(False, True, False)),
            "model": model,
            "perplexity": perplexity(ppl_llm, text, n_ctx=512),
        },
    )


def gemma3(models_dir):
    path = models_dir / "gemma-3-270m-q4_k_m.gguf"
    settings = run_settings(flash_attn=False, kv_f32=True, swa_full=False)
    llm = load_model(path, n_ctx=1024, flash_attn=False, kv_f32=True, swa_full=False)
    paragraphs = PPL_TEXT_PATH.read_text(encoding="utf-8").split("\n\n")

    # About 700 tokens, so positions past the 512-token sliding window are scored.
    teacher_text = "\n\n".join(paragraphs[:5])
    teacher, logits = teacher_forced_record(
        llm, teacher_text, row_positions=[0, 300, 600, -1], row_stride=64
    )

    cases = [greedy_record(llm, name, prompt, None, None) for name, prompt in PLAIN_PROMPTS]
    messages = [{"role": "user", "content": CHAT_QUESTION}]
    if render_file_template(llm, messages) is not None:
        raise RuntimeError("the Gemma 3 file now has a chat template; render it instead")
    cases.append(
        greedy_record(
            llm,
            "chat",
            CHAT_QUESTION,
            render_builtin_template("gemma", messages),
            "llama.cpp built-in template 'gemma' (llama_chat_apply_template); "
            "the GGUF has no tokenizer.chat_template",
        )
    )

    # A prompt longer than the sliding window (about 560 tokens).
    long_prompt = "\n\n".join(paragraphs[5:9]) + "\n\nTo sum up the last few paragraphs,"
    long_case = greedy_record(llm, "long_prompt_past_window", long_prompt, None, None)
    cases.append(long_case)
    model = model_record(path, llm)
    del llm

    # The same long prompt with a full-size cache for the sliding layers must agree.
    full = load_model(path, n_ctx=1024, flash_attn=False, kv_f32=True, swa_full=True)
    full_ids, _, _, _ = greedy(full, long_case["prompt_ids"], GREEDY_NEW_TOKENS)
    long_case["same_with_swa_full"] = full_ids == long_case["generated_ids"]
    del full

    other = load_model(path, n_ctx=1024, flash_attn=True, kv_f32=False)
    teacher["check_flash_attn_on_kv_f16"] = compare_logits(
        logits, teacher_forced_logits(other, teacher["ids"])
    )
    del other

    write_json(
        "gemma3_llamacpp.json",
        {
            "generator": generator_record(settings),
            "model": model,
            "teacher_forced": teacher,
            "greedy": cases,
        },
    )

    ppl_llm = load_model(path, n_ctx=512, flash_attn=False, kv_f32=True)
    text = PPL_TEXT_PATH.read_text(encoding="utf-8")
    write_json(
        "gemma3_perplexity.json",
        {
            "generator": generator_record(run_settings(False, True, False)),
            "model": model,
            "perplexity": perplexity(ppl_llm, text, n_ctx=512),
        },
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_models = os.environ.get("ATTEND_MODELS", str(Path.home() / ".cache/attend/models"))
    parser.add_argument("--models", type=Path, default=Path(default_models))
    parser.add_argument("--only", choices=["smollm2", "gemma3"], default=None)
    args = parser.parse_args()
    np.random.seed(0)
    if args.only in (None, "smollm2"):
        smollm2(args.models)
    if args.only in (None, "gemma3"):
        gemma3(args.models)


if __name__ == "__main__":
    main()
