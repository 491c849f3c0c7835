//! Criterion benchmarks of the prefill kernel: causal f32 and bf16, and a sliding
//! window, on the detected instruction set and the portable path.
//!
//! Run with `cargo bench -p attend --bench attention`. Throughput is in visible
//! (query, key) pairs per head, the unit the FLOP count scales with.

use attend::{attention, AttentionParams, Bshd, BshdMut, Element, Isa};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;

struct Shape {
    seq_len: usize,
    heads: usize,
    head_dim: usize,
}

fn inputs<T: Element>(shape: &Shape) -> Vec<T> {
    let len = shape.seq_len * shape.heads * shape.head_dim;
    (0..len)
        .map(|i| T::from_f32(((i as f32) * 0.618).sin()))
        .collect()
}

fn visible_pairs(seq_len: usize, window_left: Option<usize>) -> u64 {
    (0..seq_len)
        .map(|i| (i - window_left.map_or(0, |left| i.saturating_sub(left)) + 1) as u64)
        .sum()
}

fn bench_case<T: Element>(
    c: &mut Criterion,
    group_name: &str,
    shape: Shape,
    window_left: Option<usize>,
) {
    let q: Vec<T> = inputs(&shape);
    let mut out = vec![0.0f32; q.len()];
    let mut group = c.benchmark_group(group_name);
    group.sample_size(10);
    group.throughput(Throughput::Elements(
        visible_pairs(shape.seq_len, window_left) * shape.heads as u64,
    ));
    for isa in [Isa::detect(), Isa::Portable] {
        let params = AttentionParams {
            causal: true,
            window: (window_left, None),
            isa: Some(isa),
            ..Default::default()
        };
        let id = BenchmarkId::new(
            isa.name(),
            format!("n{}_h{}_d{}", shape.seq_len, shape.heads, shape.head_dim),
        );
        group.bench_function(id, |b| {
            b.iter(|| {
                let view =
                    Bshd::contiguous(&q, 1, shape.seq_len, shape.heads, shape.head_dim).unwrap();
                let mut out_view =
                    BshdMut::contiguous(&mut out, 1, shape.seq_len, shape.heads, shape.head_dim)
                        .unwrap();
                attention(view, view, view, &params, &mut out_view, None).unwrap();
            })
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_case::<f32>(
        c,
        "causal_f32",
        Shape {
            seq_len: 1024,
            heads: 8,
            head_dim: 64,
        },
        None,
    );
    bench_case::<f32>(
        c,
        "causal_f32",
        Shape {
            seq_len: 1024,
            heads: 4,
            head_dim: 128,
        },
        None,
    );
    bench_case::<bf16>(
        c,
        "causal_bf16",
        Shape {
            seq_len: 1024,
            heads: 8,
            head_dim: 64,
        },
        None,
    );
    bench_case::<f32>(
        c,
        "window_f32",
        Shape {
            seq_len: 4096,
            heads: 8,
            head_dim: 64,
        },
        Some(255),
    );
}

criterion_group!(attention_benches, benches);
criterion_main!(attention_benches);
