//! A decoder-only transformer over GGUF weights: the forward pass that the Llama
//! and Gemma 3 architectures share. Each architecture's file ([`crate::llama`],
//! [`crate::gemma3`]) turns the file's metadata into a [`DecoderConfig`]; this
//! module loads the tensors and runs the blocks.
//!
//! One block, with `x: [tokens, hidden]`:
//!
//! ```text
//! h = attn_norm(x)
//! q, k, v = h Wq^T, h Wk^T, h Wv^T        [tokens, heads * head_dim]
//! q, k = qk_norm(q), qk_norm(k)           (Gemma 3 only, per head)
//! q, k = rope(q), rope(k)
//! a = attention(q, cache ++ k, cache ++ v) (causal, windowed on sliding layers)
//! x = x + post_attn_norm(a Wo^T)          (post-norm: Gemma 3 only)
//! h = ffn_norm(x)
//! x = x + post_ffw_norm(down(act(h Wgate^T) * h Wup^T))
//! ```

use std::ops::Range;

use attend::kv::{ContiguousCache, KvCache, KvConfig, KvDtype, RollingCache, SeqId};
use attend::rope::{Rope, RopeConfig};
use attend::{attention, decode, AttentionParams, Bshd, BshdMut, Element};

use crate::error::ModelError;
use crate::gguf::{Gguf, OptionalKey};
use crate::ops;
use crate::quant::{self, Activations, QuantMatrix};
use crate::GgmlType;

/// The KV storage type of sessions when the caller names none, as in llama.cpp.
pub const DEFAULT_KV_DTYPE: KvDtype = KvDtype::F16;

/// Chunks of at most this many tokens attend through the decode kernel over the
/// cache in place; longer chunks through the tiled prefill kernel.
const DECODE_MAX_TOKENS: usize = 16;

/// The id of the one sequence in each of a [`Session`]'s caches.
const SEQ: SeqId = SeqId(0);

/// The feed-forward activation applied to the gate projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU, in SwiGLU (Llama).
    Silu,
    /// GELU with the tanh approximation, in GeGLU (Gemma 3).
    GeluTanh,
}

/// The attention settings of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSpec {
    /// Sliding window `W` in tokens: each query attends to itself and the
    /// `W - 1` keys before it (attention window `left = W - 1`). `None` for global layers.
    pub window: Option<usize>,
    /// Index into [`DecoderConfig::ropes`].
    pub rope_idx: usize,
}

/// Everything the forward pass needs to know about an architecture.
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    /// `general.architecture` of the file.
    pub architecture: String,
    pub n_layers: usize,
    /// Model width (`embedding_length`).
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Inner width of the feed-forward block.
    pub ffn_dim: usize,
    pub vocab: usize,
    /// The context length the model was trained with.
    pub context_trained: usize,
    pub rms_eps: f32,
    /// Factor applied to the token embeddings (Gemma: `sqrt(hidden)`).
    pub embed_scale: Option<f32>,
    /// Softmax scale of the attention scores.
    pub query_scale: f32,
    pub activation: Activation,
    /// The RoPE variants that layers refer to by index.
    pub ropes: Vec<RopeConfig>,
    /// One entry per layer.
    pub layers: Vec<LayerSpec>,
    /// RMSNorm on each head of q and k before RoPE (Gemma 3).
    pub qk_norm: bool,
    /// RMSNorm after the attention and feed-forward outputs, before the residual
    /// add (Gemma 2 and 3).
    pub post_norms: bool,
    /// Soft cap on the final logits, `cap * tanh(logit / cap)`.
    pub final_softcap: Option<f32>,
}

impl DecoderConfig {
    /// Bytes of KV cache one token of a global layer takes at `dtype`.
    pub fn kv_bytes_per_token(&self, dtype: KvDtype) -> usize {
        KvConfig::new(self.n_kv_heads, self.head_dim, dtype).bytes_per_token()
    }
}

