//! Helpers shared by the attention tests: random tensors in padded buffers, and
//! comparison against the float64 oracle with written-down tolerances.

#![allow(dead_code)]

use attend::{BshdShape, BshdStrides, DType, Element, Isa};
use proptest::prelude::*;

/// A BSHD tensor stored with optional padding between heads, rows and batches.
///
/// Padding is filled with NaN, so a kernel that reads outside the view produces NaN
/// and fails the comparison.
#[derive(Debug, Clone)]
pub struct Tensor<T> {
    pub data: Vec<T>,
    pub shape: BshdShape,
    pub strides: BshdStrides,
}

impl<T: Element> Tensor<T> {
    /// Builds a tensor whose element `(b, s, h, d)` is `value(flat index)`.
    pub fn new(shape: BshdShape, padding: usize, seed: u64) -> Self {
        let head_stride = shape.head_dim + padding;
        let seq_stride = shape.heads * head_stride + padding;
        let batch_stride = shape.seq_len * seq_stride + padding;
        let strides = BshdStrides {
            batch_stride,
            seq_stride,
            head_stride,
        };
        let len = shape.batch * batch_stride + padding;
        let mut data = vec![T::from_f32(f32::NAN); len];
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for b in 0..shape.batch {
            for s in 0..shape.seq_len {
                for h in 0..shape.heads {
                    for d in 0..shape.head_dim {
                        // xorshift64: values uniform in [-1, 1).
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        let value = (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
                        data[b * batch_stride + s * seq_stride + h * head_stride + d] =
                            T::from_f32(value);
                    }
                }
            }
        }
        Self {
            data,
            shape,
            strides,
        }
    }

    pub fn view(&self) -> attend::Bshd<'_, T> {
        attend::Bshd::strided(&self.data, self.shape, self.strides)
            .expect("test tensor fits its buffer")
    }
}

/// An f32 output buffer with padding filled with NaN.
#[derive(Debug, Clone)]
pub struct Output {
    pub data: Vec<f32>,
    pub shape: BshdShape,
    pub strides: BshdStrides,
}

impl Output {
    pub fn new(shape: BshdShape, padding: usize) -> Self {
        let empty = Tensor::<f32>::new(BshdShape { batch: 0, ..shape }, padding, 0);
        let strides = BshdStrides {
            batch_stride: shape.seq_len * (shape.heads * (shape.head_dim + padding) + padding)
                + padding,
            ..empty.strides
        };
        let data = vec![f32::NAN; shape.batch * strides.batch_stride + padding];
        Self {
            data,
            shape,
            strides,
        }
    }

    pub fn view(&mut self) -> attend::BshdMut<'_> {
        attend::BshdMut::strided(&mut self.data, self.shape, self.strides)
            .expect("test output fits its buffer")
    }

    /// Returns the logical elements in `[batch, seq_len, heads, head_dim]` order.
    pub fn logical(&self) -> Vec<f32> {
        let s = self.shape;
        let mut values = Vec::with_capacity(s.batch * s.seq_len * s.heads * s.head_dim);
        for b in 0..s.batch {
            for t in 0..s.seq_len {
                for h in 0..s.heads {
                    let start = b * self.strides.batch_stride
                        + t * self.strides.seq_stride
                        + h * self.strides.head_stride;
                    values.extend_from_slice(&self.data[start..start + s.head_dim]);
                }
            }
        }
        values
    }

    /// Counts padding elements that are no longer NaN, i.e. writes outside the view.
    pub fn padding_writes(&self) -> usize {
        let mut inside = vec![false; self.data.len()];
        let s = self.shape;
        for b in 0..s.batch {
            for t in 0..s.seq_len {
                for h in 0..s.heads {
                    let start = b * self.strides.batch_stride
                        + t * self.strides.seq_stride
                        + h * self.strides.head_stride;
                    inside[start..start + s.head_dim].fill(true);
                }
            }
        }
        self.data
            .iter()
            .zip(&inside)
            .filter(|(x, &inside)| !inside && !x.is_nan())
            .count()
    }
}

/// Unit roundoff of f32, 2^-24.
pub const F32_UNIT_ROUNDOFF: f64 = 5.960_464_477_539_063e-8;

/// Absolute tolerance for outputs of inputs in [-1, 1] against the f64 oracle.
///
/// The oracle sees the same stored (possibly f16/bf16-rounded) inputs, so the kernel
/// differs only by f32 arithmetic. The worst-case bound for an n-term f32 sum is about
/// n * u; a score sums `head_dim` products and the softmax denominator sums up to
/// `kv_len` terms, and the vector exp adds a few u per term. 8 * u * (head_dim +
/// kv_len + 64) covers both with the constant for the exp and the final division,
/// and is still far below any real error (1e-3 at head_dim 257, kv_len 140).
pub fn tolerance(head_dim: usize, kv_len: usize) -> f64 {
    8.0 * F32_UNIT_ROUNDOFF * (head_dim + kv_len + 64) as f64
}

/// Returns the absolute output tolerance for storage type `T` on `isa`.
///
/// With bf16 inputs on an instruction set with bf16 dot products, the kernel rounds each
/// softmax weight `p_k` to bf16 before the product with V, as FlashAttention-2's CUDA
/// kernel converts P to the input type. bf16 keeps 8 significant bits, so rounding to nearest changes a
/// weight by a relative error `|e_k| <= 2^-8`. The denominator `l = sum_k p_k` is summed
/// from the unrounded weights, so the output moves by `sum_k p_k e_k v_k / l`, at most
/// `2^-8 * max |v_k|`, and the test values lie in [-1, 1]. The log-sum-exp does not
/// change and keeps [`tolerance`].
pub fn out_tolerance<T: Element>(isa: Isa, head_dim: usize, kv_len: usize) -> f64 {
    let f32_tolerance = tolerance(head_dim, kv_len);
    if T::DTYPE == DType::BF16 && isa.has_bf16_dot() {
        f32_tolerance + BF16_UNIT_ROUNDOFF
    } else {
        f32_tolerance
    }
}

/// Unit roundoff of bf16, 2^-8.
pub const BF16_UNIT_ROUNDOFF: f64 = 1.0 / 256.0;

/// Asserts that every element matches, treating equal infinities as equal.
pub fn assert_close(what: &str, got: &[f32], expected: &[f64], tolerance: f64) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    for (i, (&x, &y)) in got.iter().zip(expected).enumerate() {
        let x = f64::from(x);
        if x == y {
            continue;
        }
        assert!(
            (x - y).abs() <= tolerance * (1.0 + y.abs()),
            "{what}[{i}]: kernel {x} vs oracle {y} (tolerance {tolerance})"
        );
    }
}

/// Returns every instruction set this CPU can run, portable first, so that the
/// narrower SIMD paths (AVX2 on an AVX-512 CPU) are tested too.
pub fn available_isas() -> Vec<Isa> {
    [Isa::Portable, Isa::Avx2Fma, Isa::Avx512, Isa::Neon]
        .into_iter()
        .filter(|isa| isa.is_available())
        .collect()
}

/// The instruction sets under test: any that this CPU can run.
pub fn isas() -> impl Strategy<Value = Isa> {
    prop::sample::select(available_isas())
}

/// Window bounds: unbounded, small, or longer than any tested sequence.
pub fn window_bound() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![Just(None), (0usize..20).prop_map(Some), Just(Some(1000))]
}
