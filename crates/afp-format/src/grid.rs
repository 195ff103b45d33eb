use crate::format::pow2;
use crate::{Format, FormatError, ZeroMode};

/// The smallest integer type that holds the integer view `n` of every code of a format
/// (DESIGN.md §1: `v = n * 2^(t-M)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Container {
    I8,
    U8,
    I16,
    I32,
}

impl Container {
    pub fn name(self) -> &'static str {
        match self {
            Container::I8 => "i8",
            Container::U8 => "u8",
            Container::I16 => "i16",
            Container::I32 => "i32",
        }
    }
}

impl Format {
    /// Largest `|n|` of the integer view, exactly (a power of two times a small odd number).
    pub fn int_bound(&self) -> f64 {
        let m = self.man_bits() as i32;
        let mant = ((1u64 << (m + 1)) - 1) as f64;
        match self.zero_mode() {
            ZeroMode::Subnormal if self.exp_bits() == 0 => ((1u64 << m) - 1) as f64,
            ZeroMode::Subnormal => mant * pow2(self.max_exp_field() as i32 - 1),
            ZeroMode::NoSubnormal => mant * pow2(self.max_exp_field() as i32),
        }
    }

    /// The integer `n` of a code: its value is `n * 2^(t-M)` at any offset `t`.
    /// `None` when the format's integers do not fit an `i64` (only formats with 7 or 8
    /// exponent bits); bits of `code` above the format's width are ignored.
    pub fn integer(&self, code: u8) -> Option<i64> {
        if self.int_bound() > i64::MAX as f64 {
            return None;
        }
        let (neg, mag) = self.split(code);
        let n = (self.mag_value(mag) * pow2(self.man_bits() as i32)) as i64;
        Some(if neg { -n } else { n })
    }

    /// The narrowest container of i8, u8 (unsigned formats), i16 and i32 that holds every `n`;
    /// `None` when no container does (these formats are computed through lookup tables).
    pub fn container(&self) -> Option<Container> {
        let b = self.int_bound();
        if self.is_signed() && b <= i8::MAX as f64 {
            Some(Container::I8)
        } else if !self.is_signed() && b <= u8::MAX as f64 {
            Some(Container::U8)
        } else if b <= i16::MAX as f64 {
            Some(Container::I16)
        } else if b <= i32::MAX as f64 {
            Some(Container::I32)
        } else {
            None
        }
    }

    /// Sign flag and magnitude of a code.
    pub(crate) fn split(&self, code: u8) -> (bool, u32) {
        let code = code as u32 & (self.code_count() as u32 - 1);
        let mag_mask = (1u32 << self.mag_bits()) - 1;
        (self.is_signed() && code > mag_mask, code & mag_mask)
    }

    /// Offsets whose values are all exact, finite f32 numbers.
    pub fn offset_range(&self) -> (i32, i32) {
        // Smallest step 2^(t-M) >= 2^-149; max < 2^128, i.e. t + top + 1 <= 128.
        (self.man_bits() as i32 - 149, 127 - self.top_exponent())
    }
}

/// A format with its offset `t`: a concrete, finite set of values. Encodes f32 to codes
/// (round to nearest, ties to the even code, saturating) and decodes codes to f32.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    format: Format,
    offset: i32,
    /// `2^-t`: inputs are scaled to offset 0 before rounding (exact in f64).
    inv_scale: f64,
    /// `max / 2^t`.
    max_norm: f64,
    /// Smallest positive value at offset 0 (used by the no-subnormal zero mode).
    min_norm: f64,
    /// `2^M`.
    man_scale: f64,
    /// Code magnitude of the largest value.
    max_mag: u32,
    /// Sign bit of a code (0 for unsigned formats).
    sign_bit: u8,
}

impl Grid {
    pub fn new(format: Format, offset: i32) -> Result<Grid, FormatError> {
        let (lo, hi) = format.offset_range();
        if offset < lo || offset > hi {
            return Err(FormatError::OffsetOutOfRange {
                format: format.name(),
                offset: offset as i64,
                min: lo,
                max: hi,
            });
        }
        let max_mag = format.max_mag();
        Ok(Grid {
            format,
            offset,
            inv_scale: pow2(-offset),
            max_norm: format.mag_value(max_mag),
            min_norm: format.mag_value(1),
            man_scale: pow2(format.man_bits() as i32),
            max_mag,
            sign_bit: if format.is_signed() {
                1u8 << format.mag_bits()
            } else {
                0
            },
        })
    }

    pub fn format(&self) -> Format {
        self.format
    }
    pub fn offset(&self) -> i32 {
        self.offset
    }
    /// The grid at another offset.
    pub fn with_offset(&self, offset: i32) -> Result<Grid, FormatError> {
        Grid::new(self.format, offset)
    }