/// A weight matrix `[rows, cols]` stored in the file, referenced by byte range.
#[derive(Debug, Clone)]
struct Linear {
    ty: GgmlType,
    bytes: Range<usize>,
    rows: usize,
    cols: usize,
}

impl Linear {
    fn matrix<'a>(&self, file: &'a [u8]) -> Result<QuantMatrix<'a>, ModelError> {
        Ok(QuantMatrix::new(
            self.ty,
            &file[self.bytes.clone()],
            self.rows,
            self.cols,
        )?)
    }

    /// One product `out = x W^T` of a [`quant::matmul_many`] call.
    fn product<'a, 'o>(
        &self,
        file: &'a [u8],
        out: &'o mut [f32],
    ) -> Result<quant::Product<'a, 'o>, ModelError> {
        Ok(quant::Product {
            w: self.matrix(file)?,
            out,
        })
    }

    /// Computes `out = x W^T`.
    ///
    /// # Shapes
    /// `x: [tokens, cols]`, `out: [tokens, rows]`.
    fn forward(
        &self,
        file: &[u8],
        x: &[f32],
        tokens: usize,
        out: &mut [f32],
        activations: Activations,
    ) -> Result<(), ModelError> {
        quant::matmul_with(&self.matrix(file)?, x, tokens, out, activations)?;
        Ok(())
    }
}

/// The tensors of one block.
#[derive(Debug)]
struct Layer {
    attn_norm: Vec<f32>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    /// `[head_dim]` each, when [`DecoderConfig::qk_norm`].
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    /// `[hidden]`, when [`DecoderConfig::post_norms`].
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
    post_ffw_norm: Option<Vec<f32>>,
}

/// The cache a session gives its sliding-window layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingCache {
    /// A rolling cache of the last `W` tokens: memory bounded by the window.
    Rolling,
    /// A contiguous cache of the whole context; the window is applied as a mask.
    Full,
}

/// The rows of logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// None: the pass only fills the cache.
    None,
    /// The last token's row, `[vocab]`.
    Last,
    /// Every token's row, `[tokens, vocab]`.
    All,
}

/// A loaded decoder: the mapped file and where each tensor lies in it.
pub struct Decoder {
    file: Gguf,
    config: DecoderConfig,
    token_embd: Linear,
    output: Linear,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    /// Whether the attention kernel has bf16 dot products on this CPU, so that
    /// prefill over a bf16 cache runs on bf16 rows rather than widened ones.
    bf16_attention: bool,
    /// Treatment of every projection's activations; see [`Decoder::set_activations`].
    activations: Activations,
}

/// The per-conversation state: one KV cache per layer, the RoPE tables and the
/// number of tokens processed.
///
/// Invariant: every cache has seen exactly `position` tokens of sequence 0.
pub struct Session {
    caches: Vec<Box<dyn KvCache + Send>>,
    ropes: Vec<Rope>,
    position: usize,
    context: usize,
}

impl Session {
    /// Tokens processed so far; the next token gets this position.
    pub fn position(&self) -> usize {
        self.position
    }

    /// The maximum number of tokens this session can hold.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Bytes of K/V storage the caches hold now.
    pub fn kv_bytes(&self) -> usize {
        self.caches.iter().map(|c| c.kv_bytes()).sum()
    }

    /// Empties every cache so the next token starts at position 0.
    pub fn reset(&mut self) -> Result<(), ModelError> {
        for cache in &mut self.caches {
            cache.reset(SEQ)?;
        }
        self.position = 0;
        Ok(())
    }
}

impl Decoder {
    /// Opens a GGUF file and loads it with the config of its architecture.
    ///
    /// # Errors
    /// [`ModelError::Gguf`] for a file that cannot be read or parsed,
    /// [`ModelError::UnsupportedArchitecture`] for an architecture other than
    /// `llama` and `gemma3`, and the errors of [`Decoder::load`].
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Decoder, ModelError> {
        let file = Gguf::open(path)?;
        let config = match file.architecture()? {
            "llama" => crate::llama::config(&file)?,
            "gemma3" => crate::gemma3::config(&file)?,
            other => {
                return Err(ModelError::UnsupportedArchitecture {
                    found: other.to_owned(),
                    supported: "llama and gemma3 (generation), bert (embeddings)",
                })
            }
        };
        Decoder::load(file, config)
    }

