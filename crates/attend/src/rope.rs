//! Rotary position embeddings (RoPE) and their context-extension variants.
//!
//! A pair `(a, b)` of a head row at position `p` is rotated by the angle `p * theta_i`:
//! `(a, b) -> (a cos - b sin, b cos + a sin)`. With no scaling,
//! `theta_i = base^(-2i / rotary_dim)` for `i` in `0..rotary_dim / 2`. Which elements form
//! pair `i` is the [`RopeLayout`]. Only the first `rotary_dim` elements of each head are
//! rotated; the rest pass through unchanged (partial rotary, as in GPT-NeoX and Phi).
//!
//! The scaling variants change `theta_i` and may multiply cos and sin by an attention
//! factor. Each follows the compute function of the same name in Hugging Face
//! transformers' `src/transformers/modeling_rope_utils.py`, and the formula is quoted
//! where it is computed. The YaRN options `mscale`, `mscale_all_dim` and `truncate` follow
//! the later transformers versions that added them. Dynamic NTK and LongRoPE also follow
//! the per-call frequency update of that file's `dynamic_rope_update` decorator.
//!
//! Tables of cos and sin, `[positions, rotary_dim / 2]`, are computed in f64 and stored as
//! f32. They grow on demand to the largest position seen, and are recomputed only when
//! the frequency set changes (dynamic NTK past its trained length, LongRoPE switching
//! between its short and long factors).

use thiserror::Error;

/// Pairing of head-row elements into rotation pairs, with `half = rotary_dim / 2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs `(i, i + half)`: GPT-NeoX, Hugging Face `rotate_half`, Gemma.
    HalfSplit,
    /// Pairs `(2i, 2i + 1)`: GPT-J, Meta's original Llama code, llama.cpp's `llama` rows.
    Interleaved,
}

/// Parameters of YaRN scaling (Peng et al. 2023, "YaRN: Efficient Context Window Extension
/// of Large Language Models"), named as in a Hugging Face `rope_scaling` dictionary.
#[derive(Debug, Clone, PartialEq)]
pub struct YarnParams {
    /// Context extension factor. Hugging Face replaces the config's `factor` by
    /// `max_position_embeddings / original_max_position_embeddings` when the latter is set
    /// in `rope_scaling`; pass the value the model ends up using.
    pub factor: f64,
    /// Context length the model was trained with.
    pub original_max_position_embeddings: usize,
    /// Number of rotations above which a dimension is left unscaled (default 32).
    pub beta_fast: f64,
    /// Number of rotations below which a dimension is fully interpolated (default 1).
    pub beta_slow: f64,
    /// Multiplier of cos and sin; `None` derives it from `factor`, `mscale` and `mscale_all_dim`.
    pub attention_factor: Option<f64>,
    /// DeepSeek-style `mscale`; used with `mscale_all_dim` when both are set and non-zero.
    pub mscale: Option<f64>,
    /// DeepSeek-style `mscale_all_dim`.
    pub mscale_all_dim: Option<f64>,
    /// Round the correction range outwards to whole dimensions (default true).
    pub truncate: bool,
}

impl YarnParams {
    /// Creates YaRN parameters with the Hugging Face defaults for everything but the factor
    /// and the trained context length.
    pub fn new(factor: f64, original_max_position_embeddings: usize) -> Self {
        Self {
            factor,
            original_max_position_embeddings,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: None,
            mscale: None,
            mscale_all_dim: None,
            truncate: true,
        }
    }
}

/// A RoPE scaling variant, as in Hugging Face's `rope_scaling["rope_type"]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum RopeScaling {
    /// Plain RoPE (`"default"`).
    #[default]
    None,
    /// Position interpolation (`"linear"`): every `theta_i` divided by `factor`.
    Linear { factor: f64 },
    /// Dynamic NTK (`"dynamic"`): the base grows with the sequence length once it passes
    /// `max_position_embeddings`.
    DynamicNtk {
        factor: f64,
        max_position_embeddings: usize,
    },
    /// YaRN (`"yarn"`).
    Yarn(YarnParams),
    /// Llama 3.1 (`"llama3"`): low frequencies divided by `factor`, high ones unchanged,
    /// a smooth blend in between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// LongRoPE (`"longrope"`, Phi-3): per-frequency divisors, `short_factor` while the
    /// sequence fits the trained context and `long_factor` past it. Each list has
    /// `rotary_dim / 2` entries.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        /// Context extension factor, `max_position_embeddings / original_max_position_embeddings`
        /// in Phi-3 configs; only used to derive the default attention factor.
        factor: f64,
        original_max_position_embeddings: usize,
        /// Multiplier of cos and sin; `None` derives it from `factor`.
        attention_factor: Option<f64>,
    },
}

