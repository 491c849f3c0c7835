//! Masks and score modifications: which keys a query sees, and how its scores change.
//!
//! A [`MaskMod`] decides visibility per `(batch_idx, head_idx, q_idx, kv_idx)`; a
//! [`ScoreMod`] rewrites a scaled score. Both are generic parameters of the kernel, so
//! closures and the built-ins here are monomorphised into it rather than boxed.
//! Indices are positions inside one sequence (for varlen batches, inside sequence
//! `batch_idx`).
//!
//! Before the tiles run, the kernel asks [`MaskMod::classify_block`] about each
//! (query block, key block) pair. Empty blocks are skipped and full blocks evaluate no
//! mask, so the built-in windows cost time proportional to the visible pairs.
//!
//! Causal alignment is bottom-right: with `q_len` queries and `kv_len` keys, query
//! `q_idx` sits at position `q_idx + kv_len - q_len`. For `q_len = 2, kv_len = 4`:
//!
//! ```text
//!          kv 0 1 2 3
//! q 0 (p=2)   x x x .
//! q 1 (p=3)   x x x x
//! ```

use std::ops::Range;

use crate::error::AttendError;

/// How a (query block, key block) pair is treated by the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockClass {
    /// No pair in the block is visible: the block is skipped.
    Empty,
    /// Some pairs are visible: the mask is evaluated per pair.
    Partial,
    /// Every pair is visible: the mask is not evaluated.
    Full,
}

/// A mask: `is_visible(batch_idx, head_idx, q_idx, kv_idx)` is true when the query may
/// attend to the key.
///
/// Any `Fn(usize, usize, usize, usize) -> bool + Sync` closure is a `MaskMod`.
pub trait MaskMod: Sync {
    /// Returns true when query `q_idx` may attend to key `kv_idx`.
    fn is_visible(&self, batch_idx: usize, head_idx: usize, q_idx: usize, kv_idx: usize) -> bool;

    /// Classifies the block `q_range x kv_range` of one (batch, head).
    ///
    /// The default evaluates [`MaskMod::is_visible`] until it has seen both a visible
    /// and a hidden pair, so it is exact but costs up to one call per pair for empty
    /// and full blocks. Structured masks override it with an O(1) rule. An override
    /// must never return `Empty` or `Full` for a block where that is not true.
    fn classify_block(
        &self,
        batch_idx: usize,
        head_idx: usize,
        q_range: Range<usize>,
        kv_range: Range<usize>,
    ) -> BlockClass {
        let mut seen_visible = false;
        let mut seen_hidden = false;
        for q_idx in q_range {
            for kv_idx in kv_range.clone() {
                if self.is_visible(batch_idx, head_idx, q_idx, kv_idx) {
                    seen_visible = true;
                } else {
                    seen_hidden = true;
                }
                if seen_visible && seen_hidden {
                    return BlockClass::Partial;
                }
            }
        }
        if seen_visible {
            BlockClass::Full
        } else {
            BlockClass::Empty
        }
    }
}

impl<F> MaskMod for F
where
    F: Fn(usize, usize, usize, usize) -> bool + Sync,
{
    #[inline]
    fn is_visible(&self, batch_idx: usize, head_idx: usize, q_idx: usize, kv_idx: usize) -> bool {
        self(batch_idx, head_idx, q_idx, kv_idx)
    }
}

/// A score modification applied to each scaled score `scale * q.k` before the mask.
///
/// Any `Fn(f32, usize, usize, usize, usize) -> f32 + Sync` closure, called as
/// `f(score, batch_idx, head_idx, q_idx, kv_idx)`, is a `ScoreMod`.
pub trait ScoreMod: Sync {
    /// True only for [`NoScoreMod`], letting the kernel skip the per-score pass.
    const IS_IDENTITY: bool = false;

    /// Returns the modified score.
    fn apply(
        &self,
        score: f32,
        batch_idx: usize,
        head_idx: usize,
        q_idx: usize,
        kv_idx: usize,
    ) -> f32;

