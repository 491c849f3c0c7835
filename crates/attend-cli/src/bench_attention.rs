//! `attend bench attention`: times one attention call on random inputs.
//!
//! Reports the median time over repeated calls, GFLOP/s counting only the visible
//! (query, key) pairs, and the peak heap bytes the call allocated beyond its inputs
//! and output. `--baseline gemm` also times an f32 GEMM with the `gemm` crate in the
//! same process, so the ratio holds on a busy machine.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use attend::{attention, attention_reference, AttentionParams, Bshd, BshdMut, DType, Element, Isa};
use clap::{Args, ValueEnum};
use half::{bf16, f16};

/// A global allocator that tracks the bytes in use and their peak.
pub struct CountingAllocator {
    current: AtomicUsize,
    peak: AtomicUsize,
}

impl CountingAllocator {
    pub const fn new() -> Self {
        Self {
            current: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Resets the peak to the bytes in use now and returns that number.
    pub fn reset_peak(&self) -> usize {
        let current = self.current.load(Ordering::SeqCst);
        self.peak.store(current, Ordering::SeqCst);
        current
    }

    /// Returns the peak bytes in use since the last reset.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counters do
// not affect the memory returned.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout, which meets `alloc`'s contract.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let now = self.current.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            self.peak.fetch_max(now, Ordering::SeqCst);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) };
        self.current.fetch_sub(layout.size(), Ordering::SeqCst);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    F32,
    F16,
    Bf16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IsaArg {
    Auto,
    Portable,
    Avx2,
    Avx512,
    Neon,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Baseline {
    /// An f32 GEMM of 1024 x 1024 x 1024 with the `gemm` crate, same thread count.
    Gemm,
}

#[derive(Debug, Args)]
pub struct BenchAttentionArgs {
    /// Query length N.
    #[arg(long)]
    seq_len: usize,
    /// Key/value length M (default: N).
    #[arg(long)]
    kv_len: Option<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Query heads.
    #[arg(long)]
    heads: usize,
    /// Key/value heads (default: the query heads).
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Head dimension.
    #[arg(long)]
    head_dim: usize,
    /// Causal mask, aligned bottom-right.
    #[arg(long)]
    causal: bool,
    /// Local window: each query sees the LEFT keys before its position (and itself);
    /// implies --causal unless --window-right is given.
    #[arg(long, value_name = "LEFT")]
    window: Option<usize>,
    /// Right side of the window in tokens.
    #[arg(long, value_name = "RIGHT")]
    window_right: Option<usize>,
    /// Storage type of q, k and v.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    dtype: DTypeArg,
    #[arg(long, help = crate::common::THREADS_HELP)]
    threads: Option<usize>,
    /// Instruction set.
    #[arg(long, value_enum, default_value_t = IsaArg::Auto)]
    isa: IsaArg,
    /// Time the f64 oracle instead of the kernel.
    #[arg(long)]
    oracle: bool,
    /// Also time a baseline in the same process and print the ratio.
    #[arg(long, value_enum)]
    baseline: Option<Baseline>,
    /// Minimum measuring time per result, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    min_time_ms: u64,
    /// Minimum number of timed runs; the median is reported.
    #[arg(long, default_value_t = 3)]
    min_runs: usize,
    /// Untimed runs before timing.
    #[arg(long, default_value_t = 1)]
    warmup_runs: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs the benchmark and prints its result.
pub fn run(args: &BenchAttentionArgs, allocator: &CountingAllocator) -> Result<(), String> {
    validate(args)?;
    let pool = crate::common::thread_pool(args.threads)?;
    pool.install(|| match args.dtype {
        DTypeArg::F32 => run_typed::<f32>(args, allocator),
        DTypeArg::F16 => run_typed::<f16>(args, allocator),
        DTypeArg::Bf16 => run_typed::<bf16>(args, allocator),
    })
}

/// Rejects zero sizes by option name; a zero length or batch would otherwise
/// time an empty call and report 0 GFLOP/s.
fn validate(args: &BenchAttentionArgs) -> Result<(), String> {
    crate::common::check_at_least_one(&[
        ("--seq-len", args.seq_len),
        ("--kv-len", args.kv_len.unwrap_or(args.seq_len)),
        ("--batch", args.batch),
        ("--heads", args.heads),
        ("--kv-heads", args.kv_heads.unwrap_or(args.heads)),
        ("--head-dim", args.head_dim),
    ])
}

fn isa_of(arg: IsaArg) -> Isa {
    match arg {
        IsaArg::Auto => Isa::detect(),
        IsaArg::Portable => Isa::Portable,
        IsaArg::Avx2 => Isa::Avx2Fma,
        IsaArg::Avx512 => Isa::Avx512,
        IsaArg::Neon => Isa::Neon,
    }
}

/// Returns values in [-1, 1) from a fixed xorshift sequence.
fn random_values<T: Element>(len: usize, seed: u64) -> Vec<T> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            T::from_f32((state >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        })
        .collect()
}

/// Counts the visible (query, key) pairs of one (batch, head).
fn visible_pairs(q_len: usize, kv_len: usize, left: Option<usize>, right: Option<usize>) -> u64 {
    let offset = kv_len as i64 - q_len as i64;
    (0..q_len as i64)
        .map(|i| {
            let position = i + offset;
            let first = left.map_or(0, |left| (position - left as i64).max(0));
            let last = right.map_or(kv_len as i64 - 1, |right| {
                (position + right as i64).min(kv_len as i64 - 1)
            });
            (last - first + 1).max(0) as u64
        })
        .sum()
}

/// How long and how often to time a call.
#[derive(Debug, Clone, Copy)]
struct Timing {
    min_time: Duration,
    min_runs: usize,
    warmup_runs: usize,
}

/// Times `f` after the warm-up runs until both `min_time` and `min_runs` are reached
/// (at most 1000 runs) and returns the median.
fn median_time(
    timing: Timing,
    mut f: impl FnMut() -> Result<(), String>,
) -> Result<Duration, String> {
    for _ in 0..timing.warmup_runs {
        f()?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < timing.min_runs.max(1)
        || (start.elapsed() < timing.min_time && times.len() < 1000)
    {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn run_typed<T: Element>(
    args: &BenchAttentionArgs,
    allocator: &CountingAllocator,
) -> Result<(), String> {
    let kv_len = args.kv_len.unwrap_or(args.seq_len);
    let kv_heads = args.kv_heads.unwrap_or(args.heads);
    let (batch, q_len, heads, head_dim) = (args.batch, args.seq_len, args.heads, args.head_dim);
    let q: Vec<T> = random_values(batch * q_len * heads * head_dim, 1);
    let k: Vec<T> = random_values(batch * kv_len * kv_heads * head_dim, 2);
    let v: Vec<T> = random_values(batch * kv_len * kv_heads * head_dim, 3);
    let mut out = vec![0.0f32; batch * q_len * heads * head_dim];

    let right = match (args.causal, args.window, args.window_right) {
        (true, _, _) | (false, Some(_), None) => Some(0),
        (false, _, right) => right,
    };
    let params = AttentionParams {
        causal: args.causal,
        window: (args.window, right),
        isa: Some(isa_of(args.isa)),
        ..Default::default()
    };
    let error = |e: attend::AttendError| e.to_string();
    let q_view = Bshd::contiguous(&q, batch, q_len, heads, head_dim).map_err(error)?;
    let k_view = Bshd::contiguous(&k, batch, kv_len, kv_heads, head_dim).map_err(error)?;
    let v_view = Bshd::contiguous(&v, batch, kv_len, kv_heads, head_dim).map_err(error)?;

    let timing = Timing {
        min_time: Duration::from_millis(args.min_time_ms),
        min_runs: args.min_runs,
        warmup_runs: args.warmup_runs,
    };
    let mut peak_extra_bytes = 0usize;
    let elapsed = median_time(timing, || {
        let before = allocator.reset_peak();
        if args.oracle {
            attention_reference(q_view, k_view, v_view, &params).map_err(error)?;
        } else {
            let mut out_view =
                BshdMut::contiguous(&mut out, batch, q_len, heads, head_dim).map_err(error)?;
            attention(q_view, k_view, v_view, &params, &mut out_view, None).map_err(error)?;
        }
        peak_extra_bytes = peak_extra_bytes.max(allocator.peak().saturating_sub(before));
        Ok(())
    })?;

    let pairs = visible_pairs(q_len, kv_len, params.window.0, right);
    let flops = 4.0 * (batch * heads) as f64 * pairs as f64 * head_dim as f64;
    let ms = elapsed.as_secs_f64() * 1e3;
    let gflops = flops / elapsed.as_secs_f64() / 1e9;
    let baseline_gflops = args.baseline.map(|Baseline::Gemm| gemm_gflops(timing));
    let threads = rayon::current_num_threads();
    let isa = params.isa.map_or("auto", Isa::name);
    let kernel = if args.oracle { "oracle-f64" } else { "flash" };
    // Whether the kernel ran its block products on bf16 dot-product instructions.
    let bf16_dot =
        !args.oracle && T::DTYPE == DType::BF16 && params.isa.is_some_and(Isa::has_bf16_dot);
    // The mask that ran: a window without --window-right is causal on its right side.
    let (left, right) = params.window;
    let causal = right == Some(0);
    let side = |bound: Option<usize>| bound.map_or("unbounded".to_string(), |n| n.to_string());

    if args.json {
        let mut object = serde_json::json!({
            "kernel": kernel,
            "dtype": T::DTYPE.name(),
            "isa": isa,
            "bf16_dot": bf16_dot,
            "threads": threads,
            "batch": batch,
            "q_len": q_len,
            "kv_len": kv_len,
            "heads": heads,
            "kv_heads": kv_heads,
            "head_dim": head_dim,
            "causal": causal,
            "window": left,
            "window_right": right,
            "ms": ms,
            "gflops": gflops,
            "visible_pairs": pairs * (batch * heads) as u64,
            "peak_extra_bytes": peak_extra_bytes,
        });
        if let Some(baseline) = baseline_gflops {
            object["gemm_gflops"] = baseline.into();
            object["ratio_to_gemm"] = (gflops / baseline).into();
        }
        println!("{object}");
    } else {
        println!(
            "{kernel} {} isa={isa} bf16_dot={bf16_dot} threads={threads} batch={batch} q_len={q_len} kv_len={kv_len} heads={heads}/{kv_heads} head_dim={head_dim} causal={causal} window={}/{}",
            T::DTYPE.name(),
            side(left),
            side(right),
        );
        println!(
            "{ms:.3} ms  {gflops:.1} GFLOP/s (4 * head_dim * visible pairs; {} visible pairs over all heads)  peak extra {peak_extra_bytes} bytes",
            pairs * (batch * heads) as u64
        );
        if let Some(baseline) = baseline_gflops {
            println!(
                "gemm f32 1024^3: {baseline:.1} GFLOP/s; attention / gemm = {:.2}",
                gflops / baseline
            );
        }
    }
    Ok(())
}

/// Returns the f32 GEMM rate of the `gemm` crate on 1024 x 1024 x 1024 with the
/// current pool's thread count.
fn gemm_gflops(timing: Timing) -> f64 {
    crate::bench_machine::gemm_f32_gflops(1024, timing.min_time)
}
