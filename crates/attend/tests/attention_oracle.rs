//! Property tests: the tiled kernel against the float64 oracle over random shapes,
//! masks, layouts, dtypes and instruction sets.

mod attention_support;

use attend::mask::{Alibi, DocumentMask, PrefixLm};
use attend::{
    attention, attention_reference, attention_varlen, attention_varlen_reference,
    attention_with_mods, attention_with_mods_reference, AttentionParams, BshdShape, Element, Isa,
    Packed, PackedMut,
};
use attention_support::{
    assert_close, available_isas, isas, out_tolerance, tolerance, window_bound, Output, Tensor,
};
use half::{bf16, f16};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    batch: usize,
    q_len: usize,
    kv_len: usize,
    n_kv_heads: usize,
    group: usize,
    head_dim: usize,
    causal: bool,
    window: (Option<usize>, Option<usize>),
    softcap: Option<f32>,
    scale: Option<f32>,
    with_sinks: bool,
    padding: usize,
    isa: Isa,
    seed: u64,
}

fn cases() -> impl Strategy<Value = Case> {
    let lengths = prop_oneof![Just(0usize), Just(1), 2usize..70, 60usize..140];
    let head_dims = prop_oneof![
        Just(1usize),
        Just(3),
        Just(16),
        Just(64),
        Just(65),
        Just(257)
    ];
    // GQA ratios 1 and 3, and multi-query (one kv head, group = n_heads).
    let heads = prop_oneof![
        (1usize..=3, Just(1usize)),
        (1usize..=2, Just(3usize)),
        (Just(1usize), 1usize..=4)
    ];
    (
        (1usize..=2, lengths.clone(), lengths, heads, head_dims),
        (
            any::<bool>(),
            window_bound(),
            window_bound(),
            proptest::option::of(1.0f32..30.0),
        ),
        (
            proptest::option::of(0.05f32..1.0),
            any::<bool>(),
            prop_oneof![Just(0usize), Just(3)],
            isas(),
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (batch, q_len, kv_len, (n_kv_heads, group), head_dim),
                (causal, left, right, softcap),
                (scale, with_sinks, padding, isa, seed),
            )| Case {
                batch,
                q_len,
                kv_len,
                n_kv_heads,
                group,
                head_dim,
                causal,
                window: (left, right),
                softcap,
                scale,
                with_sinks,
                padding,
                isa,
                seed,
            },
        )
}

