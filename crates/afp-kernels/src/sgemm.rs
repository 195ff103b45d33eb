//! Packed SGEMM with hand-written micro-kernels (AVX2+FMA 6x16, AVX-512 12x32) and a
//! fused epilogue (`alpha`, accumulate, per-row or per-column bias, ReLU / Clip).
//!
//! BLIS-style blocking: for each `NC`-column panel and `KC`-deep slice of
//! the product, `B` is packed into `NR`-wide strips and `A` (in `MC`-row
//! blocks) into `MR`-tall strips, both zero-padded to whole strips, and the
//! micro-kernel multiplies one `MR x kc` strip of `A` by one `kc x NR` strip
//! of `B` with its 12 accumulators held in registers. The epilogue (bias,
//! activation) runs on the register tile after the last `KC` slice, so the
//! output is written once per slice and never re-read for the epilogue.
//!
//! The AVX2 path is chosen at run time (`is_x86_feature_detected!`), with the AVX-512
//! kernel where the CPU has AVX-512F (the same bits: [`Isa`]); other
//! machines use the portable path: the `gemm` crate through
//! [`matmul`](crate::matmul::matmul) followed by a separate epilogue pass.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::conv::valid_range;
use crate::lookup::{with_decoded, CodedRows};
use crate::matmul::{matmul, MatLayout};
use crate::Activation;

/// Micro-tile rows (strip height of packed `A`).
const MR: usize = 6;
/// Micro-tile columns (strip width of packed `B`): two 8-lane vectors.
const NR: usize = 16;
/// Depth of one packed slice (a `kc x NR` strip of `B` is 16 KiB: L1).
const KC: usize = 256;
/// Rows of `A` packed at a time (`MC x KC` is 96 KiB: L2).
const MC: usize = 96;
/// Columns of `B` packed at a time (`KC x NC` is 256 KiB: L2).
const NC: usize = 256;

/// `LANE_MASKS[NR - nr..][..8]` enables the first `nr` of 8 lanes (and `[NR + 8 - nr..]` the
/// first `nr - 8`): masks for the columns of a partial strip.
const LANE_MASKS: [i32; 2 * NR] = {
    let mut m = [0i32; 2 * NR];
    let mut i = 0;
    while i < NR {
        m[i] = -1;
        i += 1;
    }
    m
};

/// Bias added in the epilogue.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Bias<'a> {
    None,
    /// One value per row of `C` (`[m]`).
    Row(&'a [f32]),
    /// One value per column of `C` (`[n]`).
    Col(&'a [f32]),
}

/// `C = act(alpha * A B + (accumulate ? C : 0) + bias + residual)`, in that order of f32
/// operations (so a fused residual gives the bits of a separate Add after the product).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Epilogue<'a> {
    pub alpha: f32,
    pub accumulate: bool,
    pub bias: Bias<'a>,
    /// A tensor laid out as `C` (same strides), added after the bias.
    pub residual: Option<&'a [f32]>,
    pub act: Activation,
}

/// The left-hand operand `A` (`m x k`).
#[derive(Clone, Copy)]
pub(crate) enum Lhs<'a> {
    /// f32 values with arbitrary strides.
    F32(&'a [f32], MatLayout),
    /// Row-major codes decoded through a table while `A` is packed (the lookup path).
    Coded(CodedRows<'a>),
}

/// Test-only switch to time the portable path against the AVX2 one.
#[cfg(test)]
pub(crate) static FORCE_PORTABLE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Whether the AVX2+FMA kernel can run on this machine.
#[inline]
pub(crate) fn avx2_available() -> bool {
    #[cfg(test)]
    if FORCE_PORTABLE.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Which micro-kernels a product runs on (both give the same bits: every output is one
/// FMA chain over the depth in order, then the same epilogue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// 6x16 tiles in two 8-lane vectors per row.
    Avx2,
    /// 12x32 tiles (two A strips, two adjacent packed B strips) in two 16-lane vectors per
    /// row, and rows against B in place for fewer than 6 rows ([`few_rows`]): machines
    /// with two 512-bit FMA units (Intel Xeon since Skylake-SP) do twice the AVX2 work per
    /// cycle (Zen 4 runs a 512-bit FMA as two 256-bit halves: little to gain there).
    Avx512,
}

impl Isa {
    /// The widest kernels this machine runs. Callers have checked [`avx2_available`].
    pub(crate) fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        Isa::Avx2
    }
}

/// `c[m x n]` (row-major, row stride `ldc`) `= epi(a * b)`, `a` `m x k` and
/// `b` `k x n` with arbitrary strides. `threads > 1` splits the output over
/// the current rayon pool. Panics if an operand is too short.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_fused(
    m: usize,
    n: usize,
    k: usize,
    a: Lhs,
    b: &[f32],
    b_l: MatLayout,
    c: &mut [f32],
    ldc: usize,
    epi: Epilogue,
    threads: usize,
) {
    // Thin products (matrix-vector-like) go to the `gemm` crate: the 6x16
    // tile would be mostly padding and packing would cost as much as the
    // arithmetic.
    if avx2_available() && n >= NR / 2 && (m >= MR || few_rows_apply(Isa::best(), m, a, b_l)) {
        return gemm_fused_simd(Isa::best(), m, n, k, a, b, b_l, c, ldc, epi, threads);
    }
    match a {
        Lhs::F32(a, a_l) => gemm_fused_portable(m, n, k, a, a_l, b, b_l, c, ldc, epi, threads),
        Lhs::Coded(w) => {
            check_lhs(a, m, k);
            with_decoded(w, |a| {
                let a_l = MatLayout::row_major(k);
                gemm_fused_portable(m, n, k, a, a_l, b, b_l, c, ldc, epi, threads)
            })
        }
    }
}

/// The portable path: `gemm` crate, then bias and activation per row.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_fused_portable(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_l: MatLayout,
    b: &[f32],
    b_l: MatLayout,
    c: &mut [f32],
    ldc: usize,
    epi: Epilogue,
    threads: usize,
) {
    matmul(
        m,
        n,
        k,
        c,
        ldc,
        epi.accumulate,
        a,
        a_l,
        b,
        b_l,
        epi.alpha,
        threads,
    );
    if m == 0 || n == 0 {
        return;
    }
    for (i, row) in c.chunks_mut(ldc.max(n)).take(m).enumerate() {
        let row = &mut row[..n];
        if let Some(res) = epi.residual {
            let res = &res[i * ldc..][..n];
            for (j, (x, &r)) in row.iter_mut().zip(res).enumerate() {
                let b = match epi.bias {
                    Bias::None => 0.0,
                    Bias::Row(b) => b[i],
                    Bias::Col(b) => b[j],
                };
                *x = *x + b + r;
            }
            epi.act.apply_slice(row);
            continue;
        }
        match epi.bias {
            Bias::None => epi.act.apply_slice(row),
            Bias::Row(b) => epi.act.apply_slice_bias(row, b[i]),
            Bias::Col(b) => {
                row.iter_mut().zip(b).for_each(|(x, &v)| *x += v);
                epi.act.apply_slice(row);
            }
        }
    }
}

/// One past the largest offset of a `rows x cols` (both > 0) matrix.
fn span(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    (rows - 1)
        .checked_mul(rs)
        .and_then(|x| x.checked_add((cols - 1).checked_mul(cs)?))
        .and_then(|x| x.checked_add(1))
        .filter(|&s| s <= isize::MAX as usize && rs <= isize::MAX as usize)
        .expect("sgemm: layout overflows")
}

/// Panics unless `a` holds an `m x k` operand (f32: `m, k > 0`).
fn check_lhs(a: Lhs, m: usize, k: usize) {
    match a {
        Lhs::F32(a, l) => assert!(span(m, k, l.rs, l.cs) <= a.len(), "sgemm: lhs too short"),
        Lhs::Coded(w) => assert!(
            w.rows() == m && w.k == k && w.codes.len() == m * k,
            "sgemm: coded lhs is not {m} x {k}"
        ),
    }
}

