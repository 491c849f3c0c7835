//! `attend generate`: text generation from a GGUF model, and the options and
//! checks it shares with `attend chat`.

use std::io::Write;
use std::path::PathBuf;

use attend::kv::KvDtype;
use attend_models::chat::ChatMessage;
use attend_models::sampling::{SamplingParams, StopReason};
use attend_models::{Engine, GenerateOutput, GenerateParams, Session};

use attend_models::quant::Activations;

use crate::common::{init_threads, load_engine, mib, resolve_model, write_error, SMOLLM2_FILE};

/// Options shared by `generate` and `chat`.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// GGUF model file (default: SmolLM2 in the model folder, `$ATTEND_MODELS` or
    /// `~/.cache/attend/models`).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Context length in tokens: prompt plus generated text.
    #[arg(long, default_value_t = 4096, allow_negative_numbers = true)]
    pub ctx: usize,
    /// Storage type of the KV cache: f32, f16, bf16 or int8.
    #[arg(long, default_value = "f16")]
    pub kv_dtype: KvDtype,
    /// Activations of the quantized products: q8 (8-bit, fast, as llama.cpp) or f32
    /// (dequantised weights, f32 products: slower, closer to an f32 reference).
    #[arg(long, default_value = "q8")]
    pub activations: Activations,
    #[arg(long, help = crate::common::THREADS_HELP)]
    pub threads: Option<usize>,
    /// Hide the loading progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Sampling options.
#[derive(Debug, Clone, clap::Args)]
pub struct SamplingArgs {
    /// Maximum number of tokens to generate.
    #[arg(long, default_value_t = 256, allow_negative_numbers = true)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 picks the most likely token.
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Keep only the K most likely tokens (0: all).
    #[arg(long, default_value_t = 40, allow_negative_numbers = true)]
    pub top_k: usize,
    /// Keep the most likely tokens up to this total probability (1: all).
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0: none).
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub min_p: f32,
    /// Penalty for tokens among the last 64 (1: none).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repeat_penalty: f32,
    /// Random seed; the same seed and options give the same text.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub seed: u64,
    /// Stop when the text contains this string (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    /// Returns the generation parameters after checking that the sampling values
    /// are in range and no stop string is empty (it would stop at once).
    pub(crate) fn checked_params(&self) -> Result<GenerateParams, String> {
        let params = self.params();
        params.sampling.validate().map_err(|e| e.to_string())?;
        if self.stop.iter().any(String::is_empty) {
            return Err("--stop \"\" is empty; pass the text to stop at".into());
        }
        Ok(params)
    }

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
    /// Print one JSON object with the ids, text and speeds instead of streaming;
    /// `decode_tokens_per_s` is null when generation stopped before any decode step.
    #[arg(long)]
    pub json: bool,
    /// The prompt. Special tokens written in it (such as `<|im_start|>`) are parsed
    /// as such, and the file's BOS rule applies.
    pub prompt: String,
}

/// The smallest `--ctx`: one prompt token and one generated token.
const MIN_CONTEXT: usize = 2;

/// Loads the model and an empty session, checking the options first.
pub(crate) fn open(args: &ModelArgs) -> Result<(Engine, Session), String> {
    if args.ctx < MIN_CONTEXT {
        return Err(format!(
            "--ctx {} is too small; pass at least {MIN_CONTEXT} (the prompt plus one generated token)",
            args.ctx
        ));
    }
    init_threads(args.threads)?;
    let path = resolve_model(args.model.as_deref(), SMOLLM2_FILE, "smollm2")?;
    let engine = load_engine(&path, args.quiet, args.activations)?;
    let trained = engine.decoder().config().context_trained;
    if args.ctx > trained {
        eprintln!(
            "warning: --ctx {} is longer than the {trained} tokens the model was trained with; text past that position may degrade",
            args.ctx
        );
    }
    let session = engine
        .decoder()
        .new_session(args.ctx, args.kv_dtype)
        .map_err(|e| format!("failed to create a KV cache for --ctx {}: {e}", args.ctx))?;
    Ok((engine, session))
}

/// Runs `attend generate`.
pub fn run_generate(args: &GenerateArgs) -> Result<(), String> {
    let params = args.sampling.checked_params()?;
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
    if prompt.is_empty() {
        return Err(format!(
            "the prompt {:?} encodes to no tokens; pass some text, or --chat to wrap it in the chat template",
            args.prompt
        ));
    }
    check_fits(&prompt, &session)?;

    let mut stdout = std::io::stdout().lock();
    let mut written = Ok(());
    let output = engine
        .generate(&mut session, &prompt, &params, |piece| {
            if !args.json && written.is_ok() {
                written = stdout
                    .write_all(piece.as_bytes())
                    .and_then(|()| stdout.flush());
            }
        })
        .map_err(|e| e.to_string())?;
    written.map_err(write_error)?;
    let stop_reason = stop_reason_name(&output);
    if args.json {
        let mut json = serde_json::json!({
            "prompt_tokens": output.prompt_tokens,
            "tokens": output.tokens,
            "text": output.text,
            "prefill_tokens_per_s": output.prefill_tokens_per_s,
            "decode_tokens_per_s": output.decode_tokens_per_s,
            "kv_cache_bytes": session.kv_bytes(),
            "stop_reason": stop_reason,
        });
        if let StopReason::StopString(stop) = &output.stop_reason {
            json["stop_string"] = serde_json::json!(stop);
        }
        writeln!(stdout, "{json}").map_err(write_error)?;
    } else {
        writeln!(stdout).map_err(write_error)?;
        print_stats(&output, &session, stop_reason);
    }
    Ok(())
}

/// Names why generation stopped, as the JSON output spells it.
pub(crate) fn stop_reason_name(output: &GenerateOutput) -> &'static str {
    match output.stop_reason {
        StopReason::EndOfGeneration(_) => "end_of_generation",
        StopReason::StopString(_) => "stop_string",
        StopReason::MaxTokens => "max_tokens",
        StopReason::ContextFull => "context_full",
    }
}

/// Checks that `prompt` leaves room for at least one generated token after
/// what `session` already holds.
pub(crate) fn check_fits(prompt: &[u32], session: &Session) -> Result<(), String> {
    if session.position() + prompt.len() >= session.context() {
        return Err(format!(
            "the prompt has {} token(s), which leaves no room in the context of {} tokens ({} already used); pass a larger --ctx or a shorter prompt",
            prompt.len(),
            session.context(),
            session.position()
        ));
    }
    Ok(())
}

/// Prints the speeds and cache size of one generation to stderr, and a note
/// when the context ran out before the token budget.
pub(crate) fn print_stats(output: &GenerateOutput, session: &Session, stop_reason: &str) {
    let decode_rate = match output.decode_tokens_per_s {
        Some(rate) => format!("{rate:.1} tokens/s"),
        None => "no rate (stopped before the first decode step)".to_string(),
    };
    eprintln!(
        "prefill: {} tokens, {:.1} tokens/s | decode: {} tokens, {decode_rate} | KV cache: {} ({} bytes)",
        output.prompt_tokens.len(),
        output.prefill_tokens_per_s,
        output.tokens.len(),
        mib(session.kv_bytes()),
        session.kv_bytes()
    );
    if stop_reason == "context_full" {
        eprintln!(
            "note: generation stopped because the context of {} tokens is full; pass a larger --ctx for longer output",
            session.context()
        );
    }
}
