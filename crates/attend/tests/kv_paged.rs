//! The paged cache: block tables, fork with copy on write, prefix sharing, freeing,
//! out-of-blocks errors, and a model-based property test.

use std::collections::BTreeMap;

use attend::kv::{BlockTableCsr, KvCache, KvConfig, KvDtype, KvError, KvRows, PagedCache, SeqId};
use proptest::prelude::*;

const A: SeqId = SeqId(1);
const B: SeqId = SeqId(2);
const C: SeqId = SeqId(3);

/// Returns the row format of these tests: one kv head of dim 2.
fn config() -> KvConfig {
    KvConfig::new(1, 2, KvDtype::F32)
}

/// K row of a token with id `token_id` at `position`; V is its negation. The content
/// depends on both, so sharing a block with the wrong tokens or positions shows.
fn k_row(token_id: u32, position: u32) -> [f32; 2] {
    [
        (position * 100 + token_id) as f32,
        (position * 100 + token_id) as f32 + 0.5,
    ]
}

fn rows(token_ids: &[u32], positions: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let k: Vec<f32> = token_ids
        .iter()
        .zip(positions)
        .flat_map(|(&t, &p)| k_row(t, p))
        .collect();
    let v = k.iter().map(|x| -x).collect();
    (k, v)
}

fn append(cache: &mut PagedCache, seq: SeqId, positions: &[u32]) -> Result<(), KvError> {
    let ids = vec![0; positions.len()];
    let (k, v) = rows(&ids, positions);
    cache.append(seq, &k, &v, positions)
}

fn append_tokens(
    cache: &mut PagedCache,
    seq: SeqId,
    ids: &[u32],
    positions: &[u32],
) -> Result<(), KvError> {
    let (k, v) = rows(ids, positions);
    cache.append_tokens(seq, ids, &k, &v, positions)
}

fn assert_holds(cache: &PagedCache, seq: SeqId, ids: &[u32], positions: &[u32]) {
    let dense = cache.view(seq).unwrap().to_dense();
    let (k, v) = rows(ids, positions);
    assert_eq!(dense.positions, positions, "positions of {seq}");
    assert_eq!(dense.k, k, "K of {seq}");
    assert_eq!(dense.v, v, "V of {seq}");
}

fn range(start: u32, end: u32) -> Vec<u32> {
    (start..end).collect()
}

#[test]
fn block_table_and_chunks() {
    let mut cache = PagedCache::new(config(), 8, 4).unwrap();
    cache.add_sequence(A).unwrap();
    cache.add_sequence(B).unwrap();
    append(&mut cache, A, &range(0, 6)).unwrap();
    append(&mut cache, B, &range(0, 4)).unwrap();

    // The pool hands out blocks 0, 1, 2, ... in order.
    assert_eq!(cache.block_table(A).unwrap(), &[0, 1]);
    assert_eq!(cache.block_table(B).unwrap(), &[2]);
    assert_eq!(
        cache.block_table_csr(&[A, B]).unwrap(),
        BlockTableCsr {
            indptr: vec![0, 2, 3],
            indices: vec![0, 1, 2],
            last_block_len: vec![2, 4]
        }
    );
    assert_eq!(cache.blocks_used(), 3);
    assert_eq!(cache.blocks_free(), 5);

    let view = cache.view(A).unwrap();
    assert_eq!(view.len(), 6);
    assert_eq!(view.chunk_count(), 2);
    let lens: Vec<usize> = view.chunks().map(|c| c.len()).collect();
    assert_eq!(lens, [4, 2]);
    // Each chunk is the block's own slice of the pool: [block_len, n_kv_heads, head_dim].
    let KvRows::F32(second) = view.chunk(1).unwrap().k else {
        panic!("f32 cache returned another dtype");
    };
    assert_eq!(second, &rows(&[0, 0], &[4, 5]).0[..]);
    assert_holds(&cache, A, &[0; 6], &range(0, 6));
}

