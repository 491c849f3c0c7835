//! Key/value caches for one attention layer: contiguous, rolling (sliding window) and paged.
//!
//! Every cache stores, per sequence, K and V rows of `[n_kv_heads, head_dim]` per token
//! together with each token's absolute position, and implements [`KvCache`], so a model
//! layer does not care which kind it has. A model keeps one cache per layer and uses the
//! same [`SeqId`]s in each.
//!
//! Readers get a [`KvSeqView`]: the sequence's tokens in position order as a few
//! [`KvChunk`]s, each a borrowed, contiguous `[chunk_len, n_kv_heads, head_dim]` run of K
//! and V in the stored dtype (int8 with its scales), plus the positions. Nothing is copied.
//!
//! Positions appended to one sequence must be strictly increasing; restarting positions
//! (packed batches) belong to different sequences.

mod contiguous;
mod paged;
pub mod plan;
mod rolling;
mod storage;
mod view;

pub use contiguous::ContiguousCache;
pub use paged::{BlockTableCsr, PagedCache, DEFAULT_BLOCK_SIZE};
pub use plan::{plan_kv_memory, KvPlan, KvPlanRequest};
pub use rolling::RollingCache;
pub use storage::{KvDtype, KvRows};
pub use view::{KvChunk, KvDense, KvDenseBf16, KvSeqView};

use thiserror::Error;

/// Caller-chosen identifier of a sequence in a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeqId(pub u64);

impl std::fmt::Display for SeqId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Row format shared by every sequence of a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvConfig {
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub dtype: KvDtype,
}

impl KvConfig {
    pub fn new(n_kv_heads: usize, head_dim: usize, dtype: KvDtype) -> Self {
        Self {
            n_kv_heads,
            head_dim,
            dtype,
        }
    }

    /// Returns the elements of one token's K (or V) row, `n_kv_heads * head_dim`.
    pub fn row_len(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Returns the bytes one cached token takes: its K and V rows, int8 scales included.
    pub fn bytes_per_token(&self) -> usize {
        2 * self.dtype.row_bytes(self.n_kv_heads, self.head_dim)
    }

    pub(crate) fn validate(&self) -> Result<(), KvError> {
        for (name, value) in [("n_kv_heads", self.n_kv_heads), ("head_dim", self.head_dim)] {
            if value == 0 {
                return Err(KvError::InvalidConfig {
                    name,
                    value,
                    expected: "at least 1",
                });
            }
        }
        Ok(())
    }
}

/// Invalid cache configuration, input or request.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KvError {
    #[error("cache parameter `{name}` = {value} is invalid; expected {expected}")]
    InvalidConfig {
        name: &'static str,
        value: usize,
        expected: &'static str,
    },
    #[error("sequence {seq} not found in the cache; add it with add_sequence first")]
    SequenceNotFound { seq: SeqId },
    #[error("sequence {seq} already exists in the cache; free it first or use another id")]
    SequenceExists { seq: SeqId },
    #[error(
        "{name} has {len} elements; expected tokens * n_kv_heads * head_dim = {tokens} * {n_kv_heads} * {head_dim}"
    )]
    ShapeMismatch {
        name: &'static str,
        len: usize,
        tokens: usize,
        n_kv_heads: usize,
        head_dim: usize,
    },
    #[error("{given} {name} given for {tokens} tokens; give one per token")]
    CountMismatch {
        name: &'static str,
        given: usize,
        tokens: usize,
    },
    #[error("position {position} after {previous} in sequence {seq}; positions of a sequence must be strictly increasing")]
    PositionNotIncreasing {
        seq: SeqId,
        previous: u32,
        position: u32,
    },
    #[error("sequence {seq} holds {len} of {capacity} tokens and cannot take {tokens} more; create the cache with a larger capacity")]
    CapacityExceeded {
        seq: SeqId,
        capacity: usize,
        len: usize,
        tokens: usize,
    },
    #[error("out of blocks: sequence {seq} needs {needed} more blocks but {free} are free; free a sequence or create a larger pool")]
    OutOfBlocks {
        seq: SeqId,
        needed: usize,
        free: usize,
    },
    #[error("{name} value at index {index} is {value}, which int8 storage cannot quantise; only finite values can be cached as int8")]
    NonFinite {
        name: &'static str,
        index: usize,
        value: String,
    },
    #[error("row {row_idx} is out of range: the chunk has {rows} rows of that length")]
    RowOutOfRange { row_idx: usize, rows: usize },
    #[error("block {block} is out of range: the pool has {num_blocks} blocks")]
    BlockOutOfRange { block: u32, num_blocks: usize },
    #[error("block table names block {block}, which is free (reference count 0)")]
    FreedBlock { block: u32 },
    #[error("invalid block table: {reason}")]
    InvalidBlockTable { reason: String },
    #[error("cannot allocate {bytes} bytes of cache storage; use fewer tokens or blocks")]
    Allocation { bytes: usize },
    /// The storage size of `slots` token slots does not fit in a `usize`.
    #[error("a cache of {slots} token slots is larger than this machine can address; use fewer tokens or blocks")]
    SizeOverflow { slots: String },
}