    /// Returns the modified score in f64, for the reference implementation.
    ///
    /// The default rounds through [`ScoreMod::apply`]; built-ins compute in f64.
    fn apply_f64(
        &self,
        score: f64,
        batch_idx: usize,
        head_idx: usize,
        q_idx: usize,
        kv_idx: usize,
    ) -> f64 {
        f64::from(self.apply(score as f32, batch_idx, head_idx, q_idx, kv_idx))
    }
}

impl<F> ScoreMod for F
where
    F: Fn(f32, usize, usize, usize, usize) -> f32 + Sync,
{
    #[inline]
    fn apply(
        &self,
        score: f32,
        batch_idx: usize,
        head_idx: usize,
        q_idx: usize,
        kv_idx: usize,
    ) -> f32 {
        self(score, batch_idx, head_idx, q_idx, kv_idx)
    }
}

/// The mask that hides nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMask;

impl MaskMod for NoMask {
    #[inline]
    fn is_visible(&self, _: usize, _: usize, _: usize, _: usize) -> bool {
        true
    }

    fn classify_block(&self, _: usize, _: usize, q: Range<usize>, kv: Range<usize>) -> BlockClass {
        if q.is_empty() || kv.is_empty() {
            BlockClass::Empty
        } else {
            BlockClass::Full
        }
    }
}

/// The score modification that changes nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoScoreMod;

impl ScoreMod for NoScoreMod {
    const IS_IDENTITY: bool = true;

    #[inline]
    fn apply(&self, score: f32, _: usize, _: usize, _: usize, _: usize) -> f32 {
        score
    }

    fn apply_f64(&self, score: f64, _: usize, _: usize, _: usize, _: usize) -> f64 {
        score
    }
}

/// The offset `kv_len - q_len` that aligns queries bottom-right, per sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DiagonalOffsets {
    Uniform(i64),
    PerSequence(Vec<i64>),
}

impl DiagonalOffsets {
    fn uniform(q_len: usize, kv_len: usize) -> Self {
        DiagonalOffsets::Uniform(kv_len as i64 - q_len as i64)
    }

    fn varlen(cu_seqlens_q: &[usize], cu_seqlens_k: &[usize]) -> Result<Self, AttendError> {
        crate::flash::check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, None)?;
        crate::flash::check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, None)?;
        if cu_seqlens_q.len() != cu_seqlens_k.len() {
            return Err(AttendError::BufferLength {
                buffer: "cu_seqlens_k",
                found: cu_seqlens_k.len(),
                expected: cu_seqlens_q.len(),
            });
        }
        let offsets = cu_seqlens_q
            .windows(2)
            .zip(cu_seqlens_k.windows(2))
            .map(|(q, k)| (k[1] - k[0]) as i64 - (q[1] - q[0]) as i64)
            .collect();
        Ok(DiagonalOffsets::PerSequence(offsets))
    }

    /// Returns the offset for `batch_idx`, or `None` past the last sequence.
    #[inline]
    fn get(&self, batch_idx: usize) -> Option<i64> {
        match self {
            DiagonalOffsets::Uniform(offset) => Some(*offset),
            DiagonalOffsets::PerSequence(offsets) => offsets.get(batch_idx).copied(),
        }
    }
}

/// A local window `(left, right)` around each query's bottom-right aligned position.
///
/// The query at aligned position `p = q_idx + kv_len - q_len` sees key `kv_idx` iff
/// `p - left <= kv_idx <= p + right`; `None` leaves that side unbounded. Causal is
/// `(None, Some(0))`. A model's `sliding_window = W` (the query and the `W - 1` keys
/// before it) is `(Some(W - 1), Some(0))`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    left: Option<usize>,
    right: Option<usize>,
    offsets: DiagonalOffsets,
}

