use crate::FormatError;
use std::fmt;
use std::str::FromStr;

/// How the all-zero exponent field is read (DESIGN.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ZeroMode {
    /// `e == 0` encodes zero and subnormals `2^t * m/2^M` (the default, as IEEE floats).
    #[default]
    Subnormal,
    /// Every code is normal, `2^(t+e) * (1 + m/2^M)`, except `e == 0, m == 0`, which is zero
    /// (as in the paper authors' released quantizer): one more binade at the top, no subnormals.
    NoSubnormal,
}

impl ZeroMode {
    pub fn name(self) -> &'static str {
        match self {
            ZeroMode::Subnormal => "subnormal",
            ZeroMode::NoSubnormal => "no-subnormal",
        }
    }
}

impl FromStr for ZeroMode {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, FormatError> {
        match s.to_ascii_lowercase().as_str() {
            "subnormal" => Ok(ZeroMode::Subnormal),
            "no-subnormal" | "nosubnormal" => Ok(ZeroMode::NoSubnormal),
            _ => Err(FormatError::Parse {
                input: s.to_string(),
                reason: "zero mode is `subnormal` or `no-subnormal`".into(),
            }),
        }
    }
}

/// The bit layout of an AFP number: `[sign][exponent: E bits][mantissa: M bits]`, most
/// significant bit first; unsigned formats (`AFPu`) have no sign bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Format {
    signed: bool,
    exp_bits: u8,
    man_bits: u8,
    zero_mode: ZeroMode,
}

impl Format {
    /// Signed `AFP(E, M)`, `2 <= 1 + E + M <= 8`.
    pub fn signed(exp_bits: u32, man_bits: u32) -> Result<Format, FormatError> {
        Format::new(true, exp_bits, man_bits, ZeroMode::Subnormal)
    }

    /// Unsigned `AFPu(E, M)`, `2 <= E + M <= 8`.
    pub fn unsigned(exp_bits: u32, man_bits: u32) -> Result<Format, FormatError> {
        Format::new(false, exp_bits, man_bits, ZeroMode::Subnormal)
    }

    pub fn new(
        signed: bool,
        exp_bits: u32,
        man_bits: u32,
        zero_mode: ZeroMode,
    ) -> Result<Format, FormatError> {
        let bits = exp_bits as u64 + man_bits as u64 + signed as u64;
        if !(2..=8).contains(&bits) {
            let name = format!(
                "{}E{}M{}",
                if signed { "" } else { "u" },
                exp_bits,
                man_bits
            );
            return Err(FormatError::InvalidBits(name));
        }
        Ok(Format {
            signed,
            exp_bits: exp_bits as u8,
            man_bits: man_bits as u8,
            zero_mode,
        })
    }

    /// Symmetric integer format of `bits` bits (`E = 0`): `±m * 2^(t-M)`, `m < 2^M`.
    pub fn int(bits: u32) -> Result<Format, FormatError> {
        Format::signed(0, bits.saturating_sub(1))
    }

    pub fn with_zero_mode(self, zero_mode: ZeroMode) -> Format {
        Format { zero_mode, ..self }
    }

    pub fn is_signed(&self) -> bool {
        self.signed
    }
    pub fn exp_bits(&self) -> u32 {
        self.exp_bits as u32
    }
    pub fn man_bits(&self) -> u32 {
        self.man_bits as u32
    }
    pub fn zero_mode(&self) -> ZeroMode {
        self.zero_mode
    }
    /// Bits per code: sign (if signed) + E + M.
    pub fn bits(&self) -> u32 {
        self.signed as u32 + self.exp_bits as u32 + self.man_bits as u32
    }
    /// Number of codes, `2^bits`.
    pub fn code_count(&self) -> usize {
        1usize << self.bits()
    }
    /// Bits of the magnitude part of a code (E + M).
    pub(crate) fn mag_bits(&self) -> u32 {
        self.exp_bits as u32 + self.man_bits as u32
    }
    /// Code magnitude of the largest value.
    pub(crate) fn max_mag(&self) -> u32 {
        (1u32 << self.mag_bits()) - 1
    }
    /// Largest biased exponent field value that encodes a number.
    pub(crate) fn max_exp_field(&self) -> u32 {
        (1u32 << self.exp_bits) - 1
    }
    /// Exponent (relative to `t`) of the top binade, such that `max = 2^(t + top) * (2 - 2^-M)`.
    pub(crate) fn top_exponent(&self) -> i32 {
        match self.zero_mode {
            ZeroMode::Subnormal if self.exp_bits == 0 => -1,
            ZeroMode::Subnormal => self.max_exp_field() as i32 - 1,
            ZeroMode::NoSubnormal => self.max_exp_field() as i32,
        }
    }
    /// Value of the code magnitude `mag` at offset 0, exactly, as f64.
    pub(crate) fn mag_value(&self, mag: u32) -> f64 {
        let m_bits = self.man_bits as u32;
        let e = mag >> m_bits;
        let m = mag & ((1u32 << m_bits) - 1);
        let frac = m as f64 / (1u64 << m_bits) as f64;
        match self.zero_mode {
            ZeroMode::Subnormal if e == 0 => frac,
            ZeroMode::Subnormal => pow2(e as i32 - 1) * (1.0 + frac),
            ZeroMode::NoSubnormal if mag == 0 => 0.0,
            ZeroMode::NoSubnormal => pow2(e as i32) * (1.0 + frac),
        }
    }
    /// The standard name: `E3M2`, `uE2M3`; the zero mode is not part of the name.
    pub fn name(&self) -> String {
        format!(
            "{}E{}M{}",
            if self.signed { "" } else { "u" },
            self.exp_bits,
            self.man_bits
        )
    }
}