    /// Locates every tensor of `config` in `file` and checks its shape.
    ///
    /// # Errors
    /// [`ModelError::Gguf`] for a missing tensor, [`ModelError::TensorShape`] or
    /// [`ModelError::TensorType`] for one that does not fit the config.
    pub fn load(file: Gguf, config: DecoderConfig) -> Result<Decoder, ModelError> {
        // Check the RoPE settings now, so that a bad value in the file is reported
        // as the file's, not as a failure of the first session.
        for rope in &config.ropes {
            Rope::new(rope.clone()).map_err(ModelError::RopeMetadata)?;
        }
        let c = &config;
        let token_embd = linear(&file, "token_embd.weight", c.vocab, c.hidden)?;
        // Tied embeddings: files without `output.weight` reuse the token embeddings.
        let output = if file.tensor_info("output.weight").is_some() {
            linear(&file, "output.weight", c.vocab, c.hidden)?
        } else {
            token_embd.clone()
        };
        let output_norm = vector(&file, "output_norm.weight", c.hidden)?;
        let q_width = heads_width(c, c.n_heads, "attention.head_count")?;
        let kv_width = heads_width(c, c.n_kv_heads, "attention.head_count_kv")?;
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let name = |suffix: &str| format!("blk.{i}.{suffix}.weight");
            let optional_norm = |suffix: &str, dim: usize, present: bool| {
                present
                    .then(|| vector(&file, &name(suffix), dim))
                    .transpose()
            };
            layers.push(Layer {
                attn_norm: vector(&file, &name("attn_norm"), c.hidden)?,
                wq: linear(&file, &name("attn_q"), q_width, c.hidden)?,
                wk: linear(&file, &name("attn_k"), kv_width, c.hidden)?,
                wv: linear(&file, &name("attn_v"), kv_width, c.hidden)?,
                wo: linear(&file, &name("attn_output"), c.hidden, q_width)?,
                q_norm: optional_norm("attn_q_norm", c.head_dim, c.qk_norm)?,
                k_norm: optional_norm("attn_k_norm", c.head_dim, c.qk_norm)?,
                post_attn_norm: optional_norm("post_attention_norm", c.hidden, c.post_norms)?,
                ffn_norm: vector(&file, &name("ffn_norm"), c.hidden)?,
                w_gate: linear(&file, &name("ffn_gate"), c.ffn_dim, c.hidden)?,
                w_up: linear(&file, &name("ffn_up"), c.ffn_dim, c.hidden)?,
                w_down: linear(&file, &name("ffn_down"), c.hidden, c.ffn_dim)?,
                post_ffw_norm: optional_norm("post_ffw_norm", c.hidden, c.post_norms)?,
            });
        }
        Ok(Decoder {
            file,
            config,
            token_embd,
            output,
            output_norm,
            layers,
            bf16_attention: attend::Isa::detect().has_bf16_dot(),
            activations: Activations::default(),
        })
    }

    /// Chooses how the projections treat their activations: quantised to 8 bits
    /// for integer dot products ([`Activations::Q8`], the default, as llama.cpp
    /// computes), or kept in f32 against dequantised weights ([`Activations::F32`],
    /// slower, and closer to an f32 evaluation of the dequantised model).
    pub fn set_activations(&mut self, activations: Activations) {
        self.activations = activations;
    }

    /// Returns how the projections treat their activations.
    pub fn activations(&self) -> Activations {
        self.activations
    }

    /// The architecture's settings.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// Reads one byte of every page of the mapped file, so that the weights are in
    /// memory before the first token instead of faulting in during it. Calls
    /// `progress` with the bytes read so far every 8 MiB and at the end.
    pub fn prefault(&self, mut progress: impl FnMut(u64)) {
        const PAGE: usize = 4096;
        const REPORT: usize = 8 << 20;
        let bytes = self.file.bytes();
        let mut sum = 0u8;
        for (i, chunk) in bytes.chunks(REPORT).enumerate() {
            for page in chunk.chunks(PAGE) {
                sum = sum.wrapping_add(page[0]);
            }
            progress(((i + 1) * REPORT).min(bytes.len()) as u64);
        }
        std::hint::black_box(sum);
    }

    /// The mapped model file, for its metadata (tokenizer, chat template).
    pub fn file(&self) -> &Gguf {
        &self.file
    }

    /// Creates an empty session holding up to `context` tokens, with K/V stored
    /// as `kv_dtype`. Global layers get a contiguous cache of `context` tokens;
    /// sliding-window layers a rolling cache of `min(W, context)` tokens.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] for `context = 0`, and the caches' and
    /// RoPE's errors (for example an allocation that fails).
    pub fn new_session(&self, context: usize, kv_dtype: KvDtype) -> Result<Session, ModelError> {
        self.new_session_with(context, kv_dtype, SlidingCache::Rolling)
    }

    /// [`Decoder::new_session`] with a choice of cache for the sliding-window
    /// layers. [`SlidingCache::Full`] attends to the same keys with more memory; its
    /// sums run in another order, so logits can differ by rounding. The tests
    /// compare the rolling cache against it.
    ///
    /// # Errors
    /// As [`Decoder::new_session`].
    pub fn new_session_with(
        &self,
        context: usize,
        kv_dtype: KvDtype,
        sliding: SlidingCache,
    ) -> Result<Session, ModelError> {
        if context == 0 {
            return Err(ModelError::InvalidConfig {
                key: "context".into(),
                value: "0".into(),
                reason: "a session needs room for at least one token".into(),
            });
        }
        let c = &self.config;
        let kv_config = KvConfig::new(c.n_kv_heads, c.head_dim, kv_dtype);
        let mut caches: Vec<Box<dyn KvCache + Send>> = Vec::with_capacity(c.n_layers);
        for spec in &c.layers {
            let mut cache: Box<dyn KvCache + Send> = match spec.window {
                Some(window) if sliding == SlidingCache::Rolling => {
                    Box::new(RollingCache::new(kv_config, window.min(context), 0)?)
                }
                _ => Box::new(ContiguousCache::new(kv_config, context)?),
            };
            cache.add_sequence(SEQ)?;
            caches.push(cache);
        }
        let ropes = c
            .ropes
            .iter()
            .map(|config| Rope::new(config.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Session {
            caches,
            ropes,
            position: 0,
            context,
        })
    }

    /// Runs `tokens` through the model at the session's next positions, appends
    /// their K/V to the caches and returns the requested logits.
    ///
    /// # Shapes
    /// Returns `[vocab]` for [`Logits::Last`], `[tokens, vocab]` for
    /// [`Logits::All`], and an empty vector for [`Logits::None`].
    ///
    /// # Errors
    /// [`ModelError::TokenOutOfRange`], [`ModelError::ContextFull`], and errors of
    /// the kernels. On an error the session may hold part of the chunk; call
    /// [`Session::reset`] before reusing it.
    pub fn forward(
        &self,
        session: &mut Session,
        tokens: &[u32],
        logits: Logits,
    ) -> Result<Vec<f32>, ModelError> {
        // A pass opens several parallel regions per layer. Started from a thread outside
        // the rayon pool, each region would queue its tasks from outside and put the
        // caller to sleep until the workers finish. Those two thread wake-ups per region
        // cost as much as the region's work for one token. `scope` runs the pass on a
        // pool thread (the current one when it is already in the pool), which takes
        // part in every region.
        rayon::scope(|_| self.forward_in_pool(session, tokens, logits))
    }

    /// [`Decoder::forward`], run on a thread of the rayon pool.
    fn forward_in_pool(
        &self,
        session: &mut Session,
        tokens: &[u32],
        logits: Logits,
    ) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        let n_tokens = tokens.len();
        if n_tokens == 0 {
            return Ok(Vec::new());
        }
        if session.position + n_tokens > session.context {
            return Err(ModelError::ContextFull {
                requested: session.position + n_tokens,
                context: session.context,
                trained: c.context_trained,
            });
        }
        let file = self.file.bytes();
        let positions: Vec<u32> = (session.position..session.position + n_tokens)
            .map(|p| p as u32)
            .collect();

        // Token embeddings, x: [tokens, hidden].
        let mut x = vec![0.0f32; n_tokens * c.hidden];
        let embd = self.token_embd.matrix(file)?;
        for (row, &id) in x.chunks_exact_mut(c.hidden).zip(tokens) {
            if id as usize >= c.vocab {
                return Err(ModelError::TokenOutOfRange { id, vocab: c.vocab });
            }
            embd.dequantize_row(id as usize, row)?;
            if let Some(scale) = c.embed_scale {
                row.iter_mut().for_each(|v| *v *= scale);
            }
        }

        let mut buffers = Buffers::new(c, n_tokens);
        for (layer_idx, layer) in self.layers.iter().enumerate() {
            self.attention_block(session, layer_idx, layer, &positions, &mut x, &mut buffers)?;
            self.ffn_block(layer, &mut x, &mut buffers)?;
        }
        session.position += n_tokens;

        // Final norm and output projection over the rows asked for.
        let rows: &mut [f32] = match logits {
            Logits::None => return Ok(Vec::new()),
            Logits::Last => &mut x[(n_tokens - 1) * c.hidden..],
            Logits::All => &mut x,
        };
        ops::rms_norm(rows, &self.output_norm, c.rms_eps, 0.0);
        let out_rows = rows.len() / c.hidden;
        let mut out = vec![0.0f32; out_rows * c.vocab];
        self.output
            .forward(file, rows, out_rows, &mut out, self.activations)?;
        if let Some(cap) = c.final_softcap {
            ops::softcap_in_place(&mut out, cap);
        }
        Ok(out)
    }

    /// `x += post_attn_norm(attention(attn_norm(x)) Wo^T)`, appending this chunk's
    /// K/V to the layer's cache.
    fn attention_block(
        &self,
        session: &mut Session,
        layer_idx: usize,
        layer: &Layer,
        positions: &[u32],
        x: &mut [f32],
        b: &mut Buffers,
    ) -> Result<(), ModelError> {
        let c = &self.config;
        let file = self.file.bytes();
        let n_tokens = positions.len();
        let spec = c.layers[layer_idx];

        b.h.copy_from_slice(x);
        ops::rms_norm(&mut b.h, &layer.attn_norm, c.rms_eps, 0.0);
        quant::matmul_many_with(
            &b.h,
            n_tokens,
            &mut [
                layer.wq.product(file, &mut b.q)?,
                layer.wk.product(file, &mut b.k)?,
                layer.wv.product(file, &mut b.v)?,
            ],
            self.activations,
        )?;
        if let (Some(q_norm), Some(k_norm)) = (&layer.q_norm, &layer.k_norm) {
            ops::rms_norm(&mut b.q, q_norm, c.rms_eps, 0.0);
            ops::rms_norm(&mut b.k, k_norm, c.rms_eps, 0.0);
        }
        session.ropes[spec.rope_idx].apply_qk(
            &mut b.q,
            c.n_heads,
            &mut b.k,
            c.n_kv_heads,
            positions,
        )?;

        let params = AttentionParams {
            scale: Some(c.query_scale),
            causal: true,
            window: (spec.window.map(|w| w - 1), Some(0)),
            ..Default::default()
        };
        let cache = &mut session.caches[layer_idx];
        let mut out_view = BshdMut::contiguous(&mut b.attn, 1, n_tokens, c.n_heads, c.head_dim)?;
        // A rolling cache of W tokens keeps, after an append of n tokens, only the
        // W - n keys before the first new query, which needs W - 1: so windowed layers
        // take the decode path for single tokens only.
        let in_place = match spec.window {
            Some(_) => n_tokens == 1,
            None => n_tokens <= DECODE_MAX_TOKENS,
        };
        if in_place {
            // Few new tokens: append them, then read the cache in place with the
            // split-KV decode kernel.
            cache.append(SEQ, &b.k, &b.v, positions)?;
            let q_view = Bshd::contiguous(&b.q, 1, n_tokens, c.n_heads, c.head_dim)?;
            decode(q_view, &[cache.view(SEQ)?], &params, &mut out_view, None)?;
        } else {
            // A prefill chunk: the keys visible to it are the cached tokens followed by
            // the chunk's own, gathered before the append, because a rolling cache
            // would drop the chunk's first keys before its last queries read them.
            let view = cache.view(SEQ)?;
            let bf16_rows = if self.bf16_attention {
                view.to_dense_bf16()
            } else {
                None
            };
            let chunk = (&b.q[..], &b.k[..], &b.v[..]);
            match bf16_rows {
                // Over a bf16 cache on a CPU with bf16 dot products, the kernel runs
                // on bf16 q, k and v (about 1.8x its f32 speed at Gemma 3's head_dim
                // of 256). The chunk's keys and values are rounded to bf16 as the
                // append below stores them.
                Some(cached) => {
                    prefill_attention(c, &params, chunk, (cached.k, cached.v), &mut out_view)?
                }
                None => {
                    let cached = view.to_dense();
                    prefill_attention(c, &params, chunk, (cached.k, cached.v), &mut out_view)?
                }
            }
            cache.append(SEQ, &b.k, &b.v, positions)?;
        }

        layer
            .wo
            .forward(file, &b.attn, n_tokens, &mut b.h, self.activations)?;
        if let Some(norm) = &layer.post_attn_norm {
            ops::rms_norm(&mut b.h, norm, c.rms_eps, 0.0);
        }
        ops::add_in_place(x, &b.h);
        Ok(())
    }

    /// `x += post_ffw_norm(down(act(gate(h)) * up(h)))` with `h = ffn_norm(x)`.
    fn ffn_block(&self, layer: &Layer, x: &mut [f32], b: &mut Buffers) -> Result<(), ModelError> {
        let c = &self.config;
        let file = self.file.bytes();
        let n_tokens = x.len() / c.hidden;
        b.h.copy_from_slice(x);
        ops::rms_norm(&mut b.h, &layer.ffn_norm, c.rms_eps, 0.0);
        quant::matmul_many_with(
            &b.h,
            n_tokens,
            &mut [
                layer.w_gate.product(file, &mut b.gate)?,
                layer.w_up.product(file, &mut b.up)?,
            ],
            self.activations,
        )?;
        ops::gated_activation(&mut b.gate, &b.up, c.activation);
        layer
            .w_down
            .forward(file, &b.gate, n_tokens, &mut b.h, self.activations)?;
        if let Some(norm) = &layer.post_ffw_norm {
            ops::rms_norm(&mut b.h, norm, c.rms_eps, 0.0);
        }
        ops::add_in_place(x, &b.h);
        Ok(())
    }
}