impl Window {
    /// Creates a window for sequences of `q_len` queries and `kv_len` keys.
    pub fn new(left: Option<usize>, right: Option<usize>, q_len: usize, kv_len: usize) -> Self {
        Self {
            left,
            right,
            offsets: DiagonalOffsets::uniform(q_len, kv_len),
        }
    }

    /// Creates the causal mask, bottom-right aligned.
    pub fn causal(q_len: usize, kv_len: usize) -> Self {
        Self::new(None, Some(0), q_len, kv_len)
    }

    /// Creates a window for a varlen batch, aligning each sequence bottom-right.
    ///
    /// # Errors
    /// [`AttendError::InvalidOffsets`] when an offset list is empty, does not start at
    /// 0 or decreases; [`AttendError::BufferLength`] when the two lists differ in length.
    pub fn varlen(
        left: Option<usize>,
        right: Option<usize>,
        cu_seqlens_q: &[usize],
        cu_seqlens_k: &[usize],
    ) -> Result<Self, AttendError> {
        Ok(Self {
            left,
            right,
            offsets: DiagonalOffsets::varlen(cu_seqlens_q, cu_seqlens_k)?,
        })
    }

    /// Returns the `(left, right)` bounds.
    pub fn bounds(&self) -> (Option<usize>, Option<usize>) {
        (self.left, self.right)
    }
}

impl MaskMod for Window {
    #[inline]
    fn is_visible(&self, batch_idx: usize, _: usize, q_idx: usize, kv_idx: usize) -> bool {
        let Some(offset) = self.offsets.get(batch_idx) else {
            return false;
        };
        let position = q_idx as i64 + offset;
        let kv = kv_idx as i64;
        let after_left = self.left.is_none_or(|left| kv >= position - left as i64);
        let before_right = self.right.is_none_or(|right| kv <= position + right as i64);
        after_left && before_right
    }

    fn classify_block(
        &self,
        batch_idx: usize,
        _: usize,
        q_range: Range<usize>,
        kv_range: Range<usize>,
    ) -> BlockClass {
        let Some(offset) = self.offsets.get(batch_idx) else {
            return BlockClass::Empty;
        };
        if q_range.is_empty() || kv_range.is_empty() {
            return BlockClass::Empty;
        }

        // The union of the windows of consecutive queries is one interval, because
        // neighbouring windows are shifted by one and each holds at least one position.
        let first_position = q_range.start as i64 + offset;
        let last_position = q_range.end as i64 - 1 + offset;
        let first_kv = kv_range.start as i64;
        let last_kv = kv_range.end as i64 - 1;
        let (left_empty, left_full) = match self.left {
            None => (false, true),
            Some(left) => {
                let left = left as i64;
                (
                    last_kv < first_position - left,
                    first_kv >= last_position - left,
                )
            }
        };
        let (right_empty, right_full) = match self.right {
            None => (false, true),
            Some(right) => {
                let right = right as i64;
                (
                    first_kv > last_position + right,
                    last_kv <= first_position + right,
                )
            }
        };
        if left_empty || right_empty {
            BlockClass::Empty
        } else if left_full && right_full {
            BlockClass::Full
        } else {
            BlockClass::Partial
        }
    }
}

/// Prefix-LM: every query sees the first `prefix_len` keys and, causally, the keys at
/// or before its bottom-right aligned position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixLm {
    prefix_len: usize,
    causal: Window,
}

impl PrefixLm {
    /// Creates the mask for sequences of `q_len` queries and `kv_len` keys.
    pub fn new(prefix_len: usize, q_len: usize, kv_len: usize) -> Self {
        Self {
            prefix_len,
            causal: Window::causal(q_len, kv_len),
        }
    }
}

impl MaskMod for PrefixLm {
    #[inline]
    fn is_visible(&self, batch_idx: usize, head_idx: usize, q_idx: usize, kv_idx: usize) -> bool {
        kv_idx < self.prefix_len || self.causal.is_visible(batch_idx, head_idx, q_idx, kv_idx)
    }

