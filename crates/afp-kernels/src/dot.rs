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
            for (wr, out) in w.chunks_exact(k).zip(res.chunks_exact_mut(rows)) {
                for (xr, o) in x.chunks_exact(k).zip(out.iter_mut()) {
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
        let w: Vec<f32> = (0..3 * k)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.37)
            .collect();
        let x: Vec<f32> = (0..2 * k)
            .map(|i| ((i * 5 % 13) as f32 - 6.0) * 0.21)
            .collect();
        let mut res = vec![f32::NAN; 6];
        dots(&w, &x, k, 2, &mut res);
        for o in 0..3 {
            for r in 0..2 {
                let want = dot(&w[o * k..][..k], &x[r * k..][..k]);
                assert_eq!(res[o * 2 + r].to_bits(), want.to_bits());
                let naive: f64 = (0..k)
                    .map(|q| w[o * k + q] as f64 * x[r * k + q] as f64)
                    .sum();
                assert!((res[o * 2 + r] as f64 - naive).abs() < 1e-4 * (1.0 + naive.abs()));
            }
        }
    }
}
