//! Pieces the model subcommands share: where the default models live, the
//! thread pool, and loading a model with a progress bar.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use attend_models::gguf::GgufError;
use attend_models::quant::Activations;
use attend_models::{Engine, ModelError};
use indicatif::{ProgressBar, ProgressStyle};

/// The file name of the default generation model in the model folder.
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Returns the model folder: `$ATTEND_MODELS` as given, else
/// `$HOME/.cache/attend/models`.
///
/// # Errors
/// A one-line message naming `ATTEND_MODELS` when it is unset and `HOME` is
/// unset or relative, because the default folder would then depend on the
/// working directory.
pub fn models_dir() -> Result<PathBuf, String> {
    // An empty value counts as unset, as shells leave `ATTEND_MODELS=` behind.
    if let Some(dir) = std::env::var_os("ATTEND_MODELS").filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let problem = match home {
        Some(home) if home.is_absolute() => {
            return Ok(home.join(".cache").join("attend").join("models"));
        }
        Some(home) if !home.as_os_str().is_empty() => {
            format!("HOME={} is not an absolute path", home.display())
        }
        _ => "HOME is unset or empty".to_string(),
    };
    Err(format!(
        "cannot locate the default model folder: {problem}; set ATTEND_MODELS to the folder that holds the models, or pass --model"
    ))
}

/// Returns `model`, or the default file `default_name` in the model folder; a
/// missing default names the command that fetches it.
///
/// # Errors
/// The errors of [`check_model_file`] and [`models_dir`], and a one-line
/// message naming `scripts/fetch-models.sh` when the default file is missing.
pub fn resolve_model(
    model: Option<&Path>,
    default_name: &str,
    fetch_arg: &str,
) -> Result<PathBuf, String> {
    if let Some(path) = model {
        check_model_file(path)?;
        return Ok(path.to_path_buf());
    }
    let path = models_dir()?.join(default_name);
    if !path.is_file() {
        return Err(format!(
            "default model {} not found; fetch it with `scripts/fetch-models.sh {fetch_arg}` or pass --model FILE",
            path.display()
        ));
    }
    Ok(path)
}

/// Checks that `--model PATH` names an existing file.
///
/// # Errors
/// A one-line message when the path does not exist or is a folder (the
/// MiniLM embedding model is a folder, and only `attend embed` reads it).
pub fn check_model_file(path: &Path) -> Result<(), String> {
    if !path.exists() {
        return Err(format!(
            "model file {} not found; check the path given to --model",
            path.display()
        ));
    }
    if path.is_dir() {
        return Err(format!(
            "--model {} is a folder, but this command reads a GGUF file; pass a .gguf file (model folders such as all-MiniLM-L6-v2 are for `attend embed`)",
            path.display()
        ));
    }
    Ok(())
}

/// Formats a failure to open the model at `path` as one line that ends with
/// the fix: a file whose structure is broken (truncated, not GGUF) is fetched
/// again, anything else is reported as the library words it.
pub fn model_error(path: &Path, err: &ModelError) -> String {
    let hint = match err {
        ModelError::Gguf(
            GgufError::Io { .. } | GgufError::UnsupportedVersion { .. } | GgufError::BigEndian { .. },
        ) => "",
        ModelError::Gguf(GgufError::BadMagic { .. }) => "; pass a .gguf model file to --model",
        ModelError::Gguf(
            GgufError::MissingKey { .. }
            | GgufError::WrongType { .. }
            | GgufError::OutOfRange { .. }
            | GgufError::TensorNotFound { .. },
        ) => "; the file is not a model attend can run, so pass another GGUF file to --model",
        ModelError::Gguf(_) => {
            "; the file is truncated or is not a GGUF model, so download it again (scripts/fetch-models.sh fetches the default models) or pass another file to --model"
        }
        _ => "",
    };
    format!("{}: {err}{hint}", path.display())
}

/// Checks that every `(option, value)` pair is at least 1, naming the first
/// option that is 0.
pub fn check_at_least_one(options: &[(&str, usize)]) -> Result<(), String> {
    match options.iter().find(|(_, value)| *value == 0) {
        Some((name, _)) => Err(format!("{name} 0 is invalid; pass at least 1")),
        None => Ok(()),
    }
}

/// Help text of every `--threads` option. Without the option a command runs
/// on rayon's default pool size, which this text states.
pub const THREADS_HELP: &str =
    "Worker threads [default: $RAYON_NUM_THREADS, else one per available logical CPU]";

/// Maximum number of worker threads a command accepts. It is far above any core
/// count these kernels scale to, yet low enough that a mistyped value cannot start
/// threads until the machine runs out.
pub const MAX_THREADS: usize = 1024;

/// Checks a `--threads` value: at least 1 and at most [`MAX_THREADS`]. Without one,
/// rayon sizes its pools from `RAYON_NUM_THREADS`, which gets the same upper bound.
pub fn check_threads(threads: Option<usize>) -> Result<(), String> {
    if threads.is_none() {
        let from_env = std::env::var("RAYON_NUM_THREADS").ok();
        // rayon-core 1.13 parses the value without trimming it, ignores what is not a
        // number, and takes 0 as its default.
        if let Some(n) = from_env.and_then(|value| value.parse::<usize>().ok()) {
            if n > MAX_THREADS {
                return Err(format!(
                    "RAYON_NUM_THREADS={n} is too many; set at most {MAX_THREADS}, or pass --threads"
                ));
            }
        }
    }
    match threads {
        Some(0) => {
            Err("--threads 0 is invalid; pass at least 1, or omit it for one per core".into())
        }
        Some(n) if n > MAX_THREADS => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            Err(format!(
                "--threads {n} is too many; pass at most {MAX_THREADS} (this machine has {cores} logical CPUs)"
            ))
        }
        _ => Ok(()),
    }
}

/// Sizes rayon's global pool; `None` keeps rayon's default size, as
/// [`THREADS_HELP`] states it.
pub fn init_threads(threads: Option<usize>) -> Result<(), String> {
    check_threads(threads)?;
    if let Some(n) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| format!("failed to start {n} threads: {e}"))?;
    }
    Ok(())
}

/// Builds a pool of `threads` workers for a benchmark that runs inside it;
/// `None` gives rayon's default size, as [`THREADS_HELP`] states it.
pub fn thread_pool(threads: Option<usize>) -> Result<rayon::ThreadPool, String> {
    check_threads(threads)?;
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(n) = threads {
        builder = builder.num_threads(n);
    }
    builder
        .build()
        .map_err(|e| format!("cannot start the thread pool: {e}"))
}

/// Opens a GGUF model, sets how its products treat their activations, and reads
/// its weights into the page cache, showing a progress bar on a terminal unless
/// `quiet`.
pub fn load_engine(path: &Path, quiet: bool, activations: Activations) -> Result<Engine, String> {
    let mut engine = Engine::open(path).map_err(|e| model_error(path, &e))?;
    engine.decoder_mut().set_activations(activations);
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

/// Formats a failed write to stdout, such as a full disk behind `> FILE`.
pub fn write_error(err: std::io::Error) -> String {
    format!("failed to write to stdout: {err}")
}