    fn classify_block(
        &self,
        batch_idx: usize,
        head_idx: usize,
        q_range: Range<usize>,
        kv_range: Range<usize>,
    ) -> BlockClass {
        if q_range.is_empty() || kv_range.is_empty() {
            return BlockClass::Empty;
        }
        let prefix = if kv_range.end <= self.prefix_len {
            BlockClass::Full
        } else if kv_range.start >= self.prefix_len {
            BlockClass::Empty
        } else {
            BlockClass::Partial
        };
        let causal = self
            .causal
            .classify_block(batch_idx, head_idx, q_range, kv_range);
        union_class(prefix, causal)
    }
}

/// A document mask for packed sequences: a query sees a key only within its own document.
///
/// Document ids must be non-decreasing along the sequence, as they are when documents
/// are packed one after another; that lets blocks be classified in O(1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentMask {
    q_doc_ids: Vec<u32>,
    kv_doc_ids: Vec<u32>,
}

impl DocumentMask {
    /// Creates the mask from the document id of each query and each key.
    ///
    /// # Errors
    /// [`AttendError::UnsortedDocumentIds`] when either list decreases.
    pub fn new(q_doc_ids: Vec<u32>, kv_doc_ids: Vec<u32>) -> Result<Self, AttendError> {
        for (name, ids) in [("q_doc_ids", &q_doc_ids), ("kv_doc_ids", &kv_doc_ids)] {
            if let Some(index) = ids.windows(2).position(|pair| pair[1] < pair[0]) {
                return Err(AttendError::UnsortedDocumentIds {
                    name,
                    index: index + 1,
                    previous: ids[index],
                    found: ids[index + 1],
                });
            }
        }
        Ok(Self {
            q_doc_ids,
            kv_doc_ids,
        })
    }

    /// Creates the mask for self-attention over documents packed at the cumulative
    /// offsets `cu_seqlens` (`[0, len_0, len_0 + len_1, ...]`).
    ///
    /// # Errors
    /// [`AttendError::InvalidOffsets`] when `cu_seqlens` is empty, does not start at 0
    /// or decreases.
    pub fn from_cu_seqlens(cu_seqlens: &[usize]) -> Result<Self, AttendError> {
        crate::flash::check_cu_seqlens("cu_seqlens", cu_seqlens, None)?;
        let mut ids = Vec::with_capacity(cu_seqlens.last().copied().unwrap_or(0));
        for (doc_idx, pair) in cu_seqlens.windows(2).enumerate() {
            ids.extend(std::iter::repeat_n(doc_idx as u32, pair[1] - pair[0]));
        }
        Self::new(ids.clone(), ids)
    }
}

impl MaskMod for DocumentMask {
    #[inline]
    fn is_visible(&self, _: usize, _: usize, q_idx: usize, kv_idx: usize) -> bool {
        match (self.q_doc_ids.get(q_idx), self.kv_doc_ids.get(kv_idx)) {
            (Some(q_doc), Some(kv_doc)) => q_doc == kv_doc,
            _ => false,
        }
    }

    fn classify_block(&self, _: usize, _: usize, q: Range<usize>, kv: Range<usize>) -> BlockClass {
        let q_ids = self.q_doc_ids.get(q.clone());
        let kv_ids = self.kv_doc_ids.get(kv.clone());
        let (Some(q_ids), Some(kv_ids)) = (q_ids, kv_ids) else {
            // Indices past the ids are hidden; let the per-pair rule decide.
            return if q.is_empty() || kv.is_empty() {
                BlockClass::Empty
            } else {
                BlockClass::Partial
            };
        };
        let (Some(q_first), Some(q_last)) = (q_ids.first(), q_ids.last()) else {
            return BlockClass::Empty;
        };
        let (Some(kv_first), Some(kv_last)) = (kv_ids.first(), kv_ids.last()) else {
            return BlockClass::Empty;
        };
        if q_last < kv_first || kv_last < q_first {
            BlockClass::Empty
        } else if q_first == q_last && kv_first == kv_last && q_first == kv_first {
            BlockClass::Full
        } else {
            BlockClass::Partial
        }
    }
}

