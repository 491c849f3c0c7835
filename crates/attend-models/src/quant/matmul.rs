//! Products of a quantized weight matrix with f32 activations.

use super::activations::QuantizedActivations;
use super::dequant::{check_row_bytes, dequantize};
use super::f32_rows::{self, matmul_rows};
use super::float::matmul_float;
use super::kernel::{
    dot_rows, dot_tile, has_row_kernel, interleave_rows, prefetch, unpack_rows, Isa, Tile,
    MAX_TILE_ROWS,
};
use super::unpack::{UnpackedRows, GROUP, LANE};
use super::QuantError;
use crate::GgmlType;
use rayon::prelude::*;

/// Tokens one task covers at most. Each task unpacks its weight rows once per
/// chunk, so a longer chunk unpacks less often; with 2048 columns the chunk's
/// quantised codes and scales take about 1 MiB, which stays in a 2 MiB L2
/// across the task's rows.
const TOKEN_CHUNK: usize = 256;
/// Rows ahead of the current tile whose bytes are prefetched.
const PREFETCH_ROWS_AHEAD: usize = 2 * MAX_TILE_ROWS;
/// Tasks per rayon thread, so uneven tasks still balance.
pub(super) const TASKS_PER_THREAD: usize = 8;

/// Returns the most tokens a product with weights of type `ty` runs through the
/// single-token row kernel, one token after another, rather than through the unpacked
/// tiles. On Zen 4 (`attend bench matmul`, 1536 x 576 and 1536 x 768) the row kernel
/// ran 59 to 89 GFLOP/s at 2 tokens, where the tiles ran 14 to 22. The tiles caught up
/// at about 24 tokens for the 32-weight types and at 8 for Q4_K and Q6_K.
fn row_kernel_max_tokens(ty: GgmlType) -> usize {
    if ty.block_elems() == 32 {
        16
    } else {
        8
    }
}

/// Returns whether a product of `tokens` tokens with weights of type `ty` runs on the
/// single-token row kernel of `isa`.
fn uses_row_kernel(ty: GgmlType, tokens: usize, isa: Isa) -> bool {
    has_row_kernel(isa) && tokens <= row_kernel_max_tokens(ty)
}

/// Treatment of the f32 activations in a product with quantized weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Activations {
    /// Quantised to 8 bits per weight block for integer dot products, as llama.cpp
    /// does ([`QuantizedActivations`]). This is the fast path.
    #[default]
    Q8,
    /// Kept in f32, so the product differs from the exact product of the
    /// dequantised weights by f32 rounding only. For up to 16 tokens, each weight
    /// row is decoded in registers and multiplied with every token. Longer inputs
    /// dequantise a panel of rows at a time for f32 GEMM. Slower than `Q8`, it
    /// suits checks against an f32 reference and text where near ties matter.
    F32,
}

impl std::str::FromStr for Activations {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "q8" => Ok(Activations::Q8),
            "f32" => Ok(Activations::F32),
            other => Err(format!(
                "unknown activation type `{other}`; expected q8 or f32"
            )),
        }
    }
}

/// A row-major weight matrix `W: [rows, cols]` stored as ggml blocks.
#[derive(Clone, Copy, Debug)]
pub struct QuantMatrix<'a> {
    ty: GgmlType,
    data: &'a [u8],
    rows: usize,
    cols: usize,
}

