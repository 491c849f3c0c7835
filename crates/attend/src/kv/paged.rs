//! A paged cache: a pool of fixed-size blocks shared by sequences through block tables.
//!
//! Block `b` owns storage slots `b * block_size..(b + 1) * block_size`, so each block's K
//! (and V) is one contiguous `[block_size, n_kv_heads, head_dim]` slice. A sequence's block
//! table lists its blocks in position order; every block but the last is full.
//!
//! Invariants:
//! - `ref_counts[b]` is the number of block tables that contain `b`. A block is free exactly
//!   when its reference count is 0, and then it is on the free list exactly once.
//! - Only the last block of a table can be partial. A block with a reference count above 1
//!   is never written: appending to a shared partial last block first copies it
//!   (copy on write), and full blocks are never written again.
//! - A block in the prefix registry is full, and every table that contains it also
//!   contains the whole chain of blocks before it.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use super::storage::RowStore;
use super::{check_append, KvCache, KvConfig, KvError, KvSeqView, SeqId};

/// Tokens per block when the caller has no reason to pick another size.
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// Block tables of several sequences in compressed sparse row form.
///
/// Sequence `i` has blocks `indices[indptr[i]..indptr[i + 1]]`, and its last block holds
/// `last_block_len[i]` tokens (0 for a sequence with no blocks).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockTableCsr {
    /// `[n_seqs + 1]`, non-decreasing, starting at 0.
    pub indptr: Vec<u32>,
    /// `[indptr[n_seqs]]` block ids.
    pub indices: Vec<u32>,
    /// `[n_seqs]`.
    pub last_block_len: Vec<u32>,
}

/// Prefix-sharing state of a sequence.
#[derive(Debug, Clone, Default)]
struct PrefixChain {
    /// True while every token since add or reset came with a token id.
    hashable: bool,
    /// Chain hash of the sequence's full blocks so far (0 before the first).
    hash: u64,
    /// Token ids of the partial last block.
    partial_tokens: Vec<u32>,
}

#[derive(Debug, Clone)]
struct PagedSeq {
    /// Block table, in position order.
    blocks: Vec<u32>,
    /// Tokens held; `blocks.len() == len.div_ceil(block_size)`.
    len: usize,
    last_position: Option<u32>,
    prefix: PrefixChain,
}

/// Identity of a full block in the prefix registry, checked on every match so that a hash
/// collision can never share the wrong data.
#[derive(Debug, Clone)]
struct RegisteredBlock {
    hash: u64,
    parent: Option<u32>,
    tokens: Vec<u32>,
}

/// Paged KV cache with reference-counted blocks, copy-on-write forks and prefix sharing.
#[derive(Debug, Clone)]
pub struct PagedCache {
    config: KvConfig,
    block_size: usize,
    num_blocks: usize,
    k: RowStore,
    v: RowStore,
    /// Position of the token in each slot, `[num_blocks * block_size]`.
    positions: Vec<u32>,
    /// `[num_blocks]`.
    ref_counts: Vec<u32>,
    /// Free block ids; the next allocation pops from the end.
    free_list: Vec<u32>,
    seqs: BTreeMap<SeqId, PagedSeq>,
    /// `[num_blocks]`: the registry entry of each full block registered for prefix sharing.
    registry: Vec<Option<RegisteredBlock>>,
    by_hash: HashMap<u64, u32>,
}

fn chain_hash(parent_hash: u64, tokens: &[u32], positions: &[u32]) -> u64 {
    let mut hasher = DefaultHasher::new();
    parent_hash.hash(&mut hasher);
    tokens.hash(&mut hasher);
    positions.hash(&mut hasher);
    hasher.finish()
}

