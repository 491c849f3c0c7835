//! This machine's limits, measured the same way by every benchmark: the f32 GEMM rate
//! of the `gemm` crate and the memory copy bandwidth. `attend bench machine` prints
//! both. `bench attention` (GEMM), `bench decode` and `bench matmul` (copy) call these
//! functions for the baselines they print beside their own rates.

use std::time::{Duration, Instant};

use rayon::prelude::*;

/// Options of `attend bench machine`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchMachineArgs {
    /// Size n of the n x n x n f32 GEMM.
    #[arg(long, default_value_t = 1024)]
    pub gemm_size: usize,
    /// Bytes copied per copy run, in MiB; larger than the last-level cache so that
    /// the copy reads and writes memory.
    #[arg(long, default_value_t = 1024)]
    pub copy_mib: usize,
    /// Seconds each of the two measurements repeats for (at least 3 runs each).
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    #[arg(long, help = crate::common::THREADS_HELP)]
    pub threads: Option<usize>,
    /// Print one JSON object with `gemm_gflops` and `copy_gb_per_s`.
    #[arg(long)]
    pub json: bool,
}

/// Runs `attend bench machine` and prints the two limits.
///
/// # Errors
/// A message naming the invalid option, or the thread pool error.
pub fn run(args: &BenchMachineArgs) -> Result<(), String> {
    if args.gemm_size == 0 || args.copy_mib == 0 {
        return Err(format!(
            "--gemm-size {} and --copy-mib {} must both be at least 1",
            args.gemm_size, args.copy_mib
        ));
    }
    if !(args.seconds >= 0.0 && args.seconds.is_finite()) {
        return Err(format!(
            "--seconds {} is invalid; give a finite number of seconds, 0 or more",
            args.seconds
        ));
    }
    let pool = crate::common::thread_pool(args.threads)?;
    let budget = Duration::from_secs_f64(args.seconds);
    let copy_bytes = args
        .copy_mib
        .checked_mul(1 << 20)
        .ok_or_else(|| format!("--copy-mib {} is too large", args.copy_mib))?;
    let (gemm_gflops, copy_bytes_per_s) = pool.install(|| {
        (
            gemm_f32_gflops(args.gemm_size, budget),
            copy_bytes_per_s(copy_bytes, budget),
        )
    });
    let threads = pool.current_num_threads();
    if args.json {
        let object = serde_json::json!({
            "threads": threads,
            "gemm_size": args.gemm_size,
            "gemm_gflops": gemm_gflops,
            "copy_bytes": copy_bytes,
            "copy_gb_per_s": copy_bytes_per_s / 1e9,
        });
        println!("{object}");
    } else {
        println!(
            "f32 GEMM {n} x {n} x {n} (gemm crate, {threads} threads): {gemm_gflops:.1} GFLOP/s",
            n = args.gemm_size
        );
        println!(
            "memory copy of {copy_bytes} bytes: {:.2} GB/s copied ({:.2} GB/s read + written)",
            copy_bytes_per_s / 1e9,
            2.0 * copy_bytes_per_s / 1e9
        );
    }
    Ok(())
}

/// Runs `f` once to warm up, then until at least `min_runs` runs and `budget` have
/// passed (at most 10 000 runs), and returns the median time of one run in seconds.
pub fn median_seconds(budget: Duration, min_runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < min_runs.max(1) || (start.elapsed() < budget && times.len() < 10_000) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Copies `src` into `dst` (of equal length) in fixed 1 MiB pieces on the current
/// pool's threads.
pub fn parallel_copy(src: &[u8], dst: &mut [u8]) {
    const PIECE: usize = 1 << 20;
    dst.par_chunks_mut(PIECE)
        .zip(src.par_chunks(PIECE))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

/// Returns the bytes copied per second (each byte read once and written once) by
/// [`parallel_copy`] of a `bytes`-long buffer, median over `budget`.
pub fn copy_bytes_per_s(bytes: usize, budget: Duration) -> f64 {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let seconds = median_seconds(budget, 3, || parallel_copy(&src, &mut dst));
    std::hint::black_box(&dst);
    bytes as f64 / seconds
}

/// Returns the f32 GEMM rate in GFLOP/s (2 n^3 FLOPs per call) of the `gemm` crate
/// on n x n x n with the current pool's thread count, median over `budget`.
pub fn gemm_f32_gflops(n: usize, budget: Duration) -> f64 {
    let a = random_f32(n * n, 4);
    let b = random_f32(n * n, 5);
    let mut c = vec![0.0f32; n * n];
    let threads = rayon::current_num_threads();
    let seconds = median_seconds(budget, 3, || {
        // SAFETY: a, b and c are n x n row-major (column stride 1, row stride n) and
        // live for the whole call. c is its own allocation, so it aliases neither a nor b.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(threads),
            );
        }
    });
    std::hint::black_box(&c);
    2.0 * (n * n * n) as f64 / seconds / 1e9
}

/// Returns `len` pseudo-random values in [-1, 1) from a fixed xorshift64 sequence.
fn random_f32(len: usize, seed: u64) -> Vec<f32> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_copies_every_byte() {
        let src: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i % 251) as u8).collect();
        let mut dst = vec![0u8; src.len()];
        parallel_copy(&src, &mut dst);
        assert_eq!(src, dst);
    }

    #[test]
    fn median_takes_the_middle_run() {
        let mut calls = 0;
        let seconds = median_seconds(Duration::ZERO, 5, || calls += 1);
        assert_eq!(calls, 6, "one warm-up run and five timed runs");
        assert!(seconds >= 0.0);
    }

    #[test]
    fn small_limits_are_positive() {
        assert!(gemm_f32_gflops(64, Duration::ZERO) > 0.0);
        assert!(copy_bytes_per_s(1 << 20, Duration::ZERO) > 0.0);
    }
}