/// Runs the prefill kernel for one chunk over the cached rows followed by the
/// chunk's own keys and values, with q, k and v in storage type `T`: the cached
/// rows are already in it, and the chunk's f32 rows are converted.
///
/// # Shapes
/// `chunk = (q, k, v)`: `q: [tokens, n_heads * head_dim]`, `k`, `v`: `[tokens,
/// n_kv_heads * head_dim]`; `cached = (k, v)`: `[cached, n_kv_heads * head_dim]`.
fn prefill_attention<T: Element>(
    c: &DecoderConfig,
    params: &AttentionParams,
    chunk: (&[f32], &[f32], &[f32]),
    cached: (Vec<T>, Vec<T>),
    out: &mut BshdMut<'_>,
) -> Result<(), ModelError> {
    let (q, k, v) = chunk;
    let (mut k_all, mut v_all) = cached;
    let n_tokens = q.len() / (c.n_heads * c.head_dim);
    let kv_len = k_all.len() / (c.n_kv_heads * c.head_dim) + n_tokens;
    k_all.extend(k.iter().map(|&x| T::from_f32(x)));
    v_all.extend(v.iter().map(|&x| T::from_f32(x)));
    let q: Vec<T> = q.iter().map(|&x| T::from_f32(x)).collect();
    let q_view = Bshd::contiguous(&q, 1, n_tokens, c.n_heads, c.head_dim)?;
    let k_view = Bshd::contiguous(&k_all, 1, kv_len, c.n_kv_heads, c.head_dim)?;
    let v_view = Bshd::contiguous(&v_all, 1, kv_len, c.n_kv_heads, c.head_dim)?;
    attention(q_view, k_view, v_view, params, out, None)?;
    Ok(())
}