impl PagedCache {
    /// Allocates a pool of `num_blocks` blocks of `block_size` tokens.
    ///
    /// # Errors
    /// [`KvError::InvalidConfig`] for a zero size or more than `u32::MAX` blocks;
    /// [`KvError::Allocation`] when the pool does not fit in memory.
    pub fn new(config: KvConfig, num_blocks: usize, block_size: usize) -> Result<Self, KvError> {
        config.validate()?;
        if block_size == 0 {
            return Err(KvError::InvalidConfig {
                name: "block_size",
                value: 0,
                expected: "at least 1 token",
            });
        }
        if num_blocks == 0 || num_blocks > u32::MAX as usize {
            return Err(KvError::InvalidConfig {
                name: "num_blocks",
                value: num_blocks,
                expected: "between 1 and 2^32 - 1",
            });
        }
        let slots = num_blocks
            .checked_mul(block_size)
            .ok_or_else(|| KvError::SizeOverflow {
                slots: format!("{num_blocks} x {block_size}"),
            })?;
        let k = RowStore::new(config.dtype, config.n_kv_heads, config.head_dim, slots)?;
        let v = RowStore::new(config.dtype, config.n_kv_heads, config.head_dim, slots)?;
        Ok(Self {
            config,
            block_size,
            num_blocks,
            k,
            v,
            positions: vec![0; slots],
            ref_counts: vec![0; num_blocks],
            free_list: (0..num_blocks as u32).rev().collect(),
            seqs: BTreeMap::new(),
            registry: vec![None; num_blocks],
            by_hash: HashMap::new(),
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn blocks_free(&self) -> usize {
        self.free_list.len()
    }

    pub fn blocks_used(&self) -> usize {
        self.num_blocks - self.free_list.len()
    }

    /// Returns the bytes of one block: `block_size` tokens of K and V, int8 scales included.
    pub fn bytes_per_block(&self) -> usize {
        self.block_size * self.config.bytes_per_token()
    }

    /// Returns the bytes of the blocks in use now.
    pub fn used_bytes(&self) -> usize {
        self.blocks_used() * self.bytes_per_block()
    }

    /// Returns the reference count of `block`, or `None` past the pool.
    pub fn ref_count(&self, block: u32) -> Option<u32> {
        self.ref_counts.get(block as usize).copied()
    }

    /// Borrows the block table of `seq`.
    ///
    /// # Errors
    /// [`KvError::SequenceNotFound`].
    pub fn block_table(&self, seq: SeqId) -> Result<&[u32], KvError> {
        Ok(&self.seq(seq)?.blocks)
    }

    fn seq(&self, seq: SeqId) -> Result<&PagedSeq, KvError> {
        self.seqs.get(&seq).ok_or(KvError::SequenceNotFound { seq })
    }

    fn last_block_len(&self, len: usize) -> usize {
        match len {
            0 => 0,
            _ => (len - 1) % self.block_size + 1,
        }
    }

    /// Builds the CSR block tables of `seqs`, in that order.
    ///
    /// # Errors
    /// [`KvError::SequenceNotFound`].
    pub fn block_table_csr(&self, seqs: &[SeqId]) -> Result<BlockTableCsr, KvError> {
        let mut csr = BlockTableCsr {
            indptr: vec![0],
            ..Default::default()
        };
        for &seq in seqs {
            let state = self.seq(seq)?;
            csr.indices.extend_from_slice(&state.blocks);
            csr.indptr.push(csr.indices.len() as u32);
            csr.last_block_len
                .push(self.last_block_len(state.len) as u32);
        }
        Ok(csr)
    }

    /// Borrows the tokens named by a caller-supplied block table after checking it.
    ///
    /// # Shapes
    /// `indices: [n_blocks]`; the view holds `(n_blocks - 1) * block_size + last_block_len`
    /// tokens.
    ///
    /// # Errors
    /// [`KvError::BlockOutOfRange`], [`KvError::FreedBlock`] for a block with reference
    /// count 0, [`KvError::InvalidBlockTable`] when `last_block_len` is not in
    /// `1..=block_size` (or not 0 for an empty table), or when the positions of the
    /// viewed tokens do not increase (blocks out of order, or a block before the last
    /// that is not full).
    pub fn view_blocks<'a>(
        &'a self,
        indices: &'a [u32],
        last_block_len: usize,
    ) -> Result<KvSeqView<'a>, KvError> {
        for &block in indices {
            match self.ref_counts.get(block as usize) {
                None => {
                    return Err(KvError::BlockOutOfRange {
                        block,
                        num_blocks: self.num_blocks,
                    })
                }
                Some(0) => return Err(KvError::FreedBlock { block }),
                Some(_) => {}
            }
        }
        let valid = if indices.is_empty() {
            last_block_len == 0
        } else {
            (1..=self.block_size).contains(&last_block_len)
        };
        if !valid {
            return Err(KvError::InvalidBlockTable {
                reason: format!(
                    "last_block_len {last_block_len} with {} blocks of {} tokens; expected 1..={} (0 with no blocks)",
                    indices.len(),
                    self.block_size,
                    self.block_size
                ),
            });
        }
        let view = KvSeqView::from_blocks(
            self.config,
            &self.k,
            &self.v,
            &self.positions,
            indices,
            self.block_size,
            last_block_len,
        );
        // The kernels skip and mask whole tiles by their first and last positions, so a
        // view must list its tokens in increasing position order. A table with blocks out
        // of order, or with a partly filled block before the last, breaks that.
        let mut previous: Option<u32> = None;
        let positions = view
            .chunks()
            .flat_map(|chunk| chunk.positions.iter().copied());
        for (token, position) in positions.enumerate() {
            if let Some(before) = previous.filter(|&before| position <= before) {
                return Err(KvError::InvalidBlockTable {
                    reason: format!(
                        "token {token} (block {}) has position {position}, not above the {before} before it; list a sequence's blocks in order, each full but the last",
                        indices[token / self.block_size]
                    ),
                });
            }
            previous = Some(position);
        }
        Ok(view)
    }

    /// Borrows sequence `seq_idx` of a CSR block table after checking it.
    ///
    /// # Errors
    /// [`KvError::InvalidBlockTable`] when `indptr` is malformed or `seq_idx` is past it;
    /// the errors of [`PagedCache::view_blocks`].
    pub fn view_csr<'a>(
        &'a self,
        csr: &'a BlockTableCsr,
        seq_idx: usize,
    ) -> Result<KvSeqView<'a>, KvError> {
        let invalid = |reason: String| KvError::InvalidBlockTable { reason };
        let n_seqs = csr.last_block_len.len();
        if csr.indptr.len() != n_seqs + 1 {
            return Err(invalid(format!(
                "indptr has {} entries for {n_seqs} sequences; expected {}",
                csr.indptr.len(),
                n_seqs + 1
            )));
        }
        if seq_idx >= n_seqs {
            return Err(invalid(format!(
                "sequence index {seq_idx} is past the {n_seqs} sequences"
            )));
        }
        let (start, end) = (
            csr.indptr[seq_idx] as usize,
            csr.indptr[seq_idx + 1] as usize,
        );
        if start > end || end > csr.indices.len() {
            return Err(invalid(format!(
                "indptr[{seq_idx}..={}] = {start}..{end} is not a range within the {} indices",
                seq_idx + 1,
                csr.indices.len()
            )));
        }
        self.view_blocks(
            &csr.indices[start..end],
            csr.last_block_len[seq_idx] as usize,
        )
    }

    /// Creates `seq` and attaches the longest run of registered full blocks that match the
    /// start of `token_ids` at `positions`. Returns the number of tokens attached, a
    /// multiple of the block size; the caller computes and appends the rest with
    /// [`PagedCache::append_tokens`].
    ///
    /// To keep at least one token to compute (for its logits), pass all but the last token.
    ///
    /// # Shapes
    /// `token_ids: [tokens]`, `positions: [tokens]`.
    ///
    /// # Errors
    /// [`KvError::SequenceExists`], [`KvError::CountMismatch`],
    /// [`KvError::PositionNotIncreasing`].
    pub fn add_sequence_with_prefix(
        &mut self,
        seq: SeqId,
        token_ids: &[u32],
        positions: &[u32],
    ) -> Result<usize, KvError> {
        if self.seqs.contains_key(&seq) {
            return Err(KvError::SequenceExists { seq });
        }
        check_token_ids(token_ids, positions)?;
        if let Some(pair) = positions.windows(2).find(|pair| pair[1] <= pair[0]) {
            return Err(KvError::PositionNotIncreasing {
                seq,
                previous: pair[0],
                position: pair[1],
            });
        }

        let bs = self.block_size;
        let mut blocks = Vec::new();
        let mut hash = 0;
        for (tokens, block_positions) in token_ids.chunks_exact(bs).zip(positions.chunks_exact(bs))
        {
            let candidate_hash = chain_hash(hash, tokens, block_positions);
            let Some(&block) = self.by_hash.get(&candidate_hash) else {
                break;
            };
            let Some(entry) = &self.registry[block as usize] else {
                break;
            };
            let start = block as usize * bs;
            let matches = entry.parent == blocks.last().copied()
                && entry.tokens == tokens
                && &self.positions[start..start + bs] == block_positions;
            if !matches {
                break;
            }
            blocks.push(block);
            hash = candidate_hash;
        }

        for &block in &blocks {
            self.ref_counts[block as usize] += 1;
        }
        let len = blocks.len() * bs;
        self.seqs.insert(
            seq,
            PagedSeq {
                blocks,
                len,
                last_position: len.checked_sub(1).map(|i| positions[i]),
                prefix: PrefixChain {
                    hashable: true,
                    hash,
                    partial_tokens: Vec::new(),
                },
            },
        );
        Ok(len)
    }

    /// Appends tokens with their ids, registering each block it fills for prefix sharing
    /// (as long as every token of the sequence so far came with its id).
    ///
    /// # Shapes
    /// `token_ids: [tokens]`, `k, v: [tokens, n_kv_heads, head_dim]`, `positions: [tokens]`.
    ///
    /// # Errors
    /// [`KvError::CountMismatch`] and the errors of [`KvCache::append`].
    pub fn append_tokens(
        &mut self,
        seq: SeqId,
        token_ids: &[u32],
        k: &[f32],
        v: &[f32],
        positions: &[u32],
    ) -> Result<(), KvError> {
        check_token_ids(token_ids, positions)?;
        self.append_inner(seq, k, v, positions, Some(token_ids))
    }

    fn append_inner(
        &mut self,
        seq: SeqId,
        k: &[f32],
        v: &[f32],
        positions: &[u32],
        token_ids: Option<&[u32]>,
    ) -> Result<(), KvError> {
        let config = self.config;
        let bs = self.block_size;
        let state = self
            .seqs
            .get(&seq)
            .ok_or(KvError::SequenceNotFound { seq })?;
        let tokens = check_append(&config, seq, state.last_position, k, v, positions)?;
        if tokens == 0 {
            return Ok(());
        }

        // Count the blocks this append takes before changing anything, so that running out
        // leaves the cache as it was.
        let room = state.blocks.len() * bs - state.len;
        let last_shared = room > 0
            && state
                .blocks
                .last()
                .is_some_and(|&b| self.ref_counts[b as usize] > 1);
        let needed = (tokens.saturating_sub(room)).div_ceil(bs) + usize::from(last_shared);
        if needed > self.free_list.len() {
            return Err(KvError::OutOfBlocks {
                seq,
                needed,
                free: self.free_list.len(),
            });
        }

        let Self {
            seqs,
            k: k_store,
            v: v_store,
            positions: slot_positions,
            ref_counts,
            free_list,
            registry,
            by_hash,
            ..
        } = self;
        let state = seqs
            .get_mut(&seq)
            .ok_or(KvError::SequenceNotFound { seq })?;

        // Copy on write: give this sequence its own copy of a shared partial last block.
        if last_shared {
            let (old, new) = (
                state.blocks[state.blocks.len() - 1],
                allocate(free_list, ref_counts),
            );
            let filled = bs - room;
            let (src, dst) = (old as usize * bs, new as usize * bs);
            k_store.copy_rows(src, dst, filled);
            v_store.copy_rows(src, dst, filled);
            slot_positions.copy_within(src..src + filled, dst);
            ref_counts[old as usize] -= 1;
            *state.blocks.last_mut().expect("a shared last block exists") = new;
        }

        let row_len = config.row_len();
        for (t, &position) in positions.iter().enumerate() {
            if state.len % bs == 0 {
                state.blocks.push(allocate(free_list, ref_counts));
            }
            let block = state.blocks[state.blocks.len() - 1];
            let slot = block as usize * bs + state.len % bs;
            k_store.write(slot, &k[t * row_len..(t + 1) * row_len]);
            v_store.write(slot, &v[t * row_len..(t + 1) * row_len]);
            slot_positions[slot] = position;
            state.len += 1;

            // Register the block once it is full, if its whole prefix has token ids.
            let Some(ids) = token_ids else { continue };
            if !state.prefix.hashable {
                continue;
            }
            state.prefix.partial_tokens.push(ids[t]);
            if state.len % bs == 0 {
                let start = block as usize * bs;
                let tokens = std::mem::take(&mut state.prefix.partial_tokens);
                let hash = chain_hash(
                    state.prefix.hash,
                    &tokens,
                    &slot_positions[start..start + bs],
                );
                state.prefix.hash = hash;
                if let std::collections::hash_map::Entry::Vacant(entry) = by_hash.entry(hash) {
                    entry.insert(block);
                    let parent = state.blocks.len().checked_sub(2).map(|i| state.blocks[i]);
                    registry[block as usize] = Some(RegisteredBlock {
                        hash,
                        parent,
                        tokens,
                    });
                }
            }
        }
        if token_ids.is_none() {
            state.prefix.hashable = false;
        }
        state.last_position = positions.last().copied();
        Ok(())
    }

    /// Drops one reference to each block of `blocks`, freeing those that reach 0.
    fn release(&mut self, blocks: &[u32]) {
        for &block in blocks {
            let count = &mut self.ref_counts[block as usize];
            *count -= 1;
            if *count == 0 {
                self.free_list.push(block);
                if let Some(entry) = self.registry[block as usize].take() {
                    if self.by_hash.get(&entry.hash) == Some(&block) {
                        self.by_hash.remove(&entry.hash);
                    }
                }
            }
        }
    }
}

