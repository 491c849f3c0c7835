//! Text generation over a [`Decoder`]: prompt encoding, chunked prefill, the
//! sampling loop with streamed UTF-8 output, and perplexity.

use std::path::Path;
use std::time::Instant;

use crate::chat::{ChatMessage, ChatTemplate};
use crate::decoder::{Decoder, Logits, Session};
use crate::error::ModelError;
use crate::sampling::{Sampler, SamplingParams, StopChecker, StopReason};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// Tokens per prefill step. Attention over a chunk needs `chunk * kv_len` scores
/// at most per tile row, so a long prompt never needs `N^2` memory; 512 keeps the
/// quantized products compute-bound.
pub const PREFILL_CHUNK: usize = 512;

/// A decoder with its tokenizer and chat template.
pub struct Engine {
    decoder: Decoder,
    tokenizer: Tokenizer,
    /// `None` when the file has no template and attend has no built-in one for
    /// its architecture; chat then fails with the reason stored in `template_error`.
    template: Option<ChatTemplate>,
    template_error: Option<String>,
}

/// Settings of one generation.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub sampling: SamplingParams,
    /// The maximum number of tokens to generate.
    pub max_tokens: usize,
    /// Generation stops when the decoded text contains one of these.
    pub stop_strings: Vec<String>,
}

/// The result of one generation, with its speed.
#[derive(Clone, Debug)]
pub struct GenerateOutput {
    /// The prompt's token ids as they were fed to the model.
    pub prompt_tokens: Vec<u32>,
    /// The generated ids, the end-of-generation token included when one ended it.
    pub tokens: Vec<u32>,
    /// The generated text, without a stop string or end-of-generation token.
    pub text: String,
    pub prefill_tokens_per_s: f64,
    /// Decode steps (sampled tokens fed back through the model) per second, the
    /// sampling time included. `None` when no decode step ran, because generation
    /// stopped at the first sampled token or `max_tokens` is 0.
    pub decode_tokens_per_s: Option<f64>,
    pub stop_reason: StopReason,
}

/// The result of [`Engine::perplexity`].
#[derive(Clone, Debug, PartialEq)]
pub struct Perplexity {
    pub ppl: f64,
    /// Standard error of `ppl`, from the spread of the per-token log-likelihoods.
    pub ppl_stderr: f64,
    pub chunks: usize,
    /// Tokens scored: `chunks * (ctx - 1 - ctx / 2)`.
    pub scored_tokens: usize,
}

impl Engine {
    /// Opens a GGUF model and builds its tokenizer and chat template.
    ///
    /// # Errors
    /// The errors of [`Decoder::open`] and of building the tokenizer, and
    /// [`ModelError::InvalidConfig`] when the token list and `token_embd.weight`
    /// have different vocabulary sizes.
    pub fn open(path: impl AsRef<Path>) -> Result<Engine, ModelError> {
        let decoder = Decoder::open(path)?;
        let tokenizer = Tokenizer::from_gguf(decoder.file())?;
        // Every token id must have a row of embeddings and of logits, and every
        // logit a token to decode to, as llama.cpp requires.
        let vocab = decoder.config().vocab;
        if tokenizer.n_vocab() != vocab {
            return Err(ModelError::InvalidConfig {
                key: "tokenizer.ggml.tokens".into(),
                value: format!("{} tokens", tokenizer.n_vocab()),
                reason: format!(
                    "token_embd.weight has {vocab} rows; the file is corrupt, so download or convert it again"
                ),
            });
        }
        let (template, template_error) = match ChatTemplate::from_gguf(decoder.file(), &tokenizer) {
            Ok(template) => (Some(template), None),
            Err(err) => (None, Some(err.to_string())),
        };
        Ok(Engine {
            decoder,
            tokenizer,
            template,
            template_error,
        })
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// Returns the decoder mutably, to change its settings (for example
    /// [`Decoder::set_activations`]).
    pub fn decoder_mut(&mut self) -> &mut Decoder {
        &mut self.decoder
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Encodes plain text with the file's BOS rule, parsing special tokens.
    ///
    /// # Errors
    /// The tokenizer's errors.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        Ok(self.tokenizer.encode(text, true, true)?)
    }

    /// Renders `messages` with the chat template and encodes the result. The
    /// template writes any BOS itself, so none is added here.
    ///
    /// # Errors
    /// [`ModelError::Chat`] when the model has no usable template or rendering
    /// fails, and the tokenizer's errors.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, ModelError> {
        let template = self
            .template
            .as_ref()
            .ok_or_else(|| ModelError::Chat(self.template_error.clone().unwrap_or_default()))?;
        let prompt = template
            .render(messages, add_generation_prompt)
            .map_err(|e| ModelError::Chat(e.to_string()))?;
        let bos_text = self
            .tokenizer
            .bos_id()
            .and_then(|id| self.tokenizer.token_text(id));
        let starts_with_bos =
            bos_text.is_some_and(|bos| !bos.is_empty() && prompt.starts_with(bos));
        Ok(self.tokenizer.encode(&prompt, !starts_with_bos, true)?)
    }

