//! `attend bench generate`: prefill and decode speed of a GGUF model, measured
//! the way llama-bench's `pp512` and `tg128` at depth are.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use attend::kv::KvDtype;
use attend_models::sampling::argmax;
use attend_models::Logits;

use attend_models::quant::Activations;

use crate::common::{
    check_at_least_one, init_threads, load_engine, resolve_model, write_error, SMOLLM2_FILE,
};

/// Options of `attend bench generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchGenerateArgs {
    /// GGUF model file (default: SmolLM2 in the model folder).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Prompt tokens evaluated in one timed prefill.
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens generated one at a time in the timed decode.
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Tokens put in the cache before the timed part (untimed).
    #[arg(long, default_value_t = 0)]
    pub depth: usize,
    /// Storage type of the KV cache: f32, f16, bf16 or int8.
    #[arg(long, default_value = "f16")]
    pub kv_dtype: KvDtype,
    /// Activations of the quantized products: q8 (8-bit, fast, as llama.cpp) or f32
    /// (dequantised weights, f32 products: slower, closer to an f32 reference).
    #[arg(long, default_value = "q8")]
    pub activations: Activations,
    #[arg(long, help = crate::common::THREADS_HELP)]
    pub threads: Option<usize>,
    /// Print one JSON object; `decode_tokens_per_s` is null for `--gen-tokens 0`.
    #[arg(long)]
    pub json: bool,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `attend bench generate`. Token ids are fixed pseudo-random ids, so no
/// tokenizer or sampling time is counted beyond the argmax of each step.
pub fn run(args: &BenchGenerateArgs) -> Result<(), String> {
    check_at_least_one(&[("--prompt-tokens", args.prompt_tokens)])?;
    init_threads(args.threads)?;
    let path = resolve_model(args.model.as_deref(), SMOLLM2_FILE, "smollm2")?;
    let engine = load_engine(&path, args.quiet, args.activations)?;
    let decoder = engine.decoder();
    let vocab = decoder.config().vocab as u64;
    let ctx = args
        .depth
        .saturating_add(args.prompt_tokens)
        .saturating_add(args.gen_tokens);
    let trained = decoder.config().context_trained;
    if ctx > trained {
        eprintln!(
            "warning: --depth + --prompt-tokens + --gen-tokens = {ctx} is longer than the {trained} tokens the model was trained with; the speed is still measured"
        );
    }
    let mut session = decoder.new_session(ctx, args.kv_dtype).map_err(|e| {
        format!("failed to create a KV cache of {ctx} tokens (--depth + --prompt-tokens + --gen-tokens): {e}")
    })?;

    // A fixed linear congruential sequence of ids away from the special tokens.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next_id = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (1000 + (state >> 33) % (vocab - 1000)) as u32
    };
    let depth: Vec<u32> = (0..args.depth).map(|_| next_id()).collect();
    let prompt: Vec<u32> = (0..args.prompt_tokens).map(|_| next_id()).collect();

    if !depth.is_empty() {
        engine
            .prefill(&mut session, &depth)
            .map_err(|e| e.to_string())?;
    }
    let start = Instant::now();
    let mut logits = engine
        .prefill(&mut session, &prompt)
        .map_err(|e| e.to_string())?;
    let prefill_s = start.elapsed().as_secs_f64();

    let start = Instant::now();
    for _ in 0..args.gen_tokens {
        let id = argmax(&logits).map_err(|e| e.to_string())?;
        logits = decoder
            .forward(&mut session, &[id], Logits::Last)
            .map_err(|e| e.to_string())?;
    }
    let decode_s = start.elapsed().as_secs_f64();

    let prefill_tps = args.prompt_tokens as f64 / prefill_s;
    // `--gen-tokens 0` times no decode step, so there is no rate to report.
    let decode_tps = (args.gen_tokens > 0).then(|| args.gen_tokens as f64 / decode_s);
    let decode_rate = decode_tps.map_or("no rate".to_string(), |tps| format!("{tps:.1} tokens/s"));
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(
            stdout,
            "{}",
            serde_json::json!({
                "model": path.display().to_string(),
                "prompt_tokens": args.prompt_tokens,
                "gen_tokens": args.gen_tokens,
                "depth": args.depth,
                "threads": rayon::current_num_threads(),
                "prefill_tokens_per_s": prefill_tps,
                "decode_tokens_per_s": decode_tps,
                "kv_cache_bytes": session.kv_bytes(),
            })
        )
    } else {
        writeln!(
            stdout,
            "{}: pp{} @ depth {}: {:.1} tokens/s | tg{}: {decode_rate} | {} threads",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            args.prompt_tokens,
            args.depth,
            prefill_tps,
            args.gen_tokens,
            rayon::current_num_threads()
        )
    }
    .map_err(write_error)
}
