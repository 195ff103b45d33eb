//! Choosing the exponent offset `t` of a grid for a slice of data (DESIGN.md §1).

use crate::{Format, FormatError, Grid};
use std::str::FromStr;

/// How to choose the offset for a slice of values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OffsetRule {
    /// The smallest `t` whose max covers the largest magnitude (the paper's rule): no clipping.
    #[default]
    Cover,
    /// The `t` among `cover` and the [`MSE_CANDIDATES_BELOW`] offsets below it with the least
    /// squared error: clips the largest values when that pays.
    Mse,
}

/// How many offsets below `cover` the `Mse` rule tries.
pub const MSE_CANDIDATES_BELOW: i32 = 4;

impl FromStr for OffsetRule {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, FormatError> {
        match s {
            "cover" => Ok(OffsetRule::Cover),
            "mse" => Ok(OffsetRule::Mse),
            _ => Err(FormatError::Parse {
                input: s.into(),
                reason: "offset rule is `cover` or `mse`".into(),
            }),
        }
    }
}

/// Largest magnitude of a slice; a non-finite value is an error naming its index.
pub fn abs_max(xs: &[f32]) -> Result<f32, FormatError> {
    let mut m = 0f32;
    for (i, &x) in xs.iter().enumerate() {
        if !x.is_finite() {
            return Err(FormatError::NonFinite { index: i, value: x });
        }
        m = m.max(x.abs());
    }
    Ok(m)
}

/// The smallest offset whose largest value is at least `abs_max`, clamped to the format's
/// valid offsets. An all-zero input (abs_max 0) gets the offset that covers 1.0.
pub fn cover_for(format: Format, abs_max: f32) -> i32 {
    let (lo, hi) = format.offset_range();
    let target = if abs_max > 0.0 { abs_max as f64 } else { 1.0 };
    // max(t) = 2^t * max_norm: start from the log2 estimate, then settle exactly.
    let max_norm = format.mag_value(format.max_mag());
    let mut t = (target / max_norm).log2().ceil() as i32;
    t = t.clamp(lo, hi);
    while t > lo && max_norm * crate::format::pow2(t - 1) >= target {
        t -= 1;
    }
    while t < hi && max_norm * crate::format::pow2(t) < target {
        t += 1;
    }
    t
}

/// The paper's rule: see [`cover_for`].
pub fn cover(format: Format, xs: &[f32]) -> Result<i32, FormatError> {
    Ok(cover_for(format, abs_max(xs)?))
}

/// Squared error of rounding `xs` to `grid`, in f64, summed in order. See
/// [`squared_errors`].
pub fn squared_error(grid: &Grid, xs: &[f32]) -> f64 {
    squared_errors(std::slice::from_ref(grid), xs)[0]
}

/// Squared error of rounding `xs` to each of `grids`, each summed in order in f64. Rounds
/// 256 values at a time with the bulk encoder (the search calls this for every candidate
/// format and offset; the bulk path equals [`Grid::encode_finite`], tested exhaustively), and
/// adds each grid's errors for a chunk in one loop, so the grids' sums are independent chains
/// instead of one long chain of additions each. A chunk holding a non-finite value goes
/// through the scalar encoder, which gives such values some code.
pub fn squared_errors(grids: &[Grid], xs: &[f32]) -> Vec<f64> {
    const CHUNK: usize = 256;
    let luts: Vec<crate::Lut> = grids.iter().map(crate::Lut::new).collect();
    let mut codes = [0u8; CHUNK];
    let mut rounded = vec![[0f32; CHUNK]; grids.len()];
    let mut sums = vec![0f64; grids.len()];
    for chunk in xs.chunks(CHUNK) {
        let codes = &mut codes[..chunk.len()];
        for ((grid, lut), rounded) in grids.iter().zip(&luts).zip(rounded.iter_mut()) {
            if grid.encode_slice(chunk, codes).is_err() {
                for (c, &x) in codes.iter_mut().zip(chunk) {
                    *c = grid.encode_finite(x);
                }
            }
            lut.decode_slice(codes, &mut rounded[..chunk.len()]);
        }
        for (i, &x) in chunk.iter().enumerate() {
            for (sum, rounded) in sums.iter_mut().zip(&rounded) {
                let d = (x - rounded[i]) as f64;
                *sum += d * d;
            }
        }
    }
    sums
}

