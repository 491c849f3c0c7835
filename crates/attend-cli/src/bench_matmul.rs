//! `attend bench matmul`: the quantized product's speed against this
//! machine's memory copy bandwidth and f32 GEMM rate, measured in one run.

use attend_models::quant::{matmul, Isa, QuantError, QuantMatrix};
use attend_models::GgmlType;
use clap::Args;
use half::{bf16, f16};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Options of `attend bench matmul`.
#[derive(Args, Debug, Clone)]
pub struct BenchMatmulArgs {
    /// Weight type: f32, f16, bf16, q4_0, q4_1, q5_0, q8_0, q4_k or q6_k.
    #[arg(long = "type", default_value = "q4_1")]
    pub weight_type: String,
    /// Output rows of the weight matrix.
    #[arg(long)]
    pub rows: usize,
    /// Columns of the weight matrix (the reduced dimension).
    #[arg(long)]
    pub cols: usize,
    /// Tokens multiplied at once: 1 for decode, the prompt length for prefill.
    #[arg(long, default_value_t = 1)]
    pub tokens: usize,
    #[arg(long, help = crate::common::THREADS_HELP)]
    pub threads: Option<usize>,
    /// Bytes of weight copies the product cycles through, and of the copy
    /// baseline's source, in MiB; larger than the last-level cache, so that
    /// both read memory rather than cache.
    #[arg(long, default_value_t = 1024)]
    pub working_set_mib: usize,
    /// Seconds each measurement repeats for.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Errors of `attend bench matmul`.
#[derive(Debug, thiserror::Error)]
pub enum BenchMatmulError {
    #[error(
        "unknown weight type {0:?}; use one of f32, f16, bf16, q4_0, q4_1, q5_0, q8_0, q4_k, q6_k"
    )]
    UnknownType(String),
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error("{0}")]
    ThreadPool(String),
    #[error("--seconds must be positive and finite, got {0}")]
    Seconds(f64),
}

/// One measurement: the median time of repeated runs.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub median_seconds: f64,
    pub runs: usize,
}

/// The measurements of `attend bench matmul`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchMatmulReport {
    pub weight_type: String,
    pub rows: usize,
    pub cols: usize,
    pub tokens: usize,
    pub threads: usize,
    pub isa: String,
    pub weight_bytes: usize,
    pub weight_copies: usize,
    pub product: Timing,
    /// `2 * rows * cols * tokens / time`, in 1e9 per second.
    pub gflops: f64,
    /// Weight bytes per second, in 1e9 bytes per second.
    pub weight_gbytes_per_s: f64,
    pub copy: Timing,
    pub copy_bytes: usize,
    /// Bytes copied per second (each read once and written once), in 1e9 per second.
    pub copy_gbytes_per_s: f64,
    pub gemm_f32: Timing,
    /// f32 GEMM through `gemm` at the same shape, in 1e9 FLOP per second.
    pub gemm_f32_gflops: f64,
    /// `weight_gbytes_per_s / copy_gbytes_per_s`.
    pub weight_bandwidth_vs_copy: f64,
    /// `gflops / gemm_f32_gflops`.
    pub gflops_vs_gemm_f32: f64,
}

/// Runs the benchmark and prints its report.
///
/// # Errors
/// An unknown type, shapes the product rejects, an invalid `--seconds` or
/// a thread pool that cannot be built.
pub fn run(args: &BenchMatmulArgs) -> Result<BenchMatmulReport, BenchMatmulError> {
    let pool = crate::common::thread_pool(args.threads).map_err(BenchMatmulError::ThreadPool)?;
    let threads = pool.current_num_threads();
    let report = pool.install(|| measure(args, threads))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("the report serialises")
        );
    } else {
        print_report(&report);
    }
    Ok(report)
}

fn parse_type(name: &str) -> Result<GgmlType, BenchMatmulError> {
    attend_models::quant::SUPPORTED_TYPES
        .into_iter()
        .find(|t| t.name().eq_ignore_ascii_case(name))
        .ok_or_else(|| BenchMatmulError::UnknownType(name.to_string()))
}