/// Configuration of one layer's rotary embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// Elements per head row.
    pub head_dim: usize,
    /// Leading elements of each head row that are rotated; even, `1..=head_dim`.
    pub rotary_dim: usize,
    /// The `theta` base (`rope_theta`), finite and > 0.
    pub base: f64,
    pub layout: RopeLayout,
    pub scaling: RopeScaling,
    /// Positions must be below this value when set; it also bounds the table size.
    pub max_position: Option<u32>,
}

impl RopeConfig {
    /// Creates a configuration that rotates the whole head with no scaling and no position limit.
    pub fn new(head_dim: usize, base: f64, layout: RopeLayout) -> Self {
        Self {
            head_dim,
            rotary_dim: head_dim,
            base,
            layout,
            scaling: RopeScaling::None,
            max_position: None,
        }
    }
}

/// Invalid RoPE configuration or input.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum RopeError {
    #[error("rotary_dim {rotary_dim} is invalid: it must be even and at least 2, because RoPE rotates pairs")]
    InvalidRotaryDim { rotary_dim: usize },
    #[error("rotary_dim {rotary_dim} exceeds head_dim {head_dim}; set rotary_dim <= head_dim")]
    RotaryDimTooLarge { rotary_dim: usize, head_dim: usize },
    #[error("RoPE base {base} is invalid; it must be finite and greater than 0")]
    InvalidBase { base: f64 },
    #[error("RoPE scaling parameter `{name}` = {value} is invalid; expected {expected}")]
    InvalidScaling {
        name: &'static str,
        value: f64,
        expected: &'static str,
    },
    #[error("LongRoPE `{name}` has {len} entries; expected rotary_dim / 2 = {expected}")]
    FactorListLength {
        name: &'static str,
        len: usize,
        expected: usize,
    },
    #[error(
        "position {position} is out of range: the configured maximum is {max_position} (exclusive)"
    )]
    PositionOutOfRange { position: u32, max_position: u32 },
    #[error("{positions} position ids given for {tokens} tokens; give one position per token")]
    PositionCount { positions: usize, tokens: usize },
    #[error("{name} has {len} elements; expected tokens * heads * head_dim = {tokens} * {heads} * {head_dim}")]
    ShapeMismatch {
        name: &'static str,
        len: usize,
        tokens: usize,
        heads: usize,
        head_dim: usize,
    },
    #[error("cannot allocate a RoPE table for {positions} positions; set a smaller max_position")]
    TableAllocation { positions: usize },
}