#[test]
fn block_boundaries() {
    for (tokens, blocks, last) in [
        (0u32, 0usize, 0u32),
        (1, 1, 1),
        (15, 1, 15),
        (16, 1, 16),
        (17, 2, 1),
        (32, 2, 16),
        (33, 3, 1),
    ] {
        let mut cache = PagedCache::new(config(), 4, attend::kv::DEFAULT_BLOCK_SIZE).unwrap();
        cache.add_sequence(A).unwrap();
        append(&mut cache, A, &range(0, tokens)).unwrap();
        let csr = cache.block_table_csr(&[A]).unwrap();
        assert_eq!(csr.indices.len(), blocks, "{tokens} tokens");
        assert_eq!(csr.last_block_len, [last], "{tokens} tokens");
        assert_eq!(cache.view_csr(&csr, 0).unwrap().len(), tokens as usize);
        assert_holds(&cache, A, &vec![0; tokens as usize], &range(0, tokens));
    }
}

#[test]
fn fork_shares_until_write() {
    let mut cache = PagedCache::new(config(), 8, 4).unwrap();
    cache.add_sequence(A).unwrap();
    append(&mut cache, A, &range(0, 6)).unwrap();
    cache.fork(A, B).unwrap();

    // Forking copies no rows: both tables name the same blocks.
    assert_eq!(cache.block_table(B).unwrap(), &[0, 1]);
    assert_eq!(cache.ref_count(0), Some(2));
    assert_eq!(cache.ref_count(1), Some(2));
    assert_eq!(cache.blocks_used(), 2);

    // The first write to the shared partial block copies it.
    append(&mut cache, A, &[6]).unwrap();
    assert_eq!(cache.block_table(A).unwrap(), &[0, 2]);
    assert_eq!(cache.block_table(B).unwrap(), &[0, 1]);
    assert_eq!(cache.ref_count(0), Some(2), "the full block stays shared");
    assert_eq!(cache.ref_count(1), Some(1));
    assert_eq!(cache.ref_count(2), Some(1));
    assert_holds(&cache, A, &[0; 7], &range(0, 7));
    assert_holds(&cache, B, &[0; 6], &range(0, 6));

    // The other sequence now owns block 1 alone and writes in place.
    append(&mut cache, B, &[10, 11]).unwrap();
    assert_eq!(cache.block_table(B).unwrap(), &[0, 1]);
    assert_eq!(cache.blocks_used(), 3);
    assert_holds(&cache, B, &[0; 8], &[0, 1, 2, 3, 4, 5, 10, 11]);
    assert_holds(&cache, A, &[0; 7], &range(0, 7));
}

#[test]
fn fork_at_block_boundary_copies_nothing() {
    let mut cache = PagedCache::new(config(), 8, 4).unwrap();
    cache.add_sequence(A).unwrap();
    append(&mut cache, A, &range(0, 8)).unwrap();
    cache.fork(A, B).unwrap();
    append(&mut cache, A, &[8]).unwrap();
    append(&mut cache, B, &[9]).unwrap();
    assert_eq!(cache.block_table(A).unwrap(), &[0, 1, 2]);
    assert_eq!(cache.block_table(B).unwrap(), &[0, 1, 3]);
    assert_eq!(cache.blocks_used(), 4);
}

#[test]
fn free_returns_every_block() {
    let mut cache = PagedCache::new(config(), 10, 3).unwrap();
    cache.add_sequence(A).unwrap();
    append(&mut cache, A, &range(0, 7)).unwrap();
    cache.fork(A, B).unwrap();
    cache.fork(B, C).unwrap();
    append(&mut cache, B, &[7, 8, 9]).unwrap();
    append(&mut cache, C, &[20]).unwrap();
    cache.free(A).unwrap();
    cache.reset(B).unwrap();
    assert!(cache.blocks_used() > 0);
    cache.free(C).unwrap();
    cache.free(B).unwrap();
    assert_eq!(cache.blocks_free(), 10);
    assert!((0..10).all(|b| cache.ref_count(b) == Some(0)));
    assert_eq!(cache.used_bytes(), 0);
}