/// Shared description of one product.
#[derive(Clone, Copy)]
struct Problem<'a> {
    isa: Isa,
    a: Lhs<'a>,
    b: BSrc<'a>,
    /// Output row stride (columns are contiguous).
    c_rs: usize,
    k: usize,
    alpha: f32,
    accumulate: bool,
    bias: Bias<'a>,
    /// Laid out as the output (row stride `c_rs`); bounds checked at entry.
    residual: Option<&'a [f32]>,
    lo: f32,
    hi: f32,
}

/// Raw output pointer handed to the worker threads (also the 1x1 tiles' in `pointwise`).
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: the pointer is only used to write disjoint parts of the output from different
// threads (sub-rectangles in `gemm_fused_simd`, column ranges in `pointwise::run`), while
// the caller's exclusive borrow of the output slice is held.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The element `i` on. (A method, so closures capture the `Sync` wrapper, not the
    /// pointer field.)
    ///
    /// # Safety
    /// `i` must lie inside the output.
    pub(crate) unsafe fn at(self, i: usize) -> *mut f32 {
        self.0.add(i)
    }
}

type Bufs = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

thread_local! {
    /// Per-thread packing buffers (packed A block, packed B panel, one row, the columns of a
    /// narrow last strip).
    static PACK: RefCell<Bufs> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new(), Vec::new())) };
}

#[allow(clippy::too_many_arguments)]
fn gemm_fused_simd(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: Lhs,
    b: &[f32],
    b_l: MatLayout,
    c: &mut [f32],
    ldc: usize,
    epi: Epilogue,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        m == 1 || ldc >= n,
        "sgemm: dst row stride {ldc} < n {n} (rows would overlap)"
    );
    let c_span = span(m, n, ldc, 1);
    assert!(c_span <= c.len(), "sgemm: dst too short");
    if let Some(r) = epi.residual {
        assert!(c_span <= r.len(), "sgemm: residual too short");
    }
    match epi.bias {
        Bias::Row(bv) => assert!(bv.len() >= m, "sgemm: row bias too short"),
        Bias::Col(bv) => assert!(bv.len() >= n, "sgemm: column bias too short"),
        Bias::None => {}
    }
    let Some((lo, hi)) = epi.act.clamp_bounds() else {
        // Activation not fused in registers: run without it, then one pass.
        let plain = Epilogue {
            act: Activation::None,
            ..epi
        };
        gemm_fused_simd(isa, m, n, k, a, b, b_l, c, ldc, plain, threads);
        for row in c.chunks_mut(ldc.max(n)).take(m) {
            epi.act.apply_slice(&mut row[..n]);
        }
        return;
    };
    if k == 0 {
        // No products: C = act((accumulate ? C : 0) + bias).
        for (i, row) in c.chunks_mut(ldc.max(n)).take(m).enumerate() {
            for (j, x) in row[..n].iter_mut().enumerate() {
                let mut v = if epi.accumulate { *x } else { 0.0 };
                v += match epi.bias {
                    Bias::None => 0.0,
                    Bias::Row(bv) => bv[i],
                    Bias::Col(bv) => bv[j],
                };
                if let Some(r) = epi.residual {
                    v += r[i * ldc + j];
                }
                *x = v.max(lo).min(hi);
            }
        }
        return;
    }
    check_lhs(a, m, k);
    assert!(
        span(k, n, b_l.rs, b_l.cs) <= b.len(),
        "sgemm: rhs too short"
    );

    let p = Problem {
        isa,
        a,
        b: BSrc::Mat(b, b_l),
        c_rs: ldc,
        k,
        alpha: epi.alpha,
        accumulate: epi.accumulate,
        bias: epi.bias,
        residual: epi.residual,
        lo,
        hi,
    };
    if few_rows_apply(isa, m, a, b_l) {
        return few_rows(&p, m, n, OutPtr(c.as_mut_ptr()), threads);
    }
    run_problem(&p, m, n, OutPtr(c.as_mut_ptr()), threads);
}

/// Whether a product of fewer rows than a strip runs as rows of `A` against `B` where it
/// lies ([`few_rows`]): AVX-512, f32 `A`, row-major `B` (a classifier at batch 1 whose
/// weights are not transposed). Packing `B` for the tiled kernels would copy all of it for
/// one use.
fn few_rows_apply(isa: Isa, m: usize, a: Lhs, b_l: MatLayout) -> bool {
    m < MR && isa == Isa::Avx512 && b_l.cs == 1 && matches!(a, Lhs::F32(..))
}

/// Columns of `B` per block of [`row_avx512`]: 8 vectors of accumulators.
const ROW_BLOCK: usize = 8 * NR;

/// The `m` rows of `p`'s output, each row of `A` against row-major `B` in place, columns
/// split over `threads` parts. Callers check [`few_rows_apply`].
fn few_rows(p: &Problem, m: usize, n: usize, out: OutPtr, threads: usize) {
    let tiles = n.div_ceil(NR);
    let parts = threads.min(tiles).max(1);
    let bounds = |t: usize| (tiles * t / parts * NR).min(n);
    let run = |t: usize| {
        for i in 0..m {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `few_rows_apply` checked `Isa::Avx512` (AVX-512F present); the
            // columns are inside 0..n and row i < m of the checked output.
            unsafe {
                row_avx512(p, i, bounds(t)..bounds(t + 1), out)
            };
        }
    };
    if parts > 1 {
        (0..parts).into_par_iter().with_max_len(1).for_each(run);
    } else {
        run(0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = out;
}

/// Row `i` of `p`'s output over `cols`: each output the FMA chain over the depth from zero
/// and then the epilogue of [`kernel_avx512`], in its order (so the bits are the tiled
/// kernels'), [`ROW_BLOCK`] columns at a time with the last block masked.
///
/// # Safety
/// AVX-512F must be available; `p.a` is f32 and `p.b` a row-major matrix, both checked
/// against the product's `m x k` and `k x n` by `gemm_fused_simd`; `i < m`, `cols` inside
/// `0..n`, and `out` the checked output.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_avx512(p: &Problem, i: usize, cols: std::ops::Range<usize>, out: OutPtr) {
    use std::arch::x86_64::*;
    let (Lhs::F32(a, a_l), BSrc::Mat(b, b_l)) = (p.a, p.b) else {
        unreachable!("few_rows_apply admits f32 A and a matrix B")
    };
    assert!(b_l.cs == 1 && cols.end > cols.start);
    let z = _mm512_setzero_ps();
    let mut j = cols.start;
    while j < cols.end {
        let w = (cols.end - j).min(ROW_BLOCK);
        let masks: [__mmask16; 8] = std::array::from_fn(|h| {
            let lanes = w.saturating_sub(h * NR).min(NR);
            ((1u32 << lanes) - 1) as __mmask16
        });
        let (mut c0, mut c1, mut c2, mut c3) = (z, z, z, z);
        let (mut c4, mut c5, mut c6, mut c7) = (z, z, z, z);
        for q in 0..p.k {
            let av = _mm512_set1_ps(a[i * a_l.rs + q * a_l.cs]);
            let row = b.as_ptr().wrapping_add(q * b_l.rs + j);
            // SAFETY: the enabled lanes are columns j.. j + w <= n of row q of B, inside
            // `b` (checked by the caller); disabled lanes are not read.
            let ld =
                |h: usize| unsafe { _mm512_maskz_loadu_ps(masks[h], row.wrapping_add(h * NR)) };
            c0 = _mm512_fmadd_ps(av, ld(0), c0);
            c1 = _mm512_fmadd_ps(av, ld(1), c1);
            c2 = _mm512_fmadd_ps(av, ld(2), c2);
            c3 = _mm512_fmadd_ps(av, ld(3), c3);
            c4 = _mm512_fmadd_ps(av, ld(4), c4);
            c5 = _mm512_fmadd_ps(av, ld(5), c5);
            c6 = _mm512_fmadd_ps(av, ld(6), c6);
            c7 = _mm512_fmadd_ps(av, ld(7), c7);
        }
        let at = i * p.c_rs + j;
        // SAFETY (loads and stores): the enabled lanes are columns j..j + w of row i, inside
        // the output, the residual (same layout) and the column bias (n values).
        let load = |ptr: *const f32, h: usize| unsafe {
            _mm512_maskz_loadu_ps(masks[h], ptr.wrapping_add(h * NR))
        };
        let finish = |h: usize, mut v: __m512| {
            if masks[h] == 0 {
                return;
            }
            if p.alpha != 1.0 {
                v = _mm512_mul_ps(v, _mm512_set1_ps(p.alpha));
            }
            let dst = out.0.wrapping_add(at);
            if p.accumulate {
                v = _mm512_add_ps(v, load(dst, h));
            }
            match p.bias {
                Bias::None => {}
                Bias::Row(bv) => v = _mm512_add_ps(v, _mm512_set1_ps(bv[i])),
                Bias::Col(bv) => v = _mm512_add_ps(v, load(bv.as_ptr().wrapping_add(j), h)),
            }
            if let Some(res) = p.residual {
                v = _mm512_add_ps(v, load(res.as_ptr().wrapping_add(at), h));
            }
            v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(p.lo)), _mm512_set1_ps(p.hi));
            // SAFETY: see above.
            unsafe { _mm512_mask_storeu_ps(dst.wrapping_add(h * NR), masks[h], v) };
        };
        for (h, v) in [c0, c1, c2, c3, c4, c5, c6, c7].into_iter().enumerate() {
            finish(h, v);
        }
        j += w;
    }
}