    /// Largest value.
    pub fn max(&self) -> f32 {
        (self.max_norm * pow2(self.offset)) as f32
    }
    /// Smallest positive value.
    pub fn min_positive(&self) -> f32 {
        (self.min_norm * pow2(self.offset)) as f32
    }
    /// Exponent of the unit of the integer view: `v = n * 2^(t - M)`.
    pub fn int_unit_exp(&self) -> i32 {
        self.offset - self.format.man_bits() as i32
    }

    /// Value of a code. Bits above the format's width are ignored; `-0` decodes to `0`.
    pub fn decode(&self, code: u8) -> f32 {
        let (neg, mag) = self.format.split(code);
        let v = (self.format.mag_value(mag) * pow2(self.offset)) as f32;
        if neg && mag != 0 {
            -v
        } else {
            v
        }
    }

    /// Code of the nearest value to `x` (ties to the even code, saturating at `±max`,
    /// negative inputs of unsigned formats go to 0). Non-finite input is an error.
    pub fn encode(&self, x: f32) -> Result<u8, FormatError> {
        if !x.is_finite() {
            return Err(FormatError::NonFinite { index: 0, value: x });
        }
        Ok(self.encode_finite(x))
    }

    /// [`Grid::encode`] for an input known to be finite. A NaN gives some code, never
    /// undefined behaviour; callers that cannot rule NaN out use [`Grid::encode`].
    #[inline]
    pub fn encode_finite(&self, x: f32) -> u8 {
        let neg = x < 0.0;
        if neg && self.sign_bit == 0 {
            return 0;
        }
        let mag = self.encode_mag((x.abs() as f64) * self.inv_scale);
        if neg && mag != 0 {
            self.sign_bit | mag as u8
        } else {
            mag as u8
        }
    }

    /// Rounds `x` to the grid: `decode(encode(x))`.
    #[inline]
    pub fn quantize_finite(&self, x: f32) -> f32 {
        self.decode(self.encode_finite(x))
    }

    /// Code magnitude of the nearest value to `a >= 0`, at offset 0.
    #[inline]
    fn encode_mag(&self, a: f64) -> u32 {
        // NaN also goes to max rather than to an arbitrary code.
        if a >= self.max_norm || a.is_nan() {
            return self.max_mag;
        }
        let m_bits = self.format.man_bits();
        match self.format.zero_mode() {
            ZeroMode::Subnormal => {
                if a < 1.0 {
                    // Zero and subnormals: a multiple of 2^-M. Adding and removing 2^52 rounds
                    // to an integer, ties to even, in the default rounding mode (exact: a*2^M < 2^M).
                    const R: f64 = 4503599627370496.0; // 2^52
                    ((a * self.man_scale + R) - R) as u32
                } else {
                    // Normals: round the f64 mantissa to M bits, ties to even; a carry moves to
                    // the next binade, which is the next code. The biased f64 exponent 1023 + k
                    // is the AFP exponent field e = k + 1.
                    (round_mantissa(a, m_bits, false) - (1022u64 << m_bits)) as u32
                }
            }
            ZeroMode::NoSubnormal => {
                if a < self.min_norm {
                    // Between zero and the smallest value; the tie goes to zero (the even code).
                    (a > self.min_norm * 0.5) as u32
                } else {
                    // Field e = k for binade 2^k. a >= min_norm > 1 rules out the absent 1.0.
                    // With M = 0 the code is the exponent field, 1023 less than the biased
                    // f64 exponent: the even code is the odd biased exponent.
                    (round_mantissa(a, m_bits, m_bits == 0) - (1023u64 << m_bits)) as u32
                }
            }
        }
    }

    /// Every value of the grid once, in increasing order.
    pub fn levels(&self) -> Vec<f32> {
        let mut v: Vec<f32> = (0..self.format.code_count())
            .map(|c| self.decode(c as u8))
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v.dedup();
        v
    }

