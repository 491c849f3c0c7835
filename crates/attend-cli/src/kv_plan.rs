//! `attend kv-plan`: the KV cache memory a model shape needs at a given context.

use std::io::Write;
use std::path::{Path, PathBuf};

use attend::kv::{plan_kv_memory, KvDtype, KvPlan, KvPlanRequest};
use attend_models::gguf::Gguf;
use attend_models::DecoderConfig;

use crate::common::{check_model_file, model_error, write_error};

/// Options of `attend kv-plan`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("shape").required(true).args(["model", "layers"])))]
pub struct KvPlanArgs {
    /// GGUF model whose metadata gives the layers, heads, head dim and windows.
    #[arg(long, conflicts_with_all = ["layers", "kv_heads", "head_dim", "window", "sliding_layers"])]
    pub model: Option<PathBuf>,
    /// Number of attention layers (with --kv-heads and --head-dim, instead of --model).
    #[arg(long, requires_all = ["kv_heads", "head_dim"])]
    pub layers: Option<usize>,
    /// Key/value heads per layer.
    #[arg(long, requires = "layers")]
    pub kv_heads: Option<usize>,
    /// Elements per head.
    #[arg(long, requires = "layers")]
    pub head_dim: Option<usize>,
    /// Tokens per sequence (prompt plus generated).
    #[arg(long)]
    pub context: usize,
    /// Number of sequences.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Storage type of K and V: f32, f16, bf16 or int8 (int8 adds one f32 scale per head).
    #[arg(long, default_value = "f16")]
    pub dtype: KvDtype,
    /// Sliding window of the sliding layers, in tokens.
    #[arg(long, requires = "sliding_layers")]
    pub window: Option<usize>,
    /// Number of layers that use the sliding window.
    #[arg(long, requires = "window")]
    pub sliding_layers: Option<usize>,
    /// Paged block size in tokens; counts round up to whole blocks.
    #[arg(long)]
    pub block_size: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

impl KvPlanArgs {
    /// Builds the planner's request from the options, reading the shape from
    /// `--model` when it is given.
    fn request(&self) -> Result<KvPlanRequest, String> {
        if self.context == 0 {
            return Err("--context 0 is invalid; pass the tokens per sequence, at least 1".into());
        }
        let mut request = KvPlanRequest {
            layers: self.layers.unwrap_or(0),
            n_kv_heads: self.kv_heads.unwrap_or(0),
            head_dim: self.head_dim.unwrap_or(0),
            context: self.context,
            batch: self.batch,
            dtype: self.dtype,
            window: self.window,
            sliding_layers: self.sliding_layers.unwrap_or(0),
            block_size: self.block_size,
        };
        if let Some(path) = &self.model {
            let config = model_config(path)?;
            request.layers = config.n_layers;
            request.n_kv_heads = config.n_kv_heads;
            request.head_dim = config.head_dim;
            let windows: Vec<usize> = config.layers.iter().filter_map(|l| l.window).collect();
            request.sliding_layers = windows.len();
            request.window = windows.first().copied();
            if windows.iter().any(|&w| Some(w) != request.window) {
                return Err(format!(
                    "{} has sliding layers with different windows, which kv-plan cannot express",
                    path.display()
                ));
            }
        }
        Ok(request)
    }
}

/// Reads the architecture config of a GGUF model.
fn model_config(path: &Path) -> Result<DecoderConfig, String> {
    check_model_file(path)?;
    let file = Gguf::open(path).map_err(|e| model_error(path, &e.into()))?;
    let architecture = file
        .architecture()
        .map_err(|e| model_error(path, &e.into()))?;
    let config = match architecture {
        "llama" => attend_models::llama::config(&file),
        "gemma3" => attend_models::gemma3::config(&file),
        other => {
            return Err(format!(
                "{}: architecture '{other}' has no KV cache plan here; kv-plan --model reads llama and gemma3 files",
                path.display()
            ))
        }
    };
    config.map_err(|e| model_error(path, &e))
}

/// Runs `attend kv-plan` and prints the plan to stdout.
///
/// # Errors
/// A message naming the invalid option when the plan cannot be computed.
pub fn run(args: &KvPlanArgs) -> Result<(), String> {
    let request = args.request()?;
    let plan = plan_kv_memory(&request).map_err(|e| format!("invalid kv-plan options: {e}"))?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", plan_json(&request, &plan))
    } else {
        write!(stdout, "{}", plan_text(&request, &plan))
    }
    .map_err(write_error)
}

