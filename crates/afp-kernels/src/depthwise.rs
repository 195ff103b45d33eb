//! Direct depthwise convolution (group == c_in, c_out = multiplier * c_in).
//!
//! One output plane per task (parallel over `n * c_out`); within a plane, one
//! output row at a time stays in L1 while every kernel tap adds its
//! contribution over the contiguous range of output columns whose input is
//! inside the image (border columns are excluded by the range, so the inner
//! loop has no branches and vectorizes). Bias and activation are applied to
//! the row while it is hot.
//!
//! Fast path (AVX2+FMA, 3x3 / 5x5, stride 1 or 2, no dilation, clamp-type
//! activation): the plane is copied once into a zero-padded buffer and the
//! output plane is computed in one call, 8 columns at a time with explicit
//! FMAs and the weights broadcast once; stride 2 loads 16 consecutive inputs
//! and keeps the even ones with two shuffles (no parity-split copy). Masked
//! stores (slow on AMD cores) are left for the plane's last partial vector.
//! With AVX-512F, 16 columns at a time (stride 2: one permute of 32 inputs), the
//! same bits.

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
    if fast_ok(c, act) {
        let min_len = (32768 / (ohw * taps).max(1)).max(1);
        return out
            .par_chunks_mut(ohw)
            .enumerate()
            .with_min_len(min_len)
            .for_each(|(p, o)| {
                let (ni, co) = (p / c.c_out, p % c.c_out);
                let ci = co / mult;
                PAD.with_borrow_mut(|buf| {
                    fast_plane(
                        c,
                        h,
                        w,
                        &input[(ni * c.c_in + ci) * h * w..][..h * w],
                        &weight[co * taps..][..taps],
                        bias.map_or(0.0, |b| b[co]),
                        act,
                        o,
                        buf,
                    )
                })
            });
    }
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
/// the padding): padded column `t = pl + x` goes to `dst[(t % s) * plen + t / s]`. (Also
/// the even / odd split of Winograd's input rows.)
#[inline(always)]
pub(crate) fn deinterleave(src: &[f32], dst: &mut [f32], s: usize, pl: usize, plen: usize) {
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

thread_local! {
    /// Per-thread zero-padded copy of one input plane (fast path).
    static PAD: std::cell::RefCell<PaddedPlane> = const { std::cell::RefCell::new(PaddedPlane::new()) };
}

/// A zero-padded copy of one input plane for [`fast_plane`], reused from plane to plane:
/// while the shape stays the same only the interior is rewritten, so the zero border is
/// written once per shape and thread rather than the whole buffer once per plane.
#[derive(Debug, Default)]
pub(crate) struct PaddedPlane {
    data: Vec<f32>,
    /// `(ph, pw, pt, pl, h, w)` of the layout in `data`.
    layout: (usize, usize, usize, usize, usize, usize),
}

impl PaddedPlane {
    pub(crate) const fn new() -> Self {
        PaddedPlane {
            data: Vec::new(),
            layout: (0, 0, 0, 0, 0, 0),
        }
    }
}

/// The AVX2 path covers square 3x3 / 5x5 kernels, stride 1 or 2, no
/// dilation, and activations that are a clamp.
pub(crate) fn fast_ok(c: &Conv2d, act: Activation) -> bool {
    c.kh == c.kw
        && (c.kh == 3 || c.kh == 5)
        && c.stride[0] == c.stride[1]
        && (c.stride[0] == 1 || c.stride[0] == 2)
        && c.dilation == [1, 1]
        && act.clamp_bounds().is_some()
        && crate::sgemm::avx2_available()
}

/// One output plane: the input plane is copied into a zero-padded buffer (its interior)
/// (`pw` columns, wide enough that every 8-wide vector read of the last
/// output vector stays inside), then each output row is 8 columns at a time
/// `bias + sum_taps w * padded[oy*s + ki][ox*s + kj]`, clamped.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fast_plane(
    c: &Conv2d,
    h: usize,
    w: usize,
    input: &[f32],
    weight: &[f32],
    bias: f32,
    act: Activation,
    out: &mut [f32],
    pad: &mut PaddedPlane,
) {
    fast_plane_on(
        crate::sgemm::Isa::best(),
        c,
        h,
        w,
        input,
        weight,
        bias,
        act,
        out,
        pad,
    )
}