#[test]
fn out_of_blocks_is_recoverable() {
    let mut cache = PagedCache::new(config(), 2, 4).unwrap();
    cache.add_sequence(A).unwrap();
    cache.add_sequence(B).unwrap();
    assert_eq!(
        append(&mut cache, A, &range(0, 9)).unwrap_err(),
        KvError::OutOfBlocks {
            seq: A,
            needed: 3,
            free: 2
        }
    );
    assert_eq!(
        cache.seq_len(A).unwrap(),
        0,
        "a failed append stores nothing"
    );
    assert_eq!(cache.blocks_free(), 2);

    append(&mut cache, A, &range(0, 3)).unwrap();
    append(&mut cache, B, &range(0, 3)).unwrap();
    assert_eq!(
        append(&mut cache, B, &range(3, 6)).unwrap_err(),
        KvError::OutOfBlocks {
            seq: B,
            needed: 1,
            free: 0
        }
    );
    assert_holds(&cache, B, &[0; 3], &range(0, 3));

    // Copy on write also needs a block: a shared partial block with none free fails cleanly.
    cache.fork(A, C).unwrap();
    assert_eq!(
        append(&mut cache, A, &[3]).unwrap_err(),
        KvError::OutOfBlocks {
            seq: A,
            needed: 1,
            free: 0
        }
    );
    assert_holds(&cache, A, &[0; 3], &range(0, 3));

    // The caller frees a sequence and retries.
    cache.free(B).unwrap();
    append(&mut cache, A, &[3]).unwrap();
    assert_ne!(cache.block_table(A).unwrap(), cache.block_table(C).unwrap());
    assert_holds(&cache, A, &[0; 4], &range(0, 4));
    assert_holds(&cache, C, &[0; 3], &range(0, 3));
}

#[test]
fn block_table_checks() {
    let mut cache = PagedCache::new(config(), 4, 4).unwrap();
    cache.add_sequence(A).unwrap();
    append(&mut cache, A, &range(0, 6)).unwrap();
    let csr = cache.block_table_csr(&[A]).unwrap();
    assert_eq!(cache.view_csr(&csr, 0).unwrap().len(), 6);

    // A table kept after its sequence was freed names freed blocks.
    cache.free(A).unwrap();
    assert_eq!(
        cache.view_csr(&csr, 0).unwrap_err(),
        KvError::FreedBlock { block: 0 }
    );
    assert_eq!(
        cache.view_blocks(&[7], 1).unwrap_err(),
        KvError::BlockOutOfRange {
            block: 7,
            num_blocks: 4
        }
    );

    cache.add_sequence(B).unwrap();
    append(&mut cache, B, &range(0, 6)).unwrap();
    let table = cache.block_table(B).unwrap().to_vec();
    for bad_len in [0, 5] {
        assert!(
            matches!(
                cache.view_blocks(&table, bad_len),
                Err(KvError::InvalidBlockTable { .. })
            ),
            "{bad_len}"
        );
    }
    assert!(matches!(
        cache.view_blocks(&[], 1),
        Err(KvError::InvalidBlockTable { .. })
    ));
    assert!(cache.view_blocks(&[], 0).unwrap().is_empty());

    // B holds positions 0..6 in two blocks of 4: the full first block, then 2 tokens.
    assert_eq!(cache.view_blocks(&table, 2).unwrap().len(), 6);
    let reversed = [table[1], table[0]];
    let partly_filled_first = [table[1], table[1]];
    for bad_table in [&reversed[..], &partly_filled_first[..]] {
        assert!(
            matches!(
                cache.view_blocks(bad_table, 2),
                Err(KvError::InvalidBlockTable { .. })
            ),
            "{bad_table:?}"
        );
    }

    let malformed = [
        BlockTableCsr {
            indptr: vec![0],
            indices: vec![0],
            last_block_len: vec![1],
        },
        BlockTableCsr {
            indptr: vec![0, 3],
            indices: vec![0, 1],
            last_block_len: vec![1],
        },
        BlockTableCsr {
            indptr: vec![1, 0],
            indices: vec![0],
            last_block_len: vec![1],
        },
    ];
    for csr in &malformed {
        assert!(
            matches!(
                cache.view_csr(csr, 0),
                Err(KvError::InvalidBlockTable { .. })
            ),
            "{csr:?}"
        );
    }
    let csr = cache.block_table_csr(&[B]).unwrap();
    assert!(matches!(
        cache.view_csr(&csr, 1),
        Err(KvError::InvalidBlockTable { .. })
    ));
    assert_eq!(
        cache.block_table_csr(&[SeqId(9)]).unwrap_err(),
        KvError::SequenceNotFound { seq: SeqId(9) }
    );
}

