//! Borrowed, copy-free views of one sequence's cached tokens.

use half::bf16;

use super::storage::{KvRows, RowStore};
use super::KvConfig;

/// A run of consecutive cached tokens stored contiguously, in position order.
///
/// # Shapes
/// `k`, `v`: `[len, n_kv_heads, head_dim]` (int8 scales `[len, n_kv_heads]`);
/// `positions: [len]`, strictly increasing.
#[derive(Debug, Clone, Copy)]
pub struct KvChunk<'a> {
    pub k: KvRows<'a>,
    pub v: KvRows<'a>,
    pub positions: &'a [u32],
}

impl KvChunk<'_> {
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
}

/// Mapping from a view's tokens to storage slots.
#[derive(Debug, Clone, Copy)]
enum Runs<'a> {
    /// Up to three `(first_slot, count)` runs, in position order (rolling caches need
    /// three: sinks, then the ring from its oldest slot, then the ring's start).
    Slots {
        runs: [(usize, usize); 3],
        n_runs: usize,
    },
    /// Blocks of `block_size` slots; block `b` is slots `b * block_size..`. All blocks are
    /// full except the last, which holds `last_block_len` tokens.
    Blocks {
        indices: &'a [u32],
        block_size: usize,
        last_block_len: usize,
    },
}

/// The cached tokens of one sequence, in position order, as a few contiguous chunks.
///
/// A view borrows the cache, so the cache cannot change while a view exists. Views of
/// several sequences can be held at once and shared across threads.
#[derive(Debug, Clone, Copy)]
pub struct KvSeqView<'a> {
    config: KvConfig,
    k: &'a RowStore,
    v: &'a RowStore,
    /// Position of the token in each storage slot, `[slots]`.
    slot_positions: &'a [u32],
    runs: Runs<'a>,
    len: usize,
}

impl<'a> KvSeqView<'a> {
    pub(crate) fn from_slots(
        config: KvConfig,
        k: &'a RowStore,
        v: &'a RowStore,
        slot_positions: &'a [u32],
        slot_runs: &[(usize, usize)],
    ) -> Self {
        debug_assert!(slot_runs.len() <= 3);
        let mut runs = [(0, 0); 3];
        let mut n_runs = 0;
        for &(start, count) in slot_runs.iter().filter(|run| run.1 > 0) {
            runs[n_runs] = (start, count);
            n_runs += 1;
        }
        Self {
            config,
            k,
            v,
            slot_positions,
            runs: Runs::Slots { runs, n_runs },
            len: runs.iter().map(|run| run.1).sum(),
        }
    }

    /// Creates a view over pool blocks. The caller checked every block index against the
    /// pool and `last_block_len <= block_size` (0 only with no blocks).
    pub(crate) fn from_blocks(
        config: KvConfig,
        k: &'a RowStore,
        v: &'a RowStore,
        slot_positions: &'a [u32],
        indices: &'a [u32],
        block_size: usize,
        last_block_len: usize,
    ) -> Self {
        let len = match indices.len() {
            0 => 0,
            n => (n - 1) * block_size + last_block_len,
        };
        Self {
            config,
            k,
            v,
            slot_positions,
            runs: Runs::Blocks {
                indices,
                block_size,
                last_block_len,
            },
            len,
        }
    }

    pub fn config(&self) -> KvConfig {
        self.config
    }

    /// Returns the number of tokens in the view.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Returns the number of chunks (for a paged cache, the number of blocks).
    pub fn chunk_count(&self) -> usize {
        match self.runs {
            Runs::Slots { n_runs, .. } => n_runs,
            Runs::Blocks { indices, .. } => indices.len(),
        }
    }

    /// Returns the first storage slot and token count of chunk `chunk_idx`.
    fn chunk_slots(&self, chunk_idx: usize) -> Option<(usize, usize)> {
        match self.runs {
            Runs::Slots { runs, n_runs } => (chunk_idx < n_runs).then(|| runs[chunk_idx]),
            Runs::Blocks {
                indices,
                block_size,
                last_block_len,
            } => {
                let block = *indices.get(chunk_idx)? as usize;
                let count = if chunk_idx + 1 == indices.len() {
                    last_block_len
                } else {
                    block_size
                };
                Some((block * block_size, count))
            }
        }
    }