/// Inverse frequencies `theta_i` (`rotary_dim / 2` of them) and the attention factor that
/// multiplies cos and sin, for a sequence of `seq_len` tokens.
///
/// `seq_len` matters only for dynamic NTK and LongRoPE, as the `seq_len` argument of the
/// Hugging Face compute functions; other variants ignore it.
///
/// # Errors
/// Any [`RopeError`] describing an invalid configuration.
pub fn inverse_frequencies(
    config: &RopeConfig,
    seq_len: usize,
) -> Result<(Vec<f64>, f64), RopeError> {
    validate_config(config)?;
    let dim = config.rotary_dim;
    let half = dim / 2;
    let base = config.base;

    // `_compute_default_rope_parameters`: inv_freq = 1 / base^(arange(0, dim, 2) / dim).
    let default_inv_freq = |base: f64| -> Vec<f64> {
        (0..half)
            .map(|i| 1.0 / base.powf((2 * i) as f64 / dim as f64))
            .collect()
    };

    match &config.scaling {
        RopeScaling::None => Ok((default_inv_freq(base), 1.0)),

        // `_compute_linear_scaling_rope_parameters`: inv_freq /= factor.
        RopeScaling::Linear { factor } => {
            let inv_freq = default_inv_freq(base)
                .into_iter()
                .map(|f| f / factor)
                .collect();
            Ok((inv_freq, 1.0))
        }

        // `_compute_dynamic_ntk_parameters`: seq_len = max(seq_len, max_position_embeddings);
        // base' = base * (factor * seq_len / max_pos - (factor - 1))^(dim / (dim - 2)).
        RopeScaling::DynamicNtk {
            factor,
            max_position_embeddings,
        } => {
            let max_pos = *max_position_embeddings as f64;
            let seq_len = (seq_len as f64).max(max_pos);
            let growth = factor * seq_len / max_pos - (factor - 1.0);
            let scaled_base = base * growth.powf(dim as f64 / (dim as f64 - 2.0));
            Ok((default_inv_freq(scaled_base), 1.0))
        }

        RopeScaling::Yarn(params) => Ok(yarn_inverse_frequencies(params, base, dim)),

        // `_compute_llama3_parameters`: wavelen = 2 pi / inv_freq; wavelengths above
        // old_context / low_freq_factor are divided by factor, those below
        // old_context / high_freq_factor kept, the band between blended with
        // smooth = (old_context / wavelen - low) / (high - low).
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old_context = *original_max_position_embeddings as f64;
            let low_freq_wavelen = old_context / low_freq_factor;
            let high_freq_wavelen = old_context / high_freq_factor;
            let inv_freq = default_inv_freq(base)
                .into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = (old_context / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect();
            Ok((inv_freq, 1.0))
        }

        // `_compute_longrope_parameters`: inv_freq = 1 / (ext_factor_i * base^(2i / dim)) with
        // the long factors when seq_len > original_max_position_embeddings, else the short
        // ones; default attention factor sqrt(1 + ln(factor) / ln(original_max)), or 1 when
        // factor <= 1.
        RopeScaling::LongRope {
            short_factor,
            long_factor,
            factor,
            original_max_position_embeddings,
            attention_factor,
        } => {
            let original = *original_max_position_embeddings;
            let ext = if seq_len > original {
                long_factor
            } else {
                short_factor
            };
            let inv_freq = (0..half)
                .map(|i| 1.0 / (ext[i] * base.powf((2 * i) as f64 / dim as f64)))
                .collect();
            let attention = attention_factor.unwrap_or_else(|| {
                if *factor <= 1.0 {
                    1.0
                } else {
                    (1.0 + factor.ln() / (original as f64).ln()).sqrt()
                }
            });
            Ok((inv_freq, attention))
        }
    }
}

