//! `attend bench decode`: the split-KV decode kernel over a filled KV cache, timed beside
//! a memory copy of the same size so the KV read rate can be quoted as a ratio.

use std::time::Instant;

use crate::bench_machine::parallel_copy;
use attend::kv::{ContiguousCache, KvCache, KvConfig, KvDtype, KvSeqView, PagedCache, SeqId};
use attend::{decode, AttentionParams, Bshd, BshdMut, Isa};

/// Cache kind for `--cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheChoice {
    Contiguous,
    Paged,
}

/// Options of `attend bench decode`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchDecodeArgs {
    /// Cached tokens per sequence.
    #[arg(long)]
    pub kv_len: usize,
    /// Query heads.
    #[arg(long)]
    pub heads: usize,
    /// Key/value heads; must divide --heads.
    #[arg(long)]
    pub kv_heads: usize,
    /// Elements per head.
    #[arg(long)]
    pub head_dim: usize,
    /// Storage type of the cached K and V: f32, f16, bf16 or int8.
    #[arg(long, default_value = "f32")]
    pub dtype: KvDtype,
    /// Cache kind holding the tokens.
    #[arg(long, value_enum, default_value_t = CacheChoice::Contiguous)]
    pub cache: CacheChoice,
    /// Tokens per block of the paged cache.
    #[arg(long, default_value_t = attend::kv::DEFAULT_BLOCK_SIZE)]
    pub block_size: usize,
    /// Sequences decoded in one call, each with --kv-len cached tokens.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// New query tokens per sequence.
    #[arg(long, default_value_t = 1)]
    pub q_len: usize,
    #[arg(long, help = crate::common::THREADS_HELP)]
    pub threads: Option<usize>,
    /// Timed runs of each of the kernel and the copy; the median is reported.
    #[arg(long, default_value_t = 15)]
    pub runs: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Median, minimum and maximum of a set of timings, in seconds.
#[derive(Debug, Clone, Copy)]
struct Timing {
    median_s: f64,
    min_s: f64,
    max_s: f64,
}

impl Timing {
    fn from_samples(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let median_s = if n % 2 == 1 {
            samples[n / 2]
        } else {
            (samples[n / 2 - 1] + samples[n / 2]) / 2.0
        };
        Self {
            median_s,
            min_s: samples[0],
            max_s: samples[n - 1],
        }
    }
}

/// Runs `attend bench decode` and prints one result.
///
/// # Errors
/// A message naming the invalid option, or the cache or kernel error.
pub fn run(args: &BenchDecodeArgs) -> Result<(), String> {
    validate(args)?;
    let pool = crate::common::thread_pool(args.threads)?;
    pool.install(|| bench(args, pool.current_num_threads()))
}

fn validate(args: &BenchDecodeArgs) -> Result<(), String> {
    crate::common::check_at_least_one(&[
        ("--kv-len", args.kv_len),
        ("--heads", args.heads),
        ("--kv-heads", args.kv_heads),
        ("--head-dim", args.head_dim),
        ("--block-size", args.block_size),
        ("--batch", args.batch),
        ("--q-len", args.q_len),
        ("--runs", args.runs),
    ])?;
    crate::common::check_threads(args.threads)?;
    if !args.heads.is_multiple_of(args.kv_heads) {
        return Err(format!(
            "--heads {} is not a multiple of --kv-heads {}; use a kv head count that divides the heads",
            args.heads, args.kv_heads
        ));
    }
    if args.kv_len > u32::MAX as usize {
        return Err(format!(
            "--kv-len {} exceeds the largest position, {}",
            args.kv_len,
            u32::MAX
        ));
    }
    Ok(())
}

/// Returns `len` pseudo-random values in [-1, 1) (xorshift64), so the timings do not
/// depend on special values such as zeros.
fn random_values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Creates the cache and appends `kv_len` tokens to each of `batch` sequences, 1024
/// tokens at a time, sequences in turn.
fn fill_cache(args: &BenchDecodeArgs) -> Result<Box<dyn KvCache>, String> {
    let config = KvConfig::new(args.kv_heads, args.head_dim, args.dtype);
    let mut cache: Box<dyn KvCache> = match args.cache {
        CacheChoice::Contiguous => {
            Box::new(ContiguousCache::new(config, args.kv_len).map_err(|e| format!("cache: {e}"))?)
        }
        CacheChoice::Paged => {
            let blocks = args
                .kv_len
                .div_ceil(args.block_size)
                .checked_mul(args.batch)
                .ok_or("--kv-len times --batch is too large")?;
            Box::new(
                PagedCache::new(config, blocks, args.block_size)
                    .map_err(|e| format!("cache: {e}"))?,
            )
        }
    };
    for b in 0..args.batch {
        cache
            .add_sequence(SeqId(b as u64))
            .map_err(|e| format!("cache: {e}"))?;
    }
    let chunk = 1024;
    let row_len = config.row_len();
    for start in (0..args.kv_len).step_by(chunk) {
        let tokens = chunk.min(args.kv_len - start);
        let positions: Vec<u32> = (start as u32..(start + tokens) as u32).collect();
        for b in 0..args.batch {
            let seed = (b * args.kv_len + start) as u64;
            let k = random_values(tokens * row_len, seed);
            let v = random_values(tokens * row_len, seed ^ 0x5555);
            cache
                .append(SeqId(b as u64), &k, &v, &positions)
                .map_err(|e| format!("cache: {e}"))?;
        }
    }
    Ok(cache)
}