fn measure(args: &BenchMatmulArgs, threads: usize) -> Result<BenchMatmulReport, BenchMatmulError> {
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        return Err(BenchMatmulError::Seconds(args.seconds));
    }
    let ty = parse_type(&args.weight_type)?;
    let (rows, cols, tokens) = (args.rows, args.cols, args.tokens);
    let budget = Duration::from_secs_f64(args.seconds);

    // Copies of the weights, back to back in one buffer, that together
    // exceed the caches, so each product streams its weights from memory as
    // a full model does.
    let first = random_weights(ty, rows, cols, 1);
    QuantMatrix::new(ty, &first, rows, cols)?;
    let weight_bytes = first.len();
    let working_set = args.working_set_mib << 20;
    let copies = working_set.div_ceil(weight_bytes.max(1)).max(1);
    let mut all_weights = Vec::with_capacity(copies * weight_bytes);
    for _ in 0..copies {
        all_weights.extend_from_slice(&first);
    }
    drop(first);
    let matrices: Vec<QuantMatrix> = all_weights
        .chunks_exact(weight_bytes.max(1))
        .map(|w| QuantMatrix::new(ty, w, rows, cols))
        .collect::<Result<_, _>>()?;

    // The quantized product, cycling through the copies.
    let x: Vec<f32> = (0..tokens * cols)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0)
        .collect();
    let mut out = vec![0.0f32; tokens * rows];
    let mut next = 0;
    let product = time_repeated(budget, || {
        matmul(&matrices[next % copies], &x, tokens, &mut out).expect("shapes were checked");
        next += 1;
    });
    drop(matrices);
    drop(all_weights);

    // Memory copy of the working set, in parallel chunks like the product.
    let copy_bytes = working_set.max(weight_bytes);
    let source = vec![1u8; copy_bytes];
    let mut destination = vec![0u8; copy_bytes];
    let copy = time_repeated(budget, || {
        crate::bench_machine::parallel_copy(&source, &mut destination);
    });
    drop((source, destination));

    // f32 GEMM at the same shape through `gemm`.
    let w_f32: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 104729 % 2000) as f32 - 1000.0) / 1000.0)
        .collect();
    let f32_bytes: Vec<u8> = w_f32.iter().flat_map(|v| v.to_le_bytes()).collect();
    drop(w_f32);
    let f32_matrix = QuantMatrix::new(GgmlType::F32, &f32_bytes, rows, cols)?;
    let gemm_f32 = time_repeated(budget, || {
        matmul(&f32_matrix, &x, tokens, &mut out).expect("shapes were checked");
    });

    let flops = 2.0 * rows as f64 * cols as f64 * tokens as f64;
    let gflops = flops / product.median_seconds / 1e9;
    let weight_gbytes_per_s = weight_bytes as f64 / product.median_seconds / 1e9;
    let copy_gbytes_per_s = copy_bytes as f64 / copy.median_seconds / 1e9;
    let gemm_f32_gflops = flops / gemm_f32.median_seconds / 1e9;
    Ok(BenchMatmulReport {
        weight_type: ty.name().to_string(),
        rows,
        cols,
        tokens,
        threads,
        isa: format!("{:?}", Isa::detect()),
        weight_bytes,
        weight_copies: copies,
        product,
        gflops,
        weight_gbytes_per_s,
        copy,
        copy_bytes,
        copy_gbytes_per_s,
        gemm_f32,
        gemm_f32_gflops,
        weight_bandwidth_vs_copy: weight_gbytes_per_s / copy_gbytes_per_s,
        gflops_vs_gemm_f32: gflops / gemm_f32_gflops,
    })
}

/// Runs `f` once to warm up, then repeatedly for about `budget`, and
/// returns the median run time.
fn time_repeated(budget: Duration, mut f: impl FnMut()) -> Timing {
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 3 || (start.elapsed() < budget && times.len() < 10_000) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Timing {
        median_seconds: times[times.len() / 2],
        runs: times.len(),
    }
}