/// `c[m x n]` (row-major, row stride `ldc`) `= epi(a * B)` where `B` is the
/// im2col matrix of `src` (`k x n`, `k = channels*kh*kw`, `n = oh*ow`),
/// packed straight from the image (no im2col buffer). AVX2 only: the caller
/// checks [`avx2_available`]. `epi.act` must be None, Relu or Clip.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_gemm_fused(
    m: usize,
    k: usize,
    a: Lhs,
    src: ConvB,
    c: &mut [f32],
    epi: Epilogue,
    threads: usize,
) {
    assert!(avx2_available(), "conv_gemm_fused needs AVX2+FMA");
    let (lo, hi) = epi
        .act
        .clamp_bounds()
        .expect("conv_gemm_fused: activation not fusable");
    let n = src.oh * src.ow;
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert_eq!(k, src.channels * src.kh * src.kw, "conv_gemm_fused: k");
    assert!(
        src.img.len() >= src.channels * src.h * src.w,
        "conv_gemm_fused: image too short"
    );
    assert!(c.len() >= m * n, "conv_gemm_fused: dst too short");
    if let Some(r) = epi.residual {
        assert!(r.len() >= m * n, "conv_gemm_fused: residual too short");
    }
    check_lhs(a, m, k);
    if let Bias::Row(bv) = epi.bias {
        assert!(bv.len() >= m, "conv_gemm_fused: bias too short");
    }
    assert!(
        !matches!(epi.bias, Bias::Col(_)),
        "conv_gemm_fused: column bias"
    );
    let p = Problem {
        isa: Isa::best(),
        a,
        b: BSrc::Conv(src),
        c_rs: n,
        k,
        alpha: epi.alpha,
        accumulate: epi.accumulate,
        bias: epi.bias,
        residual: epi.residual,
        lo,
        hi,
    };
    run_problem(&p, m, n, OutPtr(c.as_mut_ptr()), threads);
}

/// The im2col matrix of one image (or group): row `(c*kh + ki)*kw + kj`,
/// column `oy*ow + ox` holds `img[c, oy*sh + ki*dh - pt, ox*sw + kj*dw - pl]`
/// (0 outside the image).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvB<'a> {
    pub img: &'a [f32],
    pub channels: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// `[top, left]`.
    pub pad: [usize; 2],
}

impl ConvB<'_> {
    /// `out[x] = B[q, j0 + x]` for `x < out.len()`.
    #[inline(always)]
    fn fill_row(&self, q: usize, j0: usize, out: &mut [f32]) {
        let taps = self.kh * self.kw;
        let (ci, ki, kj) = (q / taps, (q % taps) / self.kw, q % self.kw);
        let (h, w, ow) = (self.h, self.w, self.ow);
        let plane = &self.img[ci * h * w..][..h * w];
        let off = (kj * self.dilation[1]) as isize - self.pad[1] as isize;
        let (vx0, vx1) = valid_range(off, self.stride[1], w, ow);
        let sw = self.stride[1];
        let mut j = j0;
        let end = j0 + out.len();
        let mut pos = 0;
        while j < end {
            let (oy, xa) = (j / ow, j % ow);
            let xb = ow.min(xa + (end - j));
            let seg = &mut out[pos..pos + (xb - xa)];
            let iy = (oy * self.stride[0] + ki * self.dilation[0]) as isize - self.pad[0] as isize;
            let (x0, x1) = (vx0.clamp(xa, xb), vx1.clamp(xa, xb));
            if iy < 0 || iy >= h as isize || x0 >= x1 {
                seg.fill(0.0);
            } else {
                let src = &plane[iy as usize * w..][..w];
                seg[..x0 - xa].fill(0.0);
                seg[x1 - xa..].fill(0.0);
                let start = (x0 as isize * sw as isize + off) as usize;
                let d = &mut seg[x0 - xa..x1 - xa];
                if sw == 1 {
                    d.copy_from_slice(&src[start..start + d.len()]);
                } else if sw == 2 {
                    // Pairs, first of each: a form the compiler vectorizes (shuffles),
                    // where `step_by` stays one element at a time (stride-2 stems).
                    let (last, body) = d.split_last_mut().expect("x0 < x1");
                    let pairs = src[start..start + 2 * body.len()].chunks_exact(2);
                    body.iter_mut().zip(pairs).for_each(|(o, p)| *o = p[0]);
                    *last = src[start + 2 * body.len()];
                } else {
                    d.iter_mut()
                        .zip(src[start..].iter().step_by(sw))
                        .for_each(|(o, &s)| *o = s);
                }
            }
            pos += xb - xa;
            j += xb - xa;
        }
    }
}

/// Where the `k x n` right-hand operand comes from.
#[derive(Clone, Copy)]
enum BSrc<'a> {
    /// A strided matrix.
    Mat(&'a [f32], MatLayout),
    /// Implicit im2col of an image.
    Conv(ConvB<'a>),
}

fn run_problem(p: &Problem, m: usize, n: usize, out: OutPtr, threads: usize) {
    let p = *p;
    let (tm, tn) = (m.div_ceil(MR), n.div_ceil(NR));
    if threads <= 1 || tm.max(tn) <= 1 {
        PACK.with_borrow_mut(|bufs| region(&p, out, 0..m, 0..n, bufs));
        return;
    }
    // Split the output into disjoint rectangles along whichever dimension has more
    // tiles, several per thread, taken as the threads come free: a core that the
    // machine slows for a moment then computes fewer of them instead of holding up
    // the whole product. Along columns each rectangle packs its own columns of B (no
    // extra packing while a rectangle is at most one NC panel wide); along rows each
    // one packs all of B again, so those are fewer (one per thread when B is one panel).
    // A product of a plane of 256 pixels or fewer with at least twice as many output rows
    // as columns (ResNet-50's 256 -> 1024 at 14x14) splits along rows: along columns, each
    // part would read all of the weights for a strip or two of columns.
    let few_columns = n <= 256 && m >= 2 * n;
    let split_n = tn >= tm || (tn >= 4 * threads && !few_columns);
    let (tiles, unit, len) = if split_n { (tn, NR, n) } else { (tm, MR, m) };
    // A whole number of parts per thread: with threads running at one speed, an odd part
    // out (13 for a 56x56 plane) leaves a thread idle for its length at the end.
    let parts = if split_n {
        tiles
            .div_ceil(NC / NR)
            .max(4 * threads)
            .next_multiple_of(threads)
    } else if n <= NC {
        // Every row part packs all of B: with B one panel (a small plane), one part per
        // thread packs it least often (measured: 1 to 2% off MobileNet-v2 at batch 1).
        threads
    } else {
        2 * threads
    }
    .min(tiles);
    let bounds = |t: usize| (tiles * t / parts * unit).min(len);
    (0..parts).into_par_iter().with_max_len(1).for_each(|t| {
        let r = bounds(t)..bounds(t + 1);
        if r.is_empty() {
            return;
        }
        let (rows, cols) = if split_n { (0..m, r) } else { (r, 0..n) };
        PACK.with_borrow_mut(|bufs| region(&p, out, rows, cols, bufs));
    });
}

/// Computes the output rectangle `rows x cols` of `p` (single thread).
fn region(
    p: &Problem,
    out: OutPtr,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    bufs: &mut Bufs,
) {
    #[cfg(target_arch = "x86_64")]
    if p.isa == Isa::Avx512 {
        // SAFETY: `Isa::Avx512` only where `Isa::best` found AVX-512F (and AVX2, FMA checked
        // before any product reaches here).
        return unsafe { region_avx512(p, out, rows, cols, bufs) };
    }
    region_body(p, out, rows, cols, bufs)
}

/// [`region_body`] compiled for AVX-512, so the packing it inlines uses 64-byte moves.
///
/// # Safety
/// AVX-512F, AVX2 and FMA must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn region_avx512(
    p: &Problem,
    out: OutPtr,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    bufs: &mut Bufs,
) {
    region_body(p, out, rows, cols, bufs)
}

