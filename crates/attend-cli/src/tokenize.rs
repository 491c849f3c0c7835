//! `attend tokenize`: the token ids of a text under a model's tokenizer.

use std::path::PathBuf;

use crate::common::{resolve_model, SMOLLM2_FILE};

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
    /// The text to tokenize; special tokens such as `<|im_start|>` are parsed.
    pub text: String,
}

/// Runs `attend tokenize`.
pub fn run(args: &TokenizeArgs) -> Result<(), String> {
    let path = resolve_model(args.model.as_deref(), SMOLLM2_FILE, "smollm2")?;
    let file =
        attend_models::gguf::Gguf::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let tokenizer = attend_models::tokenizer::Tokenizer::from_gguf(&file)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let ids = tokenizer
        .encode(&args.text, !args.no_special, true)
        .map_err(|e| e.to_string())?;
    if args.json {
        println!("{}", serde_json::json!({ "ids": ids }));
    } else {
        let line: Vec<String> = ids.iter().map(u32::to_string).collect();
        println!("{}", line.join(" "));
    }
    Ok(())
}
