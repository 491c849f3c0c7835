//! Chat prompts of the real SmolLM2 and Gemma 3 files against jinja2.
//!
//! The expected prompts come from `scripts/reference/tokenizer_ids.py`, which renders
//! the same templates with jinja2 as Hugging Face transformers does.

use std::path::PathBuf;

use attend_models::chat::{ChatMessage, ChatTemplate, ChatTemplateError};
use attend_models::gguf::{Gguf, OptionalKey};
use attend_models::tokenizer::Tokenizer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    model_file: String,
    chat_template_source: String,
    chat_template: String,
    bos_token: String,
    eos_token: String,
    chats: Vec<Chat>,
}

#[derive(Deserialize)]
struct Chat {
    messages: Vec<Message>,
    add_generation_prompt: bool,
    prompt: String,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: String,
}

fn fixture(name: &str) -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("tokenizer_{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("invalid {}: {e}", path.display()))
}

fn open_model(file: &str) -> Gguf {
    let dir = match std::env::var_os("ATTEND_MODELS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is not set"))
            .join(".cache/attend/models"),
    };
    let path = dir.join(file);
    assert!(
        path.exists(),
        "model file {} is missing: run scripts/fetch-models.sh (or set ATTEND_MODELS)",
        path.display()
    );
    Gguf::open(&path).unwrap_or_else(|e| panic!("failed to open {}: {e}", path.display()))
}

/// Returns the BOS and EOS texts as the tokenizer stores them.
fn special_texts(gguf: &Gguf) -> (String, String) {
    let tokenizer = Tokenizer::from_gguf(gguf).unwrap();
    let text = |id: Option<u32>| tokenizer.token_text(id.unwrap()).unwrap().to_string();
    (text(tokenizer.bos_id()), text(tokenizer.eos_id()))
}

fn check_chats(fixture: &Fixture, template: &ChatTemplate) {
    for chat in &fixture.chats {
        let messages: Vec<ChatMessage> = chat
            .messages
            .iter()
            .map(|m| ChatMessage::new(&m.role, &m.content))
            .collect();
        let prompt = template
            .render(&messages, chat.add_generation_prompt)
            .unwrap();
        assert_eq!(
            prompt,
            chat.prompt,
            "{} messages, add_generation_prompt {}",
            chat.messages.len(),
            chat.add_generation_prompt
        );
    }
}

#[test]
fn smollm2_template_renders_like_jinja2() {
    let fixture = fixture("smollm2");
    assert_eq!(fixture.chat_template_source, "tokenizer.chat_template");
    let gguf = open_model(&fixture.model_file);
    let source = gguf.get_str("tokenizer.chat_template").optional().unwrap();
    assert_eq!(source, Some(fixture.chat_template.as_str()));

    let (bos, eos) = special_texts(&gguf);
    assert_eq!(
        (bos.as_str(), eos.as_str()),
        (fixture.bos_token.as_str(), fixture.eos_token.as_str())
    );
    let template = ChatTemplate::from_file_template(source, bos, eos).unwrap();
    check_chats(&fixture, &template);
}

#[test]
fn gemma3_file_has_no_template() {
    let fixture = fixture("gemma3");
    let gguf = open_model(&fixture.model_file);
    let source = gguf.get_str("tokenizer.chat_template").optional().unwrap();
    assert_eq!(source, None);
    let err = ChatTemplate::from_file_template(source, "<bos>", "<eos>").unwrap_err();
    assert!(matches!(err, ChatTemplateError::Missing(_)), "{err:?}");
}

#[test]
fn gemma3_builtin_renders_like_jinja2() {
    let fixture = fixture("gemma3");
    assert_eq!(fixture.chat_template_source, "builtin:gemma3");
    let gguf = open_model(&fixture.model_file);
    let (bos, eos) = special_texts(&gguf);
    assert_eq!(
        (bos.as_str(), eos.as_str()),
        (fixture.bos_token.as_str(), fixture.eos_token.as_str())
    );
    let template = ChatTemplate::builtin("gemma3", bos, eos).unwrap();
    check_chats(&fixture, &template);
}

#[test]
fn from_gguf_picks_file_or_builtin_template() {
    for name in ["smollm2", "gemma3"] {
        let fixture = fixture(name);
        let gguf = open_model(&fixture.model_file);
        let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
        let template = ChatTemplate::from_gguf(&gguf, &tokenizer).unwrap();
        check_chats(&fixture, &template);
    }
}

#[test]
fn gemma3_prompt_tokenizes_to_turn_markers() {
    let fixture = fixture("gemma3");
    let gguf = open_model(&fixture.model_file);
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
    let prompt = &fixture.chats[0].prompt;
    // The template writes BOS itself, so the prompt is encoded without adding one.
    let ids = tokenizer.encode(prompt, false, true).unwrap();
    let start_of_turn = tokenizer.token_id("<start_of_turn>").unwrap();
    let end_of_turn = tokenizer.token_id("<end_of_turn>").unwrap();
    assert_eq!(ids[0], tokenizer.bos_id().unwrap());
    assert_eq!(ids[1], start_of_turn);
    assert_eq!(ids.iter().filter(|&&id| id == start_of_turn).count(), 2);
    assert_eq!(ids.iter().filter(|&&id| id == end_of_turn).count(), 1);
}