/// Both masks: a pair is visible when `A` and `B` both show it.
#[derive(Debug, Clone, Copy)]
pub struct And<A, B>(pub A, pub B);

impl<A: MaskMod, B: MaskMod> MaskMod for And<A, B> {
    #[inline]
    fn is_visible(&self, batch_idx: usize, head_idx: usize, q_idx: usize, kv_idx: usize) -> bool {
        self.0.is_visible(batch_idx, head_idx, q_idx, kv_idx)
            && self.1.is_visible(batch_idx, head_idx, q_idx, kv_idx)
    }

    fn classify_block(&self, b: usize, h: usize, q: Range<usize>, kv: Range<usize>) -> BlockClass {
        let first = self.0.classify_block(b, h, q.clone(), kv.clone());
        if first == BlockClass::Empty {
            return BlockClass::Empty;
        }
        match (first, self.1.classify_block(b, h, q, kv)) {
            (_, BlockClass::Empty) => BlockClass::Empty,
            (BlockClass::Full, BlockClass::Full) => BlockClass::Full,
            _ => BlockClass::Partial,
        }
    }
}

/// Either mask: a pair is visible when `A` or `B` shows it.
#[derive(Debug, Clone, Copy)]
pub struct Or<A, B>(pub A, pub B);

impl<A: MaskMod, B: MaskMod> MaskMod for Or<A, B> {
    #[inline]
    fn is_visible(&self, batch_idx: usize, head_idx: usize, q_idx: usize, kv_idx: usize) -> bool {
        self.0.is_visible(batch_idx, head_idx, q_idx, kv_idx)
            || self.1.is_visible(batch_idx, head_idx, q_idx, kv_idx)
    }

    fn classify_block(&self, b: usize, h: usize, q: Range<usize>, kv: Range<usize>) -> BlockClass {
        let first = self.0.classify_block(b, h, q.clone(), kv.clone());
        if first == BlockClass::Full {
            return BlockClass::Full;
        }
        union_class(first, self.1.classify_block(b, h, q, kv))
    }
}

fn union_class(a: BlockClass, b: BlockClass) -> BlockClass {
    match (a, b) {
        (BlockClass::Full, _) | (_, BlockClass::Full) => BlockClass::Full,
        (BlockClass::Empty, BlockClass::Empty) => BlockClass::Empty,
        _ => BlockClass::Partial,
    }
}

/// Logit soft-capping: `score -> cap * tanh(score / cap)` (Gemma 2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Softcap {
    cap: f32,
}

impl Softcap {
    /// Creates the soft cap.
    ///
    /// # Errors
    /// [`AttendError::InvalidSoftcap`] unless `cap` is finite and positive.
    pub fn new(cap: f32) -> Result<Self, AttendError> {
        if !(cap.is_finite() && cap > 0.0) {
            return Err(AttendError::InvalidSoftcap { softcap: cap });
        }
        Ok(Self { cap })
    }
}

impl ScoreMod for Softcap {
    #[inline]
    fn apply(&self, score: f32, _: usize, _: usize, _: usize, _: usize) -> f32 {
        self.cap * (score / self.cap).tanh()
    }

    fn apply_f64(&self, score: f64, _: usize, _: usize, _: usize, _: usize) -> f64 {
        let cap = f64::from(self.cap);
        cap * (score / cap).tanh()
    }
}

/// ALiBi: adds `-slope[head_idx] * |p - kv_idx|` to each score, where `p` is the
/// query's bottom-right aligned position.
#[derive(Debug, Clone, PartialEq)]
pub struct Alibi {
    slopes: Vec<f32>,
    offsets: DiagonalOffsets,
}

