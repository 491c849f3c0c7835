#!/usr/bin/env python3
"""Write the tokenizer and chat-template fixtures of attend-models.

Reference implementation: llama.cpp's tokenizer through llama-cpp-python (the
version is recorded in each fixture), loading only the vocabulary of the real GGUF
files. Chat prompts are rendered with jinja2 the way Hugging Face transformers
renders chat templates (trim_blocks, lstrip_blocks, loop controls and a
raise_exception function).

Usage: python scripts/reference/tokenizer_ids.py [MODELS_DIR]
MODELS_DIR defaults to $ATTEND_MODELS or ~/.cache/attend/models
(scripts/fetch-models.sh fills it).
"""

import json
import os
import sys
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.sandbox
import llama_cpp
from gguf import GGUFReader

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "crates/attend-models/tests/fixtures"
GEMMA3_TEMPLATE = REPO / "crates/attend-models/src/chat_templates/gemma3.jinja"

TEXTS = [
    "",
    "Hello world",
    "Hello, world! How are you today?",
    " leading space",
    "  two leading spaces",
    "a  b   c    d     e",
    "trailing spaces   ",
    "tab\tseparated\t\tvalues",
    "line one\nline two\n\n\nafter three newlines\r\nwindows line",
    "\n" * 40,
    " \t \n \t\n",
    "café naïve résumé Zürich façade Ångström",
    "日本語のテキスト、中文文本。한국어 텍스트",
    "Emoji: 😀👍🏽 🇫🇷 ❤️ family 👨‍👩‍👧 end",
    "12345 3.14159 1,000,000 and 9876543210123456789",
    "I'm sure you'll see it's what they've done; isn't it? He'd DON'T",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text after a bos marker<eos>",
    "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{:?}\", x.iter().sum::<i32>());\n}\n",
    "def f(a, b):\n\treturn a ** 2 + b  # comment\n",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "ℕ ∑ ∫ ≠ → Ω 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈",
    "zero\u200bwidth and control \x01\x7f chars",
    "https://example.com/path?query=1&x=%20#frag",
]

MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
}

CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is 2 + 2?"},
]
CONVERSATION_NO_SYSTEM = [
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi. How can I help?"},
    {"role": "user", "content": "Tell me a joke."},
]


def render(template_text, messages, bos, eos, add_generation_prompt):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(template_text)
    return template.render(
        messages=messages,
        bos_token=bos,
        eos_token=eos,
        add_generation_prompt=add_generation_prompt,
    )


def gguf_string(reader, key):
    field = reader.fields.get(key)
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def fixture_for(name, path):
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    n_vocab = llm.n_vocab()
    eog_ids = [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)]

    cases = []
    for text in TEXTS:
        data = text.encode("utf-8")
        ids_special = llm.tokenize(data, add_bos=True, special=True)
        ids_plain = llm.tokenize(data, add_bos=False, special=False)
        detok = llm.detokenize(ids_special, special=True).decode("utf-8")
        cases.append(
            {
                "text": text,
                "ids_add_special_parse_special": ids_special,
                "ids_plain": ids_plain,
                "detokenized_special": detok,
            }
        )

    reader = GGUFReader(str(path))
    template = gguf_string(reader, "tokenizer.chat_template")
    template_source = "tokenizer.chat_template"
    if template is None:
        template = GEMMA3_TEMPLATE.read_text()
        template_source = "builtin:gemma3"
    bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8")
    eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8")
    chats = []
    for messages in (CONVERSATION, CONVERSATION_NO_SYSTEM):
        for add_generation_prompt in (True, False):
            chats.append(
                {
                    "messages": messages,
                    "add_generation_prompt": add_generation_prompt,
                    "prompt": render(template, messages, bos, eos, add_generation_prompt),
                }
            )

    return {
        "reference": f"llama-cpp-python {llama_cpp.__version__} (llama.cpp tokenizer, vocab_only); "
        f"jinja2 {jinja2.__version__} for chat prompts",
        "model_file": path.name,
        "n_vocab": n_vocab,
        "bos_id": llm.token_bos(),
        "eos_id": llm.token_eos(),
        "eog_ids": eog_ids,
        "chat_template_source": template_source,
        "chat_template": template,
        "bos_token": bos,
        "eos_token": eos,
        "cases": cases,
        "chats": chats,
    }


def main():
    default_dir = os.environ.get("ATTEND_MODELS", "~/.cache/attend/models")
    models_dir = Path(sys.argv[1] if len(sys.argv) > 1 else default_dir).expanduser()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name, file_name in MODELS.items():
        path = models_dir / file_name
        if not path.exists():
            sys.exit(f"{path} not found: run scripts/fetch-models.sh first")
        fixture = fixture_for(name, path)
        out = FIXTURES / f"tokenizer_{name}.json"
        out.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n")
        print(f"wrote {out} ({len(fixture['cases'])} texts)")


if __name__ == "__main__":
    main()
