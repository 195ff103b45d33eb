//! The Adaptive Floating-Point (AFP) number format.
//!
//! `AFP(E, M)` is a signed minifloat with 1 sign bit, `E` exponent bits and `M` mantissa bits
//! (`AFPu(E, M)` drops the sign), 2 to 8 bits in all, whose exponent range is shifted by an
//! integer offset `t` chosen from the data. The exact definition is in the project's design notes
//! (`DESIGN.md` §1); this crate implements it and nothing else, with no heavy dependencies, so
//! that other tools can depend on it alone.
//!
//! - [`Format`]: the bit layout (`E`, `M`, signedness, [`ZeroMode`]).
//! - [`Grid`]: a format with its offset: the concrete set of values. Encode, decode, levels,
//!   integer view.
//! - [`offset`]: choosing `t` for a slice of data (`cover`, `mse`).
//! - [`tensor`]: granularity (per tensor, per output channel, per block) and quantized tensors.
//! - [`pack`]: dense bit packing of codes of any width 2..=8.
//! - [`Lut`]: code -> f32 lookup tables for fast decoding.

mod error;
mod format;
mod grid;
mod lut;
pub mod offset;
pub mod pack;
pub mod tensor;

pub use error::FormatError;
pub use format::{Format, ZeroMode};
pub use grid::{Container, Grid, Rounder};
pub use lut::Lut;
pub use offset::OffsetRule;
pub use tensor::{Granularity, QuantizedTensor};