#[inline(always)]
fn region_body(
    p: &Problem,
    out: OutPtr,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    bufs: &mut Bufs,
) {
    let (abuf, bbuf, rowbuf, narrow_cols) = bufs;
    if abuf.len() < MC * KC {
        abuf.resize(MC * KC, 0.0);
    }
    if bbuf.len() < KC * NC {
        bbuf.resize(KC * NC, 0.0);
    }
    let k = p.k;
    let mut jc = cols.start;
    while jc < cols.end {
        let nc = NC.min(cols.end - jc);
        let mut pc = 0;
        while pc < k {
            let kc = KC.min(k - pc);
            match p.b {
                BSrc::Mat(b, l) => pack_b(b, l, pc, kc, jc, nc, bbuf),
                BSrc::Conv(src) => {
                    if rowbuf.len() < nc {
                        rowbuf.resize(nc, 0.0);
                    }
                    for q in 0..kc {
                        src.fill_row(pc + q, jc, &mut rowbuf[..nc]);
                        scatter_row(q, kc, &rowbuf[..nc], bbuf);
                    }
                }
            }
            let first = pc == 0;
            let last = pc + kc == k;
            // A last strip of at most NARROW columns (a 49-pixel plane leaves 1 of 16) goes
            // through dot products along the depth: its columns are copied out of the strip
            // once per panel.
            let narrow = nc % NR;
            let narrow_dots = narrow > 0 && narrow <= NARROW;
            if narrow_dots {
                let strip = &bbuf[(nc - narrow) * kc..][..kc * NR];
                narrow_cols.clear();
                for j in 0..narrow {
                    narrow_cols.extend((0..kc).map(|q| strip[q * NR + j]));
                }
            }
            let mut ic = rows.start;
            while ic < rows.end {
                let mc = MC.min(rows.end - ic);
                // Row-major A is read in place (the kernel broadcasts from
                // 6 row streams); other layouts are packed, and codes decoded.
                let in_place = match p.a {
                    Lhs::F32(a, l) if l.cs == 1 => Some((a, l.rs)),
                    Lhs::F32(a, l) => {
                        pack_a(a, l, ic, mc, pc, kc, abuf);
                        None
                    }
                    Lhs::Coded(w) => {
                        pack_a_coded(w, ic, mc, pc, kc, abuf);
                        None
                    }
                };
                // The column steps of the panel: AVX-512 takes two strips at a time,
                // except that a narrow last strip keeps its dot products (the same columns
                // on both kernels, so the same bits).
                let mut steps = [(0usize, 0usize); NC / NR];
                let mut n_steps = 0;
                let mut jr = 0;
                while jr < nc {
                    let mut nr = NR.min(nc - jr);
                    if p.isa == Isa::Avx512 && nr == NR {
                        let pair = (2 * NR).min(nc - jr);
                        if !(narrow_dots && pair - NR == narrow) {
                            nr = pair;
                        }
                    }
                    steps[n_steps] = (jr, nr);
                    n_steps += 1;
                    jr += nr.next_multiple_of(NR);
                }
                let steps = &steps[..n_steps];
                // AVX-512 tiles are two A strips tall (`kernel_avx512`).
                let height = if p.isa == Isa::Avx512 { 2 * MR } else { MR };
                let a_rows = |ir: usize, strips: usize| match in_place {
                    None => ASrc::Packed(&abuf[ir * kc..][..kc * MR * strips]),
                    Some((a, lda)) => ASrc::Rows { a, lda, pc },
                };
                let run_tile = |ir: usize, jr: usize, nr: usize| {
                    let mr = height.min(mc - ir);
                    let tile = Tile {
                        i0: ic + ir,
                        j0: jc + jr,
                        mr,
                        nr,
                        first,
                        last,
                    };
                    let bstrips = &bbuf[jr * kc..][..kc * nr.next_multiple_of(NR)];
                    #[cfg(target_arch = "x86_64")]
                    if narrow_dots && nr < NR {
                        // One A strip at a time.
                        for sub in (0..mr).step_by(MR) {
                            let tile = Tile {
                                i0: ic + ir + sub,
                                mr: MR.min(mr - sub),
                                ..tile
                            };
                            // SAFETY: as for the kernels below (same tile, same contract);
                            // `narrow_cols` holds the strip's nr columns of kc values.
                            unsafe {
                                narrow_tile(kc, a_rows(ir + sub, 1), narrow_cols, p, out, tile)
                            };
                        }
                        return;
                    }
                    let tall = mr > MR;
                    let a_src = a_rows(ir, mr.div_ceil(MR));
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `region` is only reached from `gemm_fused_simd` after
                    // `avx2_available()` returned true, so AVX2 and FMA are present, and
                    // with `Isa::Avx512` only where `Isa::best` found AVX-512F; the tile
                    // lies inside the checked output (see `kernel_6x16`), and it is taller
                    // than a strip only on AVX-512 (`height`), with its two packed strips.
                    unsafe {
                        let packed = matches!(a_src, ASrc::Packed(_));
                        let (a, b) = (a_src, bstrips);
                        match (p.isa, packed, nr <= NR, tall) {
                            (Isa::Avx512, true, true, false) => {
                                kernel_avx512::<true, 1, false>(kc, a, b, p, out, tile)
                            }
                            (Isa::Avx512, true, true, true) => {
                                kernel_avx512::<true, 1, true>(kc, a, b, p, out, tile)
                            }
                            (Isa::Avx512, true, false, false) => {
                                kernel_avx512::<true, 2, false>(kc, a, b, p, out, tile)
                            }
                            (Isa::Avx512, true, false, true) => {
                                kernel_avx512::<true, 2, true>(kc, a, b, p, out, tile)
                            }
                            (Isa::Avx512, false, true, false) => {
                                kernel_avx512::<false, 1, false>(kc, a, b, p, out, tile)
                            }
                            (Isa::Avx512, false, true, true) => {
                                kernel_avx512::<false, 1, true>(kc, a, b, p, out, tile)
                            }
                            (Isa::Avx512, false, false, false) => {
                                kernel_avx512::<false, 2, false>(kc, a, b, p, out, tile)
                            }
                            (Isa::Avx512, false, false, true) => {
                                kernel_avx512::<false, 2, true>(kc, a, b, p, out, tile)
                            }
                            (Isa::Avx2, true, _, _) if nr <= 8 => {
                                kernel_6x16::<true, 1>(kc, a, b, p, out, tile)
                            }
                            (Isa::Avx2, true, _, _) => {
                                kernel_6x16::<true, 2>(kc, a, b, p, out, tile)
                            }
                            (Isa::Avx2, false, _, _) if nr <= 8 => {
                                kernel_6x16::<false, 1>(kc, a, b, p, out, tile)
                            }
                            (Isa::Avx2, false, _, _) => {
                                kernel_6x16::<false, 2>(kc, a, b, p, out, tile)
                            }
                        }
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    let _ = (a_src, bstrips, tile, out, tall);
                };
                // A strip outer (stays in L1), B strips inner (the packed
                // panel stays in L2): each A strip's output rows are written
                // left to right, a few long streams rather than many short.
                for ir in (0..mc).step_by(height) {
                    // Weights read in place are six row streams no hardware prefetcher
                    // follows: ask for the next strip's rows (into L2) while this strip is
                    // computed. At batch 1, where a strip serves few columns, this took 4%
                    // off ResNet-50 and MobileNet-v2 (docs/BENCHMARKS.md, session 14).
                    #[cfg(target_arch = "x86_64")]
                    if let Some((a, lda)) = in_place {
                        let r0 = ic + ir + height;
                        for r in r0..(r0 + height).min(ic + mc) {
                            let row = &a[r * lda + pc..][..kc];
                            for q in (0..kc).step_by(16) {
                                // SAFETY: a prefetch is a hint that never faults, and the
                                // address is inside `row` (q < kc).
                                unsafe {
                                    std::arch::x86_64::_mm_prefetch(
                                        row.as_ptr().add(q).cast::<i8>(),
                                        std::arch::x86_64::_MM_HINT_T1,
                                    )
                                };
                            }
                        }
                    }
                    for &(jr, nr) in steps {
                        run_tile(ir, jr, nr);
                    }
                }
                ic += mc;
            }
            pc += kc;
        }
        jc += nc;
    }
}

/// Packs `b[pc.., jc..]` (`kc x nc`) into `NR`-wide strips: strip `s` holds,
/// for each depth `q`, the 16 values `b[pc+q, jc+s*NR .. +NR]` (zero-padded).
#[inline(always)]
fn pack_b(b: &[f32], l: MatLayout, pc: usize, kc: usize, jc: usize, nc: usize, dst: &mut [f32]) {
    let dst = &mut dst[..nc.div_ceil(NR) * NR * kc];
    if l.cs == 1 {
        // Row-major B: read each row of the panel sequentially (one stream).
        for q in 0..kc {
            scatter_row(q, kc, &b[(pc + q) * l.rs + jc..][..nc], dst);
        }
        return;
    }
    for (s, strip) in dst.chunks_exact_mut(NR * kc).enumerate() {
        let j0 = jc + s * NR;
        let w = NR.min(jc + nc - j0);
        for (q, d) in strip.chunks_exact_mut(NR).enumerate() {
            let base = (pc + q) * l.rs + j0 * l.cs;
            for (x, dv) in d[..w].iter_mut().enumerate() {
                *dv = b[base + x * l.cs];
            }
            d[w..].fill(0.0);
        }
    }
}

/// Writes row `q` (`src`, `nc` values) of a `kc x nc` panel into its
/// `NR`-wide strips (zero-padding the last one).
#[inline(always)]
fn scatter_row(q: usize, kc: usize, src: &[f32], dst: &mut [f32]) {
    let full = src.len() / NR;
    let rem = src.len() - full * NR;
    for (s, piece) in src.chunks_exact(NR).enumerate() {
        dst[s * NR * kc + q * NR..][..NR].copy_from_slice(piece);
    }
    if rem > 0 {
        let d = &mut dst[full * NR * kc + q * NR..][..NR];
        d[..rem].copy_from_slice(&src[full * NR..]);
        d[rem..].fill(0.0);
    }
}

/// Packs `a[ic.., pc..]` (`mc x kc`) into `MR`-tall strips: strip `s` holds,
/// for each depth `q`, the 6 values `a[ic+s*MR .. +MR, pc+q]` (zero-padded).
fn pack_a(a: &[f32], l: MatLayout, ic: usize, mc: usize, pc: usize, kc: usize, dst: &mut [f32]) {
    for (s, strip) in dst[..mc.div_ceil(MR) * MR * kc]
        .chunks_exact_mut(MR * kc)
        .enumerate()
    {
        let i0 = ic + s * MR;
        let h = MR.min(ic + mc - i0);
        if l.cs == 1 && h == MR {
            // Row-major A: read the 6 rows in step.
            let r: [&[f32]; MR] = std::array::from_fn(|i| &a[(i0 + i) * l.rs + pc..][..kc]);
            for (q, d) in strip.chunks_exact_mut(MR).enumerate() {
                for i in 0..MR {
                    d[i] = r[i][q];
                }
            }
        } else {
            for (q, d) in strip.chunks_exact_mut(MR).enumerate() {
                let base = i0 * l.rs + (pc + q) * l.cs;
                for (i, dv) in d[..h].iter_mut().enumerate() {
                    *dv = a[base + i * l.rs];
                }
                d[h..].fill(0.0);
            }
        }
    }
}

/// As [`pack_a`], for coded rows: each value is decoded through the table as it is packed
/// (the same f32 values as the decoded weights, so the products are the same).
fn pack_a_coded(w: CodedRows, ic: usize, mc: usize, pc: usize, kc: usize, dst: &mut [f32]) {
    for (s, strip) in dst[..mc.div_ceil(MR) * MR * kc]
        .chunks_exact_mut(MR * kc)
        .enumerate()
    {
        let i0 = ic + s * MR;
        let h = MR.min(ic + mc - i0);
        // Rows past `h` repeat the last one with factor 0 (padding; their results are
        // discarded).
        // Each row decoded in registers (`lookup::decode`), then interleaved into the strip.
        let mut rows = [[0f32; KC]; MR];
        for (i, row) in rows.iter_mut().enumerate() {
            let codes = &w.codes[(i0 + i.min(h - 1)) * w.k + pc..][..kc];
            let scale = if i < h { w.row_scale[i0 + i] } else { 0.0 };
            crate::lookup::decode(w.table, w.pieces, codes, scale, &mut row[..kc]);
        }
        for (q, d) in strip.chunks_exact_mut(MR).enumerate() {
            for (dv, row) in d.iter_mut().zip(&rows) {
                *dv = row[q];
            }
        }
    }
}

/// Widest last strip computed by [`narrow_tile`]. Its dot products cost `nr * MR / 8` FMAs
/// per depth step against the 6x8 tile's `MR`, plus a horizontal sum and a scalar epilogue
/// per element: a 7x7 plane's last column (49 = 3 x 16 + 1) took a fifth of the 6x16
/// kernels' time as a 6x8 tile and costs 10 to 19% less per layer this way, while a 14x14
/// plane's last 4 columns ran 2 to 6% slower (one thread).
const NARROW: usize = 2;

/// A tile of at most [`NARROW`] columns: each output the dot product of a row of `A` and a
/// column of `B` (`cols`, `nr` columns of `kc` values), 8 depths per FMA, then the epilogue of
/// [`kernel_6x16`] on each element, in its order (sum, alpha, C, bias, residual, clamp). The
/// sums add in another order than the kernel's (lane `t` takes depths `t, t + 8, ..`, then the
/// lanes and the tail in order), the same whether `A` is read in place or packed (gathered
/// 6 apart), so the FP32 and lookup paths still give the same bits.
///
/// # Safety
/// As [`kernel_6x16`] (AVX2 and FMA present, the tile inside the checked output); `cols`
/// holds `t.nr * kc` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn narrow_tile(kc: usize, a: ASrc, cols: &[f32], p: &Problem, out: OutPtr, t: Tile) {
    use std::arch::x86_64::*;
    assert!(t.mr >= 1 && t.mr <= MR && t.nr >= 1 && t.nr <= NARROW);
    assert!(cols.len() >= t.nr * kc);
    // The tile's A strip: packed, or its rows in place.
    let rows_in_place;
    let (packed, rows): (Option<&[f32]>, Option<&[&[f32]; MR]>) = match a {
        ASrc::Packed(s) => {
            assert!(s.len() >= kc * MR);
            (Some(s), None)
        }
        ASrc::Rows { a, lda, pc } => {
            assert!(
                (t.i0 + t.mr - 1) * lda + pc + kc <= a.len(),
                "sgemm: lhs rows out of bounds"
            );
            rows_in_place = std::array::from_fn::<&[f32], MR, _>(|i| {
                &a[(t.i0 + i.min(t.mr - 1)) * lda + pc..][..kc]
            });
            (None, Some(&rows_in_place))
        }
    };
    // Element (i, q), and the 8 from depth q on.
    let at = |i: usize, q: usize| match (packed, rows) {
        (Some(s), _) => s[q * MR + i],
        (_, Some(r)) => r[i][q],
        _ => unreachable!(),
    };
    // SAFETY (both): q + 8 <= kc; row i's 8 values from q lie inside its slice, or at
    // (q + 7) * MR + i < kc * MR inside the packed strip.
    let eight = |i: usize, q: usize| -> __m256 {
        match (packed, rows) {
            (Some(s), _) => unsafe {
                let idx = _mm256_setr_epi32(0, 6, 12, 18, 24, 30, 36, 42);
                _mm256_i32gather_ps::<4>(s.as_ptr().add(q * MR + i), idx)
            },
            (_, Some(r)) => unsafe { _mm256_loadu_ps(r[i].as_ptr().add(q)) },
            _ => unreachable!(),
        }
    };
    let whole = kc / 8 * 8;
    let load_c = !t.first || p.accumulate;
    for j in 0..t.nr {
        let col = &cols[j * kc..][..kc];
        let mut acc = [_mm256_setzero_ps(); MR];
        for q in (0..whole).step_by(8) {
            // SAFETY: q + 8 <= kc, the length of `col`.
            let bv = unsafe { _mm256_loadu_ps(col.as_ptr().add(q)) };
            for (i, r) in acc.iter_mut().enumerate().take(t.mr) {
                *r = _mm256_fmadd_ps(eight(i, q), bv, *r);
            }
        }
        for (i, r) in acc.iter().enumerate().take(t.mr) {
            let mut lanes = [0f32; 8];
            // SAFETY: 8 floats into an 8-element array.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *r) };
            let mut sum = lanes.iter().sum::<f32>();
            for (q, &b) in col.iter().enumerate().skip(whole) {
                sum = at(i, q).mul_add(b, sum);
            }
            let (gi, gj) = (t.i0 + i, t.j0 + j);
            // SAFETY: gi < m, gj < n: inside the checked output (function contract).
            let dst = unsafe { &mut *out.0.add(gi * p.c_rs + gj) };
            // The order of `kernel_6x16`'s epilogue: alpha, C, bias, residual, clamp.
            let mut v = if p.alpha != 1.0 { sum * p.alpha } else { sum };
            if load_c {
                v += *dst;
            }
            if t.last {
                match p.bias {
                    Bias::None => {}
                    Bias::Row(bv) => v += bv[gi],
                    Bias::Col(bv) => v += bv[gj],
                }
                if let Some(res) = p.residual {
                    v += res[gi * p.c_rs + gj];
                }
                v = v.max(p.lo).min(p.hi);
            }
            *dst = v;
        }
    }
}