    /// Encodes a slice; the first non-finite value is an error naming its index.
    ///
    /// Same codes as [`Grid::encode`], computed in f32 without branches so the compiler can
    /// vectorize it (when the offset is small enough for the scaling to be exact in f32).
    pub fn encode_slice(&self, xs: &[f32], out: &mut [u8]) -> Result<(), FormatError> {
        assert_eq!(
            xs.len(),
            out.len(),
            "encode_slice: input and output lengths differ"
        );
        const CHUNK: usize = 256;
        let fast = BulkEncoder::new(self);
        for (ci, (xc, oc)) in xs.chunks(CHUNK).zip(out.chunks_mut(CHUNK)).enumerate() {
            // Finiteness is checked per chunk, off the per-value path (without an early exit,
            // so the check vectorizes).
            if xc.iter().fold(false, |bad, x| bad | !x.is_finite()) {
                let j = xc.iter().position(|x| !x.is_finite()).unwrap_or(0);
                return Err(FormatError::NonFinite {
                    index: ci * CHUNK + j,
                    value: xc[j],
                });
            }
            match &fast {
                Some(f) => f.encode(xc, oc),
                None => {
                    for (o, &x) in oc.iter_mut().zip(xc) {
                        *o = self.encode_finite(x);
                    }
                }
            }
        }
        Ok(())
    }

    /// Rounds a slice to the grid in place (bulk encoder, then a lookup table); the first
    /// non-finite value is an error naming its index. See [`Rounder`] for many slices.
    pub fn quantize_slice(&self, xs: &mut [f32]) -> Result<(), FormatError> {
        Rounder::new(self).round_slice(xs)
    }
}

/// Rounds slices to one grid, with its lookup table built once (for callers that round many
/// short slices to the same grid).
#[derive(Debug, Clone)]
pub struct Rounder {
    grid: Grid,
    lut: crate::Lut,
}

impl Rounder {
    pub fn new(grid: &Grid) -> Rounder {
        Rounder {
            grid: *grid,
            lut: crate::Lut::new(grid),
        }
    }

    /// As [`Grid::quantize_slice`].
    pub fn round_slice(&self, xs: &mut [f32]) -> Result<(), FormatError> {
        let mut codes = [0u8; 256];
        for (ci, chunk) in xs.chunks_mut(256).enumerate() {
            let c = &mut codes[..chunk.len()];
            self.grid.encode_slice(chunk, c).map_err(|e| match e {
                FormatError::NonFinite { index, value } => FormatError::NonFinite {
                    index: index + ci * 256,
                    value,
                },
                e => e,
            })?;
            self.lut.decode_slice(c, chunk);
        }
        Ok(())
    }
}

/// Branch-free f32 encoder for bulk work. Valid when `|x| * 2^-t` is exact in f32 wherever it
/// matters: the scale `2^-t` must be a normal f32; products that underflow are far below the
/// smallest rounding threshold (`2^-(M+1)`) and products that overflow saturate anyway.
struct BulkEncoder {
    inv_scale: f32,
    max_norm: f32,
    min_norm: f32,
    man_scale: f32,
    /// Subtracted from `biased exponent << M | mantissa` to get the code magnitude.
    bias: u32,
    half_minus_one: u32,
    shift: u32,
    ties_to_odd: u32,
    sign_bit: u32,
    signed: bool,
    subnormal: bool,
}

impl BulkEncoder {
    fn new(g: &Grid) -> Option<BulkEncoder> {
        if !(-120..=120).contains(&g.offset) {
            return None;
        }
        let m = g.format.man_bits();
        let subnormal = g.format.zero_mode() == ZeroMode::Subnormal;
        Some(BulkEncoder {
            inv_scale: g.inv_scale as f32,
            max_norm: g.max_norm as f32,
            min_norm: g.min_norm as f32,
            man_scale: g.man_scale as f32,
            bias: if subnormal { 126 << m } else { 127 << m },
            half_minus_one: (1u32 << (22 - m)) - 1,
            shift: 23 - m,
            ties_to_odd: (!subnormal && m == 0) as u32,
            sign_bit: g.sign_bit as u32,
            signed: g.format.is_signed(),
            subnormal,
        })
    }

    #[inline]
    fn encode(&self, xs: &[f32], out: &mut [u8]) {
        if self.subnormal {
            for (o, &x) in out.iter_mut().zip(xs) {
                *o = self.one::<true>(x);
            }
        } else {
            for (o, &x) in out.iter_mut().zip(xs) {
                *o = self.one::<false>(x);
            }
        }
    }

    #[inline(always)]
    fn one<const SUBNORMAL: bool>(&self, x: f32) -> u8 {
        const R: f32 = 8388608.0; // 2^23: adding and removing it rounds to an integer, ties to even
        let neg = x.to_bits() >> 31;
        let x = if self.signed { x.abs() } else { x.max(0.0) };
        let a = (x * self.inv_scale).min(self.max_norm);
        let b = a.to_bits();
        let lsb = ((b >> self.shift) & 1) ^ self.ties_to_odd;
        let normal = ((b + self.half_minus_one + lsb) >> self.shift).wrapping_sub(self.bias);
        let mag = if SUBNORMAL {
            // Through i32, which converts in vector registers (u32 does not before AVX-512);
            // the lanes this value is kept for (a < 1) hold an integer in 0..=2^M.
            let sub = ((a * self.man_scale + R) - R) as i32 as u32;
            if a < 1.0 {
                sub
            } else {
                normal
            }
        } else {
            let low = (a > self.min_norm * 0.5) as u32;
            if a < self.min_norm {
                low
            } else {
                normal
            }
        };
        let sign = if mag != 0 && self.signed {
            neg * self.sign_bit
        } else {
            0
        };
        (mag | sign) as u8
    }
}

