//! Choosing the next token from logits, and deciding when generation stops.
//!
//! The filters and their order follow llama.cpp's default sampler chain
//! (`common/sampling.cpp`): repetition penalty, top-k, top-p, min-p, temperature,
//! then a draw from the softmax of what is left. A temperature of 0 is greedy
//! decoding. The random draw uses a seeded `StdRng`, so one seed reproduces a run.
//!
//! ```
//! use attend_models::sampling::{Sampler, SamplingParams, StopChecker, StopReason};
//!
//! let params = SamplingParams { temperature: 0.7, seed: 42, ..SamplingParams::default() };
//! let mut sampler = Sampler::new(params)?;
//! let mut stop = StopChecker::new(&[2], &["\n\n".to_string()], 16);
//! let logits = [0.1_f32, 2.0, 0.5, -1.0];
//! let mut history = Vec::new();
//! loop {
//!     let id = sampler.sample(&logits, &history)?;
//!     history.push(id);
//!     if let Some(reason) = stop.push_token(id) {
//!         assert!(matches!(reason, StopReason::EndOfGeneration(2) | StopReason::MaxTokens));
//!         break;
//!     }
//! }
//! # Ok::<(), attend_models::sampling::SamplingError>(())
//! ```

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Errors from invalid sampling settings or logits.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplingError {
    #[error("invalid temperature {0}: expected a finite value >= 0 (0 is greedy)")]
    InvalidTemperature(f32),
    #[error("invalid top-p {0}: expected a value in (0, 1] (1 disables it)")]
    InvalidTopP(f32),
    #[error("invalid min-p {0}: expected a value in [0, 1] (0 disables it)")]
    InvalidMinP(f32),
    #[error("invalid repetition penalty {0}: expected a finite value > 0 (1 disables it)")]
    InvalidRepeatPenalty(f32),
    #[error("the logits are empty")]
    EmptyLogits,
    #[error("logit {index} is {value}: the model produced a non-finite logit, so the model file may be corrupt (logits must be finite or -inf)")]
    InvalidLogit { index: usize, value: f32 },
    #[error("every logit is -inf, so no token can be sampled")]
    NoCandidates,
    #[error("token id {id} in the history is out of range for {n_vocab} logits")]
    HistoryIdOutOfRange { id: u32, n_vocab: usize },
}