impl Alibi {
    /// Creates the bias for sequences of `q_len` queries and `kv_len` keys, with one
    /// slope per query head. A head index past `slopes` gets no bias.
    pub fn new(slopes: Vec<f32>, q_len: usize, kv_len: usize) -> Self {
        Self {
            slopes,
            offsets: DiagonalOffsets::uniform(q_len, kv_len),
        }
    }

    /// Returns the standard slopes for `n_heads` heads: `2^(-8 i / n)` for
    /// `i = 1..=n` when `n` is a power of two; otherwise those of the next lower power
    /// of two followed by every other slope of twice that power (Press et al., 2022).
    pub fn standard_slopes(n_heads: usize) -> Vec<f32> {
        fn power_of_two_slopes(n: usize) -> Vec<f32> {
            (1..=n)
                .map(|i| 2f32.powf(-8.0 * i as f32 / n as f32))
                .collect()
        }
        if n_heads == 0 {
            return Vec::new();
        }
        if n_heads.is_power_of_two() {
            return power_of_two_slopes(n_heads);
        }
        let lower = 1usize << n_heads.ilog2();
        let mut slopes = power_of_two_slopes(lower);
        slopes.extend(
            power_of_two_slopes(2 * lower)
                .into_iter()
                .step_by(2)
                .take(n_heads - lower),
        );
        slopes
    }

    #[inline]
    fn distance(&self, batch_idx: usize, q_idx: usize, kv_idx: usize) -> f64 {
        let offset = self.offsets.get(batch_idx).unwrap_or(0);
        (q_idx as i64 + offset - kv_idx as i64).unsigned_abs() as f64
    }
}

impl ScoreMod for Alibi {
    #[inline]
    fn apply(
        &self,
        score: f32,
        batch_idx: usize,
        head_idx: usize,
        q_idx: usize,
        kv_idx: usize,
    ) -> f32 {
        let slope = self.slopes.get(head_idx).copied().unwrap_or(0.0);
        score - slope * self.distance(batch_idx, q_idx, kv_idx) as f32
    }

    fn apply_f64(
        &self,
        score: f64,
        batch_idx: usize,
        head_idx: usize,
        q_idx: usize,
        kv_idx: usize,
    ) -> f64 {
        let slope = f64::from(self.slopes.get(head_idx).copied().unwrap_or(0.0));
        score - slope * self.distance(batch_idx, q_idx, kv_idx)
    }
}

/// Applies `A`, then `B`.
#[derive(Debug, Clone, Copy)]
pub struct Chain<A, B>(pub A, pub B);

impl<A: ScoreMod, B: ScoreMod> ScoreMod for Chain<A, B> {
    const IS_IDENTITY: bool = A::IS_IDENTITY && B::IS_IDENTITY;

    #[inline]
    fn apply(&self, score: f32, b: usize, h: usize, q: usize, kv: usize) -> f32 {
        self.1.apply(self.0.apply(score, b, h, q, kv), b, h, q, kv)
    }

