//! Pieces the model subcommands share: where the default models live, the
//! thread pool, and loading a model with a progress bar.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use attend_models::Engine;
use indicatif::{ProgressBar, ProgressStyle};

/// The file name of the default generation model in the model folder.
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The model folder: `$ATTEND_MODELS`, else `~/.cache/attend/models`.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ATTEND_MODELS") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache").join("attend").join("models")
}

/// Returns `model`, or the default file `default_name` in the model folder; a
/// missing default names the command that fetches it.
pub fn resolve_model(
    model: Option<&Path>,
    default_name: &str,
    fetch_arg: &str,
) -> Result<PathBuf, String> {
    if let Some(path) = model {
        if !path.exists() {
            return Err(format!(
                "model file {} not found; check the path given to --model",
                path.display()
            ));
        }
        return Ok(path.to_path_buf());
    }
    let path = models_dir().join(default_name);
    if !path.exists() {
        return Err(format!(
            "default model {} not found; fetch it with `scripts/fetch-models.sh {fetch_arg}` or pass --model FILE",
            path.display()
        ));
    }
    Ok(path)
}

/// Sizes rayon's global pool; `None` keeps one thread per available core.
pub fn init_threads(threads: Option<usize>) -> Result<(), String> {
    if let Some(n) = threads {
        if n == 0 {
            return Err("--threads 0 is invalid; pass at least 1".into());
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| format!("failed to start {n} threads: {e}"))?;
    }
    Ok(())
}

/// Opens a GGUF model and reads its weights into the page cache, showing a
/// progress bar on a terminal unless `quiet`.
pub fn load_engine(path: &Path, quiet: bool) -> Result<Engine, String> {
    let engine = Engine::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let total = engine.decoder().file().bytes().len() as u64;
    let bar = if quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("loading {msg} {bar:30} {bytes}/{total_bytes}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        bar
    };
    engine.decoder().prefault(|done| bar.set_position(done));
    bar.finish_and_clear();
    tracing::info!(
        path = %path.display(),
        architecture = %engine.decoder().config().architecture,
        layers = engine.decoder().config().n_layers,
        bytes = total,
        "model loaded"
    );
    Ok(engine)
}

/// Formats a byte count in MiB with two decimals.
pub fn mib(bytes: usize) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}