impl<'a> QuantMatrix<'a> {
    /// Wraps the bytes of a `[rows, cols]` matrix of type `ty`, each row a
    /// whole number of blocks, rows back to back (the GGUF layout of a
    /// tensor with dims `[cols, rows]`).
    ///
    /// # Shapes
    /// `data: [rows * ty.bytes_for(cols)]`.
    ///
    /// # Errors
    /// [`QuantError::UnsupportedType`], [`QuantError::ColsNotBlockMultiple`],
    /// [`QuantError::ShapeOverflow`], or [`QuantError::ByteLength`] when
    /// `data` is not exactly `rows` rows long.
    pub fn new(ty: GgmlType, data: &'a [u8], rows: usize, cols: usize) -> Result<Self, QuantError> {
        let elems = rows.checked_mul(cols).ok_or(QuantError::ShapeOverflow {
            name: "weight",
            dim0: rows,
            dim1: cols,
        })?;
        // Each row, not only the whole matrix, must be a whole number of blocks.
        let block_elems = ty.block_elems();
        if !cols.is_multiple_of(block_elems) {
            return Err(QuantError::ColsNotBlockMultiple {
                ty,
                cols,
                block_elems,
            });
        }
        check_row_bytes(ty, data.len(), elems)?;
        Ok(QuantMatrix {
            ty,
            data,
            rows,
            cols,
        })
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_elems() * self.ty.block_bytes()
    }

    /// Dequantises row `row_idx` into `out`.
    ///
    /// # Shapes
    /// `out: [cols]`.
    ///
    /// # Errors
    /// [`QuantError::BufferLength`] when `row_idx >= rows` or `out.len() != cols`.
    pub fn dequantize_row(&self, row_idx: usize, out: &mut [f32]) -> Result<(), QuantError> {
        if row_idx >= self.rows || out.len() != self.cols {
            return Err(QuantError::BufferLength {
                name: "dequantized row",
                dim0: row_idx,
                dim1: self.cols,
                expected: self.cols,
                actual: out.len(),
            });
        }
        let row_bytes = self.row_bytes();
        dequantize(
            self.ty,
            &self.data[row_idx * row_bytes..(row_idx + 1) * row_bytes],
            out,
        )
    }
}

/// Computes `out[t, r] = sum_c W[r, c] * x[t, c]` with the fastest kernel
/// this CPU supports, on the current rayon pool.
///
/// Quantized weights are multiplied by the activations quantised to 8 bits
/// ([`QuantizedActivations`]), so each output differs from the exact product
/// by at most `sum_c |W[r, c]| * max|x| / 254` (the maximum over `c`'s
/// activation block) plus f32 rounding. Float weights go through `gemm`.
///
/// # Shapes
/// `w: [rows, cols]`, `x: [tokens, cols]`, `out: [tokens, rows]`, row-major.
///
/// # Errors
/// [`QuantError::BufferLength`] when `x` or `out` disagree with the shapes,
/// [`QuantError::ShapeOverflow`] when a shape's element count overflows.
pub fn matmul(
    w: &QuantMatrix,
    x: &[f32],
    tokens: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    matmul_with_isa(w, x, tokens, out, Isa::detect())
}

/// Computes [`matmul`] with the integer kernel chosen by the caller (float weights
/// ignore `isa`); tests use it to run the portable kernel on any CPU.
///
/// # Shapes
/// As for [`matmul`].
///
/// # Errors
/// As for [`matmul`], and [`QuantError::IsaUnavailable`] when this CPU
/// lacks `isa`.
pub fn matmul_with_isa(
    w: &QuantMatrix,
    x: &[f32],
    tokens: usize,
    out: &mut [f32],
    isa: Isa,
) -> Result<(), QuantError> {
    if !isa.is_available() {
        return Err(QuantError::IsaUnavailable { isa });
    }
    if !check_buffers(w, x, tokens, out)? {
        return Ok(());
    }
    if !w.ty.is_quantized() {
        matmul_float(w, x, tokens, out);
        return Ok(());
    }
    let acts = quantize_for(x, tokens, w.cols, w.ty, isa)?;
    matmul_quantized(w, &acts, out, isa);
    Ok(())
}

/// Quantises `x: [tokens, cols]` for weights of type `ty`, in the unit order
/// that `isa`'s tile kernel reads when several tokens will go through it.
fn quantize_for(
    x: &[f32],
    tokens: usize,
    cols: usize,
    ty: GgmlType,
    isa: Isa,
) -> Result<QuantizedActivations, QuantError> {
    let acts = QuantizedActivations::quantize(x, tokens, cols, ty)?;
    Ok(
        if !uses_row_kernel(ty, tokens, isa) && isa.interleaves_tiles() {
            acts.into_interleaved()
        } else {
            acts
        },
    )
}

