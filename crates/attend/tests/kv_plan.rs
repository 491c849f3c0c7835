//! The KV memory planner against hand-computed numbers.

use attend::kv::{plan_kv_memory, KvDtype, KvError, KvPlanRequest};

fn request(
    layers: usize,
    n_kv_heads: usize,
    head_dim: usize,
    context: usize,
    dtype: KvDtype,
) -> KvPlanRequest {
    KvPlanRequest {
        layers,
        n_kv_heads,
        head_dim,
        context,
        batch: 1,
        dtype,
        window: None,
        sliding_layers: 0,
        block_size: None,
    }
}

#[test]
fn smollm2_f16_at_8k() {
    // 30 layers, 3 kv heads of dim 64: K and V per token and layer are 2 * 3 * 64 * 2 = 768
    // bytes, and 30 * 8192 * 768 = 188_743_680 bytes.
    let plan = plan_kv_memory(&request(30, 3, 64, 8192, KvDtype::F16)).unwrap();
    assert_eq!(plan.bytes_per_token_per_layer, 768);
    assert_eq!(plan.bytes_per_token, 30 * 768);
    assert_eq!(plan.full_layer_bytes, 8192 * 768);
    assert_eq!(plan.total_bytes, 188_743_680);
    assert_eq!(plan.window_saving_bytes, 0);
    assert_eq!(plan.blocks, None);
}

#[test]
fn gemma3_windows_at_8k() {
    // 18 layers, 1 kv head of dim 256, f16: 1024 bytes per token and layer. 15 sliding
    // layers keep 512 tokens, 3 global layers keep 8192:
    // 3 * 8192 * 1024 + 15 * 512 * 1024 = 25_165_824 + 7_864_320 = 33_030_144 bytes,
    // against 18 * 8192 * 1024 = 150_994_944 without windows.
    let plan = plan_kv_memory(&KvPlanRequest {
        window: Some(512),
        sliding_layers: 15,
        ..request(18, 1, 256, 8192, KvDtype::F16)
    })
    .unwrap();
    assert_eq!(plan.full_layers, 3);
    assert_eq!(plan.sliding_layers, 15);
    assert_eq!(plan.tokens_per_sliding_layer, 512);
    assert_eq!(plan.total_bytes, 33_030_144);
    assert_eq!(plan.total_bytes_without_window, 150_994_944);
    assert_eq!(plan.window_saving_bytes, 117_964_800);
}

#[test]
fn window_longer_than_context() {
    // A window of 4096 on a context of 1000 keeps 1000 tokens: no saving.
    let plan = plan_kv_memory(&KvPlanRequest {
        window: Some(4096),
        sliding_layers: 2,
        ..request(4, 2, 8, 1000, KvDtype::F32)
    })
    .unwrap();
    assert_eq!(plan.tokens_per_sliding_layer, 1000);
    assert_eq!(plan.window_saving_bytes, 0);
}

#[test]
fn int8_counts_scales_and_batch() {
    // int8, 3 kv heads of dim 64: (192 + 3 * 4) * 2 = 408 bytes per token and layer;
    // batch 4, context 100, 2 layers: 408 * 100 * 4 * 2 = 326_400 bytes.
    let plan = plan_kv_memory(&KvPlanRequest {
        batch: 4,
        ..request(2, 3, 64, 100, KvDtype::Int8)
    })
    .unwrap();
    assert_eq!(plan.bytes_per_token_per_layer, 408);
    assert_eq!(plan.total_bytes, 326_400);
}

#[test]
fn paged_rounds_to_blocks() {
    // Context 100 in blocks of 16 takes 7 blocks = 112 slots; the window of 40 takes 3
    // blocks = 48 slots. bf16, 2 kv heads of dim 4: 32 bytes per token and layer.
    // Batch 2: (112 + 48) * 32 * 2 = 10_240 bytes in 2 * (7 + 3) = 20 blocks.
    let plan = plan_kv_memory(&KvPlanRequest {
        batch: 2,
        window: Some(40),
        sliding_layers: 1,
        block_size: Some(16),
        ..request(2, 2, 4, 100, KvDtype::Bf16)
    })
    .unwrap();
    assert_eq!(plan.tokens_per_full_layer, 112);
    assert_eq!(plan.tokens_per_sliding_layer, 48);
    assert_eq!(plan.total_bytes, 10_240);
    assert_eq!(plan.blocks, Some(20));
    assert_eq!(plan.total_bytes_without_window, 2 * 112 * 32 * 2);
}

#[test]
fn empty_context_plans_zero() {
    let plan = plan_kv_memory(&KvPlanRequest {
        block_size: Some(16),
        ..request(2, 2, 4, 0, KvDtype::F32)
    })
    .unwrap();
    assert_eq!(plan.total_bytes, 0);
    assert_eq!(plan.blocks, Some(0));
}

#[test]
fn invalid_requests_are_errors() {
    let base = request(4, 2, 8, 100, KvDtype::F16);
    let cases = [
        (
            KvPlanRequest {
                layers: 0,
                ..base.clone()
            },
            "layers",
        ),
        (
            KvPlanRequest {
                n_kv_heads: 0,
                ..base.clone()
            },
            "n_kv_heads",
        ),
        (
            KvPlanRequest {
                head_dim: 0,
                ..base.clone()
            },
            "head_dim",
        ),
        (
            KvPlanRequest {
                batch: 0,
                ..base.clone()
            },
            "batch",
        ),
        (
            KvPlanRequest {
                block_size: Some(0),
                ..base.clone()
            },
            "block_size",
        ),
        (
            KvPlanRequest {
                window: Some(0),
                sliding_layers: 1,
                ..base.clone()
            },
            "window",
        ),
        (
            KvPlanRequest {
                window: Some(8),
                sliding_layers: 5,
                ..base.clone()
            },
            "sliding_layers",
        ),
        (
            KvPlanRequest {
                sliding_layers: 1,
                ..base.clone()
            },
            "sliding_layers",
        ),
        (
            KvPlanRequest {
                context: usize::MAX,
                layers: 1000,
                ..base.clone()
            },
            "context",
        ),
        (
            KvPlanRequest {
                context: usize::MAX,
                block_size: Some(16),
                ..base.clone()
            },
            "context",
        ),
    ];
    for (bad, field) in cases {
        match plan_kv_memory(&bad) {
            Err(KvError::InvalidConfig { name, .. }) => assert_eq!(name, field),
            other => panic!("{field}: expected an error, got {other:?}"),
        }
    }
}