/// The `A` operand of one micro-tile.
#[derive(Clone, Copy)]
enum ASrc<'s> {
    /// A packed `MR`-tall strip (`kc * MR` values).
    Packed(&'s [f32]),
    /// Row-major `A` in place: rows `tile.i0..+mr` (row stride `lda`),
    /// depths `pc..pc+kc`.
    Rows { a: &'s [f32], lda: usize, pc: usize },
}

/// Where one micro-tile goes and which epilogue steps it takes.
#[derive(Clone, Copy)]
struct Tile {
    i0: usize,
    j0: usize,
    mr: usize,
    nr: usize,
    /// First depth slice: overwrite (unless accumulating into C).
    first: bool,
    /// Last depth slice: add bias, apply the clamp.
    last: bool,
}

/// The `A` operand of a tile `height` rows tall, as the kernels read it. Packed: one pointer
/// (element (i, q) at q*MR + i of its strip, the strips kc*MR apart). In place: one pointer
/// per row, rows past `mr` repeating the last valid row (their results are discarded),
/// element (i, q) at rows[i] + q. Panics unless the operand holds the tile's `kc` depths.
#[inline(always)]
fn a_pointers<const N: usize>(
    a: ASrc,
    packed: bool,
    kc: usize,
    height: usize,
    t: &Tile,
) -> (*const f32, [*const f32; N]) {
    match a {
        ASrc::Packed(s) => {
            assert!(packed && s.len() >= kc * height);
            (s.as_ptr(), [s.as_ptr(); N])
        }
        ASrc::Rows { a, lda, pc } => {
            assert!(!packed);
            let last = t.i0 + t.mr - 1;
            assert!(
                last * lda + pc + kc <= a.len(),
                "sgemm: lhs rows out of bounds"
            );
            let rows: [*const f32; N] =
                // SAFETY: row (min(i, mr-1) + i0) starts at most at last*lda + pc, and that
                // row has kc elements in bounds (asserted above).
                std::array::from_fn(|i| unsafe { a.as_ptr().add((t.i0 + i.min(t.mr - 1)) * lda + pc) });
            (a.as_ptr(), rows)
        }
    }
}

/// On a tile's last depth slice with a residual: asks for the residual's rows (an output row
/// apart) now, so they arrive while the tile is computed.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_residual(p: &Problem, t: &Tile) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let (true, Some(res)) = (t.last, p.residual) else {
        return;
    };
    for i in 0..t.mr {
        let row = (t.i0 + i) * p.c_rs + t.j0;
        for j in [0, t.nr - 1] {
            if let Some(x) = res.get(row + j) {
                // SAFETY: a prefetch is a hint that never faults; the address is in `res`.
                unsafe { _mm_prefetch((x as *const f32).cast::<i8>(), _MM_HINT_T0) };
            }
        }
    }
}