/// Computes `out[t, r] = sum_c W[r, c] * x_hat[t, c]` from activations
/// quantised beforehand, so that several projections of the same input
/// (query, key and value, or gate and up) quantise it once.
///
/// # Shapes
/// `w: [rows, cols]`, `acts: [tokens, cols]`, `out: [tokens, rows]`.
///
/// # Errors
/// [`QuantError::UnsupportedType`] for float weights (use [`matmul`]),
/// [`QuantError::ActivationBlock`] when `acts` was quantised for weights
/// with another block size, [`QuantError::BufferLength`] when the shapes
/// disagree, and [`QuantError::IsaUnavailable`].
pub fn matmul_prequantized(
    w: &QuantMatrix,
    acts: &QuantizedActivations,
    out: &mut [f32],
    isa: Isa,
) -> Result<(), QuantError> {
    if !isa.is_available() {
        return Err(QuantError::IsaUnavailable { isa });
    }
    if !w.ty.is_quantized() {
        return Err(QuantError::UnsupportedType { ty: w.ty });
    }
    if acts.block_elems() != w.ty.block_elems() {
        return Err(QuantError::ActivationBlock {
            ty: w.ty,
            weight_block_elems: w.ty.block_elems(),
            activation_block_elems: acts.block_elems(),
        });
    }
    let (rows, cols, tokens) = (w.rows, w.cols, acts.tokens());
    if acts.cols() != cols {
        return Err(QuantError::BufferLength {
            name: "acts",
            dim0: tokens,
            dim1: cols,
            expected: tokens * cols,
            actual: tokens * acts.cols(),
        });
    }
    check_f32_len("out", out.len(), tokens, rows)?;
    if tokens == 0 || rows == 0 {
        return Ok(());
    }
    if cols == 0 {
        out.fill(0.0);
        return Ok(());
    }
    matmul_quantized(w, acts, out, isa);
    Ok(())
}

/// One product of a [`matmul_many`] call: `out = x W^T`.
pub struct Product<'w, 'o> {
    /// `[rows, cols]`.
    pub w: QuantMatrix<'w>,
    /// `[tokens, rows]`.
    pub out: &'o mut [f32],
}

/// Computes several products of the same activations, `out_i = x W_i^T`, as
/// the query, key and value projections (or gate and up) of one input are.
/// The activations are quantised once per weight block size, and for a
/// single token every row of every matrix is split over one set of rayon
/// tasks, so the pool wakes once for all of them. Each output is bit for bit
/// what [`matmul`] gives for its matrix alone.
///
/// # Shapes
/// `x: [tokens, cols]`; each `w: [rows_i, cols]`, `out: [tokens, rows_i]`.
///
/// # Errors
/// As for [`matmul`], for any of the products.
pub fn matmul_many(
    x: &[f32],
    tokens: usize,
    products: &mut [Product<'_, '_>],
) -> Result<(), QuantError> {
    matmul_many_with(x, tokens, products, Activations::Q8)
}

/// Computes `out = x W^T` as [`matmul`] does, with the activations treated as
/// `activations` selects.
///
/// # Shapes
/// As for [`matmul`].
///
/// # Errors
/// As for [`matmul`].
pub fn matmul_with(
    w: &QuantMatrix,
    x: &[f32],
    tokens: usize,
    out: &mut [f32],
    activations: Activations,
) -> Result<(), QuantError> {
    match activations {
        // One product keeps `matmul`'s own split of the rows, which suits a single
        // large matrix (the output projection) better than the shared task list.
        Activations::Q8 => matmul(w, x, tokens, out),
        Activations::F32 => matmul_many_with(x, tokens, &mut [Product { w: *w, out }], activations),
    }
}