#[test]
fn prefix_sharing_of_full_blocks() {
    let mut cache = PagedCache::new(config(), 16, 4).unwrap();
    let ids: Vec<u32> = vec![5, 6, 7, 8, 9, 10, 11, 12, 13, 14];
    let positions = range(0, 10);
    cache.add_sequence(A).unwrap();
    append_tokens(&mut cache, A, &ids, &positions).unwrap();

    // The same prompt reuses both full blocks, not the partial third one.
    let reused = cache
        .add_sequence_with_prefix(B, &ids[..9], &positions[..9])
        .unwrap();
    assert_eq!(reused, 8);
    assert_eq!(
        cache.block_table(B).unwrap(),
        &cache.block_table(A).unwrap()[..2]
    );
    assert_eq!(cache.ref_count(0), Some(2));
    append_tokens(&mut cache, B, &ids[8..], &positions[8..]).unwrap();
    assert_holds(&cache, B, &ids, &positions);
    assert_eq!(cache.blocks_used(), 4);

    // A different token in the second block stops the match after the first.
    let mut other = ids.clone();
    other[5] = 99;
    assert_eq!(
        cache
            .add_sequence_with_prefix(C, &other, &positions)
            .unwrap(),
        4
    );
    cache.free(C).unwrap();

    // The same tokens at other positions match nothing.
    let shifted = range(1, 11);
    assert_eq!(
        cache.add_sequence_with_prefix(C, &ids, &shifted).unwrap(),
        0
    );
    cache.free(C).unwrap();

    // Once every holder is freed, the blocks leave the registry.
    cache.free(A).unwrap();
    cache.free(B).unwrap();
    assert_eq!(cache.blocks_free(), 16);
    assert_eq!(
        cache.add_sequence_with_prefix(C, &ids, &positions).unwrap(),
        0
    );
}

#[test]
fn prefix_needs_token_ids_throughout() {
    let mut cache = PagedCache::new(config(), 16, 2).unwrap();
    cache.add_sequence(A).unwrap();
    append_tokens(&mut cache, A, &[1, 2], &[0, 1]).unwrap();
    append(&mut cache, A, &[2, 3]).unwrap();
    append_tokens(&mut cache, A, &[5, 6], &[4, 5]).unwrap();
    // Block 0 was registered; the append without ids ended the chain.
    assert_eq!(
        cache
            .add_sequence_with_prefix(B, &[1, 2, 0, 0, 5, 6], &range(0, 6))
            .unwrap(),
        2
    );
    assert!(matches!(
        append_tokens(&mut cache, B, &[1], &[6, 7]),
        Err(KvError::CountMismatch {
            name: "token ids",
            given: 1,
            tokens: 2
        })
    ));
    assert_eq!(
        cache.add_sequence_with_prefix(B, &[], &[]).unwrap_err(),
        KvError::SequenceExists { seq: B }
    );
}

#[test]
fn memory_accounting() {
    let c = KvConfig::new(8, 128, KvDtype::Int8);
    let cache = PagedCache::new(c, 3, 16).unwrap();
    // int8: per token 2 * (8 * 128 values + 8 scales of 4 bytes) = 2112 bytes.
    assert_eq!(c.bytes_per_token(), 2112);
    assert_eq!(cache.bytes_per_block(), 16 * 2112);
    assert_eq!(cache.kv_bytes(), 3 * 16 * 2112);
    assert_eq!(cache.used_bytes(), 0);
}

