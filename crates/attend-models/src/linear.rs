//! Dense f32 linear layers, `y = x · W^T + b`, with weights stored as Hugging Face
//! and safetensors store them: `W: [out_dim, in_dim]` row-major.
//!
//! Two kernels compute the same product:
//! - [`LinearKernel::Gemm`]: the `gemm` crate, on any CPU. Built on stable Rust, gemm
//!   0.18 has no AVX-512 micro-kernel (its `avx512f` module needs the crate's
//!   `nightly` feature), so on AVX-512 machines it runs at half the vector width.
//! - [`LinearKernel::Avx512`]: weights repacked once at load time into panels of 32
//!   output features, `[out_dim / 32, in_dim, 32]`, and a register-tiled micro-kernel
//!   of 8 rows by 32 features (16 zmm accumulators).
//!
//! The AVX-512 kernel sums each output element over `in_dim` in order with one fused
//! multiply-add per term, so a row's result is bitwise the same whatever rows are
//! computed with it and whatever the thread count. The gemm crate takes a
//! matrix-vector path for a single row and picks its blocking from the shape, so its
//! results can differ in the last bits with the row count.

use rayon::prelude::*;

/// Output features per packed panel: two AVX-512 vectors of 16 f32.
const PANEL_WIDTH: usize = 32;

/// Rows per register tile of the AVX-512 micro-kernel.
const TILE_ROWS: usize = 8;

/// Rows per parallel task: the task's inputs (`32 x in_dim` f32, 192 KiB at
/// in_dim 1536) stay in L2 while every weight panel streams past them.
const ROWS_PER_TASK: usize = 32;

/// Errors from building or applying a linear layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinearError {
    /// The weight, bias or dimension disagree.
    #[error("linear layer weights disagree: weight has {weight_len} values, bias {bias_len}, in_dim {in_dim}; expected [bias_len, in_dim] with both at least 1")]
    WeightShape {
        weight_len: usize,
        bias_len: usize,
        in_dim: usize,
    },
    /// The input or output buffer does not match the layer.
    #[error("linear layer [{out_dim}, {in_dim}] got input of {x_len} values and output of {out_len}; expected [rows, {in_dim}] and [rows, {out_dim}]")]
    BufferShape {
        in_dim: usize,
        out_dim: usize,
        x_len: usize,
        out_len: usize,
    },
    /// The requested kernel cannot run on this CPU.
    #[error("the {kernel:?} linear kernel needs a CPU feature this machine lacks; use LinearKernel::Gemm")]
    KernelUnavailable { kernel: LinearKernel },
}

/// The implementation behind a [`Linear`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearKernel {
    /// The `gemm` crate (AVX2+FMA or portable on this build).
    Gemm,
    /// Packed panels and an AVX-512F micro-kernel (x86-64 only).
    Avx512,
}

impl LinearKernel {
    /// Returns the fastest kernel this CPU runs.
    pub fn detect() -> Self {
        if Self::Avx512.is_available() {
            Self::Avx512
        } else {
            Self::Gemm
        }
    }

    /// Returns whether this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Self::Gemm => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => std::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            Self::Avx512 => false,
        }
    }
}

/// A linear layer with its weights laid out for one kernel.
#[derive(Debug, Clone)]
pub struct Linear {
    in_dim: usize,
    out_dim: usize,
    kernel: LinearKernel,
    /// `Gemm`: `[out_dim, in_dim]`. `Avx512`: `[out_dim.div_ceil(32), in_dim, 32]`, zero
    /// past `out_dim`.
    weight: Vec<f32>,
    /// `[out_dim]`.
    bias: Vec<f32>,
}