/// Computes [`matmul_many`] with the activations treated as `activations` selects.
///
/// # Shapes
/// As for [`matmul_many`].
///
/// # Errors
/// As for [`matmul`], for any of the products.
pub fn matmul_many_with(
    x: &[f32],
    tokens: usize,
    products: &mut [Product<'_, '_>],
    activations: Activations,
) -> Result<(), QuantError> {
    matmul_many_with_isa(x, tokens, products, activations, Isa::detect())
}

/// Computes `out = x W^T` as [`matmul_with`] does with [`Activations::F32`], with
/// the kernel chosen by the caller; tests use it to run the portable kernel on any
/// CPU. `isa` selects the kernel for quantized weights and at most 16 tokens
/// ([`Isa::Avx512Vnni`] its AVX-512 F variant, [`Isa::Neon`] the portable one) and
/// is ignored otherwise.
///
/// # Shapes
/// As for [`matmul`].
///
/// # Errors
/// As for [`matmul`], and [`QuantError::IsaUnavailable`] when this CPU
/// lacks `isa`.
pub fn matmul_f32_with_isa(
    w: &QuantMatrix,
    x: &[f32],
    tokens: usize,
    out: &mut [f32],
    isa: Isa,
) -> Result<(), QuantError> {
    if !isa.is_available() {
        return Err(QuantError::IsaUnavailable { isa });
    }
    let products = &mut [Product { w: *w, out }];
    matmul_many_with_isa(x, tokens, products, Activations::F32, isa)
}

/// [`matmul_many_with`] with the kernels of `isa`, which the caller has checked
/// is available.
fn matmul_many_with_isa(
    x: &[f32],
    tokens: usize,
    products: &mut [Product<'_, '_>],
    activations: Activations,
    isa: Isa,
) -> Result<(), QuantError> {
    let integer = |w: &QuantMatrix| w.ty.is_quantized() && activations == Activations::Q8;
    // Quantized weights with f32 activations and few tokens: decoded row by row.
    let f32_rows = |w: &QuantMatrix| {
        w.ty.is_quantized() && activations == Activations::F32 && tokens <= f32_rows::MAX_TOKENS
    };
    // Quantised activations for each block size in use, at most two (32, 256).
    let mut acts: Vec<QuantizedActivations> = Vec::new();
    for p in products.iter_mut() {
        if !check_buffers(&p.w, x, tokens, p.out)? {
            continue;
        }
        if f32_rows(&p.w) {
            continue;
        }
        if !integer(&p.w) {
            matmul_float(&p.w, x, tokens, p.out);
            continue;
        }
        let block = p.w.ty.block_elems();
        if !acts.iter().any(|a| a.block_elems() == block) {
            acts.push(quantize_for(x, tokens, p.w.cols, p.w.ty, isa)?);
        }
    }
    let nonempty = |w: &QuantMatrix| tokens > 0 && w.rows > 0 && w.cols > 0;
    let row_products = products
        .iter_mut()
        .filter(|p| f32_rows(&p.w) && nonempty(&p.w));
    let row_products: Vec<_> = row_products.map(|p| (p.w, &mut *p.out)).collect();
    if !row_products.is_empty() {
        matmul_rows(x, tokens, row_products.into_iter(), isa);
    }

    // The activations of a product the integer kernels compute, `None` for
    // the f32 products and empty shapes, which are done above.
    let acts_for = |w: &QuantMatrix| {
        let runs = integer(w) && nonempty(w);
        acts.iter()
            .find(|a| runs && a.block_elems() == w.ty.block_elems() && a.cols() == w.cols)
    };
    if tokens == 1 && has_row_kernel(isa) {
        // One task list over the rows of every quantized product.
        let total_rows: usize = products.iter().map(|p| p.out.len()).sum();
        let chunk_rows = row_kernel_task_rows(total_rows);
        let mut tasks = Vec::with_capacity(total_rows.div_ceil(chunk_rows) + products.len());
        for p in products.iter_mut() {
            let w = p.w;
            let Some(a) = acts_for(&w) else { continue };
            for (chunk_idx, out_chunk) in p.out.chunks_mut(chunk_rows).enumerate() {
                tasks.push((w, a, chunk_idx * chunk_rows, out_chunk));
            }
        }
        tasks.into_par_iter().for_each(|(w, a, r0, out_chunk)| {
            matvec_rows(&w, a, r0, out_chunk, isa);
        });
    } else {
        for p in products.iter_mut() {
            if let Some(a) = acts_for(&p.w) {
                matmul_quantized(&p.w, a, p.out, isa);
            }
        }
    }
    Ok(())
}