/// `(t, squared error of xs on format's grid at offset t)` for each offset of `offsets`
/// (see [`squared_errors`]).
pub fn errors_by_offset(
    format: Format,
    offsets: std::ops::RangeInclusive<i32>,
    xs: &[f32],
) -> Result<Vec<(i32, f64)>, FormatError> {
    let grids = offsets
        .clone()
        .map(|t| Grid::new(format, t))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(offsets.zip(squared_errors(&grids, xs)).collect())
}

/// The offset at or up to [`MSE_CANDIDATES_BELOW`] below `cover` with the least squared error;
/// ties go to the larger offset (less clipping).
pub fn mse(format: Format, xs: &[f32]) -> Result<i32, FormatError> {
    let top = cover(format, xs)?;
    let (lo, _) = format.offset_range();
    let mut best = (f64::INFINITY, top);
    for (t, err) in errors_by_offset(format, (top - MSE_CANDIDATES_BELOW).max(lo)..=top, xs)? {
        if err <= best.0 {
            best = (err, t);
        }
    }
    Ok(best.1)
}

/// The offset for `xs` under `rule`.
pub fn choose(format: Format, xs: &[f32], rule: OffsetRule) -> Result<i32, FormatError> {
    match rule {
        OffsetRule::Cover => cover(format, xs),
        OffsetRule::Mse => mse(format, xs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cover_is_smallest_covering_offset() {
        let f = Format::signed(2, 1).unwrap(); // max 6 * 2^t
        assert_eq!(cover(f, &[6.0]).unwrap(), 0);
        assert_eq!(cover(f, &[6.01]).unwrap(), 1);
        assert_eq!(cover(f, &[3.0]).unwrap(), -1);
        assert_eq!(cover(f, &[-3.01, 1.0]).unwrap(), 0);
        assert_eq!(cover(f, &[0.0, 0.0]).unwrap(), cover(f, &[1.0]).unwrap());
        assert!(cover(f, &[1.0, f32::NAN]).is_err());
        // Beyond the largest offset whose values are finite f32, cover saturates at it.
        let (_, hi) = f.offset_range();
        assert_eq!(cover(f, &[3e38]).unwrap(), hi);
        for x in [1e-30f32, 1e-5, 0.3, 7.0, 1e6, 2e38] {
            let t = cover(f, &[x]).unwrap();
            assert!(Grid::new(f, t).unwrap().max() >= x);
            assert!(Grid::new(f, t - 1).unwrap().max() < x);
        }
    }

    #[test]
    fn mse_clips_an_outlier_when_it_pays() {
        let f = Format::signed(2, 1).unwrap();
        let mut xs: Vec<f32> = (0..20000).map(|i| ((i % 13) as f32 - 6.0) * 0.1).collect();
        xs.push(40.0);
        let c = cover(f, &xs).unwrap();
        let m = mse(f, &xs).unwrap();
        assert!(m < c, "mse {m} should clip below cover {c}");
        let e = |t| squared_error(&Grid::new(f, t).unwrap(), &xs);
        assert!(e(m) <= e(c));
    }

    /// The chunked bulk path gives the scalar definition's sum bit for bit (plans depend on
    /// it), over several chunks and a partial one, and still sums a chunk with a NaN.
    #[test]
    fn squared_error_equals_the_scalar_sum() {
        let scalar = |g: &Grid, xs: &[f32]| -> f64 {
            xs.iter()
                .map(|&x| {
                    let d = (x - g.decode(g.encode_finite(x))) as f64;
                    d * d
                })
                .sum()
        };
        let mut seed = 3u64;
        let mut xs: Vec<f32> = (0..1000)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 9.0
            })
            .collect();
        for f in [
            Format::signed(2, 1).unwrap(),
            Format::signed(3, 2).unwrap(),
            Format::signed(0, 3).unwrap(),
            Format::unsigned(4, 3).unwrap(),
        ] {
            for t in -3..=2 {
                let g = Grid::new(f, t).unwrap();
                assert_eq!(
                    squared_error(&g, &xs).to_bits(),
                    scalar(&g, &xs).to_bits(),
                    "{f} t={t}"
                );
            }
        }
        let grids: Vec<Grid> = (-3..=2)
            .map(|t| Grid::new(Format::signed(2, 2).unwrap(), t).unwrap())
            .collect();
        let together = squared_errors(&grids, &xs);
        for (g, e) in grids.iter().zip(&together) {
            assert_eq!(e.to_bits(), scalar(g, &xs).to_bits(), "t={}", g.offset());
        }
        xs[700] = f32::NAN;
        let g = Grid::new(Format::signed(2, 2).unwrap(), 0).unwrap();
        assert!(squared_error(&g, &xs[..512]).is_finite());
        assert!(squared_error(&g, &xs).is_nan());
    }
}