/// `_compute_yarn_parameters` from Hugging Face transformers, in f64.
fn yarn_inverse_frequencies(params: &YarnParams, base: f64, dim: usize) -> (Vec<f64>, f64) {
    let factor = params.factor;
    let half = dim / 2;

    // get_mscale(scale, mscale) = 1 if scale <= 1 else 0.1 * mscale * ln(scale) + 1.
    let get_mscale = |scale: f64, mscale: f64| -> f64 {
        if scale <= 1.0 {
            1.0
        } else {
            0.1 * mscale * scale.ln() + 1.0
        }
    };
    let attention = match (
        params.attention_factor,
        params.mscale,
        params.mscale_all_dim,
    ) {
        (Some(a), _, _) => a,
        (None, Some(m), Some(m_all)) if m != 0.0 && m_all != 0.0 => {
            get_mscale(factor, m) / get_mscale(factor, m_all)
        }
        _ => get_mscale(factor, 1.0),
    };

    // find_correction_dim(rotations) = dim * ln(max_pos / (rotations * 2 pi)) / (2 ln(base)):
    // the dimension index whose wavelength fits `rotations` times in the trained context.
    let max_pos = params.original_max_position_embeddings as f64;
    let correction_dim = |rotations: f64| {
        dim as f64 * (max_pos / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
    };
    let mut low = correction_dim(params.beta_fast);
    let mut high = correction_dim(params.beta_slow);
    if params.truncate {
        low = low.floor();
        high = high.ceil();
    }
    let low = low.max(0.0);
    let high = high.min(dim as f64 - 1.0);

    // linear_ramp_factor(low, high, dim / 2), with the +0.001 guard when low == high.
    let ramp_high = if low == high { high + 0.001 } else { high };
    let inv_freq = (0..half)
        .map(|i| {
            let pos_freq = base.powf((2 * i) as f64 / dim as f64);
            let extrapolation = 1.0 / pos_freq;
            let interpolation = 1.0 / (factor * pos_freq);
            let ramp = ((i as f64 - low) / (ramp_high - low)).clamp(0.0, 1.0);
            let extrapolation_factor = 1.0 - ramp;
            interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
        })
        .collect();
    (inv_freq, attention)
}

fn validate_config(config: &RopeConfig) -> Result<(), RopeError> {
    let dim = config.rotary_dim;
    if dim < 2 || !dim.is_multiple_of(2) {
        return Err(RopeError::InvalidRotaryDim { rotary_dim: dim });
    }
    if dim > config.head_dim {
        return Err(RopeError::RotaryDimTooLarge {
            rotary_dim: dim,
            head_dim: config.head_dim,
        });
    }
    if !(config.base.is_finite() && config.base > 0.0) {
        return Err(RopeError::InvalidBase { base: config.base });
    }

    let positive = |name: &'static str, value: f64| {
        if value.is_finite() && value > 0.0 {
            Ok(())
        } else {
            Err(RopeError::InvalidScaling {
                name,
                value,
                expected: "a finite number greater than 0",
            })
        }
    };
    let nonzero_len = |name: &'static str, value: usize| {
        if value > 0 {
            Ok(())
        } else {
            Err(RopeError::InvalidScaling {
                name,
                value: 0.0,
                expected: "a context length of at least 1",
            })
        }
    };

    match &config.scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => positive("factor", *factor)?,
        RopeScaling::DynamicNtk {
            factor,
            max_position_embeddings,
        } => {
            positive("factor", *factor)?;
            nonzero_len("max_position_embeddings", *max_position_embeddings)?;
            // The exponent dim / (dim - 2) is infinite for a single rotated pair.
            if dim == 2 {
                return Err(RopeError::InvalidRotaryDim { rotary_dim: dim });
            }
        }
        RopeScaling::Yarn(params) => {
            positive("factor", params.factor)?;
            positive("beta_fast", params.beta_fast)?;
            positive("beta_slow", params.beta_slow)?;
            nonzero_len(
                "original_max_position_embeddings",
                params.original_max_position_embeddings,
            )?;
            if let Some(a) = params.attention_factor {
                positive("attention_factor", a)?;
            }
            // The correction range divides by ln(base).
            if config.base == 1.0 {
                return Err(RopeError::InvalidBase { base: config.base });
            }
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            positive("factor", *factor)?;
            positive("low_freq_factor", *low_freq_factor)?;
            positive("high_freq_factor", *high_freq_factor)?;
            nonzero_len(
                "original_max_position_embeddings",
                *original_max_position_embeddings,
            )?;
            if high_freq_factor <= low_freq_factor {
                return Err(RopeError::InvalidScaling {
                    name: "high_freq_factor",
                    value: *high_freq_factor,
                    expected: "a value greater than low_freq_factor",
                });
            }
        }
        RopeScaling::LongRope {
            short_factor,
            long_factor,
            factor,
            original_max_position_embeddings,
            attention_factor,
        } => {
            for (name, list) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                if list.len() != dim / 2 {
                    return Err(RopeError::FactorListLength {
                        name,
                        len: list.len(),
                        expected: dim / 2,
                    });
                }
                for &value in list {
                    positive(name, value)?;
                }
            }
            positive("factor", *factor)?;
            nonzero_len(
                "original_max_position_embeddings",
                *original_max_position_embeddings,
            )?;
            if let Some(a) = attention_factor {
                positive("attention_factor", *a)?;
            }
        }
    }
    Ok(())
}

/// Rotary embedding of one layer: its configuration and a cos/sin table grown on demand.
///
/// Invariant: `cos` and `sin` are `[table_len, rotary_dim / 2]` and were computed from
/// `inv_freq` and `attention_factor`, which are the frequency set for `freq_seq_len`.
#[derive(Debug, Clone)]
pub struct Rope {
    config: RopeConfig,
    inv_freq: Vec<f64>,
    attention_factor: f64,
    /// Sequence length the current frequency set was computed for (dynamic NTK:
    /// Hugging Face's `max_seq_len_cached`; LongRoPE: selects short or long factors).
    freq_seq_len: usize,
    table_len: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    /// Validates `config` and computes the frequencies for its trained context length.
    ///
    /// # Errors
    /// Any [`RopeError`] describing an invalid configuration.
    pub fn new(config: RopeConfig) -> Result<Self, RopeError> {
        let initial_seq_len = match &config.scaling {
            RopeScaling::DynamicNtk {
                max_position_embeddings,
                ..
            } => *max_position_embeddings,
            RopeScaling::LongRope {
                original_max_position_embeddings,
                ..
            } => *original_max_position_embeddings,
            _ => 0,
        };
        let (inv_freq, attention_factor) = inverse_frequencies(&config, initial_seq_len)?;
        Ok(Self {
            config,
            inv_freq,
            attention_factor,
            freq_seq_len: initial_seq_len,
            table_len: 0,
            cos: Vec::new(),
            sin: Vec::new(),
        })
    }