/// Sampling settings. The defaults are llama.cpp's.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Divides the logits before the draw; 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keeps the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keeps the smallest set of most likely tokens whose probability sums to at
    /// least `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Keeps tokens whose probability is at least `min_p` times the largest; 0 keeps all.
    pub min_p: f32,
    /// Divides positive logits and multiplies negative ones of tokens seen in the
    /// last `repeat_last_n` tokens; 1 disables it.
    pub repeat_penalty: f32,
    /// How many of the most recent tokens the repetition penalty looks at; 0 disables it.
    pub repeat_last_n: usize,
    /// Seed of the random draw.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: always the most likely token, no penalty.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            ..Self::default()
        }
    }

    /// Checks every setting.
    ///
    /// # Errors
    /// The [`SamplingError`] naming the first invalid value.
    pub fn validate(&self) -> Result<(), SamplingError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(SamplingError::InvalidTemperature(self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(SamplingError::InvalidTopP(self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(SamplingError::InvalidMinP(self.min_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(SamplingError::InvalidRepeatPenalty(self.repeat_penalty));
        }
        Ok(())
    }
}

/// A token id with its logit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub id: u32,
    pub logit: f32,
}

/// Applies the repetition penalty in place to the tokens in `recent`, once per
/// distinct token: a positive logit is divided by `penalty`, any other multiplied by
/// it, as llama.cpp's `penalties` sampler does.
///
/// # Errors
/// [`SamplingError::HistoryIdOutOfRange`] when an id in `recent` has no logit.
pub fn apply_repetition_penalty(
    logits: &mut [f32],
    recent: &[u32],
    penalty: f32,
) -> Result<(), SamplingError> {
    if penalty == 1.0 || recent.is_empty() {
        return Ok(());
    }
    let mut seen = vec![false; logits.len()];
    for &id in recent {
        let index = id as usize;
        if index >= logits.len() {
            return Err(SamplingError::HistoryIdOutOfRange {
                id,
                n_vocab: logits.len(),
            });
        }
        if seen[index] {
            continue;
        }
        seen[index] = true;
        let logit = &mut logits[index];
        if *logit > 0.0 {
            *logit /= penalty;
        } else {
            *logit *= penalty;
        }
    }
    Ok(())
}

/// Orders candidates by logit, largest first, ties by lower id.
fn descending(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// Sorts candidates by logit, largest first, ties by lower id.
fn sort_descending(candidates: &mut [Candidate]) {
    candidates.sort_by(descending);
}

/// Softmax probabilities of candidates, in f64.
fn probabilities(candidates: &[Candidate]) -> Vec<f64> {
    let max = candidates
        .iter()
        .map(|c| c.logit)
        .fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = candidates
        .iter()
        .map(|c| (c.logit as f64 - max).exp())
        .collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Keeps the `k` candidates with the largest logits (ties by lower id), sorted; 0 keeps
/// all in their order.
pub fn top_k(candidates: &mut Vec<Candidate>, k: usize) {
    if k == 0 {
        return;
    }
    if k < candidates.len() {
        // Partition first so only the k kept candidates are sorted: with a vocabulary
        // of 262144 a full sort per token would cost more than the rest of sampling.
        candidates.select_nth_unstable_by(k - 1, descending);
        candidates.truncate(k);
    }
    sort_descending(candidates);
}

/// Keeps the smallest prefix of the sorted candidates whose probability sums to at
/// least `p`, and at least one candidate; `p >= 1` keeps all.
pub fn top_p(candidates: &mut Vec<Candidate>, p: f32) {
    if p >= 1.0 || candidates.is_empty() {
        return;
    }
    let len = candidates.len();
    let max_logit = candidates
        .iter()
        .map(|c| c.logit)
        .fold(f32::NEG_INFINITY, f32::max) as f64;
    let total: f64 = candidates
        .iter()
        .map(|c| (c.logit as f64 - max_logit).exp())
        .sum();

    // The kept set is a prefix of the sorted order. Model logits are usually peaked,
    // so first sort only the 256 largest; sort everything when they do not reach `p`.
    let mut head = len.min(256);
    loop {
        if head < len {
            candidates.select_nth_unstable_by(head - 1, descending);
        }
        sort_descending(&mut candidates[..head]);
        let mut cumulative = 0.0;
        for index in 0..head {
            cumulative += (candidates[index].logit as f64 - max_logit).exp() / total;
            if cumulative >= p as f64 {
                candidates.truncate(index + 1);
                return;
            }
        }
        if head == len {
            return;
        }
        // NOTE: a flat distribution ends up here and pays for a full sort.
        head = len;
    }
}

/// Keeps candidates whose probability is at least `p` times the largest one, that
/// is whose logit is at least `max_logit + ln(p)`; `p <= 0` keeps all.
pub fn min_p(candidates: &mut Vec<Candidate>, p: f32) {
    if p <= 0.0 || candidates.is_empty() {
        return;
    }
    let max_logit = candidates
        .iter()
        .map(|c| c.logit)
        .fold(f32::NEG_INFINITY, f32::max);
    let threshold = max_logit + p.ln();
    candidates.retain(|c| c.logit >= threshold);
}

/// Divides logits by `temperature`; at 0, keeps only the largest logit (lower id on ties).
pub fn apply_temperature(candidates: &mut Vec<Candidate>, temperature: f32) {
    if temperature <= 0.0 {
        sort_descending(candidates);
        candidates.truncate(1);
        return;
    }
    for candidate in candidates.iter_mut() {
        candidate.logit /= temperature;
    }
}

/// Returns the id with the largest logit, lower id on ties.
///
/// # Errors
/// [`SamplingError::EmptyLogits`], [`SamplingError::InvalidLogit`] for NaN or +inf,
/// [`SamplingError::NoCandidates`] when every logit is -inf.
pub fn argmax(logits: &[f32]) -> Result<u32, SamplingError> {
    check_logits(logits)?;
    let mut best = 0;
    for (index, &logit) in logits.iter().enumerate() {
        if logit > logits[best] {
            best = index;
        }
    }
    if logits[best] == f32::NEG_INFINITY {
        return Err(SamplingError::NoCandidates);
    }
    Ok(best as u32)
}

fn check_logits(logits: &[f32]) -> Result<(), SamplingError> {
    if logits.is_empty() {
        return Err(SamplingError::EmptyLogits);
    }
    match logits
        .iter()
        .position(|&l| l.is_nan() || l == f32::INFINITY)
    {
        Some(index) => Err(SamplingError::InvalidLogit {
            index,
            value: logits[index],
        }),
        None => Ok(()),
    }
}

/// Picks next tokens with a fixed set of [`SamplingParams`] and its own seeded RNG.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    scratch: Vec<f32>,
}

impl Sampler {
    /// Creates a sampler whose RNG is seeded with `params.seed`.
    ///
    /// # Errors
    /// The [`SamplingError`] naming the first invalid setting.
    pub fn new(params: SamplingParams) -> Result<Self, SamplingError> {
        params.validate()?;
        Ok(Self {
            rng: StdRng::seed_from_u64(params.seed),
            params,
            scratch: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (one per vocabulary entry), penalising the
    /// tokens of `history` (all tokens so far, oldest first) as the settings specify.
    ///
    /// # Shapes
    /// `logits: [n_vocab]`; `history: [n_tokens]` with ids below `n_vocab`.
    ///
    /// # Errors
    /// [`SamplingError::InvalidLogit`] for a NaN or +inf logit,
    /// [`SamplingError::EmptyLogits`], [`SamplingError::NoCandidates`] when every
    /// logit is -inf, [`SamplingError::HistoryIdOutOfRange`].
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32, SamplingError> {
        check_logits(logits)?;
        let params = &self.params;

        // Repetition penalty over the last `repeat_last_n` tokens, on a copy.
        let window_start = history.len().saturating_sub(params.repeat_last_n);
        let recent = &history[window_start..];
        let logits = if params.repeat_penalty != 1.0 && !recent.is_empty() {
            self.scratch.clear();
            self.scratch.extend_from_slice(logits);
            apply_repetition_penalty(&mut self.scratch, recent, params.repeat_penalty)?;
            &self.scratch
        } else {
            logits
        };

        if params.temperature == 0.0 {
            return argmax(logits);
        }

        // Filters, in llama.cpp's order, over the tokens that can still be drawn.
        let mut candidates: Vec<Candidate> = logits
            .iter()
            .enumerate()
            .filter(|(_, &logit)| logit > f32::NEG_INFINITY)
            .map(|(id, &logit)| Candidate {
                id: id as u32,
                logit,
            })
            .collect();
        if candidates.is_empty() {
            return Err(SamplingError::NoCandidates);
        }
        top_k(&mut candidates, params.top_k);
        top_p(&mut candidates, params.top_p);
        min_p(&mut candidates, params.min_p);
        apply_temperature(&mut candidates, params.temperature);

        // Draw from the softmax of what is left.
        let probs = probabilities(&candidates);
        let draw: f64 = self.rng.random();
        let mut cumulative = 0.0;
        for (candidate, prob) in candidates.iter().zip(&probs) {
            cumulative += prob;
            if draw < cumulative {
                return Ok(candidate.id);
            }
        }
        // Rounding can leave the sum just under the draw; the last candidate takes it.
        Ok(candidates[candidates.len() - 1].id)
    }
}

/// The reason generation stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token (not part of the text).
    EndOfGeneration(u32),
    /// The decoded text reached this stop string (not part of the text).
    StopString(String),
    /// The token budget ran out.
    MaxTokens,
    /// The session's context has no room for another token.
    ContextFull,
}

/// Watches generated tokens and text for the stop conditions.
///
/// Text is passed through [`StopChecker::push_text`], which holds back any tail that
/// could still grow into a stop string, so a stop string never reaches the output,
/// not even in part.
#[derive(Clone, Debug)]
pub struct StopChecker {
    eog_ids: Vec<u32>,
    stop_strings: Vec<String>,
    max_tokens: usize,
    tokens_seen: usize,
    held_text: String,
}

/// The output of [`StopChecker::push_text`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopOutput {
    /// Text safe to show now.
    pub text: String,
    /// Set when a stop string was reached; `text` ends right before it.
    pub stop: Option<StopReason>,
}

impl StopChecker {
    /// Creates a checker that stops at any of `eog_ids`, at any of `stop_strings`
    /// (empty ones are ignored) or after `max_tokens` tokens. It receives tokens only
    /// after they are generated, so a caller with `max_tokens == 0` must not start.
    pub fn new(eog_ids: &[u32], stop_strings: &[String], max_tokens: usize) -> Self {
        Self {
            eog_ids: eog_ids.to_vec(),
            stop_strings: stop_strings
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            max_tokens,
            tokens_seen: 0,
            held_text: String::new(),
        }
    }

    /// Records one generated token; returns why generation must stop, if it must.
    /// An end-of-generation token stops at once and should not be decoded.
    pub fn push_token(&mut self, id: u32) -> Option<StopReason> {
        self.tokens_seen += 1;
        if self.eog_ids.contains(&id) {
            return Some(StopReason::EndOfGeneration(id));
        }
        if self.tokens_seen >= self.max_tokens {
            return Some(StopReason::MaxTokens);
        }
        None
    }

    /// Adds decoded text and returns what can be shown; see [`StopOutput`].
    pub fn push_text(&mut self, piece: &str) -> StopOutput {
        self.held_text.push_str(piece);

        // The earliest stop string wins; among those at one position, the longest.
        let found = self
            .stop_strings
            .iter()
            .filter_map(|stop| self.held_text.find(stop.as_str()).map(|pos| (pos, stop)))
            .min_by(|a, b| a.0.cmp(&b.0).then(b.1.len().cmp(&a.1.len())));
        if let Some((pos, stop)) = found {
            let stop = stop.clone();
            let text = self.held_text[..pos].to_string();
            self.held_text.clear();
            return StopOutput {
                text,
                stop: Some(StopReason::StopString(stop)),
            };
        }

        // Hold back the longest tail that is a proper prefix of some stop string.
        let mut keep_from = self.held_text.len();
        for (start, _) in self.held_text.char_indices() {
            let tail = &self.held_text[start..];
            if self.stop_strings.iter().any(|stop| stop.starts_with(tail)) {
                keep_from = start;
                break;
            }
        }
        let text = self.held_text[..keep_from].to_string();
        self.held_text.drain(..keep_from);
        StopOutput { text, stop: None }
    }

    /// Returns the text still held back, at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held_text)
    }
}