/// Scratch buffers of one forward pass, reused across layers.
struct Buffers {
    /// `[tokens, hidden]`: normed input, then projection output.
    h: Vec<f32>,
    /// `[tokens, n_heads * head_dim]`.
    q: Vec<f32>,
    /// `[tokens, n_kv_heads * head_dim]`.
    k: Vec<f32>,
    v: Vec<f32>,
    /// `[tokens, n_heads * head_dim]`.
    attn: Vec<f32>,
    /// `[tokens, ffn_dim]`.
    gate: Vec<f32>,
    up: Vec<f32>,
}

impl Buffers {
    fn new(c: &DecoderConfig, n_tokens: usize) -> Buffers {
        let q_width = c.n_heads * c.head_dim;
        let kv_width = c.n_kv_heads * c.head_dim;
        Buffers {
            h: vec![0.0; n_tokens * c.hidden],
            q: vec![0.0; n_tokens * q_width],
            k: vec![0.0; n_tokens * kv_width],
            v: vec![0.0; n_tokens * kv_width],
            attn: vec![0.0; n_tokens * q_width],
            gate: vec![0.0; n_tokens * c.ffn_dim],
            up: vec![0.0; n_tokens * c.ffn_dim],
        }
    }
}

/// Finds a 2-D weight with `rows` output and `cols` input features (ggml dims
/// `[cols, rows]`) whose type the quantized products support.
fn linear(file: &Gguf, name: &str, rows: usize, cols: usize) -> Result<Linear, ModelError> {
    let tensor = file.tensor(name)?;
    let info = tensor.info();
    if info.dims() != [cols, rows] {
        return Err(ModelError::TensorShape {
            name: name.into(),
            expected: vec![cols, rows],
            found: info.dims().to_vec(),
        });
    }
    if !quant::is_supported(info.ggml_type()) {
        return Err(ModelError::TensorType {
            name: name.into(),
            ty: info.ggml_type(),
            supported: "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K",
        });
    }
    let start = file.data_offset() + info.offset();
    Ok(Linear {
        ty: info.ggml_type(),
        bytes: start..start + info.size_bytes(),
        rows,
        cols,
    })
}