    /// Borrows chunk `chunk_idx`, or `None` past the last chunk.
    pub fn chunk(&self, chunk_idx: usize) -> Option<KvChunk<'a>> {
        let (start, count) = self.chunk_slots(chunk_idx)?;
        Some(KvChunk {
            k: self.k.rows(start, count),
            v: self.v.rows(start, count),
            positions: &self.slot_positions[start..start + count],
        })
    }

    /// Iterates over the chunks in position order.
    pub fn chunks(&self) -> impl Iterator<Item = KvChunk<'a>> + 'a {
        let view = *self;
        (0..view.chunk_count()).filter_map(move |chunk_idx| view.chunk(chunk_idx))
    }

    /// Iterates over the chunks clipped to tokens `start..end` of the view (token 0 is
    /// the oldest held), as split-KV decoding needs.
    pub fn chunks_in(&self, start: usize, end: usize) -> impl Iterator<Item = KvChunk<'a>> + 'a {
        let view = *self;
        let end = end.min(view.len);
        let mut offset = 0;
        (0..view.chunk_count()).filter_map(move |chunk_idx| {
            let (slot, count) = view.chunk_slots(chunk_idx)?;
            let (chunk_start, chunk_end) = (offset, offset + count);
            offset = chunk_end;
            let from = start.max(chunk_start);
            let to = end.min(chunk_end);
            if from >= to {
                return None;
            }
            let first = slot + (from - chunk_start);
            Some(KvChunk {
                k: view.k.rows(first, to - from),
                v: view.v.rows(first, to - from),
                positions: &view.slot_positions[first..first + (to - from)],
            })
        })
    }

    /// Copies the whole view to f32 (dequantising int8), for reference checks and for
    /// kernels that need one dense K/V buffer.
    pub fn to_dense(&self) -> KvDense {
        let row_len = self.config.row_len();
        let mut dense = KvDense {
            k: vec![0.0; self.len * row_len],
            v: vec![0.0; self.len * row_len],
            positions: Vec::with_capacity(self.len),
        };
        let mut token = 0;
        for chunk in self.chunks() {
            for row_idx in 0..chunk.len() {
                let range = (token + row_idx) * row_len..(token + row_idx + 1) * row_len;
                chunk
                    .k
                    .row_to_f32(row_idx, self.config.head_dim, &mut dense.k[range.clone()])
                    .expect("a view's chunks have the view's row shape");
                chunk
                    .v
                    .row_to_f32(row_idx, self.config.head_dim, &mut dense.v[range])
                    .expect("a view's chunks have the view's row shape");
            }
            dense.positions.extend_from_slice(chunk.positions);
            token += chunk.len();
        }
        dense
    }

    /// Copies the whole view without conversion when the cache stores bf16, or
    /// returns `None` for any other storage type. Prefill over a bf16 cache on a CPU
    /// with bf16 dot products runs the attention kernel on these rows directly.
    pub fn to_dense_bf16(&self) -> Option<KvDenseBf16> {
        let row_len = self.config.row_len();
        let mut dense = KvDenseBf16 {
            k: Vec::with_capacity(self.len * row_len),
            v: Vec::with_capacity(self.len * row_len),
            positions: Vec::with_capacity(self.len),
        };
        for chunk in self.chunks() {
            let (KvRows::Bf16(k), KvRows::Bf16(v)) = (chunk.k, chunk.v) else {
                return None;
            };
            dense.k.extend_from_slice(k);
            dense.v.extend_from_slice(v);
            dense.positions.extend_from_slice(chunk.positions);
        }
        // A view with no chunks has no rows to match, so check the store's type.
        (self.k.dtype() == super::KvDtype::Bf16).then_some(dense)
    }
}

/// A dense copy of a bf16 cache, rows unchanged.
///
/// # Shapes
/// `k`, `v`: `[len, n_kv_heads, head_dim]`; `positions: [len]`.
#[derive(Debug, Clone, PartialEq)]
pub struct KvDenseBf16 {
    pub k: Vec<bf16>,
    pub v: Vec<bf16>,
    pub positions: Vec<u32>,
}

/// A dense f32 copy of a sequence's cache.
///
/// # Shapes
/// `k`, `v`: `[len, n_kv_heads, head_dim]`; `positions: [len]`.
#[derive(Debug, Clone, PartialEq)]
pub struct KvDense {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub positions: Vec<u32>,
}