/// One attention layer's KV storage for any number of sequences.
///
/// Appends take f32 rows and store them in the cache's dtype. Each append either fully
/// succeeds or returns an error and leaves the cache unchanged.
pub trait KvCache {
    /// Returns the row format of this cache.
    fn config(&self) -> KvConfig;

    /// Creates an empty sequence.
    ///
    /// # Errors
    /// [`KvError::SequenceExists`]; [`KvError::Allocation`] for caches that allocate per sequence.
    fn add_sequence(&mut self, seq: SeqId) -> Result<(), KvError>;

    /// Appends the K and V rows of `positions.len()` tokens to `seq`.
    ///
    /// # Shapes
    /// `k, v: [tokens, n_kv_heads, head_dim]`, `positions: [tokens]`.
    ///
    /// # Errors
    /// [`KvError::SequenceNotFound`], [`KvError::ShapeMismatch`],
    /// [`KvError::PositionNotIncreasing`], [`KvError::NonFinite`] (int8 only), and
    /// [`KvError::CapacityExceeded`] or [`KvError::OutOfBlocks`] when the cache is full.
    fn append(
        &mut self,
        seq: SeqId,
        k: &[f32],
        v: &[f32],
        positions: &[u32],
    ) -> Result<(), KvError>;

    /// Borrows the cached tokens of `seq` in position order.
    ///
    /// # Errors
    /// [`KvError::SequenceNotFound`].
    fn view(&self, seq: SeqId) -> Result<KvSeqView<'_>, KvError>;

    /// Returns the number of tokens cached for `seq` now (at most `sinks + window` for a
    /// rolling cache).
    ///
    /// # Errors
    /// [`KvError::SequenceNotFound`].
    fn seq_len(&self, seq: SeqId) -> Result<usize, KvError>;

    /// Returns the number of tokens appended to `seq` since it was added or reset.
    ///
    /// # Errors
    /// [`KvError::SequenceNotFound`].
    fn tokens_seen(&self, seq: SeqId) -> Result<u64, KvError>;

    /// Empties `seq` and keeps its id.
    ///
    /// # Errors
    /// [`KvError::SequenceNotFound`].
    fn reset(&mut self, seq: SeqId) -> Result<(), KvError>;

    /// Creates `child` with the same contents as `parent`. The paged cache shares the
    /// blocks (copy on write); the others copy the rows.
    ///
    /// # Errors
    /// [`KvError::SequenceNotFound`] for `parent`, [`KvError::SequenceExists`] for `child`,
    /// [`KvError::Allocation`] or [`KvError::OutOfBlocks`].
    fn fork(&mut self, parent: SeqId, child: SeqId) -> Result<(), KvError>;

    /// Removes `seq` and releases its storage.
    ///
    /// # Errors
    /// [`KvError::SequenceNotFound`].
    fn free(&mut self, seq: SeqId) -> Result<(), KvError>;

    /// Returns the bytes of K/V storage allocated now, int8 scales included (the position
    /// ids and block tables are not counted).
    fn kv_bytes(&self) -> usize;
}

/// Checks an append's shapes, positions and (for int8) values, and returns the token count.
pub(crate) fn check_append(
    config: &KvConfig,
    seq: SeqId,
    last_position: Option<u32>,
    k: &[f32],
    v: &[f32],
    positions: &[u32],
) -> Result<usize, KvError> {
    let tokens = positions.len();
    for (name, rows) in [("k", k), ("v", v)] {
        if tokens.checked_mul(config.row_len()) != Some(rows.len()) {
            return Err(KvError::ShapeMismatch {
                name,
                len: rows.len(),
                tokens,
                n_kv_heads: config.n_kv_heads,
                head_dim: config.head_dim,
            });
        }
    }

    let mut previous = last_position;
    for &position in positions {
        if let Some(previous) = previous {
            if position <= previous {
                return Err(KvError::PositionNotIncreasing {
                    seq,
                    previous,
                    position,
                });
            }
        }
        previous = Some(position);
    }

    if config.dtype == KvDtype::Int8 {
        for (name, rows) in [("k", k), ("v", v)] {
            if let Some(index) = rows.iter().position(|x| !x.is_finite()) {
                return Err(KvError::NonFinite {
                    name,
                    index,
                    value: rows[index].to_string(),
                });
            }
        }
    }
    Ok(tokens)
}