/// Checks `x: [tokens, cols]` and `out: [tokens, rows]` against `w` and settles
/// the empty products. Returns false when nothing is left to compute: no tokens
/// or no rows, or no columns, where `out` is filled with zeros.
fn check_buffers(
    w: &QuantMatrix,
    x: &[f32],
    tokens: usize,
    out: &mut [f32],
) -> Result<bool, QuantError> {
    check_f32_len("x", x.len(), tokens, w.cols)?;
    check_f32_len("out", out.len(), tokens, w.rows)?;
    if tokens == 0 || w.rows == 0 {
        return Ok(false);
    }
    if w.cols == 0 {
        out.fill(0.0);
        return Ok(false);
    }
    Ok(true)
}

fn check_f32_len(
    name: &'static str,
    actual: usize,
    dim0: usize,
    dim1: usize,
) -> Result<(), QuantError> {
    let expected = dim0
        .checked_mul(dim1)
        .ok_or(QuantError::ShapeOverflow { name, dim0, dim1 })?;
    if actual != expected {
        return Err(QuantError::BufferLength {
            name,
            dim0,
            dim1,
            expected,
            actual,
        });
    }
    Ok(())
}

/// Computes the quantized product over a grid of tasks. Each task takes a range of
/// row tiles and a chunk of tokens, unpacks each row tile once and runs the
/// kernel over every token tile of its chunk.
fn matmul_quantized(w: &QuantMatrix, acts: &QuantizedActivations, out: &mut [f32], isa: Isa) {
    let (rows, cols, tokens) = (w.rows, w.cols, acts.tokens());
    let row_bytes = w.row_bytes();
    // The row kernel reads activations in row order; prequantised ones put in the
    // tiles' order go through the tiles.
    if uses_row_kernel(w.ty, tokens, isa) && !acts.is_interleaved() {
        if tokens == 1 {
            matvec_direct(w, acts, out, isa);
        } else {
            matmul_few_tokens(w, acts, out, isa);
        }
        return;
    }
    let acts = acts.for_tiles(isa);
    let row_tiles = rows.div_ceil(MAX_TILE_ROWS);
    let token_chunks = tokens.div_ceil(TOKEN_CHUNK);
    let target_tasks = TASKS_PER_THREAD * rayon::current_num_threads();
    let tiles_per_task = (row_tiles * token_chunks)
        .div_ceil(target_tasks)
        .clamp(1, row_tiles);
    let row_tasks = row_tiles.div_ceil(tiles_per_task);

    let shared_out = SharedOut::new(out);
    (0..row_tasks * token_chunks)
        .into_par_iter()
        .for_each(|task_idx| {
            let (row_task, token_chunk) = (task_idx / token_chunks, task_idx % token_chunks);
            let tile_range =
                row_task * tiles_per_task..((row_task + 1) * tiles_per_task).min(row_tiles);
            let token_range =
                token_chunk * TOKEN_CHUNK..((token_chunk + 1) * TOKEN_CHUNK).min(tokens);
            let mut unpacked = UnpackedRows::default();
            unpacked.reset(MAX_TILE_ROWS, cols);

            for row_tile in tile_range {
                // Unpack up to four weight rows.
                let r0 = row_tile * MAX_TILE_ROWS;
                let tile_rows = MAX_TILE_ROWS.min(rows - r0);
                let tile_bytes = &w.data[r0 * row_bytes..(r0 + tile_rows) * row_bytes];
                unpack_rows(isa, w.ty, tile_bytes, row_bytes, &mut unpacked);
                if isa.interleaves_tiles() {
                    let p = unpacked.padded;
                    interleave_rows(&mut unpacked.codes, &mut unpacked.lane_scales, p);
                }
                let ahead = (r0 + PREFETCH_ROWS_AHEAD).min(rows)
                    ..(r0 + PREFETCH_ROWS_AHEAD + MAX_TILE_ROWS).min(rows);
                prefetch(&w.data[ahead.start * row_bytes..ahead.end * row_bytes]);

                for t0 in token_range.clone().step_by(isa.tile_tokens()) {
                    let tile_tokens = isa.tile_tokens().min(token_range.end - t0);
                    let sums = run_tile(isa, w.ty, &unpacked, &acts, tile_rows, t0, tile_tokens);

                    // Store the tile.
                    for (r, sums_r) in sums.iter().enumerate().take(tile_rows) {
                        for (t, &sum) in sums_r.iter().enumerate().take(tile_tokens) {
                            let value = sum;
                            // SAFETY: (t0 + t, r0 + r) lies in this task's row
                            // tiles and token chunk, which no other task covers,
                            // and inside `out: [tokens, rows]`.
                            unsafe { shared_out.write((t0 + t) * rows + r0 + r, value) };
                        }
                    }
                }
            }
        });
}

