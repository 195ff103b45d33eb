//! Dot products of contiguous rows, for products with few output rows (matrix-vector
//! shapes) where a GEMM's packing would cost more than the multiply-adds.

use pulp::{Simd, WithSimd};

/// f32 dot product in 8 interleaved partial sums (vectorizes; the order is fixed, so results
/// do not depend on the thread count or the instruction set).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `out[r] = dot(w, x[r])` for `R` rows of `x` (each `w.len()` long), bit for bit [`dot`]:
/// the same 8 partial sums per row, accumulated in the same order, combined the same way.
#[inline(always)]
fn dot_block<const R: usize>(w: &[f32], x: &[f32], out: &mut [f32]) {
    let k = w.len();
    let mut acc = [[0.0f32; 8]; R];
    let whole = k / 8 * 8;
    for c in (0..whole).step_by(8) {
        let wv: &[f32; 8] = w[c..c + 8].try_into().expect("8 values");
        for (r, acc) in acc.iter_mut().enumerate() {
            let xv: &[f32; 8] = x[r * k + c..r * k + c + 8].try_into().expect("8 values");
            for i in 0..8 {
                acc[i] += wv[i] * xv[i];
            }
        }
    }
    for (r, (acc, o)) in acc.iter().zip(out.iter_mut()).enumerate() {
        let mut s =
            ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for (a, b) in x[r * k + whole..(r + 1) * k].iter().zip(&w[whole..]) {
            s += b * a;
        }
        *o = s;
    }
}

/// `res[o * rows + r] = dot(w[o], x[r])` for the `w` rows `o` and the `rows` rows of `x`
/// (each `k` long), compiled for the widest instruction set the machine has. Each `w`
/// row is read once and stays in L1 while every `x` row passes over it.
pub(crate) fn dots(w: &[f32], x: &[f32], k: usize, rows: usize, res: &mut [f32]) {
    struct Dots<'a> {
        w: &'a [f32],
        x: &'a [f32],
        k: usize,
        rows: usize,
        res: &'a mut [f32],
    }
    impl WithSimd for Dots<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, _simd: S) {
            let Dots { w, x, k, rows, res } = self;
            if rows < 4 {
                // Too few `x` rows for blocks of them: block the weight rows instead, one
                // `x` row against 8 of them (the same bits: products commute), so a
                // matrix-vector product (batch 1) has 8 independent chains, not one.
                let wrows = w.len() / k;
                let mut col = [0f32; 8];
                for r in 0..rows {
                    let xr = &x[r * k..][..k];
                    let mut o = 0;
                    while o + 8 <= wrows {
                        dot_block::<8>(xr, &w[o * k..(o + 8) * k], &mut col);
                        for (i, &v) in col.iter().enumerate() {
                            res[(o + i) * rows + r] = v;
                        }
                        o += 8;
                    }
                    for o in o..wrows {
                        res[o * rows + r] = dot(&w[o * k..][..k], xr);
                    }
                }
                return;
            }
            for (wr, out) in w.chunks_exact(k).zip(res.chunks_exact_mut(rows)) {
                // `x` rows in blocks: each chunk of the `w` row is loaded once for the block,
                // and the block's sums are independent chains (one row's dot alone waits on
                // the latency of its adds).
                let mut r = 0;
                while r + 8 <= rows {
                    dot_block::<8>(wr, &x[r * k..(r + 8) * k], &mut out[r..r + 8]);
                    r += 8;
                }
                if r + 4 <= rows {
                    dot_block::<4>(wr, &x[r * k..(r + 4) * k], &mut out[r..r + 4]);
                    r += 4;
                }
                for (xr, o) in x[r * k..rows * k].chunks_exact(k).zip(&mut out[r..]) {
                    *o = dot(wr, xr);
                }
            }
        }
    }
    if k == 0 {
        res.fill(0.0);
        return;
    }
    pulp::Arch::new().dispatch(Dots { w, x, k, rows, res });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_equal_the_scalar_dot_bit_for_bit() {
        let k = 37;
        // 15 rows: a block of 8, one of 4 and 3 single dots.
        for (rows, wrows) in [(15, 3), (1, 19), (3, 9)] {
            check_dots(k, rows, wrows);
        }
    }

    /// `dots` against `dot` (bits) and a double-precision sum, `rows` rows of `x` and `wrows`
    /// of `w` (with fewer than 4 rows of `x`, blocks of 8 weight rows and single ones).
    fn check_dots(k: usize, rows: usize, wrows: usize) {
        let w: Vec<f32> = (0..wrows * k)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.37)
            .collect();
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 5 % 13) as f32 - 6.0) * 0.21)
            .collect();
        let mut res = vec![f32::NAN; wrows * rows];
        dots(&w, &x, k, rows, &mut res);
        for o in 0..wrows {
            for r in 0..rows {
                let want = dot(&w[o * k..][..k], &x[r * k..][..k]);
                assert_eq!(res[o * rows + r].to_bits(), want.to_bits());
                let naive: f64 = (0..k)
                    .map(|q| w[o * k + q] as f64 * x[r * k + q] as f64)
                    .sum();
                assert!((res[o * rows + r] as f64 - naive).abs() < 1e-4 * (1.0 + naive.abs()));
            }
        }
    }
}
