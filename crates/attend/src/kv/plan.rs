//! KV cache memory planning: bytes per token, per layer and for a batch.

use super::{KvDtype, KvError};

/// Model and run shape to plan the KV cache for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPlanRequest {
    pub layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Tokens each sequence holds (prompt plus generated).
    pub context: usize,
    /// Number of sequences.
    pub batch: usize,
    pub dtype: KvDtype,
    /// Sliding window of the sliding layers, in tokens; `None` when every layer is global.
    pub window: Option<usize>,
    /// Number of layers that use the window (each keeps at most `window` tokens).
    pub sliding_layers: usize,
    /// Paged block size; token counts round up to whole blocks per sequence and layer.
    pub block_size: Option<usize>,
}

/// Planned KV cache bytes. Every count is exact for the request, in bytes unless named
/// otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPlan {
    /// K and V of one token in one layer, int8 scales included.
    pub bytes_per_token_per_layer: u64,
    /// K and V of one token across all layers, as if every layer were global.
    pub bytes_per_token: u64,
    pub full_layers: u64,
    pub sliding_layers: u64,
    /// Token slots one sequence takes in a global layer (rounded up to whole blocks).
    pub tokens_per_full_layer: u64,
    /// Token slots one sequence takes in a sliding layer (rounded up to whole blocks).
    pub tokens_per_sliding_layer: u64,
    /// One global layer for the whole batch.
    pub full_layer_bytes: u64,
    /// One sliding layer for the whole batch.
    pub sliding_layer_bytes: u64,
    /// Paged blocks for the whole batch and all layers, when a block size was given.
    pub blocks: Option<u64>,
    /// All layers for the whole batch.
    pub total_bytes: u64,
    /// Bytes of all layers if no layer had a window.
    pub total_bytes_without_window: u64,
    /// `total_bytes_without_window - total_bytes`.
    pub window_saving_bytes: u64,
}

/// Computes the KV cache memory of a request.
///
/// A global layer holds `context` tokens per sequence; a sliding layer holds
/// `min(context, window)`. With a block size, each of these counts rounds up to a whole
/// number of blocks. A token in a layer costs its K and V rows in `dtype`, and int8 adds
/// one f32 scale per kv head for each of K and V.
///
/// # Errors
/// [`KvError::InvalidConfig`] for a zero layer count, kv head count, head dim, batch or
/// block size, a window of 0, more sliding layers than layers, sliding layers without a
/// window, or a total that does not fit in 64 bits.
pub fn plan_kv_memory(request: &KvPlanRequest) -> Result<KvPlan, KvError> {
    let invalid =
        |name: &'static str, value: usize, expected: &'static str| KvError::InvalidConfig {
            name,
            value,
            expected,
        };
    for (name, value) in [
        ("layers", request.layers),
        ("n_kv_heads", request.n_kv_heads),
        ("head_dim", request.head_dim),
        ("batch", request.batch),
    ] {
        if value == 0 {
            return Err(invalid(name, value, "at least 1"));
        }
    }
    if request.block_size == Some(0) {
        return Err(invalid("block_size", 0, "at least 1 token"));
    }
    if request.window == Some(0) {
        return Err(invalid("window", 0, "at least 1 token"));
    }
    if request.sliding_layers > request.layers {
        return Err(invalid(
            "sliding_layers",
            request.sliding_layers,
            "at most the number of layers",
        ));
    }
    if request.sliding_layers > 0 && request.window.is_none() {
        return Err(invalid(
            "sliding_layers",
            request.sliding_layers,
            "0 when no window is given; give a window for sliding layers",
        ));
    }

    let overflow = || {
        invalid(
            "context",
            request.context,
            "a plan whose byte count fits in 64 bits",
        )
    };
    let mul = |a: u64, b: u64| a.checked_mul(b).ok_or_else(overflow);

    let bytes_per_token_per_layer = 2 * request
        .dtype
        .row_bytes(request.n_kv_heads, request.head_dim)
        as u64;
    let layers = request.layers as u64;
    let sliding_layers = request.sliding_layers as u64;
    let full_layers = layers - sliding_layers;
    let batch = request.batch as u64;

    let round = |tokens: u64| match request.block_size {
        Some(bs) => mul(tokens.div_ceil(bs as u64), bs as u64),
        None => Ok(tokens),
    };
    let context = request.context as u64;
    let sliding_tokens = request.window.map_or(context, |w| context.min(w as u64));
    let tokens_per_full_layer = round(context)?;
    let tokens_per_sliding_layer = round(sliding_tokens)?;

    let full_layer_bytes = mul(
        mul(tokens_per_full_layer, bytes_per_token_per_layer)?,
        batch,
    )?;
    let sliding_layer_bytes = mul(
        mul(tokens_per_sliding_layer, bytes_per_token_per_layer)?,
        batch,
    )?;
    let total_bytes = mul(full_layer_bytes, full_layers)?
        .checked_add(mul(sliding_layer_bytes, sliding_layers)?)
        .ok_or_else(overflow)?;
    let total_bytes_without_window = mul(full_layer_bytes, layers)?;
    let blocks = match request.block_size {
        Some(bs) => {
            let full_blocks = mul(tokens_per_full_layer / bs as u64, full_layers)?;
            let sliding_blocks = mul(tokens_per_sliding_layer / bs as u64, sliding_layers)?;
            let per_sequence = full_blocks
                .checked_add(sliding_blocks)
                .ok_or_else(overflow)?;
            Some(mul(per_sequence, batch)?)
        }
        None => None,
    };

    Ok(KvPlan {
        bytes_per_token_per_layer,
        bytes_per_token: mul(bytes_per_token_per_layer, layers)?,
        full_layers,
        sliding_layers,
        tokens_per_full_layer,
        tokens_per_sliding_layer,
        full_layer_bytes,
        sliding_layer_bytes,
        blocks,
        total_bytes,
        total_bytes_without_window,
        window_saving_bytes: total_bytes_without_window - total_bytes,
    })
}