/// One `MR x NR` tile: `acc = A_strip * B_strip` over `kc`, then
/// `C[tile] = clamp?((first && !accumulate ? 0 : C) + alpha*acc + bias?)`.
///
/// # Safety
/// * AVX2 and FMA must be available (checked by the caller).
/// * `out` must point to the output slice of `gemm_fused_simd`, whose bounds
///   were checked for the whole `m x n` product with row stride
///   `p.c_rs`; the tile writes only elements `(i0 + i, j0 + j)`
///   with `i < mr`, `j < nr`, and `i0 + mr <= m`, `j0 + nr <= n` by
///   construction in `region`, so every access is in bounds. Distinct
///   `(i, j)` are distinct elements (the strides were checked not to make
///   rows overlap), and each thread owns a disjoint rectangle of them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_6x16<const PACKED: bool, const NV: usize>(
    kc: usize,
    a: ASrc,
    b: &[f32],
    p: &Problem,
    out: OutPtr,
    t: Tile,
) {
    use std::arch::x86_64::*;
    // NV = 2: a 6x16 tile; NV = 1: a 6x8 tile for the last strip when at
    // most 8 of its columns are used (the packed strip is still 16 wide).
    assert!(b.len() >= kc * NR && t.mr >= 1 && t.mr <= MR);
    assert!(NV == 2 || (NV == 1 && t.nr <= 8));
    let (ap, rows) = a_pointers::<MR>(a, PACKED, kc, MR, &t);
    prefetch_residual(p, &t);
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    let bp = b.as_ptr();
    for q in 0..kc {
        // SAFETY: q < kc; the packed strips hold kc*MR and kc*NR elements,
        // each row pointer has kc elements (asserted above).
        unsafe {
            let b0 = _mm256_loadu_ps(bp.add(q * NR));
            let b1 = if NV == 2 {
                _mm256_loadu_ps(bp.add(q * NR + 8))
            } else {
                _mm256_setzero_ps()
            };
            for (i, r) in acc.iter_mut().enumerate() {
                let av = if PACKED {
                    *ap.add(q * MR + i)
                } else {
                    *rows[i].add(q)
                };
                let ai = _mm256_set1_ps(av);
                r[0] = _mm256_fmadd_ps(ai, b0, r[0]);
                if NV == 2 {
                    r[1] = _mm256_fmadd_ps(ai, b1, r[1]);
                }
            }
        }
    }
    if p.alpha != 1.0 {
        let al = _mm256_set1_ps(p.alpha);
        for r in acc.iter_mut() {
            r[0] = _mm256_mul_ps(r[0], al);
            r[1] = _mm256_mul_ps(r[1], al);
        }
    }
    let load_c = !t.first || p.accumulate;
    let c = out.0;
    // Rows of the tile are contiguous: whole vectors, with lane masks for a partial
    // last strip (a masked-off lane is neither read nor written), so narrow layers
    // (16 or 24 output rows, 49-pixel planes) do not fall to the element loop.
    let (lo, hi) = (_mm256_set1_ps(p.lo), _mm256_set1_ps(p.hi));
    let full = t.nr == NR;
    // Lane masks of a partial strip (unused for a whole one): lane j of each half is
    // enabled iff its column is < nr.
    let mask = |from: usize| {
        let m = &LANE_MASKS[from..][..8];
        // SAFETY: 8 i32 from an 8-element slice.
        unsafe { _mm256_loadu_si256(m.as_ptr() as *const __m256i) }
    };
    let (m0, m1) = if full {
        (_mm256_setzero_si256(), _mm256_setzero_si256())
    } else {
        (mask(NR - t.nr), mask(NR + 8 - t.nr))
    };
    // SAFETY (all loads and stores below): row i0+i < m for i < mr; the enabled
    // lanes are columns j0..j0+nr <= n with unit stride, inside the checked output
    // (function contract); the residual has the output's layout and span, and the
    // column bias has n elements.
    // (A second half with no enabled lane is not addressed at all.)
    let load = |ptr: *const f32, half: usize| unsafe {
        match (full, half) {
            (true, _) => _mm256_loadu_ps(ptr.add(8 * half)),
            (false, 0) => _mm256_maskload_ps(ptr, m0),
            (false, _) if t.nr > 8 => _mm256_maskload_ps(ptr.add(8), m1),
            (false, _) => _mm256_setzero_ps(),
        }
    };
    let col_bias = match (t.last, p.bias) {
        (true, Bias::Col(bv)) => {
            let bv = &bv[t.j0..t.j0 + t.nr];
            Some((load(bv.as_ptr(), 0), load(bv.as_ptr(), 1)))
        }
        _ => None,
    };
    for (i, r) in acc.iter().enumerate().take(t.mr) {
        let (mut v0, mut v1) = (r[0], r[1]);
        // SAFETY: see above.
        let row = unsafe { c.add((t.i0 + i) * p.c_rs + t.j0) };
        if load_c {
            v0 = _mm256_add_ps(v0, load(row, 0));
            v1 = _mm256_add_ps(v1, load(row, 1));
        }
        if t.last {
            if let Bias::Row(bv) = p.bias {
                let bb = _mm256_set1_ps(bv[t.i0 + i]);
                v0 = _mm256_add_ps(v0, bb);
                v1 = _mm256_add_ps(v1, bb);
            }
            if let Some((b0, b1)) = col_bias {
                v0 = _mm256_add_ps(v0, b0);
                v1 = _mm256_add_ps(v1, b1);
            }
            if let Some(res) = p.residual {
                // SAFETY: see above.
                let rp = unsafe { res.as_ptr().add((t.i0 + i) * p.c_rs + t.j0) };
                v0 = _mm256_add_ps(v0, load(rp, 0));
                v1 = _mm256_add_ps(v1, load(rp, 1));
            }
            v0 = _mm256_min_ps(_mm256_max_ps(v0, lo), hi);
            v1 = _mm256_min_ps(_mm256_max_ps(v1, lo), hi);
        }
        // SAFETY: see above.
        unsafe {
            if full {
                _mm256_storeu_ps(row, v0);
                _mm256_storeu_ps(row.add(8), v1);
            } else {
                _mm256_maskstore_ps(row, m0, v0);
                if t.nr > 8 {
                    _mm256_maskstore_ps(row.add(8), m1, v1);
                }
            }
        }
    }
}

