//! Storage element types: f32, f16 and bf16, all computed in f32.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// The storage type of a tensor, as a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// Returns the lower-case name used on the command line (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// Returns the size of one element in bytes.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// An element type that q, k and v may be stored in. Arithmetic is always done in f32.
///
/// Sealed: implemented for `f32`, [`half::f16`] and [`half::bf16`] only.
pub trait Element: Copy + Send + Sync + Default + 'static + sealed::Sealed {
    /// The matching [`DType`] value.
    const DTYPE: DType;

    /// Converts to f32 exactly (every f16 and bf16 value is an f32 value).
    fn to_f32(self) -> f32;

    /// Converts from f32, rounding to nearest even.
    fn from_f32(value: f32) -> Self;

    /// Converts `src` into `dst` element by element.
    ///
    /// Both slices must have the same length; the shorter length is used otherwise.
    fn convert_to_f32(src: &[Self], dst: &mut [f32]);

    /// Returns the slice itself when `Self` is f32, so kernels can read it in place.
    fn as_f32_slice(values: &[Self]) -> Option<&[f32]>;

    /// Returns the slice itself when `Self` is bf16, for bf16 dot-product instructions.
    fn as_bf16_slice(_values: &[Self]) -> Option<&[bf16]> {
        None
    }
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;

    #[inline]
    fn to_f32(self) -> f32 {
        self
    }

    #[inline]
    fn from_f32(value: f32) -> Self {
        value
    }

    #[inline]
    fn convert_to_f32(src: &[Self], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        dst[..n].copy_from_slice(&src[..n]);
    }

    #[inline]
    fn as_f32_slice(values: &[Self]) -> Option<&[f32]> {
        Some(values)
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;

    #[inline]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    #[inline]
    fn from_f32(value: f32) -> Self {
        f16::from_f32(value)
    }

    #[inline]
    fn convert_to_f32(src: &[Self], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        src[..n].convert_to_f32_slice(&mut dst[..n]);
    }

    #[inline]
    fn as_f32_slice(_: &[Self]) -> Option<&[f32]> {
        None
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;

    #[inline]
    fn as_bf16_slice(values: &[Self]) -> Option<&[bf16]> {
        Some(values)
    }

    #[inline]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }

    #[inline]
    fn from_f32(value: f32) -> Self {
        bf16::from_f32(value)
    }

    #[inline]
    fn convert_to_f32(src: &[Self], dst: &mut [f32]) {
        // A bf16 value is the upper half of the f32 with the same bits; this plain
        // shift loop vectorises, unlike a call per element.
        for (dst, src) in dst.iter_mut().zip(src) {
            *dst = f32::from_bits(u32::from(src.to_bits()) << 16);
        }
    }

    #[inline]
    fn as_f32_slice(_: &[Self]) -> Option<&[f32]> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_round_trips() {
        let values = [0.0f32, 1.0, -2.5, 0.333_333_34, 65504.0];
        for &x in &values {
            assert_eq!(f32::from_f32(x).to_f32(), x);
            assert_eq!(f16::from_f32(x).to_f32(), f16::from_f32(x).to_f32());
            assert_eq!(
                <bf16 as Element>::to_f32(bf16::from_f32(x)),
                bf16::from_f32(x).to_f32()
            );
        }
        let src = [bf16::from_f32(1.5), bf16::from_f32(-3.0)];
        let mut dst = [0.0f32; 2];
        bf16::convert_to_f32(&src, &mut dst);
        assert_eq!(dst, [1.5, -3.0]);
    }
}