fn bench(args: &BenchDecodeArgs, threads: usize) -> Result<(), String> {
    let cache = fill_cache(args)?;
    let views: Vec<KvSeqView> = (0..args.batch)
        .map(|b| cache.view(SeqId(b as u64)))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cache: {e}"))?;
    let kv_bytes = args.batch * args.kv_len * cache.config().bytes_per_token();

    let q_elems = args.batch * args.q_len * args.heads * args.head_dim;
    let q = random_values(q_elems, 42);
    let q = Bshd::contiguous(&q, args.batch, args.q_len, args.heads, args.head_dim)
        .map_err(|e| format!("queries: {e}"))?;
    let mut out = vec![0.0f32; q_elems];
    let mut out = BshdMut::contiguous(&mut out, args.batch, args.q_len, args.heads, args.head_dim)
        .map_err(|e| format!("output: {e}"))?;
    let params = AttentionParams {
        causal: true,
        ..Default::default()
    };

    // The copy moves as many bytes as the kernel reads, so both see the same cache level.
    let src = vec![1u8; kv_bytes];
    let mut dst = vec![0u8; kv_bytes];

    // Warm up both, then alternate kernel and copy so machine noise hits both alike.
    decode(q, &views, &params, &mut out, None).map_err(|e| format!("decode: {e}"))?;
    parallel_copy(&src, &mut dst);
    let mut kernel_samples = Vec::with_capacity(args.runs);
    let mut copy_samples = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let start = Instant::now();
        decode(q, &views, &params, &mut out, None).map_err(|e| format!("decode: {e}"))?;
        kernel_samples.push(start.elapsed().as_secs_f64());

        let start = Instant::now();
        parallel_copy(&src, &mut dst);
        copy_samples.push(start.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    let kernel = Timing::from_samples(kernel_samples);
    let copy = Timing::from_samples(copy_samples);

    let kv_bytes_per_s = kv_bytes as f64 / kernel.median_s;
    let copy_bytes_per_s = kv_bytes as f64 / copy.median_s;
    let ratio = kv_bytes_per_s / copy_bytes_per_s;
    let isa = Isa::detect();

    if args.json {
        let value = serde_json::json!({
            "kv_len": args.kv_len,
            "heads": args.heads,
            "kv_heads": args.kv_heads,
            "head_dim": args.head_dim,
            "dtype": args.dtype.to_string(),
            "cache": format!("{:?}", args.cache).to_lowercase(),
            "block_size": (args.cache == CacheChoice::Paged).then_some(args.block_size),
            "batch": args.batch,
            "q_len": args.q_len,
            "threads": threads,
            "isa": isa.name(),
            "runs": args.runs,
            "ms": kernel.median_s * 1e3,
            "kv_bytes": kv_bytes,
            "kv_bytes_per_s": kv_bytes_per_s,
            "copy_bytes_per_s": copy_bytes_per_s,
            "copy_ms": copy.median_s * 1e3,
            "kv_over_copy": ratio,
        });
        println!("{value}");
        return Ok(());
    }

    let cache_name = match args.cache {
        CacheChoice::Contiguous => "contiguous cache".to_string(),
        CacheChoice::Paged => format!("paged cache, blocks of {}", args.block_size),
    };
    println!(
        "decode: batch {}, kv_len {}, heads {}/{}, head_dim {}, q_len {}, {} storage, {}, {} threads, {}",
        args.batch,
        args.kv_len,
        args.heads,
        args.kv_heads,
        args.head_dim,
        args.q_len,
        args.dtype,
        cache_name,
        threads,
        isa.name()
    );
    println!(
        "  kernel: median {:.3} ms over {} runs (min {:.3}, max {:.3})",
        kernel.median_s * 1e3,
        args.runs,
        kernel.min_s * 1e3,
        kernel.max_s * 1e3
    );
    println!(
        "  KV bytes read: {} per call, {:.2} GB/s",
        kv_bytes,
        kv_bytes_per_s / 1e9
    );
    println!(
        "  copy of the same {} bytes: median {:.3} ms, {:.2} GB/s copied ({:.2} GB/s read + written)",
        kv_bytes,
        copy.median_s * 1e3,
        copy_bytes_per_s / 1e9,
        2.0 * copy_bytes_per_s / 1e9
    );
    println!("  KV read rate / copy rate: {ratio:.2}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchDecodeArgs,
    }

    fn parse(extra: &[&str]) -> BenchDecodeArgs {
        let base = ["bench", "--kv-len", "64", "--heads", "4", "--kv-heads", "2"];
        let argv = base.iter().chain(&["--head-dim", "8"]).chain(extra);
        Cli::parse_from(argv).args
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(Timing::from_samples(vec![3.0, 1.0, 2.0]).median_s, 2.0);
        let even = Timing::from_samples(vec![4.0, 1.0, 2.0, 3.0]);
        assert_eq!(even.median_s, 2.5);
        assert_eq!(even.min_s, 1.0);
        assert_eq!(even.max_s, 4.0);
    }

    #[test]
    fn invalid_options_name_the_option() {
        let mut args = parse(&[]);
        assert_eq!(validate(&args), Ok(()));

        args.kv_heads = 3;
        let message = validate(&args).unwrap_err();
        assert!(message.contains("--heads 4"), "{message}");
        assert!(message.contains("--kv-heads 3"), "{message}");

        let args = parse(&["--runs", "0"]);
        assert_eq!(
            validate(&args).unwrap_err(),
            "--runs 0 is invalid; pass at least 1"
        );
        let args = parse(&["--threads", "0"]);
        assert!(validate(&args).unwrap_err().contains("--threads"));
    }

    #[test]
    fn small_run_succeeds() {
        for cache in ["contiguous", "paged"] {
            for dtype in ["f32", "bf16", "int8"] {
                let args = parse(&["--cache", cache, "--dtype", dtype, "--runs", "1", "--json"]);
                assert_eq!(run(&args), Ok(()), "{cache} {dtype}");
            }
        }
    }
}
