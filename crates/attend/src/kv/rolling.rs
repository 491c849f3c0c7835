//! A ring-buffer cache that keeps the last `window` tokens, plus optional sink tokens.

use std::collections::BTreeMap;

use super::storage::RowStore;
use super::{check_append, KvCache, KvConfig, KvError, KvSeqView, SeqId};

/// One sequence's ring.
///
/// Slot layout: slots `0..sinks` hold the first `sinks` tokens ever appended (attention
/// sinks, kept for good); slots `sinks..sinks + window` are the ring. Token number `t`
/// (counted from 0 since the sequence was added or reset) goes to slot `t` when
/// `t < sinks`, else to slot `sinks + (t - sinks) % window`. So the ring's write offset
/// is `(seen - sinks) % window` once `seen > sinks`, and the oldest ring token sits at the
/// write offset once the ring has wrapped.
#[derive(Debug, Clone)]
struct RollingSeq {
    k: RowStore,
    v: RowStore,
    /// Absolute position of the token in each slot, `[sinks + window]`.
    positions: Vec<u32>,
    /// Tokens appended since the sequence was added or reset.
    seen: u64,
    last_position: Option<u32>,
}

/// Sliding-window cache: memory bounded by `sinks + window` tokens per sequence.
///
/// A model layer with `sliding_window = W` (the query sees itself and the `W - 1` keys
/// before it) needs `window = W` when it appends each token before attending. A prefill
/// chunk longer than the window must attend over its own keys before they are appended,
/// because the cache keeps only the last `window` of them.
#[derive(Debug, Clone)]
pub struct RollingCache {
    config: KvConfig,
    window: usize,
    sinks: usize,
    seqs: BTreeMap<SeqId, RollingSeq>,
}

impl RollingCache {
    /// Creates an empty cache keeping the last `window` tokens and the first `sinks` tokens
    /// of each sequence.
    ///
    /// # Errors
    /// [`KvError::InvalidConfig`] for a zero `window`, `n_kv_heads` or `head_dim`.
    pub fn new(config: KvConfig, window: usize, sinks: usize) -> Result<Self, KvError> {
        config.validate()?;
        if window == 0 {
            return Err(KvError::InvalidConfig {
                name: "window",
                value: 0,
                expected: "at least 1 token",
            });
        }
        Ok(Self {
            config,
            window,
            sinks,
            seqs: BTreeMap::new(),
        })
    }

    pub fn window(&self) -> usize {
        self.window
    }

    pub fn sinks(&self) -> usize {
        self.sinks
    }

    fn seq(&self, seq: SeqId) -> Result<&RollingSeq, KvError> {
        self.seqs.get(&seq).ok_or(KvError::SequenceNotFound { seq })
    }

    /// Returns the `(first_slot, count)` runs of a sequence that has seen `seen` tokens, in
    /// position order: sinks, then the ring from its oldest token.
    fn runs(&self, seen: u64) -> [(usize, usize); 3] {
        let sink_count = seen.min(self.sinks as u64) as usize;
        let ring_seen = seen.saturating_sub(self.sinks as u64);
        if ring_seen <= self.window as u64 {
            return [(0, sink_count), (self.sinks, ring_seen as usize), (0, 0)];
        }
        let write_offset = (ring_seen % self.window as u64) as usize;
        [
            (0, sink_count),
            (self.sinks + write_offset, self.window - write_offset),
            (self.sinks, write_offset),
        ]
    }
}

/// Returns the storage slot of token number `token` (counted since add or reset).
fn slot_of(sinks: usize, window: usize, token: u64) -> usize {
    if token < sinks as u64 {
        token as usize
    } else {
        sinks + ((token - sinks as u64) % window as u64) as usize
    }
}

impl KvCache for RollingCache {
    fn config(&self) -> KvConfig {
        self.config
    }

    fn add_sequence(&mut self, seq: SeqId) -> Result<(), KvError> {
        if self.seqs.contains_key(&seq) {
            return Err(KvError::SequenceExists { seq });
        }
        let c = self.config;
        let slots = self
            .sinks
            .checked_add(self.window)
            .ok_or_else(|| KvError::SizeOverflow {
                slots: format!("{} + {}", self.sinks, self.window),
            })?;
        let state = RollingSeq {
            k: RowStore::new(c.dtype, c.n_kv_heads, c.head_dim, slots)?,
            v: RowStore::new(c.dtype, c.n_kv_heads, c.head_dim, slots)?,
            positions: vec![0; slots],
            seen: 0,
            last_position: None,
        };
        self.seqs.insert(seq, state);
        Ok(())
    }

    fn append(
        &mut self,
        seq: SeqId,
        k: &[f32],
        v: &[f32],
        positions: &[u32],
    ) -> Result<(), KvError> {
        let (config, sinks, window) = (self.config, self.sinks, self.window);
        let state = self
            .seqs
            .get_mut(&seq)
            .ok_or(KvError::SequenceNotFound { seq })?;
        check_append(&config, seq, state.last_position, k, v, positions)?;

        // Every token is written in order, so a call longer than the window leaves exactly
        // the last `window` tokens of the ring.
        let row_len = config.row_len();
        for (t, &position) in positions.iter().enumerate() {
            let slot = slot_of(sinks, window, state.seen + t as u64);
            state.k.write(slot, &k[t * row_len..(t + 1) * row_len]);
            state.v.write(slot, &v[t * row_len..(t + 1) * row_len]);
            state.positions[slot] = position;
        }
        state.seen += positions.len() as u64;
        if let Some(&last) = positions.last() {
            state.last_position = Some(last);
        }
        Ok(())
    }

    fn view(&self, seq: SeqId) -> Result<KvSeqView<'_>, KvError> {
        let state = self.seq(seq)?;
        Ok(KvSeqView::from_slots(
            self.config,
            &state.k,
            &state.v,
            &state.positions,
            &self.runs(state.seen),
        ))
    }

    fn seq_len(&self, seq: SeqId) -> Result<usize, KvError> {
        let seen = self.seq(seq)?.seen;
        Ok(self.runs(seen).iter().map(|run| run.1).sum())
    }

    fn tokens_seen(&self, seq: SeqId) -> Result<u64, KvError> {
        Ok(self.seq(seq)?.seen)
    }

    fn reset(&mut self, seq: SeqId) -> Result<(), KvError> {
        let state = self
            .seqs
            .get_mut(&seq)
            .ok_or(KvError::SequenceNotFound { seq })?;
        state.seen = 0;
        state.last_position = None;
        Ok(())
    }

    fn fork(&mut self, parent: SeqId, child: SeqId) -> Result<(), KvError> {
        let copy = self.seq(parent)?.clone();
        if self.seqs.contains_key(&child) {
            return Err(KvError::SequenceExists { seq: child });
        }
        self.seqs.insert(child, copy);
        Ok(())
    }

    fn free(&mut self, seq: SeqId) -> Result<(), KvError> {
        self.seqs
            .remove(&seq)
            .map(|_| ())
            .ok_or(KvError::SequenceNotFound { seq })
    }

    fn kv_bytes(&self) -> usize {
        self.seqs.values().map(|s| s.k.bytes() + s.v.bytes()).sum()
    }
}