/// Runs the kernel and the oracle on one case and compares out, lse and padding.
fn check_case<T: Element>(case: &Case) {
    let n_heads = case.n_kv_heads * case.group;
    let q_shape = BshdShape {
        batch: case.batch,
        seq_len: case.q_len,
        heads: n_heads,
        head_dim: case.head_dim,
    };
    let kv_shape = BshdShape {
        seq_len: case.kv_len,
        heads: case.n_kv_heads,
        ..q_shape
    };
    let q = Tensor::<T>::new(q_shape, case.padding, case.seed);
    let k = Tensor::<T>::new(kv_shape, case.padding, case.seed ^ 1);
    let v = Tensor::<T>::new(kv_shape, case.padding, case.seed ^ 2);
    let sinks: Vec<f32> = (0..n_heads).map(|h| h as f32 * 0.5 - 0.7).collect();
    let params = AttentionParams {
        scale: case.scale,
        causal: case.causal,
        window: case.window,
        softcap: case.softcap,
        sinks: case.with_sinks.then_some(&sinks[..]),
        isa: Some(case.isa),
    };

    let mut out = Output::new(q_shape, case.padding);
    let mut lse = vec![f32::NAN; case.batch * n_heads * case.q_len];
    attention(
        q.view(),
        k.view(),
        v.view(),
        &params,
        &mut out.view(),
        Some(&mut lse),
    )
    .unwrap();
    let expected = attention_reference(q.view(), k.view(), v.view(), &params).unwrap();

    let tol = tolerance(case.head_dim, case.kv_len);
    let out_tol = out_tolerance::<T>(case.isa, case.head_dim, case.kv_len);
    assert_close("out", &out.logical(), &expected.out, out_tol);
    assert_close("lse", &lse, &expected.lse, tol);
    assert_eq!(out.padding_writes(), 0, "writes outside the output view");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn f32_matches_oracle(case in cases()) {
        check_case::<f32>(&case);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn f16_matches_oracle(case in cases()) {
        check_case::<f16>(&case);
    }

    #[test]
    fn bf16_matches_oracle(case in cases()) {
        check_case::<bf16>(&case);
    }
}

/// Runs bf16 on every instruction set of this CPU; the best takes the bf16 dot-product
/// tiles where the CPU has them. The head dims leave a pair or a vector
/// partly filled, and the key counts end a tile with an odd number of keys.
#[test]
fn bf16_tile_tails_match_oracle() {
    for isa in available_isas() {
        for head_dim in [1, 3, 17, 64, 65, 128, 257] {
            for kv_len in [1, 2, 63, 64, 65, 129] {
                for causal in [false, true] {
                    let case = Case {
                        batch: 1,
                        q_len: 67,
                        kv_len,
                        n_kv_heads: 2,
                        group: 2,
                        head_dim,
                        causal,
                        window: (None, None),
                        softcap: None,
                        scale: None,
                        with_sinks: false,
                        padding: 3,
                        isa,
                        seed: (head_dim * 1000 + kv_len) as u64,
                    };
                    check_case::<bf16>(&case);
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
struct VarlenCase {
    /// `(q_len, kv_len)` per sequence; zero lengths included.
    lengths: Vec<(usize, usize)>,
    n_kv_heads: usize,
    group: usize,
    head_dim: usize,
    causal: bool,
    window: (Option<usize>, Option<usize>),
    padding: usize,
    isa: Isa,
    seed: u64,
}

fn varlen_cases() -> impl Strategy<Value = VarlenCase> {
    let length = prop_oneof![Just(0usize), Just(1), 2usize..90];
    (
        proptest::collection::vec((length.clone(), length), 1..5),
        (1usize..=2, prop_oneof![Just(1usize), Just(3)]),
        prop_oneof![Just(1usize), Just(3), Just(32), Just(64)],
        (any::<bool>(), window_bound(), window_bound()),
        (prop_oneof![Just(0usize), Just(5)], isas(), any::<u64>()),
    )
        .prop_map(
            |(
                lengths,
                (n_kv_heads, group),
                head_dim,
                (causal, left, right),
                (padding, isa, seed),
            )| VarlenCase {
                lengths,
                n_kv_heads,
                group,
                head_dim,
                causal,
                window: (left, right),
                padding,
                isa,
                seed,
            },
        )
}

fn packed<T>(t: &Tensor<T>) -> Packed<'_, T> {
    Packed::strided(
        &t.data,
        t.shape.seq_len,
        t.shape.heads,
        t.shape.head_dim,
        t.strides.seq_stride,
        t.strides.head_stride,
    )
    .unwrap()
}

fn check_varlen_case<T: Element>(case: &VarlenCase) {
    let mut cu_seqlens_q = vec![0];
    let mut cu_seqlens_k = vec![0];
    for &(q_len, kv_len) in &case.lengths {
        cu_seqlens_q.push(cu_seqlens_q.last().unwrap() + q_len);
        cu_seqlens_k.push(cu_seqlens_k.last().unwrap() + kv_len);
    }
    let (total_q, total_k) = (*cu_seqlens_q.last().unwrap(), *cu_seqlens_k.last().unwrap());
    let n_heads = case.n_kv_heads * case.group;
    let q_shape = BshdShape {
        batch: 1,
        seq_len: total_q,
        heads: n_heads,
        head_dim: case.head_dim,
    };
    let kv_shape = BshdShape {
        seq_len: total_k,
        heads: case.n_kv_heads,
        ..q_shape
    };
    let q = Tensor::<T>::new(q_shape, case.padding, case.seed);
    let k = Tensor::<T>::new(kv_shape, case.padding, case.seed ^ 1);
    let v = Tensor::<T>::new(kv_shape, case.padding, case.seed ^ 2);
    let params = AttentionParams {
        causal: case.causal,
        window: case.window,
        isa: Some(case.isa),
        ..Default::default()
    };

    let mut out = Output::new(q_shape, case.padding);
    let mut lse = vec![f32::NAN; n_heads * total_q];
    {
        let strides = out.strides;
        let mut out_view = PackedMut::strided(
            &mut out.data,
            total_q,
            n_heads,
            case.head_dim,
            strides.seq_stride,
            strides.head_stride,
        )
        .unwrap();
        attention_varlen(
            packed(&q),
            packed(&k),
            packed(&v),
            &cu_seqlens_q,
            &cu_seqlens_k,
            &params,
            &mut out_view,
            Some(&mut lse),
        )
        .unwrap();
    }
    let expected = attention_varlen_reference(
        packed(&q),
        packed(&k),
        packed(&v),
        &cu_seqlens_q,
        &cu_seqlens_k,
        &params,
    )
    .unwrap();

    let max_kv = case.lengths.iter().map(|&(_, kv)| kv).max().unwrap_or(0);
    let tol = tolerance(case.head_dim, max_kv);
    let out_tol = out_tolerance::<T>(case.isa, case.head_dim, max_kv);
    assert_close("out", &out.logical(), &expected.out, out_tol);
    assert_close("lse", &lse, &expected.lse, tol);
    assert_eq!(out.padding_writes(), 0, "writes outside the output view");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn varlen_matches_oracle(case in varlen_cases()) {
        check_varlen_case::<f32>(&case);
    }

    #[test]
    fn varlen_bf16_matches_oracle(case in varlen_cases()) {
        check_varlen_case::<bf16>(&case);
    }
}

/// The programmable mods the property test picks from.
#[derive(Debug, Clone, Copy)]
enum Mods {
    Hash,
    Alibi,
    Document,
    PrefixLm,
    SoftcapClosure,
}

fn check_mods_case(
    mods: Mods,
    q_len: usize,
    kv_len: usize,
    head_dim: usize,
    causal: bool,
    isa: Isa,
    seed: u64,
) {
    let n_heads = 4;
    let q_shape = BshdShape {
        batch: 2,
        seq_len: q_len,
        heads: n_heads,
        head_dim,
    };
    let kv_shape = BshdShape {
        seq_len: kv_len,
        heads: 2,
        ..q_shape
    };
    let q = Tensor::<f32>::new(q_shape, 0, seed);
    let k = Tensor::<f32>::new(kv_shape, 0, seed ^ 1);
    let v = Tensor::<f32>::new(kv_shape, 0, seed ^ 2);
    let params = AttentionParams {
        causal,
        isa: Some(isa),
        ..Default::default()
    };
    let mut out = Output::new(q_shape, 0);
    let mut lse = vec![f32::NAN; 2 * n_heads * q_len];

    macro_rules! run_both {
        ($mask:expr, $score:expr) => {{
            let (mask, score) = ($mask, $score);
            attention_with_mods(
                q.view(),
                k.view(),
                v.view(),
                &params,
                &mask,
                &score,
                &mut out.view(),
                Some(&mut lse),
            )
            .unwrap();
            attention_with_mods_reference(q.view(), k.view(), v.view(), &params, &mask, &score)
                .unwrap()
        }};
    }
    let no_score = attend::mask::NoScoreMod;
    let no_mask = attend::mask::NoMask;
    let expected = match mods {
        Mods::Hash => run_both!(
            |b: usize, h: usize, i: usize, j: usize| !(b + h + 7 * i + 3 * j).is_multiple_of(5),
            no_score
        ),
        Mods::Alibi => run_both!(
            no_mask,
            Alibi::new(Alibi::standard_slopes(n_heads), q_len, kv_len)
        ),
        Mods::Document => {
            let docs = |len: usize| (0..len).map(|i| (i / 23) as u32).collect::<Vec<_>>();
            run_both!(
                DocumentMask::new(docs(q_len), docs(kv_len)).unwrap(),
                no_score
            )
        }
        Mods::PrefixLm => run_both!(
            PrefixLm::new(q_len.min(kv_len) / 3, q_len, kv_len),
            no_score
        ),
        Mods::SoftcapClosure => {
            run_both!(no_mask, |s: f32, _: usize, h: usize, _: usize, _: usize| (s
                * 0.2)
                .tanh()
                * 5.0
                + h as f32)
        }
    };
    let tol = tolerance(head_dim, kv_len);
    assert_close("out", &out.logical(), &expected.out, tol);
    assert_close("lse", &lse, &expected.lse, tol);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn mods_match_oracle(
        mods in prop_oneof![Just(Mods::Hash), Just(Mods::Alibi), Just(Mods::Document), Just(Mods::PrefixLm), Just(Mods::SoftcapClosure)],
        q_len in 0usize..150,
        kv_len in 0usize..150,
        head_dim in prop_oneof![Just(3usize), Just(32)],
        causal in any::<bool>(),
        isa in isas(),
        seed in any::<u64>(),
    ) {
        check_mods_case(mods, q_len, kv_len, head_dim, causal, isa, seed);
    }
}