/// `2^k` as f64, exact for the exponents used here.
pub(crate) fn pow2(k: i32) -> f64 {
    f64::from_bits(((k + 1023) as u64) << 52)
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl Format {
    /// Parses `E3M2`, `uE2M3` (unsigned), the standard aliases `fp4-e2m1`, `fp6-e2m3`, `fp6-e3m2`,
    /// `fp8-e4m3`, `fp8-e5m2` (which imply the offset of the standard format), and `int2`..`int8`
    /// (E = 0, offset M so that the levels are the integers `-(2^M-1)..=2^M-1`).
    /// Returns the format and the offset the name implies (0 for plain `EnMm`).
    pub fn parse_spec(input: &str) -> Result<(Format, i32), FormatError> {
        let s = input.trim().to_ascii_lowercase();
        let err = |reason: &str| FormatError::Parse {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let alias = match s.as_str() {
            "fp4-e2m1" => Some((2, 1, 0)),
            "fp6-e2m3" => Some((2, 3, 0)),
            "fp6-e3m2" => Some((3, 2, -2)),
            "fp8-e4m3" => Some((4, 3, -6)),
            "fp8-e5m2" => Some((5, 2, -14)),
            _ => None,
        };
        if let Some((e, m, t)) = alias {
            return Ok((Format::signed(e, m)?, t));
        }
        if let Some(b) = s.strip_prefix("int") {
            let bits: u32 = b
                .parse()
                .map_err(|_| err("expected int2..int8, e.g. `int4`"))?;
            if !(2..=8).contains(&bits) {
                return Err(err("integer formats have 2 to 8 bits"));
            }
            let f = Format::int(bits)?;
            return Ok((f, f.man_bits() as i32));
        }
        let (signed, rest) = match s.strip_prefix('u') {
            Some(r) => (false, r),
            None => (true, s.as_str()),
        };
        let rest = rest.strip_prefix('e').ok_or_else(|| {
            err("expected `EnMm` (e.g. E3M2), `uEnMm`, fp4-e2m1, fp6-e2m3, fp6-e3m2, fp8-e4m3, fp8-e5m2 or int2..int8")
        })?;
        let (e, m) = rest
            .split_once('m')
            .ok_or_else(|| err("expected `EnMm`, e.g. E3M2"))?;
        let e: u32 = e
            .parse()
            .map_err(|_| err("exponent bits must be a number"))?;
        let m: u32 = m
            .parse()
            .map_err(|_| err("mantissa bits must be a number"))?;
        if e > 8 || m > 8 {
            return Err(err("a format has at most 8 bits"));
        }
        let f = Format::new(signed, e, m, ZeroMode::Subnormal).map_err(|e| FormatError::Parse {
            input: input.to_string(),
            reason: e.to_string(),
        })?;
        Ok((f, 0))
    }
}

impl FromStr for Format {
    type Err = FormatError;
    /// Parses a format name; the implied offset of aliases is dropped (see [`Format::parse_spec`]).
    fn from_str(s: &str) -> Result<Format, FormatError> {
        Format::parse_spec(s).map(|(f, _)| f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_aliases() {
        assert_eq!(
            Format::parse_spec("E3M2").unwrap(),
            (Format::signed(3, 2).unwrap(), 0)
        );
        assert_eq!(
            Format::parse_spec("uE2M3").unwrap(),
            (Format::unsigned(2, 3).unwrap(), 0)
        );
        assert_eq!(
            Format::parse_spec("fp8-e4m3").unwrap(),
            (Format::signed(4, 3).unwrap(), -6)
        );
        assert_eq!(
            Format::parse_spec("fp8-e5m2").unwrap(),
            (Format::signed(5, 2).unwrap(), -14)
        );
        assert_eq!(
            Format::parse_spec("fp6-e3m2").unwrap(),
            (Format::signed(3, 2).unwrap(), -2)
        );
        assert_eq!(
            Format::parse_spec("int8").unwrap(),
            (Format::signed(0, 7).unwrap(), 7)
        );
        assert_eq!(
            Format::parse_spec("int4").unwrap(),
            (Format::signed(0, 3).unwrap(), 3)
        );
        for bad in [
            "", "E9M2", "E4M4", "uE9M0", "E1", "int9", "int1", "x3m2", "E3Mx", "E0M0", "uE1M0",
        ] {
            assert!(Format::parse_spec(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn bit_counts() {
        assert!(Format::signed(4, 4).is_err());
        assert!(Format::signed(0, 0).is_err());
        assert!(Format::unsigned(8, 0).is_ok());
        assert!(Format::unsigned(1, 0).is_err());
        assert_eq!(Format::signed(2, 1).unwrap().bits(), 4);
        assert_eq!(Format::unsigned(2, 3).unwrap().bits(), 5);
    }
}