/// Returns the weight rows per rayon task of the row-kernel products over `rows` rows:
/// [`TASKS_PER_THREAD`] tasks per thread, and at least one group of rows each.
fn row_kernel_task_rows(rows: usize) -> usize {
    let target_tasks = TASKS_PER_THREAD * rayon::current_num_threads();
    rows.div_ceil(target_tasks).max(MAX_TILE_ROWS)
}

/// Computes the single-token product, decoding each row in registers.
/// `out: [rows]`.
fn matvec_direct(w: &QuantMatrix, acts: &QuantizedActivations, out: &mut [f32], isa: Isa) {
    let chunk_rows = row_kernel_task_rows(w.rows);
    out.par_chunks_mut(chunk_rows)
        .enumerate()
        .for_each(|(chunk_idx, out_chunk)| {
            matvec_rows(w, acts, chunk_idx * chunk_rows, out_chunk, isa);
        });
}

/// Computes a product of 2 to [`row_kernel_max_tokens`] tokens with the single-token
/// row kernel, token after token on each group of weight rows while it is in cache.
/// `out: [tokens, rows]`.
fn matmul_few_tokens(w: &QuantMatrix, acts: &QuantizedActivations, out: &mut [f32], isa: Isa) {
    let tokens = acts.tokens();
    let chunk_rows = row_kernel_task_rows(w.rows);
    let shared_out = SharedOut::new(out);
    (0..w.rows.div_ceil(chunk_rows))
        .into_par_iter()
        .for_each(|chunk_idx| {
            let r0 = chunk_idx * chunk_rows;
            let n = chunk_rows.min(w.rows - r0);
            let mut chunk_out = vec![0.0; tokens * n];
            matvec_rows(w, acts, r0, &mut chunk_out, isa);
            for (t, values) in chunk_out.chunks_exact(n).enumerate() {
                for (i, &value) in values.iter().enumerate() {
                    // SAFETY: rows r0..r0 + n belong to this task alone, so no other
                    // task writes (t, r0 + i), which lies inside `out: [tokens, rows]`.
                    unsafe { shared_out.write(t * w.rows + r0 + i, value) };
                }
            }
        });
}

/// Computes rows `r0..r0 + n` of the product for every token of `acts`, with `n =
/// out.len() / tokens`. `out: [tokens, n]`.
fn matvec_rows(w: &QuantMatrix, acts: &QuantizedActivations, r0: usize, out: &mut [f32], isa: Isa) {
    // Rows per kernel call. Four rows share their activation loads, which made the
    // 32-weight block types 1.1-1.25x faster on Zen 4 (`attend bench matmul`). The
    // 256-weight types decode more per step and were no faster in groups.
    match w.ty.block_elems() {
        32 => matvec_row_groups::<4>(w, acts, r0, out, isa),
        _ => matvec_row_groups::<1>(w, acts, r0, out, isa),
    }
}

