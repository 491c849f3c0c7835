//! A cache that keeps every token of a sequence in one preallocated buffer.

use std::collections::BTreeMap;

use super::storage::RowStore;
use super::{check_append, KvCache, KvConfig, KvError, KvSeqView, SeqId};

/// One sequence's rows.
///
/// Invariant: tokens `0..len` sit in slots `0..len` in append order. The write offset
/// `len` equals the tokens seen since the sequence was added or reset, and it never
/// exceeds the capacity.
#[derive(Debug, Clone)]
struct ContiguousSeq {
    k: RowStore,
    v: RowStore,
    /// `[capacity]`; entries past `len` are stale.
    positions: Vec<u32>,
    len: usize,
}

/// Per-sequence contiguous cache with a capacity stated up front.
///
/// Each sequence allocates `capacity` tokens when it is added. Appending past the
/// capacity is [`KvError::CapacityExceeded`]; nothing is ever overwritten.
#[derive(Debug, Clone)]
pub struct ContiguousCache {
    config: KvConfig,
    capacity: usize,
    seqs: BTreeMap<SeqId, ContiguousSeq>,
}

impl ContiguousCache {
    /// Creates an empty cache whose sequences hold up to `capacity` tokens each.
    ///
    /// # Errors
    /// [`KvError::InvalidConfig`] for a zero `n_kv_heads` or `head_dim`.
    pub fn new(config: KvConfig, capacity: usize) -> Result<Self, KvError> {
        config.validate()?;
        Ok(Self {
            config,
            capacity,
            seqs: BTreeMap::new(),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn seq(&self, seq: SeqId) -> Result<&ContiguousSeq, KvError> {
        self.seqs.get(&seq).ok_or(KvError::SequenceNotFound { seq })
    }
}

impl KvCache for ContiguousCache {
    fn config(&self) -> KvConfig {
        self.config
    }

    fn add_sequence(&mut self, seq: SeqId) -> Result<(), KvError> {
        if self.seqs.contains_key(&seq) {
            return Err(KvError::SequenceExists { seq });
        }
        let c = self.config;
        let state = ContiguousSeq {
            k: RowStore::new(c.dtype, c.n_kv_heads, c.head_dim, self.capacity)?,
            v: RowStore::new(c.dtype, c.n_kv_heads, c.head_dim, self.capacity)?,
            positions: vec![0; self.capacity],
            len: 0,
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
        let config = self.config;
        let capacity = self.capacity;
        let state = self
            .seqs
            .get_mut(&seq)
            .ok_or(KvError::SequenceNotFound { seq })?;
        let last = state.len.checked_sub(1).map(|i| state.positions[i]);
        let tokens = check_append(&config, seq, last, k, v, positions)?;
        if tokens > capacity - state.len {
            return Err(KvError::CapacityExceeded {
                seq,
                capacity,
                len: state.len,
                tokens,
            });
        }

        let row_len = config.row_len();
        for (t, &position) in positions.iter().enumerate() {
            let slot = state.len + t;
            state.k.write(slot, &k[t * row_len..(t + 1) * row_len]);
            state.v.write(slot, &v[t * row_len..(t + 1) * row_len]);
            state.positions[slot] = position;
        }
        state.len += tokens;
        Ok(())
    }

    fn view(&self, seq: SeqId) -> Result<KvSeqView<'_>, KvError> {
        let state = self.seq(seq)?;
        Ok(KvSeqView::from_slots(
            self.config,
            &state.k,
            &state.v,
            &state.positions,
            &[(0, state.len)],
        ))
    }

    fn seq_len(&self, seq: SeqId) -> Result<usize, KvError> {
        Ok(self.seq(seq)?.len)
    }

    fn tokens_seen(&self, seq: SeqId) -> Result<u64, KvError> {
        Ok(self.seq(seq)?.len as u64)
    }

    fn reset(&mut self, seq: SeqId) -> Result<(), KvError> {
        let state = self
            .seqs
            .get_mut(&seq)
            .ok_or(KvError::SequenceNotFound { seq })?;
        state.len = 0;
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
