use thiserror::Error;

/// Errors of the format library. Messages say what was wrong and which value caused it.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum FormatError {
    #[error("invalid format {0}: a format has 2 to 8 bits in all (sign, exponent and mantissa)")]
    InvalidBits(String),
    #[error("cannot parse format {input:?}: {reason}")]
    Parse { input: String, reason: String },
    #[error("offset {offset} is out of range for {format}: its values would not be finite, exact f32 numbers (allowed offsets: {min}..={max})")]
    OffsetOutOfRange {
        format: String,
        offset: i64,
        min: i32,
        max: i32,
    },
    #[error("value at index {index} is not finite ({value}): AFP has no Inf or NaN codes")]
    NonFinite { index: usize, value: f32 },
    #[error("code {code} at index {index} does not fit in {width} bits")]
    CodeTooWide { index: usize, code: u8, width: u32 },
    #[error("packed width {0} is not supported (2..=8 bits)")]
    BadWidth(u32),
    #[error("packed data too short: {needed} bytes needed for {count} codes of {width} bits, {got} given")]
    PackedTooShort {
        needed: usize,
        got: usize,
        count: usize,
        width: u32,
    },
    #[error("tensor shape {shape:?} does not match {len} values")]
    ShapeMismatch { shape: Vec<usize>, len: usize },
    #[error("invalid granularity: {0}")]
    Granularity(String),
}