    fn apply_f64(&self, score: f64, b: usize, h: usize, q: usize, kv: usize) -> f64 {
        self.1
            .apply_f64(self.0.apply_f64(score, b, h, q, kv), b, h, q, kv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks a classification against the per-pair rule for every block of a grid.
    fn assert_classification_exact(mask: &impl MaskMod, q_len: usize, kv_len: usize, block: usize) {
        for q0 in (0..q_len).step_by(block) {
            for k0 in (0..kv_len).step_by(block) {
                let q = q0..(q0 + block).min(q_len);
                let kv = k0..(k0 + block).min(kv_len);
                let visible: Vec<bool> = q
                    .clone()
                    .flat_map(|i| kv.clone().map(move |j| (i, j)))
                    .map(|(i, j)| mask.is_visible(0, 0, i, j))
                    .collect();
                let expected = if visible.iter().all(|&x| x) {
                    BlockClass::Full
                } else if visible.iter().any(|&x| x) {
                    BlockClass::Partial
                } else {
                    BlockClass::Empty
                };
                assert_eq!(
                    mask.classify_block(0, 0, q.clone(), kv.clone()),
                    expected,
                    "block {q:?} x {kv:?}"
                );
            }
        }
    }

    #[test]
    fn window_classification_matches_pairs() {
        for (q_len, kv_len) in [(13, 13), (5, 17), (17, 5), (1, 9)] {
            for left in [None, Some(0), Some(1), Some(4), Some(40)] {
                for right in [None, Some(0), Some(2), Some(40)] {
                    let mask = Window::new(left, right, q_len, kv_len);
                    for block in [1, 3, 4] {
                        assert_classification_exact(&mask, q_len, kv_len, block);
                    }
                }
            }
        }
    }

    #[test]
    fn window_edges_are_inclusive() {
        // Sliding window W = 3: the query sees itself and the 2 keys before it.
        let mask = Window::new(Some(2), Some(0), 8, 8);
        assert!(mask.is_visible(0, 0, 5, 3));
        assert!(mask.is_visible(0, 0, 5, 5));
        assert!(!mask.is_visible(0, 0, 5, 2));
        assert!(!mask.is_visible(0, 0, 5, 6));
    }

    #[test]
    fn causal_aligns_bottom_right() {
        let mask = Window::causal(2, 4);
        assert!(mask.is_visible(0, 0, 0, 2));
        assert!(!mask.is_visible(0, 0, 0, 3));
        assert!(mask.is_visible(0, 0, 1, 3));
        // More queries than keys: the first queries see nothing.
        let mask = Window::causal(4, 2);
        assert!(!mask.is_visible(0, 0, 1, 0));
        assert!(mask.is_visible(0, 0, 2, 0));
    }

    #[test]
    fn prefix_lm_and_documents_classify_exactly() {
        assert_classification_exact(&PrefixLm::new(5, 12, 12), 12, 12, 4);
        assert_classification_exact(&PrefixLm::new(5, 12, 12), 12, 12, 3);
        let docs = DocumentMask::from_cu_seqlens(&[0, 3, 3, 10, 12]).unwrap();
        assert_classification_exact(&docs, 12, 12, 4);
        assert_classification_exact(&docs, 12, 12, 2);
        let combined = And(docs.clone(), Window::causal(12, 12));
        assert_classification_exact(&combined, 12, 12, 4);
        let either = Or(
            Window::new(Some(1), Some(1), 12, 12),
            PrefixLm::new(2, 12, 12),
        );
        assert_classification_exact(&either, 12, 12, 4);
    }

    #[test]
    fn closure_classification_matches_pairs() {
        let mask = |_: usize, _: usize, q: usize, kv: usize| !(q + kv).is_multiple_of(5) || kv > 8;
        assert_classification_exact(&mask, 12, 12, 4);
    }

    #[test]
    fn document_ids_must_be_sorted() {
        let err = DocumentMask::new(vec![0, 1, 0], vec![0]).unwrap_err();
        assert_eq!(
            err,
            AttendError::UnsortedDocumentIds {
                name: "q_doc_ids",
                index: 2,
                previous: 1,
                found: 0
            }
        );
    }

    #[test]
    fn score_mods_compute_expected_values() {
        let cap = Softcap::new(2.0).unwrap();
        assert!((cap.apply(100.0, 0, 0, 0, 0) - 2.0).abs() < 1e-6);
        assert!(Softcap::new(0.0).is_err());
        assert!(Softcap::new(f32::NAN).is_err());
        let alibi = Alibi::new(vec![0.5, 0.25], 3, 5);
        // Query 0 sits at position 2; key 0 is 2 away.
        assert_eq!(alibi.apply(1.0, 0, 0, 0, 0), 0.0);
        assert_eq!(alibi.apply(1.0, 0, 1, 0, 0), 0.5);
        assert_eq!(Alibi::standard_slopes(8)[0], 0.5);
        assert_eq!(Alibi::standard_slopes(6).len(), 6);
    }
}