fn print_report(r: &BenchMatmulReport) {
    println!(
        "{} [{} x {}] x {} tokens, {} threads, {}",
        r.weight_type, r.rows, r.cols, r.tokens, r.threads, r.isa
    );
    println!(
        "  product   {:>10.3} ms  {:>8.1} GFLOP/s  {:>6.2} GB/s of weights ({} copies of {} bytes, {} runs)",
        r.product.median_seconds * 1e3,
        r.gflops,
        r.weight_gbytes_per_s,
        r.weight_copies,
        r.weight_bytes,
        r.product.runs
    );
    println!(
        "  copy      {:>10.3} ms  {:>6.2} GB/s copied ({} bytes)",
        r.copy.median_seconds * 1e3,
        r.copy_gbytes_per_s,
        r.copy_bytes
    );
    println!(
        "  f32 gemm  {:>10.3} ms  {:>8.1} GFLOP/s",
        r.gemm_f32.median_seconds * 1e3,
        r.gemm_f32_gflops
    );
    println!(
        "  weight bandwidth / copy bandwidth = {:.0}%   GFLOP/s / f32 gemm GFLOP/s = {:.0}%",
        100.0 * r.weight_bandwidth_vs_copy,
        100.0 * r.gflops_vs_gemm_f32
    );
}

/// Deterministic pseudo-random weights with finite scales between 2^-12
/// and 2^-4, so products stay finite.
fn random_weights(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let unit = |bits: u64| (bits >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
    let n = rows * cols;
    match ty {
        GgmlType::F32 => (0..n).flat_map(|_| unit(next()).to_le_bytes()).collect(),
        GgmlType::F16 => (0..n)
            .flat_map(|_| f16::from_f32(unit(next())).to_le_bytes())
            .collect(),
        GgmlType::BF16 => (0..n)
            .flat_map(|_| bf16::from_f32(unit(next())).to_le_bytes())
            .collect(),
        _ => {
            let mut bytes: Vec<u8> = (0..ty.bytes_for(n).unwrap_or(0))
                .map(|_| next() as u8)
                .collect();
            let scale_offsets: &[usize] = match ty {
                GgmlType::Q4_1 | GgmlType::Q4_K => &[0, 2],
                GgmlType::Q6_K => &[208],
                _ => &[0],
            };
            for block in bytes.chunks_exact_mut(ty.block_bytes()) {
                for &at in scale_offsets {
                    let magnitude = 2f32.powi(-4 - (next() % 8) as i32);
                    let sign = if next() % 2 == 0 { 1.0 } else { -1.0 };
                    block[at..at + 2]
                        .copy_from_slice(&f16::from_f32(sign * magnitude).to_le_bytes());
                }
            }
            bytes
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_args(weight_type: &str, cols: usize) -> BenchMatmulArgs {
        BenchMatmulArgs {
            weight_type: weight_type.to_string(),
            rows: 8,
            cols,
            tokens: 3,
            threads: Some(1),
            working_set_mib: 1,
            seconds: 0.01,
            json: true,
        }
    }

    #[test]
    fn parse_type_ignores_case() {
        assert_eq!(parse_type("q4_k").unwrap(), GgmlType::Q4_K);
        assert_eq!(parse_type("BF16").unwrap(), GgmlType::BF16);
        assert!(matches!(
            parse_type("q5_1"),
            Err(BenchMatmulError::UnknownType(_))
        ));
    }

    #[test]
    fn measure_reports_positive_rates() {
        for weight_type in ["q4_1", "q6_k", "f16"] {
            let report = measure(&small_args(weight_type, 256), 1).unwrap();
            assert_eq!(
                report.weight_copies,
                (1usize << 20).div_ceil(report.weight_bytes)
            );
            for rate in [
                report.gflops,
                report.weight_gbytes_per_s,
                report.copy_gbytes_per_s,
                report.gemm_f32_gflops,
            ] {
                assert!(rate.is_finite() && rate > 0.0, "{weight_type}: rate {rate}");
            }
        }
    }

    #[test]
    fn measure_rejects_bad_shapes() {
        let err = measure(&small_args("q4_k", 640), 1).unwrap_err();
        assert!(err.to_string().contains("cols = 640"), "{err}");
        let mut args = small_args("q4_1", 64);
        args.seconds = 0.0;
        assert!(matches!(
            measure(&args, 1),
            Err(BenchMatmulError::Seconds(_))
        ));
    }
}