/// As [`kernel_6x16`] with 16-lane vectors: a tile of `MR` rows (`TALL = false`) or `2 * MR`
/// (`TALL`: two strips of `A`, packed one after the other or read in place) by 32 columns over
/// two adjacent packed strips of `B` (`NV = 2`, `b` holds `2 * kc * NR` values) or 16 over
/// one (`NV = 1`). Columns past `nr` are masked off. Each output is the same FMA chain over
/// `q` from zero, then the same epilogue steps in the same order, so the bits equal
/// `kernel_6x16`'s. Twelve rows by two vectors (24 accumulators, 2 loads of `B` and 12
/// broadcasts per depth step) is the shape that keeps both 512-bit FMA units busy; with
/// one vector, twelve rows still give 12 independent chains where six would wait on the
/// FMA latency.
///
/// # Safety
/// As [`kernel_6x16`], with AVX-512F available instead of AVX2 (checked by `Isa::best`); with
/// `TALL`, `t.mr <= 2 * MR` and a packed `A` holds `2 * kc * MR` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512<const PACKED: bool, const NV: usize, const TALL: bool>(
    kc: usize,
    a: ASrc,
    b: &[f32],
    p: &Problem,
    out: OutPtr,
    t: Tile,
) {
    use std::arch::x86_64::*;
    const ROWS: usize = 2 * MR;
    let height = if TALL { ROWS } else { MR };
    assert!(NV == 1 || NV == 2);
    assert!(b.len() >= NV * kc * NR && t.mr >= 1 && t.mr <= height);
    assert!(t.nr >= 1 && t.nr <= NV * NR && (NV == 1 || t.nr > NR));
    // Packed: element (i, q) at strip (i / MR), q*MR + i % MR (the strips kc*MR apart).
    let (ap, rows) = a_pointers::<ROWS>(a, PACKED, kc, height, &t);
    prefetch_residual(p, &t);
    let b0p = b.as_ptr();
    // SAFETY: with NV = 2, b holds two strips of kc * NR.
    let b1p = if NV == 2 {
        unsafe { b0p.add(kc * NR) }
    } else {
        b0p
    };
    // The second packed A strip (only read with TALL, where it exists).
    let ap2 = ap.wrapping_add(kc * MR);
    // Named accumulators: held in an array, they were stored to the stack on every depth
    // step (LLVM did not keep the array in registers).
    let z = _mm512_setzero_ps();
    let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21) = (z, z, z, z, z, z);
    let (mut c30, mut c31, mut c40, mut c41, mut c50, mut c51) = (z, z, z, z, z, z);
    let (mut c60, mut c61, mut c70, mut c71, mut c80, mut c81) = (z, z, z, z, z, z);
    let (mut c90, mut c91, mut ca0, mut ca1, mut cb0, mut cb1) = (z, z, z, z, z, z);
    for q in 0..kc {
        // SAFETY: q < kc; each packed strip holds kc*NR elements and the packed A strips
        // kc*MR each, and each row pointer has kc elements (asserted above).
        unsafe {
            // The packed strips come from L2 (the panel is larger than L1): ask for them 8
            // depths ahead. Measured in-process: 7 to 10% off ResNet-50, 2.5% off
            // MobileNet-v2 (16 ahead: no better). `wrapping_add`: near the end the address
            // may lie past the strip, which a prefetch may name but `add` may not.
            _mm_prefetch(b0p.wrapping_add((q + 8) * NR).cast::<i8>(), _MM_HINT_T0);
            if NV == 2 {
                _mm_prefetch(b1p.wrapping_add((q + 8) * NR).cast::<i8>(), _MM_HINT_T0);
            }
            let b0 = _mm512_loadu_ps(b0p.add(q * NR));
            let b1 = if NV == 2 {
                _mm512_loadu_ps(b1p.add(q * NR))
            } else {
                z
            };
            macro_rules! row {
                ($i:expr, $x:ident, $y:ident) => {
                    let ai = _mm512_set1_ps(if PACKED {
                        if $i < MR {
                            *ap.add(q * MR + $i)
                        } else {
                            *ap2.add(q * MR + $i - MR)
                        }
                    } else {
                        *rows[$i].add(q)
                    });
                    $x = _mm512_fmadd_ps(ai, b0, $x);
                    if NV == 2 {
                        $y = _mm512_fmadd_ps(ai, b1, $y);
                    }
                };
            }
            row!(0, c00, c01);
            row!(1, c10, c11);
            row!(2, c20, c21);
            row!(3, c30, c31);
            row!(4, c40, c41);
            row!(5, c50, c51);
            if TALL {
                row!(6, c60, c61);
                row!(7, c70, c71);
                row!(8, c80, c81);
                row!(9, c90, c91);
                row!(10, ca0, ca1);
                row!(11, cb0, cb1);
            }
        }
    }
    let load_c = !t.first || p.accumulate;
    let c = out.0;
    let (lo, hi) = (_mm512_set1_ps(p.lo), _mm512_set1_ps(p.hi));
    // Lane masks: vector h covers columns 16h..16h+16, enabled below nr.
    let masks: [__mmask16; NV] = std::array::from_fn(|h| {
        let lanes = t.nr.saturating_sub(h * NR).min(NR);
        ((1u32 << lanes) - 1) as __mmask16
    });
    // SAFETY (all loads and stores below): row i0+i < m for i < mr; the enabled lanes are
    // columns j0..j0+nr <= n with unit stride, inside the checked output (function
    // contract); the residual has the output's layout and span, and the column bias has n
    // elements. A masked-off lane is neither read nor written.
    let load =
        |ptr: *const f32, h: usize| unsafe { _mm512_maskz_loadu_ps(masks[h], ptr.add(h * NR)) };
    let col_bias: Option<[__m512; NV]> = match (t.last, p.bias) {
        (true, Bias::Col(bv)) => {
            let bv = &bv[t.j0..t.j0 + t.nr];
            Some(std::array::from_fn(|h| load(bv.as_ptr(), h)))
        }
        _ => None,
    };
    // The epilogue of row i's vector h, straight from its register (gathered into an array,
    // the 24 accumulators went through the stack: a tenth of a 64-deep tile's time).
    let finish = |i: usize, h: usize, mut v: __m512| {
        if p.alpha != 1.0 {
            v = _mm512_mul_ps(v, _mm512_set1_ps(p.alpha));
        }
        // SAFETY: see above.
        let row = unsafe { c.add((t.i0 + i) * p.c_rs + t.j0) };
        if load_c {
            v = _mm512_add_ps(v, load(row, h));
        }
        if t.last {
            if let Bias::Row(bv) = p.bias {
                v = _mm512_add_ps(v, _mm512_set1_ps(bv[t.i0 + i]));
            }
            if let Some(cb) = col_bias {
                v = _mm512_add_ps(v, cb[h]);
            }
            if let Some(res) = p.residual {
                // SAFETY: see above.
                let rp = unsafe { res.as_ptr().add((t.i0 + i) * p.c_rs + t.j0) };
                v = _mm512_add_ps(v, load(rp, h));
            }
            v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
        }
        // SAFETY: see above.
        unsafe { _mm512_mask_storeu_ps(row.add(h * NR), masks[h], v) };
    };
    macro_rules! finish_row {
        ($i:expr, $x:ident, $y:ident) => {
            if $i < t.mr {
                finish($i, 0, $x);
                if NV == 2 {
                    finish($i, 1, $y);
                }
            }
        };
    }
    finish_row!(0, c00, c01);
    finish_row!(1, c10, c11);
    finish_row!(2, c20, c21);
    finish_row!(3, c30, c31);
    finish_row!(4, c40, c41);
    finish_row!(5, c50, c51);
    if TALL {
        finish_row!(6, c60, c61);
        finish_row!(7, c70, c71);
        finish_row!(8, c80, c81);
        finish_row!(9, c90, c91);
        finish_row!(10, ca0, ca1);
        finish_row!(11, cb0, cb1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_rand::rand_vec;

    /// Both paths (AVX2 kernel when available, portable) against a naive
    /// triple loop: odd and multi-block sizes (crossing MC, KC, NC), 6x8 and
    /// 6x16 tiles, transposed operands, padded dst, accumulate,
    /// alpha, row/column bias, residual, fused and unfused activations, 1-3 threads.
    #[test]
    fn gemm_fused_matches_naive() {
        let pools: Vec<_> = (1..=3)
            .map(|t| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .unwrap()
            })
            .collect();
        let mut seed = 11;
        let shapes = [
            (1, 1, 1),
            (6, 16, 3),
            (7, 17, 5),
            (2048 / 32, 49, 70),
            (13, 3, 300),
            (100, 1030, 260),
            (5, 33, 0),
            (64, 200, 27),
            // Two columns past whole strips over two depth slices: the dot-product tile
            // accumulating into C.
            (13, 34, 300),
            // AVX-512 tiles with a partial second strip, and a partial single strip.
            (9, 24, 40),
            (12, 45, 20),
            // Fewer rows than a strip: on AVX-512, rows against B in place (a partial
            // block of 128 columns), the AVX2 kernels' bits.
            (1, 300, 70),
            (3, 45, 20),
        ];
        let acts = [
            Activation::None,
            Activation::Relu,
            Activation::Clip {
                min: -0.1,
                max: 0.2,
            },
            Activation::Sigmoid,
        ];
        let mut case = 0usize;
        for &(m, n, k) in &shapes {
            for ta in [false, true] {
                for tb in [false, true] {
                    case += 1;
                    let accumulate = case.is_multiple_of(2);
                    let alpha = if case.is_multiple_of(3) { 0.5 } else { 1.0 };
                    let act = acts[case % acts.len()];
                    let threads = 1 + case % 3;
                    let a = rand_vec(m * k, &mut seed);
                    let b = rand_vec(k * n, &mut seed);
                    let rb = rand_vec(m, &mut seed);
                    let cb = rand_vec(n, &mut seed);
                    let bias = match case % 3 {
                        0 => Bias::None,
                        1 => Bias::Row(&rb),
                        _ => Bias::Col(&cb),
                    };
                    let ldc = n + 2;
                    let init = rand_vec(m * ldc, &mut seed);
                    let res = rand_vec(m * ldc, &mut seed);
                    let residual = case.is_multiple_of(4).then_some(&res[..]);
                    let a_l = if ta {
                        MatLayout::col_major(m)
                    } else {
                        MatLayout::row_major(k)
                    };
                    let b_l = if tb {
                        MatLayout::col_major(k)
                    } else {
                        MatLayout::row_major(n)
                    };
                    let epi = Epilogue {
                        alpha,
                        accumulate,
                        bias,
                        residual,
                        act,
                    };
                    // The portable path, then each vector ISA the machine has; AVX-512 must
                    // give AVX2's bits.
                    let mut avx2_bits = None;
                    for isa in [None, Some(Isa::Avx2), Some(Isa::Avx512)] {
                        let portable = isa.is_none();
                        if !portable && !avx2_available() {
                            continue;
                        }
                        if isa == Some(Isa::Avx512) && Isa::best() != Isa::Avx512 {
                            eprintln!("no AVX-512F here: its kernel is not tested");
                            continue;
                        }
                        let mut c = init.clone();
                        pools[threads - 1].install(|| match isa {
                            None => gemm_fused_portable(
                                m, n, k, &a, a_l, &b, b_l, &mut c, ldc, epi, threads,
                            ),
                            Some(isa) => gemm_fused_simd(
                                isa,
                                m,
                                n,
                                k,
                                Lhs::F32(&a, a_l),
                                &b,
                                b_l,
                                &mut c,
                                ldc,
                                epi,
                                threads,
                            ),
                        });
                        match isa {
                            Some(Isa::Avx2) => avx2_bits = Some(c.clone()),
                            Some(Isa::Avx512) => {
                                let same = avx2_bits.as_ref().is_some_and(|w| {
                                    w.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits())
                                });
                                assert!(same, "m{m} n{n} k{k}: AVX-512 bits differ from AVX2's");
                            }
                            None => {}
                        }
                        for i in 0..m {
                            for j in 0..ldc {
                                let got = c[i * ldc + j];
                                if j >= n {
                                    assert_eq!(got, init[i * ldc + j], "padding written");
                                    continue;
                                }
                                let mut s = 0.0f64;
                                for q in 0..k {
                                    s += a[i * a_l.rs + q * a_l.cs] as f64
                                        * b[q * b_l.rs + j * b_l.cs] as f64;
                                }
                                let mut want = alpha as f64 * s;
                                if accumulate {
                                    want += init[i * ldc + j] as f64;
                                }
                                want += match bias {
                                    Bias::None => 0.0,
                                    Bias::Row(v) => v[i] as f64,
                                    Bias::Col(v) => v[j] as f64,
                                };
                                if let Some(r) = residual {
                                    want += r[i * ldc + j] as f64;
                                }
                                let want = act.apply(want as f32) as f64;
                                assert!(
                                    (got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                    "m{m} n{n} k{k} ta{ta} tb{tb} {isa:?} ({i},{j}): {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