/// Reads a 1-D float weight of `len` values (norm scales), converting it to f32.
fn vector(file: &Gguf, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let tensor = file.tensor(name)?;
    if tensor.dims() != [len] {
        return Err(ModelError::TensorShape {
            name: name.into(),
            expected: vec![len],
            found: tensor.dims().to_vec(),
        });
    }
    if !matches!(
        tensor.ggml_type(),
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16
    ) {
        return Err(ModelError::TensorType {
            name: name.into(),
            ty: tensor.ggml_type(),
            supported: "F32, F16, BF16 (norm weights are never quantized)",
        });
    }
    let mut out = vec![0.0f32; len];
    quant::dequantize(tensor.ggml_type(), tensor.data(), &mut out)?;
    Ok(out)
}

/// Returns `n_heads * head_dim`, the width of the projection of those heads.
///
/// # Errors
/// [`ModelError::InvalidConfig`] naming `{arch}.{key}` when the product overflows.
fn heads_width(c: &DecoderConfig, n_heads: usize, key: &str) -> Result<usize, ModelError> {
    n_heads
        .checked_mul(c.head_dim)
        .ok_or_else(|| ModelError::InvalidConfig {
            key: format!("{}.{key}", c.architecture),
            value: n_heads.to_string(),
            reason: format!(
                "times the head dim {} overflows; the metadata is corrupt, so download or convert the file again",
                c.head_dim
            ),
        })
}

