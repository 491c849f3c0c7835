//! One split-KV task: an online softmax over a range of one sequence's cached tokens.

use super::{visible_ranges, Dims, VisibleRange, TILE_TOKENS};
use crate::kv::{KvChunk, KvRows, KvSeqView};
use crate::layout::Bshd;
use crate::simd::{self, Rows, Simd};

/// Unnormalised result of one split, per query row `r = head_idx * q_len + q_idx`.
pub(crate) struct Partial {
    /// Running maximum of the row's visible scores, `[rows]`; `-inf` when none was seen.
    pub m: Vec<f32>,
    /// Softmax denominator relative to `m`, `[rows]`.
    pub l: Vec<f32>,
    /// Output relative to `m`, not yet divided by `l`, `[rows, head_dim]`.
    pub acc: Vec<f32>,
}

/// A contiguous run of cached tokens and the view offset of its first token.
#[derive(Clone, Copy)]
struct Run<'a> {
    start: usize,
    chunk: KvChunk<'a>,
}

/// One sequence of the batch, prepared once and shared by its tasks.
pub(crate) struct SeqPlan<'a> {
    runs: Vec<Run<'a>>,
    pub kv_len: usize,
    /// `[q_len]`
    visible: Vec<VisibleRange>,
    /// The query rows gathered contiguously, `[rows, head_dim]`.
    q_rows: Vec<f32>,
}

impl<'a> SeqPlan<'a> {
    pub fn new(view: &KvSeqView<'a>, q: &Bshd<f32>, batch_idx: usize, dims: &Dims) -> Self {
        let mut start = 0;
        let runs = view
            .chunks()
            .map(|chunk| {
                let run = Run { start, chunk };
                start += chunk.len();
                run
            })
            .collect();

        let head_dim = dims.head_dim;
        let mut q_rows = vec![0.0; dims.rows() * head_dim];
        for head_idx in 0..dims.n_heads {
            for q_idx in 0..dims.q_len {
                let row = head_idx * dims.q_len + q_idx;
                if let Some(values) = q.row(batch_idx, q_idx, head_idx) {
                    q_rows[row * head_dim..(row + 1) * head_dim].copy_from_slice(values);
                }
            }
        }
        Self {
            runs,
            kv_len: view.len(),
            visible: visible_ranges(view, dims),
            q_rows,
        }
    }
}

/// Runs the online softmax over view tokens `start..end` of one sequence.
pub(crate) fn run_split<S: Simd>(
    simd: S,
    dims: &Dims,
    plan: &SeqPlan,
    start: usize,
    end: usize,
) -> Partial {
    let rows = dims.rows();
    let mut state = Partial {
        m: vec![f32::NEG_INFINITY; rows],
        l: vec![0.0; rows],
        acc: vec![0.0; rows * dims.head_dim],
    };
    let mut scratch = Scratch {
        scores: vec![0.0; rows * TILE_TOKENS],
        converted: Vec::new(),
    };

    // Runs are in view order, so the first run that ends after `start` is found by
    // bisection; paged views have one run per block.
    let first = plan
        .runs
        .partition_point(|run| run.start + run.chunk.len() <= start);
    for run in plan.runs[first..].iter().take_while(|run| run.start < end) {
        let from = start.max(run.start) - run.start;
        let to = end.min(run.start + run.chunk.len()) - run.start;
        let mut tile_start = from;
        while tile_start < to {
            let tile_end = (tile_start + TILE_TOKENS).min(to);
            let tile = slice_chunk(&run.chunk, tile_start, tile_end, dims);
            let ahead = Lookahead {
                plan,
                tile_start: run.start + tile_start,
                end,
            };
            attend_tile(simd, dims, plan, &tile, ahead, &mut state, &mut scratch);
            tile_start = tile_end;
        }
    }
    state
}

/// Borrows tokens `from..to` of a chunk.
fn slice_chunk<'a>(chunk: &KvChunk<'a>, from: usize, to: usize, dims: &Dims) -> KvChunk<'a> {
    let slice = |rows: KvRows<'a>| {
        let row_len = dims.n_kv_heads * dims.head_dim;
        let values = from * row_len..to * row_len;
        match rows {
            KvRows::F32(x) => KvRows::F32(&x[values]),
            KvRows::F16(x) => KvRows::F16(&x[values]),
            KvRows::Bf16(x) => KvRows::Bf16(&x[values]),
            KvRows::Int8 { values: x, scales } => KvRows::Int8 {
                values: &x[values],
                scales: &scales[from * dims.n_kv_heads..to * dims.n_kv_heads],
            },
        }
    };
    KvChunk {
        k: slice(chunk.k),
        v: slice(chunk.v),
        positions: &chunk.positions[from..to],
    }
}