/// [`matvec_rows`] with `GROUP_ROWS` rows per kernel call, then the rest one by one.
fn matvec_row_groups<const GROUP_ROWS: usize>(
    w: &QuantMatrix,
    acts: &QuantizedActivations,
    r0: usize,
    out: &mut [f32],
    isa: Isa,
) {
    let row_bytes = w.row_bytes();
    let rows_bytes = |r: usize, count: usize| &w.data[r * row_bytes..(r + count) * row_bytes];
    let tokens = acts.tokens();
    let n = out.len() / tokens;
    let p = acts.padded();
    // The codes, lane scales and group sums of token t.
    let token_acts = |t: usize| {
        (
            &acts.codes[t * p..(t + 1) * p],
            &acts.lane_scales[t * p / LANE..(t + 1) * p / LANE],
            &acts.group_sums[t * p / GROUP..(t + 1) * p / GROUP],
        )
    };

    let groups = n / GROUP_ROWS;
    for group_idx in 0..groups {
        let r = r0 + group_idx * GROUP_ROWS;
        let ahead = (r + PREFETCH_ROWS_AHEAD).min(w.rows);
        prefetch(rows_bytes(ahead, GROUP_ROWS.min(w.rows - ahead)));
        let group_bytes = rows_bytes(r, GROUP_ROWS);
        for t in 0..tokens {
            let (codes, scales, sums) = token_acts(t);
            let sums =
                dot_rows::<GROUP_ROWS>(isa, w.ty, group_bytes, row_bytes, codes, scales, sums);
            let start = t * n + group_idx * GROUP_ROWS;
            out[start..start + GROUP_ROWS].copy_from_slice(&sums);
        }
    }
    for i in groups * GROUP_ROWS..n {
        let r = r0 + i;
        for t in 0..tokens {
            let (codes, scales, sums) = token_acts(t);
            [out[t * n + i]] =
                dot_rows::<1>(isa, w.ty, rows_bytes(r, 1), row_bytes, codes, scales, sums);
        }
    }
}

fn run_tile(
    isa: Isa,
    ty: GgmlType,
    unpacked: &UnpackedRows,
    acts: &QuantizedActivations,
    rows: usize,
    t0: usize,
    tokens: usize,
) -> [[f32; 4]; 4] {
    let p = acts.padded();
    debug_assert_eq!(p, unpacked.padded);
    let tile = Tile {
        w_codes: &unpacked.codes,
        w_scales: &unpacked.lane_scales,
        w_offsets: &unpacked.group_offsets,
        x_codes: &acts.codes[t0 * p..],
        x_scales: &acts.lane_scales[t0 * p / LANE..],
        x_sums: &acts.group_sums[t0 * p / GROUP..],
        padded: p,
        rows,
        tokens,
        wide_codes: ty == GgmlType::Q8_0,
    };
    dot_tile(isa, &tile)
}

/// `out` shared by tasks that write disjoint elements.
pub(super) struct SharedOut<'a> {
    ptr: *mut f32,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: tasks only write through `write`/`ptr` at indices no other task
// touches, which each call site states.
unsafe impl Send for SharedOut<'_> {}
unsafe impl Sync for SharedOut<'_> {}

impl<'a> SharedOut<'a> {
    pub fn new(out: &'a mut [f32]) -> Self {
        SharedOut {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            _borrow: std::marker::PhantomData,
        }
    }

    pub fn ptr(&self) -> *mut f32 {
        self.ptr
    }

    /// # Safety
    /// No other thread reads or writes index `i` during the borrow.
    pub unsafe fn write(&self, i: usize, value: f32) {
        assert!(i < self.len);
        // SAFETY: `i < len` keeps the write inside the borrowed slice, and
        // the caller guarantees exclusive access to it.
        unsafe { *self.ptr.add(i) = value };
    }
}
