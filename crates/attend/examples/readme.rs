use attend::{attention, AttendError, AttentionParams, Bshd, BshdMut};

fn main() -> Result<(), AttendError> {
    // q: [batch, q_len, n_heads, head_dim], k and v: [batch, kv_len, n_kv_heads, head_dim].
    let (q_len, kv_len, n_heads, n_kv_heads, head_dim) = (3, 5, 2, 1, 4);
    let q = vec![0.1f32; q_len * n_heads * head_dim];
    let k = vec![0.2f32; kv_len * n_kv_heads * head_dim];
    let v = vec![0.3f32; kv_len * n_kv_heads * head_dim];
    let mut out = vec![0.0f32; q.len()];
    // Causal, aligned bottom-right: query i sits at position i + kv_len - q_len.
    let params = AttentionParams {
        causal: true,
        ..Default::default()
    };
    attention(
        Bshd::contiguous(&q, 1, q_len, n_heads, head_dim)?,
        Bshd::contiguous(&k, 1, kv_len, n_kv_heads, head_dim)?,
        Bshd::contiguous(&v, 1, kv_len, n_kv_heads, head_dim)?,
        &params,
        &mut BshdMut::contiguous(&mut out, 1, q_len, n_heads, head_dim)?,
        None,
    )?;
    Ok(())
}
