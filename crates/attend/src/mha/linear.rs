//! Linear projections `out = x W^T (+ bias)` behind a trait, and the f32 implementation.

use super::{check_len, MhaError};

/// A linear map `out = x W^T (+ bias)` applied to a batch of rows.
pub trait Linear: Send + Sync {
    /// Returns the length of one input row.
    fn in_features(&self) -> usize;

    /// Returns the length of one output row.
    fn out_features(&self) -> usize;

    /// Computes the output rows of `tokens = x.len() / in_features` input rows.
    ///
    /// The caller passes `x.len() = tokens * in_features` and
    /// `out.len() = tokens * out_features`; [`super::MultiHeadAttention`] checks this before
    /// every call.
    ///
    /// # Shapes
    /// `x: [tokens, in_features]`, `out: [tokens, out_features]`.
    fn forward(&self, x: &[f32], out: &mut [f32]);
}

/// An f32 weight matrix `[out_features, in_features]`, row-major, with an optional bias.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseLinear {
    /// `[out_features, in_features]`
    weight: Vec<f32>,
    /// `[out_features]`
    bias: Option<Vec<f32>>,
    in_features: usize,
    out_features: usize,
}

impl DenseLinear {
    /// Wraps a row-major `[out_features, in_features]` weight matrix.
    ///
    /// # Shapes
    /// `weight: [out_features, in_features]`.
    ///
    /// # Errors
    /// [`MhaError::InvalidConfig`] for a zero dimension; [`MhaError::BufferLength`] when
    /// `weight.len() != out_features * in_features`.
    pub fn new(
        weight: Vec<f32>,
        out_features: usize,
        in_features: usize,
    ) -> Result<Self, MhaError> {
        for (name, value) in [("in_features", in_features), ("out_features", out_features)] {
            if value == 0 {
                return Err(MhaError::InvalidConfig {
                    name,
                    value,
                    expected: "at least 1",
                });
            }
        }
        check_len(
            "weight",
            weight.len(),
            out_features.checked_mul(in_features),
        )?;
        Ok(Self {
            weight,
            bias: None,
            in_features,
            out_features,
        })
    }

    /// Adds a bias.
    ///
    /// # Shapes
    /// `bias: [out_features]`.
    ///
    /// # Errors
    /// [`MhaError::BufferLength`] when `bias.len() != out_features`.
    pub fn with_bias(mut self, bias: Vec<f32>) -> Result<Self, MhaError> {
        check_len("bias", bias.len(), Some(self.out_features))?;
        self.bias = Some(bias);
        Ok(self)
    }

    /// Returns the weight matrix, `[out_features, in_features]`.
    pub fn weight(&self) -> &[f32] {
        &self.weight
    }

    /// Returns the bias, `[out_features]`, when set.
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }
}

impl Linear for DenseLinear {
    fn in_features(&self) -> usize {
        self.in_features
    }

    fn out_features(&self) -> usize {
        self.out_features
    }

    fn forward(&self, x: &[f32], out: &mut [f32]) {
        // Only whole rows that fit both buffers are computed, so a wrong length cannot
        // make gemm read or write out of bounds.
        let tokens = (x.len() / self.in_features).min(out.len() / self.out_features);
        if tokens == 0 {
            return;
        }
        let (k, n) = (self.in_features as isize, self.out_features as isize);
        // SAFETY: dst is `[tokens, out_features]` with row stride n and column stride 1,
        // inside `out` because `tokens * out_features <= out.len()`. lhs is x as
        // `[tokens, in_features]` with row stride k, inside `x` because
        // `tokens * in_features <= x.len()`. rhs is W^T, `[in_features, out_features]`:
        // element (i, j) is weight[j * in_features + i], so its row stride is 1 and its
        // column stride k, inside `weight`, whose length `new` checked. dst does not
        // overlap lhs or rhs (a unique borrow against shared ones). With read_dst = false
        // gemm overwrites dst and ignores alpha.
        unsafe {
            gemm::gemm(
                tokens,
                self.out_features,
                self.in_features,
                out.as_mut_ptr(),
                1,
                n,
                false,
                x.as_ptr(),
                1,
                k,
                self.weight.as_ptr(),
                k,
                1,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
        if let Some(bias) = &self.bias {
            for row in out[..tokens * self.out_features].chunks_exact_mut(self.out_features) {
                for (o, b) in row.iter_mut().zip(bias) {
                    *o += b;
                }
            }
        }
    }
}