/// Checks `{arch}.block_count` against the layer tensors (`blk.{i}.*`) of the
/// file before anything is allocated per layer. Every layer has tensors, so the
/// count can exceed neither the number of tensors nor the highest layer index
/// plus one. A smaller count would skip the file's last layers.
///
/// # Errors
/// [`ModelError::InvalidConfig`] naming the key and the layers the file has.
pub(crate) fn check_block_count(
    file: &Gguf,
    arch: &str,
    n_layers: usize,
) -> Result<(), ModelError> {
    let invalid = |reason: String| ModelError::InvalidConfig {
        key: format!("{arch}.block_count"),
        value: n_layers.to_string(),
        reason: format!("{reason}; the metadata is corrupt, so download or convert the file again"),
    };
    let n_tensors = file.tensors().len();
    if n_layers > n_tensors {
        return Err(invalid(format!(
            "the file has only {n_tensors} tensors, fewer than one per layer"
        )));
    }
    let last_layer_idx = file
        .tensors()
        .iter()
        .filter_map(|tensor| layer_index(tensor.name()))
        .max();
    match last_layer_idx {
        Some(last_idx) if last_idx + 1 == n_layers => Ok(()),
        Some(last_idx) => Err(invalid(format!(
            "the file has tensors for {} layers (blk.0 to blk.{last_idx})",
            last_idx + 1
        ))),
        None => Err(invalid("the file has no layer tensors (blk.N.*)".into())),
    }
}