/// The position of a tile in its task, used to prefetch the rows that follow it in view
/// order, also when they are in another run (the next block of a paged cache).
#[derive(Clone, Copy)]
struct Lookahead<'p, 'a> {
    plan: &'p SeqPlan<'a>,
    /// View index of the tile's first token.
    tile_start: usize,
    /// End of the task's tokens in the view; nothing at or past it is prefetched.
    end: usize,
}

impl Lookahead<'_, '_> {
    /// Prefetches share `part` of `parts` of the sub-block [`PREFETCH_AHEAD`] tokens
    /// after the tile's sub-block `sub`: its K or V rows, as `side` picks them from a
    /// chunk, and their int8 scales. The sub-block is clipped to the task and to the run
    /// that contains its first token.
    ///
    /// Spreading a sub-block's cache lines over its product calls measured faster than
    /// prefetching a whole tile at once.
    fn prefetch(
        self,
        sub: usize,
        side: for<'c> fn(&KvChunk<'c>) -> KvRows<'c>,
        part: usize,
        parts: usize,
        dims: &Dims,
    ) {
        let token = self.tile_start + sub + PREFETCH_AHEAD;
        if token >= self.end {
            return;
        }
        let runs = &self.plan.runs;
        let index = runs.partition_point(|run| run.start + run.chunk.len() <= token);
        let Some(run) = runs.get(index) else {
            return;
        };
        let from = token - run.start;
        let to = (from + SUB_TOKENS)
            .min(run.chunk.len())
            .min(self.end - run.start);
        let rows = side(&run.chunk);

        // Share `part` of the elements of tokens from..to, `per_token` elements each.
        let share = |per_token: usize| {
            let (first, last) = (from * per_token, to * per_token);
            let step = (last - first).div_ceil(parts);
            let start = (first + part * step).min(last);
            start..(start + step).min(last)
        };
        let row_len = dims.n_kv_heads * dims.head_dim;
        match rows {
            KvRows::F32(x) => simd::prefetch(&x[share(row_len)]),
            KvRows::F16(x) => simd::prefetch(&x[share(row_len)]),
            KvRows::Bf16(x) => simd::prefetch(&x[share(row_len)]),
            KvRows::Int8 { values, scales } => {
                simd::prefetch(&values[share(row_len)]);
                simd::prefetch(&scales[share(dims.n_kv_heads)]);
            }
        }
    }
}

/// Tokens per product call inside a tile. A tile is walked in sub-blocks of this many
/// tokens, all kv heads of one sub-block before the next, so the K and V rows are read
/// nearly in address order. Each call also prefetches a share of the sub-block
/// [`PREFETCH_AHEAD`] tokens further on.
const SUB_TOKENS: usize = 16;

/// Tokens between the sub-block being computed and the one being prefetched. On a Zen 4
/// with SmolLM2's shape (3 kv heads of 64, f16, 8000 tokens), prefetching 16, 32 or 64
/// tokens ahead was faster than whole-tile prefetching or none. 32 was fastest, by a
/// small margin.
const PREFETCH_AHEAD: usize = 2 * SUB_TOKENS;

/// Per-task buffers.
struct Scratch {
    /// Scores, then probabilities, of the current tile, `[rows, TILE_TOKENS]`.
    scores: Vec<f32>,
    /// The tile's int8 K or V rows converted to f32, `[tile_len, n_kv_heads,
    /// head_dim]`. It is allocated on the first such tile, because f32, f16 and bf16
    /// rows are read in place.
    converted: Vec<f32>,
}

/// Returns the K or V rows of the tile. f32, f16 and bf16 rows are borrowed in place, and
/// the products widen 16-bit rows as they load them, so each element is read once. Int8
/// values times their scale are converted to f32 into `buffer`, grown to fit. The
/// conversion keeps the storage layout, so it reads the tile front to back in one pass.
///
/// # Shapes
/// `rows` and `buffer[..tile_len * n_kv_heads * head_dim]`: `[tile_len, n_kv_heads,
/// head_dim]`, so kv head `h`, token `t` starts at element `h * head_dim + t *
/// n_kv_heads * head_dim`.
fn tile_rows<'a>(
    rows: &KvRows<'a>,
    tile_len: usize,
    dims: &Dims,
    buffer: &'a mut Vec<f32>,
) -> Rows<'a> {
    let head_dim = dims.head_dim;
    let len = tile_len * dims.n_kv_heads * head_dim;
    match *rows {
        KvRows::F32(x) => Rows::F32(x),
        KvRows::F16(x) => Rows::F16(x),
        KvRows::Bf16(x) => Rows::Bf16(x),
        KvRows::Int8 { values, scales } => {
            if buffer.len() < len {
                buffer.resize(len, 0.0);
            }
            let head_rows = buffer[..len].chunks_exact_mut(head_dim);
            for ((dst, src), &scale) in head_rows.zip(values.chunks_exact(head_dim)).zip(scales) {
                for (o, &value) in dst.iter_mut().zip(src) {
                    *o = f32::from(value) * scale;
                }
            }
            Rows::F32(buffer)
        }
    }
}