/// [`fast_plane`] on the given vector width (both give the same bits: each output is the
/// bias, then one FMA per tap in the same order).
#[allow(clippy::too_many_arguments)]
fn fast_plane_on(
    isa: crate::sgemm::Isa,
    c: &Conv2d,
    h: usize,
    w: usize,
    input: &[f32],
    weight: &[f32],
    bias: f32,
    act: Activation,
    out: &mut [f32],
    pad: &mut PaddedPlane,
) {
    let (oh, ow) = c.out_hw(h, w);
    let (k, s) = (c.kh, c.stride[0]);
    let (pt, pl) = (c.pads[0], c.pads[1]);
    // Sized for 16-lane vectors (also enough for 8): the last element read is row
    // (oh-1)*s + k-1, column (owv-1)*s + k-1 (+16 for the second load of stride 2),
    // and 8 past the last input column, where the row copy's last vector writes zeros.
    let owv = ow.next_multiple_of(16);
    let pw = (w + pl + 8).max((owv - 1) * s + k + 16);
    let ph = (h + pt).max((oh - 1) * s + k);
    let layout = (ph, pw, pt, pl, h, w);
    if pad.layout != layout {
        pad.data.clear();
        pad.data.resize(ph * pw, 0.0);
        pad.layout = layout;
    }
    let buf = &mut pad.data;
    let (lo, hi) = match act {
        Activation::Relu => (0.0, f32::INFINITY),
        Activation::Clip { min, max } => (min, max),
        _ => (f32::NEG_INFINITY, f32::INFINITY),
    };
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `fast_ok` checked AVX2+FMA. The copy writes rows pt..pt+h, columns
        // pl..pl+w of the ph x pw buffer (ph >= h + pt, pw >= w + pl) from `input`'s h rows
        // of w (asserted there). `buf` holds ph rows of pw >= (owv-1)*s + k + 8 elements,
        // which covers every read of `plane_avx2` (asserted there).
        unsafe {
            copy_rows_avx2(input, w, buf, pw, (pt, pl));
            if isa == crate::sgemm::Isa::Avx512 {
                // SAFETY: `Isa::best` found AVX-512F; the same buffer bounds (asserted there).
                match (k, s) {
                    (3, 1) => plane_avx512::<3, 1>(buf, pw, weight, (bias, lo, hi), out, ow),
                    (3, 2) => plane_avx512::<3, 2>(buf, pw, weight, (bias, lo, hi), out, ow),
                    (5, 1) => plane_avx512::<5, 1>(buf, pw, weight, (bias, lo, hi), out, ow),
                    (5, 2) => plane_avx512::<5, 2>(buf, pw, weight, (bias, lo, hi), out, ow),
                    _ => unreachable!("fast_ok admits 3x3 / 5x5, stride 1 / 2"),
                }
                return;
            }
            match (k, s) {
                (3, 1) => plane_avx2::<3, 1>(buf, pw, weight, (bias, lo, hi), out, ow),
                (3, 2) => plane_avx2::<3, 2>(buf, pw, weight, (bias, lo, hi), out, ow),
                (5, 1) => plane_avx2::<5, 1>(buf, pw, weight, (bias, lo, hi), out, ow),
                (5, 2) => plane_avx2::<5, 2>(buf, pw, weight, (bias, lo, hi), out, ow),
                _ => unreachable!("fast_ok admits 3x3 / 5x5, stride 1 / 2"),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (input, buf, out, weight, bias, lo, hi, ow, oh, isa);
}

/// The lanes `0..rem` of an 8-lane vector, as a mask for `maskload` / `maskstore`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn lanes_below(rem: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(rem as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// Copies the `w`-wide rows of `input` into `buf` (rows `pw` apart) from row `pt`, column
/// `pl`: whole vectors, then the last `w % 8` values loaded masked and stored as a whole
/// vector, whose other lanes write zeros into the row's right padding (a masked store is
/// slow on AMD cores).
///
/// # Safety
/// AVX2 must be available. (Accesses are asserted below.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_rows_avx2(
    input: &[f32],
    w: usize,
    buf: &mut [f32],
    pw: usize,
    (pt, pl): (usize, usize),
) {
    use std::arch::x86_64::*;
    let h = input.len() / w.max(1);
    assert!(w >= 1 && pl + w + 8 <= pw && (pt + h) * pw <= buf.len());
    let (whole, rem) = (w / 8 * 8, w % 8);
    let mask = lanes_below(rem);
    for (y, src) in input.chunks_exact(w).enumerate() {
        let dst = &mut buf[(y + pt) * pw + pl..][..w + 8];
        // SAFETY: loads: whole vectors end at or before w, the masked lanes are below w
        // (src holds w values); stores: at most whole + 8 <= w + 8 = dst.len().
        unsafe {
            for x in (0..whole).step_by(8) {
                _mm256_storeu_ps(
                    dst.as_mut_ptr().add(x),
                    _mm256_loadu_ps(src.as_ptr().add(x)),
                );
            }
            if rem > 0 {
                let v = _mm256_maskload_ps(src.as_ptr().add(whole), mask);
                _mm256_storeu_ps(dst.as_mut_ptr().add(whole), v);
            }
        }
    }
}

/// Output rows and vectors per row of a plane kernel with `lanes`-wide vectors, after
/// asserting that every read of the padded plane `buf` (rows `pw` apart) and of the weights
/// lies inside them. The largest offset read is
/// `((oh-1)*s + k-1)*pw + (nv*lanes - 1)*s + (k-1)`, plus `lanes` for stride 2's second load.
fn plane_bounds(
    k: usize,
    s: usize,
    lanes: usize,
    (buf, pw): (&[f32], usize),
    weight: &[f32],
    out: &[f32],
    ow: usize,
) -> (usize, usize) {
    let oh = out.len() / ow;
    let nv = ow.div_ceil(lanes);
    assert!(weight.len() >= k * k && oh * ow == out.len());
    assert!(pw >= (nv * lanes - 1) * s + k + lanes);
    assert!(buf.len() >= ((oh - 1) * s + k) * pw);
    (oh, nv)
}

/// A whole output plane (`out.len() / ow` rows of `ow`) of a `K x K`, stride `S`
/// depthwise conv from the padded plane `buf` (rows `pw` apart), 8 columns at a time:
/// `bias + sum_taps w * buf[oy*S + ki][ox*S + kj]`, clamped to `(lo, hi)`. The weights
/// are broadcast once per plane, and a row's partial last vector is stored whole where the
/// next row overwrites its extra lanes, masked otherwise (the plane's last row, rows of fewer
/// than 4 columns): this matters on small planes (7x7, 14x14), where a plane is a few
/// vectors.
///
/// # Safety
/// AVX2 and FMA must be available. (All memory accesses are through pointers into `buf`,
/// `weight` and `out`, bounds-asserted below.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn plane_avx2<const K: usize, const S: usize>(
    buf: &[f32],
    pw: usize,
    weight: &[f32],
    (bias, lo, hi): (f32, f32, f32),
    out: &mut [f32],
    ow: usize,
) {
    use std::arch::x86_64::*;
    let (oh, nv) = plane_bounds(K, S, 8, (buf, pw), weight, out, ow);
    let wv: [__m256; 25] =
        std::array::from_fn(|t| _mm256_set1_ps(if t < K * K { weight[t] } else { 0.0 }));
    let (bv, lov, hiv) = (_mm256_set1_ps(bias), _mm256_set1_ps(lo), _mm256_set1_ps(hi));
    let rem = ow - (nv - 1) * 8;
    let mask = lanes_below(rem);
    for oy in 0..oh {
        let rp = buf.as_ptr().add(oy * S * pw);
        let op = out.as_mut_ptr().add(oy * ow);
        for v in 0..nv {
            let mut acc = bv;
            for ki in 0..K {
                for kj in 0..K {
                    let off = ki * pw + v * 8 * S + kj;
                    // SAFETY: off + 8*S - 1 <= (K-1)*pw + (nv*8-1)*S + K-1 + 8 past the
                    // row start oy*S*pw, inside `buf` (asserted above).
                    let x = unsafe {
                        if S == 1 {
                            _mm256_loadu_ps(rp.add(off))
                        } else {
                            let a = _mm256_loadu_ps(rp.add(off));
                            let b = _mm256_loadu_ps(rp.add(off + 8));
                            // Even elements of a ++ b, in order.
                            let e = _mm256_shuffle_ps::<0x88>(a, b);
                            _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(e)))
                        }
                    };
                    acc = _mm256_fmadd_ps(wv[ki * K + kj], x, acc);
                }
            }
            let r = _mm256_min_ps(_mm256_max_ps(acc, lov), hiv);
            // SAFETY: columns v*8.. of row oy. Whole vectors end at or before ow. A partial
            // last vector is stored whole only where its 8 - rem extra lanes land in the next
            // row, inside `out`, and that row's first store, made later, covers them: with
            // more than one vector per row that store is a whole vector; with one, it covers
            // rem >= 8 - rem lanes (and then the next row's end, (oy + 2) * ow, is at least
            // the extra lanes' end, (oy + 1) * ow + 8 - rem). Otherwise, the plane's last row
            // included, only the `rem` lanes are stored.
            let spill_ok = oy + 1 < oh && (nv > 1 || 2 * rem >= 8);
            unsafe {
                if v + 1 < nv || rem == 8 || spill_ok {
                    _mm256_storeu_ps(op.add(v * 8), r);
                } else {
                    _mm256_maskstore_ps(op.add(v * 8), mask, r);
                }
            }
        }
    }
}