    pub fn config(&self) -> &RopeConfig {
        &self.config
    }

    /// Returns the current inverse frequencies, `[rotary_dim / 2]`.
    pub fn inv_freq(&self) -> &[f64] {
        &self.inv_freq
    }

    /// Returns the factor that multiplies the current cos and sin (1 unless YaRN or LongRoPE).
    pub fn attention_factor(&self) -> f64 {
        self.attention_factor
    }

    /// Returns the number of positions the table covers now.
    pub fn table_len(&self) -> usize {
        self.table_len
    }

    /// Selects the frequency set for a call whose largest position is `max(positions)` and
    /// grows the table to cover it. [`Rope::apply`] and [`Rope::apply_qk`] call this.
    ///
    /// This follows Hugging Face's `dynamic_rope_update` with `seq_len = max(position_ids) + 1`.
    /// Dynamic NTK recomputes the base when `seq_len` exceeds the length it was last
    /// computed for. It returns to the trained frequencies when `seq_len` falls back
    /// below `max_position_embeddings`. LongRoPE uses its long factors exactly when
    /// `seq_len > original_max_position_embeddings`.
    ///
    /// # Errors
    /// [`RopeError::PositionOutOfRange`] when a position reaches `max_position`;
    /// [`RopeError::TableAllocation`] when the table cannot be allocated.
    pub fn prepare(&mut self, positions: &[u32]) -> Result<(), RopeError> {
        let Some(&max_seen) = positions.iter().max() else {
            return Ok(());
        };
        if let Some(limit) = self.config.max_position {
            if max_seen >= limit {
                return Err(RopeError::PositionOutOfRange {
                    position: max_seen,
                    max_position: limit,
                });
            }
        }
        let seq_len = max_seen as usize + 1;

        // Pick the frequency set.
        let new_freq_seq_len = match &self.config.scaling {
            RopeScaling::DynamicNtk {
                max_position_embeddings,
                ..
            } => {
                if seq_len > self.freq_seq_len {
                    Some(seq_len)
                } else if seq_len < *max_position_embeddings
                    && self.freq_seq_len > *max_position_embeddings
                {
                    Some(*max_position_embeddings)
                } else {
                    None
                }
            }
            RopeScaling::LongRope {
                original_max_position_embeddings,
                ..
            } => {
                let original = *original_max_position_embeddings;
                let want_long = seq_len > original;
                let have_long = self.freq_seq_len > original;
                (want_long != have_long).then_some(if want_long { seq_len } else { original })
            }
            _ => None,
        };
        if let Some(len) = new_freq_seq_len {
            let (inv_freq, attention_factor) = inverse_frequencies(&self.config, len)?;
            self.inv_freq = inv_freq;
            self.attention_factor = attention_factor;
            self.freq_seq_len = len;
            self.table_len = 0;
            self.cos.clear();
            self.sin.clear();
        }

        // Grow the table geometrically, so that decoding one token at a time is amortised O(1).
        if seq_len > self.table_len {
            let mut target = seq_len.max(self.table_len.saturating_mul(2)).max(64);
            if let Some(limit) = self.config.max_position {
                target = target.min(limit as usize);
            }
            self.extend_table(target)?;
        }
        Ok(())
    }

    fn extend_table(&mut self, new_len: usize) -> Result<(), RopeError> {
        let half = self.inv_freq.len();
        let additional = (new_len - self.table_len)
            .checked_mul(half)
            .ok_or(RopeError::TableAllocation { positions: new_len })?;
        self.cos
            .try_reserve_exact(additional)
            .and_then(|()| self.sin.try_reserve_exact(additional))
            .map_err(|_| RopeError::TableAllocation { positions: new_len })?;
        for position in self.table_len..new_len {
            for &freq in &self.inv_freq {
                let angle = position as f64 * freq;
                self.cos.push((angle.cos() * self.attention_factor) as f32);
                self.sin.push((angle.sin() * self.attention_factor) as f32);
            }
        }
        self.table_len = new_len;
        Ok(())
    }

