//! The tensor element types that GGUF files store, with their block geometry.
//!
//! Type ids and block sizes follow ggml's `ggml_type` enum and `type_traits`
//! table (ggml.h and ggml.c in llama.cpp). Ids 4 and 5 (the removed Q4_2 and
//! Q4_3) and the IQ types 16 to 23 and 29 are not listed: a file that uses one
//! is rejected by the reader with the id it found.

use std::fmt;

/// Elements in one super-block of the K-quant formats (`QK_K` in ggml).
pub const QK_K: usize = 256;

/// A ggml tensor element type.
///
/// Quantized types store a row of `n` elements as `n / block_elems()` blocks of
/// `block_bytes()` bytes each; plain types have blocks of one element.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
}

impl GgmlType {
    /// Every type this crate knows, in id order.
    pub const ALL: [GgmlType; 20] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::BF16,
    ];

    /// Maps a GGUF tensor type id to the type, or `None` for an id this crate
    /// does not know.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.id() == id)
    }

    /// The id that GGUF files store for this type.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::Q8_K => 15,
            GgmlType::I8 => 24,
            GgmlType::I16 => 25,
            GgmlType::I32 => 26,
            GgmlType::I64 => 27,
            GgmlType::F64 => 28,
            GgmlType::BF16 => 30,
        }
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q8_1 => 32,
            GgmlType::Q2_K
            | GgmlType::Q3_K
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
            | GgmlType::Q8_K => QK_K,
            _ => 1,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::I32 => 4,
            GgmlType::F16 | GgmlType::BF16 | GgmlType::I16 => 2,
            GgmlType::I8 => 1,
            GgmlType::I64 | GgmlType::F64 => 8,
            // f16 scale + 32 4-bit quants
            GgmlType::Q4_0 => 2 + 16,
            // f16 scale and min + 32 4-bit quants
            GgmlType::Q4_1 => 2 + 2 + 16,
            // f16 scale + 32 high bits + 32 low nibbles
            GgmlType::Q5_0 => 2 + 4 + 16,
            // f16 scale and min + 32 high bits + 32 low nibbles
            GgmlType::Q5_1 => 2 + 2 + 4 + 16,
            // f16 scale + 32 int8 quants
            GgmlType::Q8_0 => 2 + 32,
            // f16 scale and f16 sum + 32 int8 quants
            GgmlType::Q8_1 => 2 + 2 + 32,
            // 16 packed 4-bit scale/min pairs + 64 bytes of 2-bit quants + f16 d and dmin
            GgmlType::Q2_K => 16 + 64 + 2 + 2,
            // 32 bytes of high bits + 64 bytes of 2-bit quants + 12 bytes of scales + f16 d
            GgmlType::Q3_K => 32 + 64 + 12 + 2,
            // f16 d and dmin + 12 bytes of 6-bit scales/mins + 128 bytes of nibbles
            GgmlType::Q4_K => 2 + 2 + 12 + 128,
            // f16 d and dmin + 12 bytes of scales/mins + 32 bytes of high bits + 128 bytes of nibbles
            GgmlType::Q5_K => 2 + 2 + 12 + 32 + 128,
            // 128 bytes of low nibbles + 64 bytes of high 2 bits + 16 int8 scales + f16 d
            GgmlType::Q6_K => 128 + 64 + 16 + 2,
            // f32 d + 256 int8 quants + 16 i16 block sums
            GgmlType::Q8_K => 4 + 256 + 32,
        }
    }

    /// Whether the type stores blocks of quantized values rather than plain numbers.
    pub fn is_quantized(self) -> bool {
        self.block_elems() > 1
    }

    /// Bytes taken by `elems` elements, or `None` when `elems` is not a whole
    /// number of blocks or the size overflows `usize`.
    pub fn bytes_for(self, elems: usize) -> Option<usize> {
        if !elems.is_multiple_of(self.block_elems()) {
            return None;
        }
        (elems / self.block_elems()).checked_mul(self.block_bytes())
    }

    /// The name ggml and the `gguf` Python package print for this type.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q8_1 => "Q8_1",
            GgmlType::Q2_K => "Q2_K",
            GgmlType::Q3_K => "Q3_K",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::Q8_K => "Q8_K",
            GgmlType::I8 => "I8",
            GgmlType::I16 => "I16",
            GgmlType::I32 => "I32",
            GgmlType::I64 => "I64",
            GgmlType::F64 => "F64",
            GgmlType::BF16 => "BF16",
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for ty in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(ty.id()), Some(ty), "{ty}");
        }
    }

    #[test]
    fn removed_ids_are_unknown() {
        for id in [4, 5, 16, 23, 29, 31, 1000] {
            assert_eq!(GgmlType::from_id(id), None, "id {id}");
        }
    }

    #[test]
    fn bytes_for_whole_blocks_only() {
        assert_eq!(GgmlType::Q4_1.bytes_for(64), Some(40));
        assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q6_K.bytes_for(256), Some(210));
        assert_eq!(GgmlType::F16.bytes_for(3), Some(6));
        assert_eq!(GgmlType::Q8_0.bytes_for(33), None);
        assert_eq!(GgmlType::F32.bytes_for(usize::MAX), None);
    }
}