    /// Runs `tokens` through the model in chunks of [`PREFILL_CHUNK`] and returns
    /// the last token's logits (`[vocab]`).
    ///
    /// # Errors
    /// The errors of [`Decoder::forward`]; an empty `tokens` is
    /// [`ModelError::InvalidConfig`].
    pub fn prefill(&self, session: &mut Session, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::InvalidConfig {
                key: "prompt".into(),
                value: "empty".into(),
                reason: "the prompt encodes to no tokens; give some text".into(),
            });
        }
        let last_chunk = (tokens.len() - 1) / PREFILL_CHUNK;
        let mut logits = Vec::new();
        for (i, chunk) in tokens.chunks(PREFILL_CHUNK).enumerate() {
            let which = if i == last_chunk {
                Logits::Last
            } else {
                Logits::None
            };
            logits = self.decoder.forward(session, chunk, which)?;
        }
        Ok(logits)
    }

    /// Generates up to `params.max_tokens` tokens after `prompt`, calling
    /// `on_text` with each piece of valid UTF-8 as soon as it is complete.
    ///
    /// The prompt is appended to whatever `session` already holds, so a chat can
    /// keep its cache between turns.
    ///
    /// # Errors
    /// [`ModelError::ContextFull`] when the prompt does not fit, and the errors of
    /// the model, tokenizer and sampler.
    pub fn generate(
        &self,
        session: &mut Session,
        prompt: &[u32],
        params: &GenerateParams,
        mut on_text: impl FnMut(&str),
    ) -> Result<GenerateOutput, ModelError> {
        let mut sampler = Sampler::new(params.sampling.clone())?;
        let mut stop = StopChecker::new(
            self.tokenizer.eog_ids(),
            &params.stop_strings,
            params.max_tokens,
        );
        let mut stream = StreamDecoder::new(false);
        let mut history: Vec<u32> = prompt.to_vec();
        let mut tokens = Vec::new();
        let mut text = String::new();

        let start = Instant::now();
        let mut logits = self.prefill(session, prompt)?;
        let prefill_s = start.elapsed().as_secs_f64();

        let start = Instant::now();
        let mut decoded = 0usize;
        let stop_reason = loop {
            if params.max_tokens == 0 {
                break StopReason::MaxTokens;
            }
            let id = sampler.sample(&logits, &history)?;
            tokens.push(id);
            history.push(id);
            let token_stop = stop.push_token(id);
            if let Some(reason @ StopReason::EndOfGeneration(_)) = token_stop {
                break reason;
            }
            let piece = stream.push(&self.tokenizer, id)?;
            let out = stop.push_text(&piece);
            emit(&mut text, &out.text, &mut on_text);
            if let Some(reason) = out.stop.or(token_stop) {
                break reason;
            }
            if session.position() >= session.context() {
                break StopReason::ContextFull;
            }
            logits = self.decoder.forward(session, &[id], Logits::Last)?;
            decoded += 1;
        };
        let decode_s = start.elapsed().as_secs_f64();

        // Flush what the stream decoder and the stop checker still hold, unless a
        // stop string already ended the text.
        if !matches!(stop_reason, StopReason::StopString(_)) {
            let tail = stream.finish();
            let out = stop.push_text(&tail);
            emit(&mut text, &out.text, &mut on_text);
            if out.stop.is_none() {
                let rest = stop.finish();
                emit(&mut text, &rest, &mut on_text);
            }
        }

        Ok(GenerateOutput {
            prompt_tokens: prompt.to_vec(),
            tokens,
            text,
            prefill_tokens_per_s: rate(prompt.len(), prefill_s),
            decode_tokens_per_s: (decoded > 0).then(|| rate(decoded, decode_s)),
            stop_reason,
        })
    }

    /// Computes perplexity the way llama.cpp's `perplexity` tool does: the
    /// tokens are cut into `ctx`-token chunks, each evaluated from an empty
    /// cache (its first token replaced by BOS when the file adds BOS), and only
    /// the predictions for the second half of each chunk are scored.
    ///
    /// # Shapes
    /// `tokens: [n]` with `n >= 2 * ctx`; the last `n % ctx` tokens are unused.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] for `ctx < 4` or too few tokens,
    /// [`ModelError::NonFiniteLogits`] for a NaN or infinite logit in a scored
    /// row, and the model's errors.
    pub fn perplexity(
        &self,
        tokens: &[u32],
        ctx: usize,
        mut on_chunk: impl FnMut(usize, usize),
    ) -> Result<Perplexity, ModelError> {
        if ctx < 4 {
            return Err(ModelError::InvalidConfig {
                key: "ctx".into(),
                value: ctx.to_string(),
                reason: "perplexity needs chunks of at least 4 tokens".into(),
            });
        }
        let chunks = tokens.len() / ctx;
        if chunks < 1 || tokens.len() < 2 * ctx {
            return Err(ModelError::InvalidConfig {
                key: "text".into(),
                value: format!("{} tokens", tokens.len()),
                reason: format!(
                    "need at least 2 * ctx = {} tokens; use a longer text or a smaller --ctx",
                    2 * ctx
                ),
            });
        }
        let vocab = self.decoder.config().vocab;
        let first = ctx / 2;
        let mut session = self
            .decoder
            .new_session(ctx, crate::decoder::DEFAULT_KV_DTYPE)?;
        let (mut nll_sum, mut nll2_sum, mut count) = (0.0f64, 0.0f64, 0usize);
        for chunk_idx in 0..chunks {
            let mut batch = tokens[chunk_idx * ctx..(chunk_idx + 1) * ctx].to_vec();
            if self.tokenizer.add_bos() {
                if let Some(bos) = self.tokenizer.bos_id() {
                    batch[0] = bos;
                }
            }
            session.reset()?;
            let mut logits = Vec::with_capacity(ctx * vocab);
            for piece in batch.chunks(PREFILL_CHUNK) {
                logits.extend(self.decoder.forward(&mut session, piece, Logits::All)?);
            }
            for j in first..ctx - 1 {
                let row = &logits[j * vocab..(j + 1) * vocab];
                if let Some(&value) = row.iter().find(|v| !v.is_finite()) {
                    return Err(ModelError::NonFiniteLogits {
                        token_idx: chunk_idx * ctx + j,
                        value,
                    });
                }
                let target = tokens[chunk_idx * ctx + j + 1] as usize;
                let nll = -log_softmax_at(row, target);
                nll_sum += nll;
                nll2_sum += nll * nll;
                count += 1;
            }
            on_chunk(chunk_idx + 1, chunks);
        }
        let mean = nll_sum / count as f64;
        let ppl = mean.exp();
        let variance = nll2_sum / count as f64 - mean * mean;
        let ppl_stderr = if variance > 0.0 && count > 1 {
            (variance / (count - 1) as f64).sqrt() * ppl
        } else {
            0.0
        };
        Ok(Perplexity {
            ppl,
            ppl_stderr,
            chunks,
            scored_tokens: count,
        })
    }
}

fn emit(text: &mut String, piece: &str, on_text: &mut impl FnMut(&str)) {
    if !piece.is_empty() {
        text.push_str(piece);
        on_text(piece);
    }
}

fn rate(tokens: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        tokens as f64 / seconds
    } else {
        0.0
    }
}

/// `log(softmax(row)[target])`, accumulated in f64.
fn log_softmax_at(row: &[f32], target: usize) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
    f64::from(row[target] - max) - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_matches_definition() {
        let row = [1.0f32, 2.0, 3.0];
        let denom: f64 = row.iter().map(|&v| f64::from(v).exp()).sum();
        let expected = (3.0f64.exp() / denom).ln();
        assert!((log_softmax_at(&row, 2) - expected).abs() < 1e-12);
    }
}