/// Builds the JSON object of a plan; `total_bytes` is the KV cache of all layers for the batch.
pub fn plan_json(args: &KvPlanRequest, plan: &KvPlan) -> serde_json::Value {
    serde_json::json!({
        "layers": args.layers,
        "kv_heads": args.n_kv_heads,
        "head_dim": args.head_dim,
        "context": args.context,
        "batch": args.batch,
        "dtype": args.dtype.to_string(),
        "window": args.window,
        "sliding_layers": plan.sliding_layers,
        "block_size": args.block_size,
        "bytes_per_token_per_layer": plan.bytes_per_token_per_layer,
        "bytes_per_token": plan.bytes_per_token,
        "tokens_per_full_layer": plan.tokens_per_full_layer,
        "tokens_per_sliding_layer": plan.tokens_per_sliding_layer,
        "full_layer_bytes": plan.full_layer_bytes,
        "sliding_layer_bytes": plan.sliding_layer_bytes,
        "blocks": plan.blocks,
        "total_bytes": plan.total_bytes,
        "total_bytes_without_window": plan.total_bytes_without_window,
        "window_saving_bytes": plan.window_saving_bytes,
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Formats a plan as lines of text with units.
pub fn plan_text(args: &KvPlanRequest, plan: &KvPlan) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| out.push_str(&format!("{label:<28}{value}\n"));
    line(
        "shape",
        format!(
            "{} layers, {} kv heads x {} dims, {}, context {}, batch {}",
            args.layers, args.n_kv_heads, args.head_dim, args.dtype, args.context, args.batch
        ),
    );
    line(
        "bytes per token",
        format!(
            "{} across all layers ({} per layer), K and V",
            plan.bytes_per_token, plan.bytes_per_token_per_layer
        ),
    );
    line(
        "global layers",
        format!(
            "{} x {} tokens = {} each",
            plan.full_layers,
            plan.tokens_per_full_layer,
            mib(plan.full_layer_bytes)
        ),
    );
    if plan.sliding_layers > 0 {
        line(
            "sliding layers",
            format!(
                "{} x {} tokens = {} each",
                plan.sliding_layers,
                plan.tokens_per_sliding_layer,
                mib(plan.sliding_layer_bytes)
            ),
        );
    }
    if let (Some(blocks), Some(block_size)) = (plan.blocks, args.block_size) {
        line("paged blocks", format!("{blocks} of {block_size} tokens"));
    }
    line(
        "total",
        format!("{} bytes ({})", plan.total_bytes, mib(plan.total_bytes)),
    );
    if plan.sliding_layers > 0 {
        let fraction =
            plan.window_saving_bytes as f64 / plan.total_bytes_without_window.max(1) as f64;
        line(
            "saved by windows",
            format!(
                "{} bytes ({}, {:.1}% of {})",
                plan.window_saving_bytes,
                mib(plan.window_saving_bytes),
                100.0 * fraction,
                mib(plan.total_bytes_without_window)
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: KvPlanArgs,
    }

    fn parse(line: &str) -> Result<KvPlanArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("kv-plan").chain(line.split_whitespace()))
            .map(|cli| cli.args)
    }

    #[test]
    fn json_has_total_bytes() {
        let args = parse("--layers 18 --kv-heads 1 --head-dim 256 --context 8192 --window 512 --sliding-layers 15").unwrap();
        let request = args.request().unwrap();
        let plan = plan_kv_memory(&request).unwrap();
        let json = plan_json(&request, &plan);
        assert_eq!(json["total_bytes"], 33_030_144);
        assert_eq!(json["window_saving_bytes"], 117_964_800);
        assert_eq!(json["dtype"], "f16");
    }

    #[test]
    fn text_names_total_and_saving() {
        let args = parse("--layers 2 --kv-heads 2 --head-dim 4 --context 100 --dtype bf16 --batch 2 --window 40 --sliding-layers 1 --block-size 16").unwrap();
        let request = args.request().unwrap();
        let plan = plan_kv_memory(&request).unwrap();
        let text = plan_text(&request, &plan);
        assert!(text.contains("10240 bytes"), "{text}");
        assert!(text.contains("saved by windows"), "{text}");
        assert!(text.contains("20 of 16 tokens"), "{text}");
    }

    #[test]
    fn bad_options_are_errors() {
        assert!(parse("--layers 2 --kv-heads 2 --head-dim 4 --context 10 --dtype q4").is_err());
        assert!(parse("--layers 2 --kv-heads 2 --head-dim 4 --context 10 --window 4").is_err());
        let args = parse(
            "--layers 2 --kv-heads 2 --head-dim 4 --context 10 --window 0 --sliding-layers 1",
        )
        .unwrap();
        let message = run(&args).unwrap_err();
        assert!(message.contains("window"), "{message}");
    }
}