/// Folds one tile of cached tokens into the online softmax of every query row.
fn attend_tile<S: Simd>(
    simd: S,
    dims: &Dims,
    plan: &SeqPlan,
    tile: &KvChunk,
    ahead: Lookahead,
    state: &mut Partial,
    scratch: &mut Scratch,
) {
    let tile_len = tile.len();
    let (head_dim, q_len, n_kv_heads) = (dims.head_dim, dims.q_len, dims.n_kv_heads);
    let row_stride = n_kv_heads * head_dim;
    let group_rows = dims.group() * q_len;
    let (Some(&first), Some(&last)) = (tile.positions.first(), tile.positions.last()) else {
        return;
    };

    // Skip a tile no query can see; evaluate no mask in a tile every query sees whole.
    // Positions increase, so the tile covers positions first..=last.
    let seen_by_some = plan
        .visible
        .iter()
        .any(|range| range.lo <= i64::from(last) && i64::from(first) <= range.hi);
    if !seen_by_some {
        return;
    }
    let seen_whole_by_all = plan
        .visible
        .iter()
        .all(|range| range.contains(first) && range.contains(last));

    // Step 1: scores. The tile's K rows are read in place (f32, f16, bf16) or converted
    // to f32 once, and each kv head's rows are scored against all query rows of its
    // group, sub-block by sub-block. Then the softcap applies, and hidden pairs get -inf.
    let scores = &mut scratch.scores;
    let keys = tile_rows(&tile.k, tile_len, dims, &mut scratch.converted);
    for sub in (0..tile_len).step_by(SUB_TOKENS) {
        let sub_len = (tile_len - sub).min(SUB_TOKENS);
        for kv_head in 0..n_kv_heads {
            ahead.prefetch(sub, |chunk| chunk.k, kv_head, n_kv_heads, dims);
            let group = kv_head * group_rows..(kv_head + 1) * group_rows;
            let q = &plan.q_rows[group.start * head_dim..group.end * head_dim];
            let s = &mut scores[group.start * TILE_TOKENS + sub..group.end * TILE_TOKENS];
            let k = keys.offset(sub * row_stride + kv_head * head_dim);
            simd.qk_rows(
                q,
                k,
                row_stride,
                sub_len,
                head_dim,
                dims.scale,
                s,
                TILE_TOKENS,
            );
        }
    }
    if dims.softcap.is_some() || !seen_whole_by_all {
        for row in 0..dims.rows() {
            let visible = &plan.visible[row % q_len];
            let row_scores = &mut scores[row * TILE_TOKENS..row * TILE_TOKENS + tile_len];
            for (score, &position) in row_scores.iter_mut().zip(tile.positions) {
                *score = if seen_whole_by_all || visible.contains(position) {
                    match dims.softcap {
                        Some(cap) => cap * (*score / cap).tanh(),
                        None => *score,
                    }
                } else {
                    f32::NEG_INFINITY
                };
            }
        }
    }

    // Step 2: online softmax update per row; scores become probabilities relative to
    // the new maximum.
    for row in 0..dims.rows() {
        let row_scores = &mut scores[row * TILE_TOKENS..row * TILE_TOKENS + tile_len];
        let tile_max = simd.max(row_scores);
        if tile_max == f32::NEG_INFINITY {
            // Nothing visible in this tile: keep the state and make step 3 skip the row
            // (exp(-inf - -inf) would be NaN).
            row_scores.fill(0.0);
            continue;
        }
        let m_new = state.m[row].max(tile_max);
        // The first visible tile has m = -inf, so alpha = 0 on an all-zero state.
        let alpha = (state.m[row] - m_new).exp();
        let tile_sum = simd.exp_sub_sum(row_scores, m_new);
        if alpha != 1.0 {
            simd.scale(alpha, &mut state.acc[row * head_dim..(row + 1) * head_dim]);
        }
        state.l[row] = state.l[row] * alpha + tile_sum;
        state.m[row] = m_new;
    }

    // Step 3: accumulate V. The tile's V rows are read like the K rows, and each kv
    // head's rows are multiplied into its group's output rows, the probabilities read
    // row-major where step 2 left them.
    let values = tile_rows(&tile.v, tile_len, dims, &mut scratch.converted);
    for sub in (0..tile_len).step_by(SUB_TOKENS) {
        let sub_len = (tile_len - sub).min(SUB_TOKENS);
        for kv_head in 0..n_kv_heads {
            ahead.prefetch(sub, |chunk| chunk.v, kv_head, n_kv_heads, dims);
            let group = kv_head * group_rows..(kv_head + 1) * group_rows;
            let p = &scores[group.start * TILE_TOKENS + sub..group.end * TILE_TOKENS];
            let o = &mut state.acc[group.start * head_dim..group.end * head_dim];
            let v = values.offset(sub * row_stride + kv_head * head_dim);
            simd.pv_rows(p, TILE_TOKENS, v, row_stride, sub_len, head_dim, o);
        }
    }
}
