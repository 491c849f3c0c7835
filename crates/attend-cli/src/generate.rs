//! `attend generate` and `attend chat`: text generation from a GGUF model.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use attend::kv::KvDtype;
use attend_models::chat::ChatMessage;
use attend_models::sampling::SamplingParams;
use attend_models::{Engine, GenerateOutput, GenerateParams, Session};

use crate::common::{init_threads, load_engine, mib, resolve_model, SMOLLM2_FILE};

/// Options shared by `generate` and `chat`.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// GGUF model file (default: SmolLM2 in the model folder, `$ATTEND_MODELS` or
    /// `~/.cache/attend/models`).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Context length in tokens: prompt plus generated text.
    #[arg(long, default_value_t = 4096)]
    pub ctx: usize,
    /// Storage type of the KV cache: f32, f16, bf16 or int8.
    #[arg(long, default_value = "f16")]
    pub kv_dtype: KvDtype,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Hide the loading progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Sampling options.
#[derive(Debug, Clone, clap::Args)]
pub struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 picks the most likely token.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep only the K most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the most likely tokens up to this total probability (1: all).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0: none).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalty for tokens among the last 64 (1: none).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the text contains this string (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    fn params(&self) -> GenerateParams {
        GenerateParams {
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repeat_penalty: self.repeat_penalty,
                seed: self.seed,
                ..SamplingParams::default()
            },
            max_tokens: self.max_tokens,
            stop_strings: self.stop.clone(),
        }
    }
}

/// Options of `attend generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Wrap the prompt in the model's chat template as one user message.
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Print one JSON object with the ids, text and speeds instead of streaming.
    #[arg(long)]
    pub json: bool,
    /// The prompt.
    pub prompt: String,
}

/// Options of `attend chat`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// System message at the start of the conversation.
    #[arg(long)]
    pub system: Option<String>,
}

/// Loads the model and an empty session, checking the options first.
fn open(args: &ModelArgs) -> Result<(Engine, Session), String> {
    init_threads(args.threads)?;
    let path = resolve_model(args.model.as_deref(), SMOLLM2_FILE, "smollm2")?;
    let engine = load_engine(&path, args.quiet)?;
    let session = engine
        .decoder()
        .new_session(args.ctx, args.kv_dtype)
        .map_err(|e| format!("cannot create a session of --ctx {}: {e}", args.ctx))?;
    Ok((engine, session))
}

/// Runs `attend generate`.
pub fn run_generate(args: &GenerateArgs) -> Result<(), String> {
    let params = args.sampling.params();
    params.sampling.validate().map_err(|e| e.to_string())?;
    let (engine, mut session) = open(&args.model)?;
    let prompt = if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", &args.prompt));
        engine.encode_chat(&messages, true)
    } else {
        engine.encode(&args.prompt)
    }
    .map_err(|e| e.to_string())?;
    check_fits(&prompt, &session)?;

    let mut stdout = std::io::stdout().lock();
    let output = engine
        .generate(&mut session, &prompt, &params, |piece| {
            if !args.json {
                // A closed stdout (e.g. `| head`) should not abort generation with a panic.
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            }
        })
        .map_err(|e| e.to_string())?;
    if args.json {
        let json = serde_json::json!({
            "prompt_tokens": output.prompt_tokens,
            "tokens": output.tokens,
            "text": output.text,
            "prefill_tokens_per_s": output.prefill_tokens_per_s,
            "decode_tokens_per_s": output.decode_tokens_per_s,
            "kv_cache_bytes": session.kv_bytes(),
            "stop_reason": format!("{:?}", output.stop_reason),
        });
        let _ = writeln!(stdout, "{json}");
    } else {
        let _ = writeln!(stdout);
        print_stats(&output, &session);
    }
    Ok(())
}

fn check_fits(prompt: &[u32], session: &Session) -> Result<(), String> {
    if session.position() + prompt.len() >= session.context() {
        return Err(format!(
            "the prompt has {} tokens, which leaves no room in the context of {} tokens ({} already used); pass a larger --ctx or a shorter prompt",
            prompt.len(),
            session.context(),
            session.position()
        ));
    }
    Ok(())
}

fn print_stats(output: &GenerateOutput, session: &Session) {
    eprintln!(
        "prefill: {} tokens, {:.1} tokens/s | decode: {} tokens, {:.1} tokens/s | KV cache: {} ({} bytes)",
        output.prompt_tokens.len(),
        output.prefill_tokens_per_s,
        output.tokens.len(),
        output.decode_tokens_per_s,
        mib(session.kv_bytes()),
        session.kv_bytes()
    );
}

/// Runs `attend chat`: reads one user message per line from stdin and answers,
/// keeping the KV cache between turns.
pub fn run_chat(args: &ChatArgs) -> Result<(), String> {
    let params = args.sampling.params();
    params.sampling.validate().map_err(|e| e.to_string())?;
    let (engine, mut session) = open(&args.model)?;
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::new("system", system));
    }
    // The tokens now in the cache, in order.
    let mut cached: Vec<u32> = Vec::new();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    eprintln!(
        "chat with {}; an empty line or end of input quits",
        engine.decoder().config().architecture
    );
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?
            == 0
        {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            break;
        }
        messages.push(ChatMessage::new("user", line));
        let full = engine
            .encode_chat(&messages, true)
            .map_err(|e| e.to_string())?;

        // Feed only what the cache lacks when the conversation so far is a prefix
        // of the new prompt; otherwise (a reply that re-tokenizes differently)
        // start the cache over.
        let new_tokens = if full.starts_with(&cached) {
            full[cached.len()..].to_vec()
        } else {
            session.reset().map_err(|e| e.to_string())?;
            cached.clear();
            full.clone()
        };
        check_fits(&new_tokens, &session)?;
        let output = engine
            .generate(&mut session, &new_tokens, &params, |piece| {
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            })
            .map_err(|e| e.to_string())?;
        let _ = writeln!(stdout);
        print_stats(&output, &session);

        // The cache holds the prompt and every generated token but the last,
        // which was sampled and never fed back.
        cached = full;
        cached.extend_from_slice(&output.tokens[..output.tokens.len().saturating_sub(1)]);
        messages.push(ChatMessage::new("assistant", output.text.trim()));
    }
    Ok(())
}