/// Pops a free block and gives it reference count 1; the caller checked one is free.
fn allocate(free_list: &mut Vec<u32>, ref_counts: &mut [u32]) -> u32 {
    let block = free_list.pop().expect("the caller counted the free blocks");
    ref_counts[block as usize] = 1;
    block
}

fn check_token_ids(token_ids: &[u32], positions: &[u32]) -> Result<(), KvError> {
    if token_ids.len() != positions.len() {
        return Err(KvError::CountMismatch {
            name: "token ids",
            given: token_ids.len(),
            tokens: positions.len(),
        });
    }
    Ok(())
}

impl KvCache for PagedCache {
    fn config(&self) -> KvConfig {
        self.config
    }

    fn add_sequence(&mut self, seq: SeqId) -> Result<(), KvError> {
        if self.seqs.contains_key(&seq) {
            return Err(KvError::SequenceExists { seq });
        }
        self.seqs.insert(
            seq,
            PagedSeq {
                blocks: Vec::new(),
                len: 0,
                last_position: None,
                prefix: PrefixChain {
                    hashable: true,
                    ..Default::default()
                },
            },
        );
        Ok(())
    }

    /// Appends without token ids, so blocks filled from now on are not registered for
    /// prefix sharing; use [`PagedCache::append_tokens`] for that.
    fn append(
        &mut self,
        seq: SeqId,
        k: &[f32],
        v: &[f32],
        positions: &[u32],
    ) -> Result<(), KvError> {
        self.append_inner(seq, k, v, positions, None)
    }