/// As [`plane_avx2`] with 16-lane vectors: a 14x14 plane's row is one vector instead of two,
/// a 112-wide one 7 instead of 14, and stride 2 keeps the even elements of 32 loaded values
/// with one permute. A row's partial last vector is stored masked (AVX-512 masks cost no
/// more than a whole store). Each output is the same FMA chain as `plane_avx2`'s.
///
/// # Safety
/// AVX-512F must be available. (All memory accesses are through pointers into `buf`,
/// `weight` and `out`, bounds-asserted below.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn plane_avx512<const K: usize, const S: usize>(
    buf: &[f32],
    pw: usize,
    weight: &[f32],
    (bias, lo, hi): (f32, f32, f32),
    out: &mut [f32],
    ow: usize,
) {
    use std::arch::x86_64::*;
    let (oh, nv) = plane_bounds(K, S, 16, (buf, pw), weight, out, ow);
    let wv: [__m512; 25] =
        std::array::from_fn(|t| _mm512_set1_ps(if t < K * K { weight[t] } else { 0.0 }));
    let (bv, lov, hiv) = (_mm512_set1_ps(bias), _mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let rem = ow - (nv - 1) * 16;
    let last_mask = ((1u32 << rem) - 1) as __mmask16;
    // Even elements of a ++ b, in order.
    let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    for oy in 0..oh {
        let rp = buf.as_ptr().add(oy * S * pw);
        let op = out.as_mut_ptr().add(oy * ow);
        for v in 0..nv {
            let mut acc = bv;
            for ki in 0..K {
                for kj in 0..K {
                    let off = ki * pw + v * 16 * S + kj;
                    // SAFETY: off + 16*S - 1 <= (K-1)*pw + (nv*16-1)*S + K-1 + 16 past the
                    // row start oy*S*pw, inside `buf` (asserted above).
                    let x = unsafe {
                        if S == 1 {
                            _mm512_loadu_ps(rp.add(off))
                        } else {
                            let a = _mm512_loadu_ps(rp.add(off));
                            let b = _mm512_loadu_ps(rp.add(off + 16));
                            _mm512_permutex2var_ps(a, evens, b)
                        }
                    };
                    acc = _mm512_fmadd_ps(wv[ki * K + kj], x, acc);
                }
            }
            let r = _mm512_min_ps(_mm512_max_ps(acc, lov), hiv);
            let mask = if v + 1 < nv { 0xFFFF } else { last_mask };
            // SAFETY: columns v*16.. of row oy, the enabled lanes below ow: inside `out`.
            unsafe { _mm512_mask_storeu_ps(op.add(v * 16), mask, r) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path on planes of 1 to 12 columns equals the direct loops, and writes
    /// nothing past its plane (the partial vectors stored whole must land inside it, where a
    /// later store overwrites them).
    #[test]
    fn fast_planes_stay_inside_and_match() {
        use crate::sgemm::Isa;
        if !crate::sgemm::avx2_available() {
            return;
        }
        let mut seed = 3;
        for (k, s) in [(3usize, 1usize), (3, 2), (5, 1), (5, 2)] {
            for w in (1..=12usize).chain([15, 16, 17, 31, 33]) {
                for h in [1usize, 2, 3, 5] {
                    let p = k / 2;
                    let c = Conv2d {
                        c_in: 1,
                        c_out: 1,
                        kh: k,
                        kw: k,
                        stride: [s, s],
                        dilation: [1, 1],
                        pads: [p; 4],
                        group: 1,
                    };
                    let (oh, ow) = c.out_hw(h, w);
                    let x = crate::test_rand::rand_vec(h * w, &mut seed);
                    let wt = crate::test_rand::rand_vec(k * k, &mut seed);
                    let act = Activation::Clip {
                        min: -0.5,
                        max: 0.75,
                    };
                    // The plane, then a guard the kernel must leave alone.
                    let mut buf = vec![f32::NAN; oh * ow + 16];
                    let (out, guard) = buf.split_at_mut(oh * ow);
                    let mut pad = PaddedPlane::new();
                    fast_plane_on(Isa::Avx2, &c, h, w, &x, &wt, 0.25, act, out, &mut pad);
                    assert!(
                        guard.iter().all(|g| g.is_nan()),
                        "k{k} s{s} {h}x{w}: wrote past"
                    );
                    if Isa::best() == Isa::Avx512 {
                        // The 16-lane kernel: the same bits, nothing written past.
                        let mut wide = vec![f32::NAN; oh * ow + 16];
                        let (o512, guard) = wide.split_at_mut(oh * ow);
                        fast_plane_on(Isa::Avx512, &c, h, w, &x, &wt, 0.25, act, o512, &mut pad);
                        assert!(guard.iter().all(|g| g.is_nan()), "avx512 wrote past");
                        let same = o512
                            .iter()
                            .zip(out.iter())
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "k{k} s{s} {h}x{w}: AVX-512 bits differ");
                    }
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut want = 0.25f32;
                            for ki in 0..k {
                                for kj in 0..k {
                                    let iy = (oy * s + ki) as isize - p as isize;
                                    let ix = (ox * s + kj) as isize - p as isize;
                                    if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                                        let v = x[iy as usize * w + ix as usize];
                                        want += wt[ki * k + kj] * v;
                                    }
                                }
                            }
                            let got = out[oy * ow + ox];
                            let want = act.apply(want);
                            assert!(
                                (got - want).abs() <= 1e-5,
                                "k{k} s{s} {h}x{w} at ({oy},{ox}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
