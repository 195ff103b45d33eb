//! Direct depthwise convolution (group == c_in, c_out = multiplier * c_in).
//!
//! One output plane per task (parallel over `n * c_out`); within a plane, one
//! output row at a time stays in L1 while every kernel tap adds its
//! contribution over the contiguous range of output columns whose input is
//! inside the image (border columns are excluded by the range, so the inner
//! loop has no branches and vectorizes). Bias and activation are applied to
//! the row while it is hot.

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use crate::{Activation, Conv2d};

#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    c: &Conv2d,
    n: usize,
    h: usize,
    w: usize,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    out: &mut [f32],
) {
    let (oh, ow) = c.out_hw(h, w);
    let ohw = oh * ow;
    debug_assert_eq!(out.len(), n * c.c_out * ohw);
    let mult = c.c_out / c.c_in;
    let taps = c.kh * c.kw;
    // Aim for at least ~64k multiply-adds per rayon job.
    let min_len = (65536 / (ohw * taps).max(1)).max(1);
    let arch = pulp::Arch::new();
    out.par_chunks_mut(ohw)
        .enumerate()
        .with_min_len(min_len)
        .for_each(|(p, o)| {
            let (ni, co) = (p / c.c_out, p % c.c_out);
            let ci = co / mult;
            arch.dispatch(Plane {
                c,
                h,
                w,
                ow,
                input: &input[(ni * c.c_in + ci) * h * w..][..h * w],
                weight: &weight[co * taps..][..taps],
                bias: bias.map_or(0.0, |b| b[co]),
                act,
                out: o,
            });
        });
}

struct Plane<'a> {
    c: &'a Conv2d,
    h: usize,
    w: usize,
    ow: usize,
    input: &'a [f32],
    weight: &'a [f32],
    bias: f32,
    act: Activation,
    out: &'a mut [f32],
}

impl WithSimd for Plane<'_> {
    type Output = ();

    // Inlined into pulp's target-feature (AVX2+FMA where available) wrapper,
    // so the plain loops below are auto-vectorized with the widest ISA.
    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let Plane {
            c,
            h,
            w,
            ow,
            input,
            weight,
            bias,
            act,
            out,
        } = self;
        let (s, pl) = (c.stride[1], c.pads[1]);
        // Each used input row is copied into a zero-padded row split into
        // `s` phases (columns t with t % s == p, t counted in the padded
        // row), so that for every kernel column the inputs of all output
        // columns are one contiguous slice: no border cases, unit stride.
        let padded = pl + w + c.pads[3];
        let plen = padded
            .div_ceil(s)
            .max(ow + (c.kw - 1) * c.dilation[1] / s + 1);
        let rlen = s * plen;
        // The whole plane, deinterleaved once (each input row is used by up
        // to kh output rows).
        let mut pbuf = vec![0.0f32; h * rlen];
        for (src, dst) in input.chunks_exact(w).zip(pbuf.chunks_exact_mut(rlen)) {
            deinterleave(src, dst, s, pl, plen);
        }
        // Per kernel column: offset of its slice in a row of `pbuf`.
        let taps: Vec<usize> = (0..c.kw)
            .map(|kj| {
                let pos = kj * c.dilation[1];
                (pos % s) * plen + pos / s
            })
            .collect();
        for (oy, row) in out.chunks_exact_mut(ow).enumerate() {
            row.fill(bias);
            for ki in 0..c.kh {
                let iy = (oy * c.stride[0] + ki * c.dilation[0]) as isize - c.pads[0] as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let buf = &pbuf[iy as usize * rlen..][..rlen];
                let wrow = &weight[ki * c.kw..][..c.kw];
                match c.kw {
                    3 => taps_fused::<3>(row, buf, &taps, wrow),
                    5 => taps_fused::<5>(row, buf, &taps, wrow),
                    _ => {
                        for (&off, &wv) in taps.iter().zip(wrow) {
                            let x = &buf[off..off + row.len()];
                            row.iter_mut().zip(x).for_each(|(o, &x)| *o += wv * x);
                        }
                    }
                }
            }
            act.apply_slice(row);
        }
    }
}

/// Writes input row `src` into `dst` (`s` phases of `plen`, zeros already in
/// the padding): padded column `t = pl + x` goes to `dst[(t % s) * plen + t / s]`.
#[inline(always)]
fn deinterleave(src: &[f32], dst: &mut [f32], s: usize, pl: usize, plen: usize) {
    if s == 1 {
        dst[pl..pl + src.len()].copy_from_slice(src);
        return;
    }
    // Head: columns up to the first padded index that is a multiple of s.
    let head = ((s - pl % s) % s).min(src.len());
    for (x, &v) in src[..head].iter().enumerate() {
        let t = pl + x;
        dst[(t % s) * plen + t / s] = v;
    }
    let j0 = (pl + head) / s;
    let body = &src[head..];
    let full = body.len() / s;
    let tail = &body[full * s..];
    if s == 2 {
        let (p0, p1) = dst.split_at_mut(plen);
        let (p0, p1) = (&mut p0[j0..j0 + full], &mut p1[j0..j0 + full]);
        // Blocks of 8 pairs with fixed-size inner loops: unrolled into shuffles.
        let blocks = full / 8;
        for ((ch, a), b) in body
            .chunks_exact(16)
            .zip(p0.chunks_exact_mut(8))
            .zip(p1.chunks_exact_mut(8))
        {
            let ch: &[f32; 16] = ch.try_into().unwrap();
            let a: &mut [f32; 8] = a.try_into().unwrap();
            let b: &mut [f32; 8] = b.try_into().unwrap();
            for i in 0..8 {
                a[i] = ch[2 * i];
                b[i] = ch[2 * i + 1];
            }
        }
        for j in blocks * 8..full {
            p0[j] = body[2 * j];
            p1[j] = body[2 * j + 1];
        }
    } else {
        for (c, ch) in body.chunks_exact(s).enumerate() {
            for (r, &v) in ch.iter().enumerate() {
                dst[r * plen + j0 + c] = v;
            }
        }
    }
    for (r, &v) in tail.iter().enumerate() {
        dst[r * plen + j0 + full] = v;
    }
}

/// `row[ox] += sum_kj w[kj] * buf[taps[kj] + ox]`, the 3 or 5 taps of a
/// kernel row fused in one pass (zipped slices: no bounds checks, vectorizes).
#[inline(always)]
fn taps_fused<const K: usize>(row: &mut [f32], buf: &[f32], taps: &[usize], w: &[f32]) {
    let n = row.len();
    let x = |k: usize| &buf[taps[k]..taps[k] + n];
    match K {
        3 => {
            let (w0, w1, w2) = (w[0], w[1], w[2]);
            row.iter_mut()
                .zip(x(0))
                .zip(x(1))
                .zip(x(2))
                .for_each(|(((o, &a), &b), &c)| *o += w0 * a + w1 * b + w2 * c);
        }
        5 => {
            let (w0, w1, w2, w3, w4) = (w[0], w[1], w[2], w[3], w[4]);
            row.iter_mut()
                .zip(x(0))
                .zip(x(1))
                .zip(x(2))
                .zip(x(3))
                .zip(x(4))
                .for_each(|(((((o, &a), &b), &c), &d), &e)| {
                    *o += w0 * a + w1 * b + w2 * c + w3 * d + w4 * e
                });
        }
        _ => unreachable!("taps_fused is only instantiated for 3 and 5"),
    }
}