/// Rounds a positive normal f64 to `m_bits` mantissa bits and returns its bits shifted right so
/// that `(biased exponent << m_bits) | mantissa` remains. Ties go to an even result, or to an
/// odd one with `ties_to_odd`.
#[inline]
fn round_mantissa(a: f64, m_bits: u32, ties_to_odd: bool) -> u64 {
    let sh = 52 - m_bits;
    let b = a.to_bits();
    let b = b + ((1u64 << (sh - 1)) - 1) + (((b >> sh) & 1) ^ ties_to_odd as u64);
    b >> sh
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp4_e2m1_levels_and_bounds() {
        let g = Grid::new(Format::signed(2, 1).unwrap(), 0).unwrap();
        assert_eq!(
            g.levels(),
            vec![-6.0, -4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
        );
        assert_eq!(g.max(), 6.0);
        assert_eq!(g.min_positive(), 0.5);
        assert_eq!(g.encode(1.25).unwrap(), 2); // tie 1.0 (code 2) vs 1.5 (code 3): even
        assert_eq!(g.encode(1.75).unwrap(), 4); // tie 1.5 vs 2.0 (code 4)
        assert_eq!(g.encode(5.0).unwrap(), 6); // tie 4 (code 6) vs 6 (code 7)
        assert_eq!(g.encode(100.0).unwrap(), 7);
        assert_eq!(g.encode(-100.0).unwrap(), 15);
        assert_eq!(g.encode(-0.1).unwrap(), 0); // +0, never -0
        assert_eq!(g.encode(0.25).unwrap(), 0); // tie 0 vs 0.5
        assert!(g.encode(f32::NAN).is_err());
        assert!(g.encode(f32::INFINITY).is_err());
    }

    #[test]
    fn integer_view_matches_design_examples() {
        let f = Format::signed(2, 2).unwrap();
        assert_eq!(f.int_bound(), 28.0);
        assert_eq!(f.container(), Some(Container::I8));
        assert_eq!(Format::signed(3, 2).unwrap().int_bound(), 448.0);
        assert_eq!(
            Format::signed(3, 2).unwrap().container(),
            Some(Container::I16)
        );
        let u = Format::unsigned(2, 3).unwrap();
        assert_eq!(u.int_bound(), 60.0);
        assert_eq!(u.container(), Some(Container::U8));
        assert_eq!(Format::int(8).unwrap().int_bound(), 127.0);
        assert_eq!(Format::signed(7, 0).unwrap().container(), None);
        assert_eq!(Format::signed(7, 0).unwrap().integer(1), None);
        // Every value is n * 2^(t-M).
        for t in [-3, 0, 5] {
            let g = Grid::new(f, t).unwrap();
            for c in 0..16u8 {
                let n = f.integer(c).unwrap() as f64;
                assert_eq!(g.decode(c) as f64, n * pow2(g.int_unit_exp()));
            }
        }
    }

    #[test]
    fn no_subnormal_mode() {
        let f = Format::signed(2, 1)
            .unwrap()
            .with_zero_mode(ZeroMode::NoSubnormal);
        let g = Grid::new(f, 0).unwrap();
        assert_eq!(
            g.levels(),
            vec![
                -12.0, -8.0, -6.0, -4.0, -3.0, -2.0, -1.5, 0.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0
            ]
        );
        assert_eq!(g.encode(0.75).unwrap(), 0); // tie between 0 and 1.5 goes to zero
        assert_eq!(g.encode(0.76).unwrap(), 1);
        assert_eq!(g.encode(1.0).unwrap(), 1);
        assert_eq!(f.int_bound(), 3.0 * 8.0);
    }

    #[test]
    fn offsets_out_of_range_are_errors() {
        let f = Format::signed(4, 3).unwrap();
        let (lo, hi) = f.offset_range();
        assert!(Grid::new(f, lo - 1).is_err());
        assert!(Grid::new(f, hi + 1).is_err());
        assert!(Grid::new(f, hi).unwrap().max().is_finite());
        assert!(Grid::new(f, lo).unwrap().min_positive() > 0.0);
    }
}