#[test]
fn int8_blocks_expose_scales() {
    let mut cache = PagedCache::new(KvConfig::new(2, 2, KvDtype::Int8), 4, 4).unwrap();
    cache.add_sequence(A).unwrap();
    let k: Vec<f32> = (0..20).map(|i| i as f32 - 10.0).collect();
    cache.append(A, &k, &k, &range(0, 5)).unwrap();
    let view = cache.view(A).unwrap();
    let KvRows::Int8 { values, scales } = view.chunk(1).unwrap().k else {
        panic!("int8 cache returned another dtype");
    };
    assert_eq!(values.len(), 4, "one token of 2 heads of dim 2");
    // Token 4 holds heads [6, 7] and [8, 9]: scales 7/127 and 9/127, and
    // round(6 * 127 / 7) = 109, round(8 * 127 / 9) = 113.
    assert_eq!(scales, &[7.0 / 127.0, 9.0 / 127.0]);
    assert_eq!(values, &[109, 127, 113, 127]);
}

#[test]
fn invalid_pool_sizes() {
    assert!(matches!(
        PagedCache::new(config(), 4, 0),
        Err(KvError::InvalidConfig {
            name: "block_size",
            ..
        })
    ));
    assert!(matches!(
        PagedCache::new(config(), 0, 4),
        Err(KvError::InvalidConfig {
            name: "num_blocks",
            ..
        })
    ));
    assert!(matches!(
        PagedCache::new(
            KvConfig::new(1 << 20, 1 << 20, KvDtype::F32),
            1 << 20,
            1 << 20
        ),
        Err(KvError::SizeOverflow { .. })
    ));
    let err = PagedCache::new(
        KvConfig::new(1, 1, KvDtype::F32),
        u32::MAX as usize,
        usize::MAX,
    )
    .unwrap_err();
    assert!(
        matches!(err, KvError::SizeOverflow { .. }) && err.to_string().contains(" x "),
        "{err}"
    );
}

// ---- model-based property test -------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Add(u64),
    /// Append `n` tokens; `ids` picks the token-id pattern, `with_ids` whether ids are given.
    Append {
        seq: u64,
        n: u32,
        ids: u32,
        with_ids: bool,
    },
    AddWithPrefix {
        seq: u64,
        n: u32,
        ids: u32,
    },
    Fork {
        parent: u64,
        child: u64,
    },
    Free(u64),
    Reset(u64),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let seq = 0u64..4;
    prop_oneof![
        seq.clone().prop_map(Op::Add),
        (seq.clone(), 0u32..9, 0u32..3, any::<bool>()).prop_map(|(seq, n, ids, with_ids)| {
            Op::Append {
                seq,
                n,
                ids,
                with_ids,
            }
        }),
        (seq.clone(), 0u32..12, 0u32..3).prop_map(|(seq, n, ids)| Op::AddWithPrefix {
            seq,
            n,
            ids
        }),
        (seq.clone(), seq.clone()).prop_map(|(parent, child)| Op::Fork { parent, child }),
        seq.clone().prop_map(Op::Free),
        seq.prop_map(Op::Reset),
    ]
}

/// Token id pattern `ids` at `position`: three patterns that agree on some positions and not others.
fn token_id(ids: u32, position: u32) -> u32 {
    (position * (ids + 1) / 2 + ids) % 3
}

/// The model: each sequence is a list of (token id, position).
type Model = BTreeMap<u64, Vec<(u32, u32)>>;