    fn view(&self, seq: SeqId) -> Result<KvSeqView<'_>, KvError> {
        let state = self.seq(seq)?;
        Ok(KvSeqView::from_blocks(
            self.config,
            &self.k,
            &self.v,
            &self.positions,
            &state.blocks,
            self.block_size,
            self.last_block_len(state.len),
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
        let blocks = std::mem::take(&mut state.blocks);
        state.len = 0;
        state.last_position = None;
        state.prefix = PrefixChain {
            hashable: true,
            ..Default::default()
        };
        self.release(&blocks);
        Ok(())
    }

    fn fork(&mut self, parent: SeqId, child: SeqId) -> Result<(), KvError> {
        let copy = self.seq(parent)?.clone();
        if self.seqs.contains_key(&child) {
            return Err(KvError::SequenceExists { seq: child });
        }
        for &block in &copy.blocks {
            self.ref_counts[block as usize] += 1;
        }
        self.seqs.insert(child, copy);
        Ok(())
    }

    fn free(&mut self, seq: SeqId) -> Result<(), KvError> {
        let state = self
            .seqs
            .remove(&seq)
            .ok_or(KvError::SequenceNotFound { seq })?;
        self.release(&state.blocks);
        Ok(())
    }

    /// Returns the bytes of the whole pool, used or free.
    fn kv_bytes(&self) -> usize {
        self.k.bytes() + self.v.bytes()
    }
}