    /// Returns the cos and sin rows, `[rotary_dim / 2]` each, for `position`, if the table covers it.
    pub fn cos_sin(&self, position: u32) -> Option<(&[f32], &[f32])> {
        let position = position as usize;
        if position >= self.table_len {
            return None;
        }
        let half = self.inv_freq.len();
        let range = position * half..(position + 1) * half;
        Some((&self.cos[range.clone()], &self.sin[range]))
    }

    /// Rotates `x` in place, token `t` at position `positions[t]`.
    ///
    /// # Shapes
    /// `x: [tokens, n_heads, head_dim]` with `tokens = positions.len()`.
    ///
    /// # Errors
    /// [`RopeError::ShapeMismatch`] when `x` has another length; the errors of [`Rope::prepare`].
    pub fn apply(
        &mut self,
        x: &mut [f32],
        n_heads: usize,
        positions: &[u32],
    ) -> Result<(), RopeError> {
        self.check_shape("x", x.len(), positions.len(), n_heads)?;
        self.prepare(positions)?;
        self.rotate(x, n_heads, positions);
        Ok(())
    }

    /// Rotates queries and keys of the same tokens in place with one frequency set.
    ///
    /// # Shapes
    /// `q: [tokens, n_heads, head_dim]`, `k: [tokens, n_kv_heads, head_dim]`,
    /// `tokens = positions.len()`.
    ///
    /// # Errors
    /// [`RopeError::ShapeMismatch`] when `q` or `k` has another length; the errors of
    /// [`Rope::prepare`].
    pub fn apply_qk(
        &mut self,
        q: &mut [f32],
        n_heads: usize,
        k: &mut [f32],
        n_kv_heads: usize,
        positions: &[u32],
    ) -> Result<(), RopeError> {
        self.check_shape("q", q.len(), positions.len(), n_heads)?;
        self.check_shape("k", k.len(), positions.len(), n_kv_heads)?;
        self.prepare(positions)?;
        self.rotate(q, n_heads, positions);
        self.rotate(k, n_kv_heads, positions);
        Ok(())
    }

    fn check_shape(
        &self,
        name: &'static str,
        len: usize,
        tokens: usize,
        heads: usize,
    ) -> Result<(), RopeError> {
        let head_dim = self.config.head_dim;
        let expected = tokens
            .checked_mul(heads)
            .and_then(|n| n.checked_mul(head_dim));
        if expected != Some(len) {
            return Err(RopeError::ShapeMismatch {
                name,
                len,
                tokens,
                heads,
                head_dim,
            });
        }
        Ok(())
    }

    /// Rotates after `prepare` covered every position and the shape was checked.
    fn rotate(&self, x: &mut [f32], n_heads: usize, positions: &[u32]) {
        let head_dim = self.config.head_dim;
        let rotary_dim = self.config.rotary_dim;
        let half = rotary_dim / 2;
        if head_dim == 0 || n_heads == 0 {
            return;
        }
        for (token, &position) in x.chunks_exact_mut(n_heads * head_dim).zip(positions) {
            let row = position as usize * half;
            let cos = &self.cos[row..row + half];
            let sin = &self.sin[row..row + half];
            for head in token.chunks_exact_mut(head_dim) {
                let rotated = &mut head[..rotary_dim];
                match self.config.layout {
                    RopeLayout::HalfSplit => rotate_half_split(rotated, cos, sin),
                    RopeLayout::Interleaved => rotate_interleaved(rotated, cos, sin),
                }
            }
        }
    }
}

/// Rotates pairs `(x[i], x[i + half])`; the zipped slices let the compiler vectorise.
#[inline]
fn rotate_half_split(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let (first, second) = x.split_at_mut(cos.len());
    for (((a, b), &c), &s) in first.iter_mut().zip(second.iter_mut()).zip(cos).zip(sin) {
        let (x0, x1) = (*a, *b);
        *a = x0 * c - x1 * s;
        *b = x1 * c + x0 * s;
    }
}

/// Rotates pairs `(x[2i], x[2i + 1])`.
#[inline]
fn rotate_interleaved(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    for ((pair, &c), &s) in x.chunks_exact_mut(2).zip(cos).zip(sin) {
        let (x0, x1) = (pair[0], pair[1]);
        pair[0] = x0 * c - x1 * s;
        pair[1] = x1 * c + x0 * s;
    }
}