/// Parses the layer index `i` from a tensor name `blk.{i}.*`.
fn layer_index(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// Checks `{arch}.attention.key_length` and `value_length`, when the file has
/// them, against the head dim the engine uses for q, k and v alike.
///
/// # Errors
/// [`ModelError::InvalidConfig`] naming the key that differs.
pub(crate) fn check_head_lengths(
    file: &Gguf,
    arch: &str,
    head_dim: usize,
) -> Result<(), ModelError> {
    for suffix in ["attention.key_length", "attention.value_length"] {
        let key = format!("{arch}.{suffix}");
        if let Some(length) = file.get_integer::<usize>(&key).optional()? {
            if length != head_dim {
                return Err(ModelError::InvalidConfig {
                    key,
                    value: length.to_string(),
                    reason: format!(
                        "differs from the head dim {head_dim}, and attend runs only models whose keys and values have the head dim"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Reads `{arch}.{suffix}` as a positive integer.
pub(crate) fn required_usize(file: &Gguf, arch: &str, suffix: &str) -> Result<usize, ModelError> {
    let key = format!("{arch}.{suffix}");
    let value: usize = file.get_integer(&key)?;
    if value == 0 {
        return Err(ModelError::InvalidConfig {
            key,
            value: "0".into(),
            reason: "must be at least 1".into(),
        });
    }
    Ok(value)
}

/// Reads `{arch}.{suffix}` as an f32, or `None` when the file lacks it.
pub(crate) fn optional_f32(
    file: &Gguf,
    arch: &str,
    suffix: &str,
) -> Result<Option<f32>, ModelError> {
    Ok(file.get_f32(&format!("{arch}.{suffix}")).optional()?)
}