impl Linear {
    /// Builds a layer from `weight: [out_dim, in_dim]` and `bias: [out_dim]`
    /// (`out_dim = bias.len()`), repacking the weights for `kernel`
    /// (`None`: [`LinearKernel::detect`]).
    ///
    /// # Errors
    /// [`LinearError::WeightShape`] when the lengths disagree or a dimension is 0,
    /// [`LinearError::KernelUnavailable`] when `kernel` cannot run here.
    pub fn new(
        weight: Vec<f32>,
        bias: Vec<f32>,
        in_dim: usize,
        kernel: Option<LinearKernel>,
    ) -> Result<Self, LinearError> {
        let out_dim = bias.len();
        if in_dim == 0 || out_dim == 0 || out_dim.checked_mul(in_dim) != Some(weight.len()) {
            return Err(LinearError::WeightShape {
                weight_len: weight.len(),
                bias_len: out_dim,
                in_dim,
            });
        }
        let kernel = kernel.unwrap_or_else(LinearKernel::detect);
        if !kernel.is_available() {
            return Err(LinearError::KernelUnavailable { kernel });
        }
        let weight = match kernel {
            LinearKernel::Gemm => weight,
            LinearKernel::Avx512 => pack_panels(&weight, out_dim, in_dim),
        };
        Ok(Self {
            in_dim,
            out_dim,
            kernel,
            weight,
            bias,
        })
    }

    /// Returns `in_dim`.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Returns `out_dim`.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// Returns the kernel in use.
    pub fn kernel(&self) -> LinearKernel {
        self.kernel
    }

    /// Computes `out = x · W^T + b` on the current rayon pool.
    ///
    /// # Shapes
    /// `x: [rows, in_dim]`, `out: [rows, out_dim]`, row-major.
    ///
    /// # Errors
    /// [`LinearError::BufferShape`] when `x` or `out` does not hold whole rows of the
    /// same count.
    pub fn forward(&self, x: &[f32], out: &mut [f32]) -> Result<(), LinearError> {
        self.forward_impl(x, out, None)
    }

    /// Computes `out = activation(x · W^T + b)`: as [`Self::forward`], then applies
    /// `activation` to each block of finished output rows while they are still in
    /// cache. `activation` receives whole rows and must act element by element.
    ///
    /// # Shapes
    /// As [`Self::forward`].
    ///
    /// # Errors
    /// As [`Self::forward`].
    pub fn forward_activated(
        &self,
        x: &[f32],
        out: &mut [f32],
        activation: fn(&mut [f32]),
    ) -> Result<(), LinearError> {
        self.forward_impl(x, out, Some(activation))
    }

    fn forward_impl(
        &self,
        x: &[f32],
        out: &mut [f32],
        activation: Option<fn(&mut [f32])>,
    ) -> Result<(), LinearError> {
        let rows = x.len() / self.in_dim;
        if rows.checked_mul(self.in_dim) != Some(x.len())
            || rows.checked_mul(self.out_dim) != Some(out.len())
        {
            return Err(LinearError::BufferShape {
                in_dim: self.in_dim,
                out_dim: self.out_dim,
                x_len: x.len(),
                out_len: out.len(),
            });
        }
        if rows == 0 {
            return Ok(());
        }
        match self.kernel {
            LinearKernel::Gemm => {
                self.forward_gemm(x, rows, out);
                if let Some(activation) = activation {
                    out.par_chunks_mut(ROWS_PER_TASK * self.out_dim)
                        .for_each(activation);
                }
            }
            LinearKernel::Avx512 => self.forward_avx512(x, out, activation),
        }
        Ok(())
    }

