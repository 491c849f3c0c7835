//! `attend tokenize`: the token ids of a text under a model's tokenizer.

use std::io::Write;
use std::path::PathBuf;

use attend_models::gguf::Gguf;
use attend_models::tokenizer::Tokenizer;
use attend_models::ModelError;

use crate::common::{model_error, resolve_model, write_error, SMOLLM2_FILE};

/// Options of `attend tokenize`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenizeArgs {
    /// GGUF model file (default: SmolLM2 in the model folder).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Print `{"ids": [...]}` instead of one line of ids.
    #[arg(long)]
    pub json: bool,
    /// Leave out the BOS/EOS tokens the file adds.
    #[arg(long)]
    pub no_special: bool,
    /// Tokenize special-token text such as `<|im_start|>` as plain text.
    #[arg(long)]
    pub no_parse_special: bool,
    /// The text to tokenize; special tokens such as `<|im_start|>` are parsed.
    pub text: String,
}

/// Runs `attend tokenize`.
pub fn run(args: &TokenizeArgs) -> Result<(), String> {
    let path = resolve_model(args.model.as_deref(), SMOLLM2_FILE, "smollm2")?;
    let file = Gguf::open(&path).map_err(|e| model_error(&path, &ModelError::from(e)))?;
    let tokenizer = Tokenizer::from_gguf(&file).map_err(|e| model_error(&path, &e.into()))?;
    let ids = tokenizer
        .encode(&args.text, !args.no_special, !args.no_parse_special)
        .map_err(|e| e.to_string())?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", serde_json::json!({ "ids": ids }))
    } else {
        let line: Vec<String> = ids.iter().map(u32::to_string).collect();
        writeln!(stdout, "{}", line.join(" "))
    }
    .map_err(write_error)
}
