//! The output is bitwise identical for any number of threads.

mod attention_support;

use attend::{
    attention, attention_varlen, AttentionParams, BshdMut, BshdShape, Element, Isa, Packed,
    PackedMut,
};
use attention_support::Tensor;
use half::bf16;

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

fn prefill_bits<T: Element>(threads: usize, isa: Isa) -> Vec<u32> {
    let q_shape = BshdShape {
        batch: 2,
        seq_len: 300,
        heads: 4,
        head_dim: 64,
    };
    let kv_shape = BshdShape {
        heads: 2,
        ..q_shape
    };
    let q = Tensor::<T>::new(q_shape, 0, 11);
    let k = Tensor::<T>::new(kv_shape, 0, 12);
    let v = Tensor::<T>::new(kv_shape, 0, 13);
    let params = AttentionParams {
        causal: true,
        window: (Some(150), None),
        isa: Some(isa),
        ..Default::default()
    };
    let mut out = vec![0.0f32; 2 * 300 * 4 * 64];
    let mut lse = vec![0.0f32; 2 * 4 * 300];
    in_pool(threads, || {
        let mut view = BshdMut::contiguous(&mut out, 2, 300, 4, 64).unwrap();
        attention(
            q.view(),
            k.view(),
            v.view(),
            &params,
            &mut view,
            Some(&mut lse),
        )
        .unwrap();
    });
    out.iter().chain(&lse).map(|x| x.to_bits()).collect()
}

fn varlen_bits(threads: usize) -> Vec<u32> {
    let cu_seqlens = [0usize, 130, 130, 200, 330];
    let q = Tensor::<bf16>::new(
        BshdShape {
            batch: 1,
            seq_len: 330,
            heads: 2,
            head_dim: 32,
        },
        0,
        21,
    );
    let packed = Packed::contiguous(&q.data, 330, 2, 32).unwrap();
    let params = AttentionParams {
        causal: true,
        ..Default::default()
    };
    let mut out = vec![0.0f32; 330 * 2 * 32];
    in_pool(threads, || {
        let mut view = PackedMut::contiguous(&mut out, 330, 2, 32).unwrap();
        attention_varlen(
            packed,
            packed,
            packed,
            &cu_seqlens,
            &cu_seqlens,
            &params,
            &mut view,
            None,
        )
        .unwrap();
    });
    out.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn prefill_is_bitwise_deterministic() {
    for isa in attention_support::available_isas() {
        let one = prefill_bits::<f32>(1, isa);
        assert_eq!(one, prefill_bits::<f32>(2, isa), "{isa:?}: 1 vs 2 threads");
        assert_eq!(one, prefill_bits::<f32>(3, isa), "{isa:?}: 1 vs 3 threads");
        // bf16 takes the bf16 dot-product tiles where the CPU has them.
        let one = prefill_bits::<bf16>(1, isa);
        assert_eq!(
            one,
            prefill_bits::<bf16>(2, isa),
            "{isa:?} bf16: 1 vs 2 threads"
        );
        assert_eq!(
            one,
            prefill_bits::<bf16>(3, isa),
            "{isa:?} bf16: 1 vs 3 threads"
        );
    }
}

#[test]
fn varlen_is_bitwise_deterministic() {
    let one = varlen_bits(1);
    assert_eq!(one, varlen_bits(2), "1 vs 2 threads");
    assert_eq!(one, varlen_bits(3), "1 vs 3 threads");
}