    fn forward_gemm(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        let (in_dim, out_dim) = (self.in_dim, self.out_dim);
        for row in out.chunks_exact_mut(out_dim) {
            row.copy_from_slice(&self.bias);
        }
        // SAFETY: `forward` checked that `x` has rows * in_dim elements and `out`
        // rows * out_dim, and `new` that `weight` has out_dim * in_dim. gemm reads
        // lhs(i, l) at x[i * in_dim + l] (row stride in_dim, column stride 1),
        // rhs(l, j) = weight[j * in_dim + l] (the transpose: row stride 1, column
        // stride in_dim), and reads and writes dst(i, j) at out[i * out_dim + j]; each
        // index is in bounds for i < rows, j < out_dim, l < in_dim. `out` is borrowed
        // mutably, so it aliases neither input.
        unsafe {
            gemm::gemm(
                rows,
                out_dim,
                in_dim,
                out.as_mut_ptr(),
                1,
                out_dim as isize,
                true,
                x.as_ptr(),
                1,
                in_dim as isize,
                self.weight.as_ptr(),
                in_dim as isize,
                1,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
    }

    fn forward_avx512(&self, x: &[f32], out: &mut [f32], activation: Option<fn(&mut [f32])>) {
        let (in_dim, out_dim) = (self.in_dim, self.out_dim);
        let panel_len = in_dim * PANEL_WIDTH;
        out.par_chunks_mut(ROWS_PER_TASK * out_dim)
            .zip(x.par_chunks(ROWS_PER_TASK * in_dim))
            .for_each(|(out_rows, x_rows)| {
                let rows = x_rows.len() / in_dim;
                for (panel_idx, panel) in self.weight.chunks_exact(panel_len).enumerate() {
                    let col0 = panel_idx * PANEL_WIDTH;
                    let cols = PANEL_WIDTH.min(out_dim - col0);
                    for row0 in (0..rows).step_by(TILE_ROWS) {
                        let tile_rows = TILE_ROWS.min(rows - row0);
                        let mut tile = [[0.0f32; PANEL_WIDTH]; TILE_ROWS];
                        let x_tile = &x_rows[row0 * in_dim..(row0 + tile_rows) * in_dim];
                        avx512_tile(x_tile, tile_rows, in_dim, panel, &mut tile);

                        for (r, tile_row) in tile.iter().take(tile_rows).enumerate() {
                            let out_row = &mut out_rows[(row0 + r) * out_dim + col0..][..cols];
                            let bias = &self.bias[col0..col0 + cols];
                            for ((o, &sum), &b) in out_row.iter_mut().zip(tile_row).zip(bias) {
                                *o = b + sum;
                            }
                        }
                    }
                }
                if let Some(activation) = activation {
                    activation(out_rows);
                }
            });
    }
}

/// Repacks `weight: [out_dim, in_dim]` into panels `[out_dim.div_ceil(32), in_dim, 32]`,
/// zero-filled past `out_dim`.
fn pack_panels(weight: &[f32], out_dim: usize, in_dim: usize) -> Vec<f32> {
    let panels = out_dim.div_ceil(PANEL_WIDTH);
    let mut packed = vec![0.0f32; panels * in_dim * PANEL_WIDTH];
    for (o, row) in weight.chunks_exact(in_dim).enumerate() {
        let (panel_idx, lane) = (o / PANEL_WIDTH, o % PANEL_WIDTH);
        let panel = &mut packed[panel_idx * in_dim * PANEL_WIDTH..][..in_dim * PANEL_WIDTH];
        for (l, &w) in row.iter().enumerate() {
            panel[l * PANEL_WIDTH + lane] = w;
        }
    }
    packed
}

/// Computes `tile[r][c] = sum_l x[r * in_dim + l] * panel[l * 32 + c]` for
/// `r < rows`, through the AVX-512 micro-kernel sized for `rows`.
///
/// # Panics
/// When `rows` is 0 or above 8, or the slices are shorter than `rows * in_dim` and
/// `in_dim * 32` (internal contract of [`Linear::forward_avx512`]).
fn avx512_tile(
    x: &[f32],
    rows: usize,
    in_dim: usize,
    panel: &[f32],
    tile: &mut [[f32; PANEL_WIDTH]; TILE_ROWS],
) {
    assert!((1..=TILE_ROWS).contains(&rows), "tile rows {rows}");
    assert!(x.len() >= rows * in_dim, "x shorter than the tile");
    assert!(
        panel.len() >= in_dim * PANEL_WIDTH,
        "panel shorter than in_dim * 32"
    );
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `Linear::new` only selects the AVX-512 kernel after
        // `is_x86_feature_detected!("avx512f")`; the asserts above give the slice
        // lengths that `tile_avx512` reads.
        unsafe {
            match rows {
                1 => tile_avx512::<1>(x, in_dim, panel, tile),
                2 => tile_avx512::<2>(x, in_dim, panel, tile),
                3 => tile_avx512::<3>(x, in_dim, panel, tile),
                4 => tile_avx512::<4>(x, in_dim, panel, tile),
                5 => tile_avx512::<5>(x, in_dim, panel, tile),
                6 => tile_avx512::<6>(x, in_dim, panel, tile),
                7 => tile_avx512::<7>(x, in_dim, panel, tile),
                _ => tile_avx512::<8>(x, in_dim, panel, tile),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = tile;
        unreachable!("the AVX-512 kernel is never selected off x86-64");
    }
}

/// Computes one `ROWS x 32` register tile: 2 * ROWS zmm accumulators, one broadcast of
/// `x[r][l]` per row and two panel loads per step of `l`.
///
/// # Safety
/// The CPU supports AVX-512F; `x.len() >= ROWS * in_dim`;
/// `panel.len() >= in_dim * 32`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const ROWS: usize>(
    x: &[f32],
    in_dim: usize,
    panel: &[f32],
    tile: &mut [[f32; PANEL_WIDTH]; TILE_ROWS],
) {
    use std::arch::x86_64::*;

    let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
    let x_ptr = x.as_ptr();
    let panel_ptr = panel.as_ptr();
    for l in 0..in_dim {
        // SAFETY: l < in_dim, so l * 32 + 16 + 15 < in_dim * 32 <= panel.len().
        let (w_lo, w_hi) = unsafe {
            (
                _mm512_loadu_ps(panel_ptr.add(l * PANEL_WIDTH)),
                _mm512_loadu_ps(panel_ptr.add(l * PANEL_WIDTH + 16)),
            )
        };
        for (r, acc_row) in acc.iter_mut().enumerate() {
            // SAFETY: r < ROWS and l < in_dim, so r * in_dim + l < ROWS * in_dim <= x.len().
            let xv = _mm512_set1_ps(unsafe { *x_ptr.add(r * in_dim + l) });
            acc_row[0] = _mm512_fmadd_ps(xv, w_lo, acc_row[0]);
            acc_row[1] = _mm512_fmadd_ps(xv, w_hi, acc_row[1]);
        }
    }
    for (acc_row, tile_row) in acc.iter().zip(tile.iter_mut()) {
        // SAFETY: each tile row contains 32 f32, written as two unaligned 16-lane stores.
        unsafe {
            _mm512_storeu_ps(tile_row.as_mut_ptr(), acc_row[0]);
            _mm512_storeu_ps(tile_row.as_mut_ptr().add(16), acc_row[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `x · W^T + b` in f64, with the sum of the absolute terms of each element.
    fn linear_f64(x: &[f32], in_dim: usize, weight: &[f32], bias: &[f32]) -> Vec<(f64, f64)> {
        let mut out = Vec::new();
        for row in x.chunks(in_dim) {
            for (o, &b) in bias.iter().enumerate() {
                let w = &weight[o * in_dim..(o + 1) * in_dim];
                let terms = row
                    .iter()
                    .zip(w)
                    .map(|(&a, &c)| f64::from(a) * f64::from(c));
                let dot: f64 = terms.clone().sum();
                let abs_sum: f64 = terms.map(f64::abs).sum::<f64>() + f64::from(b).abs();
                out.push((dot + f64::from(b), abs_sum));
            }
        }
        out
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn kernels() -> Vec<LinearKernel> {
        [LinearKernel::Gemm, LinearKernel::Avx512]
            .into_iter()
            .filter(|k| k.is_available())
            .collect()
    }

    /// Checks every available kernel against the f64 twin, within the standard bound
    /// for a sum of n = in_dim + 1 rounded f32 terms: n * eps * sum(|terms|), with eps
    /// the f32 machine epsilon (fused multiply-adds only make the error smaller).
    fn check(rows: usize, in_dim: usize, out_dim: usize, seed: u64) {
        let x = values(rows * in_dim, seed);
        let weight = values(out_dim * in_dim, seed + 1);
        let bias = values(out_dim, seed + 2);
        let expected = linear_f64(&x, in_dim, &weight, &bias);
        let n_terms = in_dim as f64 + 1.0;
        for kernel in kernels() {
            let layer = Linear::new(weight.clone(), bias.clone(), in_dim, Some(kernel)).unwrap();
            let mut out = vec![f32::NAN; rows * out_dim];
            layer.forward(&x, &mut out).unwrap();
            for (idx, (&got, &(want, abs_sum))) in out.iter().zip(&expected).enumerate() {
                let tolerance = n_terms * f64::from(f32::EPSILON) * abs_sum;
                assert!(
                    (f64::from(got) - want).abs() <= tolerance,
                    "{kernel:?} rows {rows} in {in_dim} out {out_dim}, element {idx}: {got} against {want}"
                );
            }
        }
    }

    #[test]
    fn edge_shapes_match_f64() {
        for rows in [0, 1, 7, 8, 9, 33, 70] {
            for in_dim in [1, 3, 16, 384] {
                for out_dim in [1, 17, 32, 33, 64] {
                    check(
                        rows,
                        in_dim,
                        out_dim,
                        (rows * 1000 + in_dim * 10 + out_dim) as u64,
                    );
                }
            }
        }
    }

    #[test]
    fn avx512_rows_do_not_depend_on_row_count() {
        if !LinearKernel::Avx512.is_available() {
            eprintln!("AVX-512F not available; the gemm path is covered by the f64 checks");
            return;
        }
        let (in_dim, out_dim) = (384, 96);
        let x = values(70 * in_dim, 5);
        let weight = values(out_dim * in_dim, 6);
        let bias = values(out_dim, 7);
        let layer = Linear::new(weight, bias, in_dim, Some(LinearKernel::Avx512)).unwrap();
        let mut all = vec![0.0; 70 * out_dim];
        layer.forward(&x, &mut all).unwrap();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for (start, count) in [(0, 1), (9, 1), (69, 1), (3, 2), (40, 30)] {
            let mut part = vec![0.0; count * out_dim];
            layer
                .forward(&x[start * in_dim..(start + count) * in_dim], &mut part)
                .unwrap();
            assert_eq!(
                bits(&part),
                bits(&all[start * out_dim..(start + count) * out_dim]),
                "rows {start}..{}",
                start + count
            );
        }
    }

    #[test]
    fn activated_equals_forward_then_activation() {
        fn square(row: &mut [f32]) {
            row.iter_mut().for_each(|v| *v *= *v);
        }
        let (rows, in_dim, out_dim) = (70, 48, 40);
        let x = values(rows * in_dim, 11);
        let weight = values(out_dim * in_dim, 12);
        let bias = values(out_dim, 13);
        for kernel in kernels() {
            let layer = Linear::new(weight.clone(), bias.clone(), in_dim, Some(kernel)).unwrap();
            let mut expected = vec![0.0; rows * out_dim];
            layer.forward(&x, &mut expected).unwrap();
            square(&mut expected);
            let mut fused = vec![0.0; rows * out_dim];
            layer.forward_activated(&x, &mut fused, square).unwrap();
            assert_eq!(fused, expected, "{kernel:?}");
        }
    }

    #[test]
    fn bad_shapes_rejected() {
        assert!(matches!(
            Linear::new(vec![0.0; 6], vec![0.0; 4], 2, None),
            Err(LinearError::WeightShape { .. })
        ));
        assert!(matches!(
            Linear::new(vec![], vec![], 0, None),
            Err(LinearError::WeightShape { .. })
        ));
        let layer = Linear::new(vec![0.0; 6], vec![0.0; 3], 2, None).unwrap();
        let mut out = vec![0.0; 3];
        assert!(matches!(
            layer.forward(&[0.0; 3], &mut out),
            Err(LinearError::BufferShape { .. })
        ));
        assert!(matches!(
            layer.forward(&[0.0; 4], &mut out),
            Err(LinearError::BufferShape { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn random_shapes_match_f64(rows in 0usize..80, in_dim in 1usize..300, out_dim in 1usize..100, seed in any::<u64>()) {
            check(rows, in_dim, out_dim, seed);
        }
    }
}