fn check_against_model(cache: &PagedCache, model: &Model) {
    let mut table_counts = vec![0u32; cache.num_blocks()];
    for (&seq, tokens) in model {
        let ids: Vec<u32> = tokens.iter().map(|t| t.0).collect();
        let positions: Vec<u32> = tokens.iter().map(|t| t.1).collect();
        assert_holds(cache, SeqId(seq), &ids, &positions);
        let table = cache.block_table(SeqId(seq)).unwrap();
        assert_eq!(
            table.len(),
            tokens.len().div_ceil(cache.block_size()),
            "table length of {seq}"
        );
        for &b in table {
            table_counts[b as usize] += 1;
        }
    }
    for (b, &count) in table_counts.iter().enumerate() {
        assert_eq!(
            cache.ref_count(b as u32),
            Some(count),
            "reference count of block {b}"
        );
    }
    let free = table_counts.iter().filter(|&&c| c == 0).count();
    assert_eq!(cache.blocks_free(), free);
    assert_eq!(
        cache.blocks_used() + cache.blocks_free(),
        cache.num_blocks()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_programs_match_model(
        block_size in prop_oneof![Just(1usize), Just(3), Just(4)],
        ops in proptest::collection::vec(op_strategy(), 1..40),
    ) {
        let mut cache = PagedCache::new(config(), 12, block_size).unwrap();
        let mut model = Model::new();
        for op in ops {
            match op {
                Op::Add(seq) => {
                    let result = cache.add_sequence(SeqId(seq));
                    prop_assert_eq!(result.is_ok(), !model.contains_key(&seq));
                    model.entry(seq).or_default();
                }
                Op::Append { seq, n, ids, with_ids } => {
                    let start = model.get(&seq).and_then(|t| t.last()).map_or(0, |t| t.1 + 1);
                    let positions = range(start, start + n);
                    let token_ids: Vec<u32> = positions.iter().map(|&p| token_id(ids, p)).collect();
                    let (k, v) = rows(&token_ids, &positions);
                    let free_before = cache.blocks_free();
                    let result = if with_ids {
                        cache.append_tokens(SeqId(seq), &token_ids, &k, &v, &positions)
                    } else {
                        cache.append(SeqId(seq), &k, &v, &positions)
                    };
                    match (result, model.get_mut(&seq)) {
                        (Ok(()), Some(tokens)) => tokens.extend(token_ids.into_iter().zip(positions)),
                        (Err(KvError::SequenceNotFound { .. }), None) => {}
                        (Err(KvError::OutOfBlocks { needed, free, .. }), Some(_)) => {
                            prop_assert!(needed > free);
                            prop_assert_eq!(free, free_before);
                        }
                        (other, _) => prop_assert!(false, "unexpected {:?}", other),
                    }
                }
                Op::AddWithPrefix { seq, n, ids } => {
                    let positions = range(0, n);
                    let token_ids: Vec<u32> = positions.iter().map(|&p| token_id(ids, p)).collect();
                    match cache.add_sequence_with_prefix(SeqId(seq), &token_ids, &positions) {
                        Ok(reused) => {
                            prop_assert!(!model.contains_key(&seq));
                            prop_assert_eq!(reused % block_size, 0);
                            prop_assert!(reused <= n as usize);
                            model.insert(seq, token_ids.into_iter().zip(positions).take(reused).collect());
                        }
                        Err(e) => prop_assert!(model.contains_key(&seq), "unexpected {:?}", e),
                    }
                }
                Op::Fork { parent, child } => {
                    let result = cache.fork(SeqId(parent), SeqId(child));
                    let expect_ok = model.contains_key(&parent) && !model.contains_key(&child);
                    prop_assert_eq!(result.is_ok(), expect_ok);
                    if expect_ok {
                        let copy = model[&parent].clone();
                        model.insert(child, copy);
                    }
                }
                Op::Free(seq) => {
                    prop_assert_eq!(cache.free(SeqId(seq)).is_ok(), model.remove(&seq).is_some());
                }
                Op::Reset(seq) => {
                    let result = cache.reset(SeqId(seq));
                    prop_assert_eq!(result.is_ok(), model.contains_key(&seq));
                    if let Some(tokens) = model.get_mut(&seq) {
                        tokens.clear();
                    }
                }
            }
            check_against_model(&cache, &model);
        }

        // Freeing every sequence returns every block.
        for &seq in model.keys() {
            cache.free(SeqId(seq)).unwrap();
        }
        prop_assert_eq!(cache.blocks_free(), cache.num_blocks());
    }
}
