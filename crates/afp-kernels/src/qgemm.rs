//! Exact integer GEMM for AFP's integer view (DESIGN.md §1): every AFP value is `n * 2^u`
//! with a small integer `n`, so a layer computes `sum_k n_w * n_a` exactly in integers and
//! scales the sum once per output channel by a power of two (`mult`), before bias and
//! activation. No weight or activation is ever turned back into a float before the sum.
//!
//! Two element paths:
//! - `u8 x i8` (activations u8, weights i8): AVX2 `vpmaddubsw` + `vpmaddwd` into i32, or
//!   the portable loop. `vpmaddubsw` saturates a pair sum at i16, so the path is only chosen
//!   when `2 * max|a| * max|w| <= 32767` ([`U8I8Bounds`]); with `4 * max|a| * max|w| <=
//!   32767` two pair sums are added in i16 before widening (one `vpmaddwd` per 8 products
//!   instead of per 4).
//! - `i16 x i16`: the portable loop with i64 sums, for integers that need 16 bits.
//!
//! Operands are packed: weights once at load time in panels of [`MR`] rows, activations per
//! call in panels of [`NR`] columns, both with K in quads (zero padded).

use crate::Activation;

/// Rows (output channels) of a micro-tile.
pub const MR: usize = 4;
/// Columns (output pixels, or batch rows of a Gemm) of a micro-tile.
pub const NR: usize = 16;

/// Integer element types of packed operands.
pub trait Int: Copy + Default + Send + Sync + 'static {
    fn widen(self) -> i64;
}
impl Int for i8 {
    #[inline(always)]
    fn widen(self) -> i64 {
        self as i64
    }
}
impl Int for u8 {
    #[inline(always)]
    fn widen(self) -> i64 {
        self as i64
    }
}
impl Int for i16 {
    #[inline(always)]
    fn widen(self) -> i64 {
        self as i64
    }
}

/// Quads of K (K rounded up to a multiple of 4, over 4).
#[inline]
pub fn quads(k: usize) -> usize {
    k.div_ceil(4)
}

/// Weights `[m, k]` packed in panels of [`MR`] rows: element `(r, kk)` of panel `p` is at
/// `p * kq * MR * 4 + (kk / 4) * MR * 4 + r * 4 + kk % 4`. Rows and K past the end are zero.
#[derive(Debug, Clone)]
pub struct PackedA<T> {
    pub m: usize,
    pub k: usize,
    kq: usize,
    data: Vec<T>,
}

impl<T: Int> PackedA<T> {
    /// Packs the row-major `[m, k]` matrix `w`.
    pub fn new(m: usize, k: usize, w: &[T]) -> PackedA<T> {
        assert_eq!(w.len(), m * k, "qgemm: weight length");
        let kq = quads(k);
        let panels = m.div_ceil(MR);
        let mut data = vec![T::default(); panels * kq * MR * 4];
        for r in 0..m {
            let (p, rr) = (r / MR, r % MR);
            let base = p * kq * MR * 4 + rr * 4;
            for (kk, &v) in w[r * k..(r + 1) * k].iter().enumerate() {
                data[base + (kk / 4) * MR * 4 + kk % 4] = v;
            }
        }
        PackedA { m, k, kq, data }
    }

    fn panel(&self, p: usize) -> &[T] {
        let len = self.kq * MR * 4;
        &self.data[p * len..(p + 1) * len]
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<T>()
    }
}

/// Length of one packed activation panel for `k` reduction values.
#[inline]
pub fn b_panel_len(k: usize) -> usize {
    quads(k) * NR * 4
}

/// Packs columns `j0..j0+NR` of an implicit `[k, n]` matrix into `dst` (one panel), reading
/// element `(kk, j)` through `get`; columns past `n` and K past `k` are zero.
#[inline]
pub fn pack_b_panel<T: Int>(
    k: usize,
    n: usize,
    j0: usize,
    dst: &mut [T],
    get: impl Fn(usize, usize) -> T,
) {
    let kq = quads(k);
    debug_assert!(dst.len() >= kq * NR * 4);
    let cols = n.saturating_sub(j0).min(NR);
    for q in 0..kq {
        let row = &mut dst[q * NR * 4..(q + 1) * NR * 4];
        for t in 0..4 {
            let kk = q * 4 + t;
            if kk >= k {
                for c in 0..NR {
                    row[c * 4 + t] = T::default();
                }
                continue;
            }
            for c in 0..cols {
                row[c * 4 + t] = get(kk, j0 + c);
            }
            for c in cols..NR {
                row[c * 4 + t] = T::default();
            }
        }
    }
}

/// Largest `|n|` of the activations and weights of a `u8 x i8` product: decides whether the
/// AVX2 path is exact and whether pair sums may be added in i16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct U8I8Bounds {
    pub act_max: u32,
    pub weight_max: u32,
}

impl U8I8Bounds {
    /// `vpmaddubsw` adds two products in i16 with saturation: exact iff this holds.
    pub fn pair_fits_i16(&self) -> bool {
        2 * self.act_max as u64 * self.weight_max as u64 <= i16::MAX as u64
    }
    /// Two pair sums added in (wrapping) i16 stay exact.
    pub fn quad_fits_i16(&self) -> bool {
        4 * self.act_max as u64 * self.weight_max as u64 <= i16::MAX as u64
    }
    /// The i32 sum over `k` products cannot overflow.
    pub fn sum_fits_i32(&self, k: usize) -> bool {
        (k as u128) * self.act_max as u128 * self.weight_max as u128 <= i32::MAX as u128
    }
}

/// What follows the integer sum, per output row `r`: `act(sum * mult[r] + bias[r])`,
/// stored at `out[r * rs + j * cs]` (column `j`).
pub struct Epilogue<'a> {
    pub mult: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub act: Activation,
    /// Subtracted from row `r`'s sum first: the shift of signed activations stored as u8.
    pub zero_corr: Option<&'a [i64]>,
}

type Tile = [[i64; NR]; MR];

/// The micro-kernel for one `MR x NR` tile over all of K, portable.
#[inline]
fn tile_portable<A: Int, B: Int>(a: &[A], b: &[B], kq: usize) -> Tile {
    let mut acc = [[0i64; NR]; MR];
    for q in 0..kq {
        let aq = &a[q * MR * 4..(q + 1) * MR * 4];
        let bq = &b[q * NR * 4..(q + 1) * NR * 4];
        for r in 0..MR {
            let w = &aq[r * 4..r * 4 + 4];
            for c in 0..NR {
                let x = &bq[c * 4..c * 4 + 4];
                acc[r][c] += w[0].widen() * x[0].widen()
                    + w[1].widen() * x[1].widen()
                    + w[2].widen() * x[2].widen()
                    + w[3].widen() * x[3].widen();
            }
        }
    }
    acc
}

/// `u8 x i8` tile with AVX2. `QUAD`: add two `vpmaddubsw` results in i16 before widening
/// (only when [`U8I8Bounds::quad_fits_i16`]).
///
/// # Safety
/// The CPU must have AVX2 (checked by the caller with `is_x86_feature_detected!`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tile_u8i8_avx2<const QUAD: bool>(a: &[i8], b: &[u8], kq: usize) -> [[i32; NR]; MR] {
    use std::arch::x86_64::*;
    // Every load below reads inside these bounds: A quad q at q*16 + r*4 (4 bytes),
    // B quad q at q*64 (two 32-byte vectors).
    assert!(a.len() >= kq * MR * 4 && b.len() >= kq * NR * 4);
    let ap = a.as_ptr();
    let bp = b.as_ptr();
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); 2]; MR];
    let wq = |q: usize, r: usize| -> __m256i {
        // SAFETY: q < kq and r < MR, so the 4 bytes lie in `a` (asserted above).
        _mm256_set1_epi32(unsafe { (ap.add(q * MR * 4 + r * 4) as *const i32).read_unaligned() })
    };
    let bq = |q: usize, h: usize| -> __m256i {
        // SAFETY: q < kq, h < 2: 32 bytes at q*64 + h*32 lie in `b` (asserted above).
        unsafe { _mm256_loadu_si256(bp.add(q * NR * 4 + h * 32) as *const __m256i) }
    };
    let mut q = 0;
    if QUAD {
        while q + 2 <= kq {
            let (b00, b01, b10, b11) = (bq(q, 0), bq(q, 1), bq(q + 1, 0), bq(q + 1, 1));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let (w0, w1) = (wq(q, r), wq(q + 1, r));
                let p0 =
                    _mm256_add_epi16(_mm256_maddubs_epi16(b00, w0), _mm256_maddubs_epi16(b10, w1));
                let p1 =
                    _mm256_add_epi16(_mm256_maddubs_epi16(b01, w0), _mm256_maddubs_epi16(b11, w1));
                acc_r[0] = _mm256_add_epi32(acc_r[0], _mm256_madd_epi16(p0, ones));
                acc_r[1] = _mm256_add_epi32(acc_r[1], _mm256_madd_epi16(p1, ones));
            }
            q += 2;
        }
    }
    while q < kq {
        let (b0, b1) = (bq(q, 0), bq(q, 1));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let w = wq(q, r);
            let p0 = _mm256_maddubs_epi16(b0, w);
            let p1 = _mm256_maddubs_epi16(b1, w);
            acc_r[0] = _mm256_add_epi32(acc_r[0], _mm256_madd_epi16(p0, ones));
            acc_r[1] = _mm256_add_epi32(acc_r[1], _mm256_madd_epi16(p1, ones));
        }
        q += 1;
    }
    let mut out = [[0i32; NR]; MR];
    for (o, acc_r) in out.iter_mut().zip(&acc) {
        // SAFETY: each row holds NR = 16 i32, written as two 8-lane vectors.
        unsafe {
            _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, acc_r[0]);
            _mm256_storeu_si256(o.as_mut_ptr().add(8) as *mut __m256i, acc_r[1]);
        }
    }
    out
}

#[cfg(test)]
pub(crate) static FORCE_PORTABLE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Whether the AVX2 integer kernel can run here.
#[inline]
pub fn avx2_available() -> bool {
    #[cfg(test)]
    if FORCE_PORTABLE.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Which kernel a `u8 x i8` product runs, chosen once per layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum U8I8Kernel {
    Portable,
    Avx2Pair,
    Avx2Quad,
}

impl U8I8Kernel {
    /// The fastest exact kernel for these bounds on this CPU.
    pub fn choose(b: U8I8Bounds) -> U8I8Kernel {
        if !avx2_available() || !b.pair_fits_i16() {
            U8I8Kernel::Portable
        } else if b.quad_fits_i16() {
            U8I8Kernel::Avx2Quad
        } else {
            U8I8Kernel::Avx2Pair
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            U8I8Kernel::Portable => "portable",
            U8I8Kernel::Avx2Pair => "avx2",
            U8I8Kernel::Avx2Quad => "avx2-quad",
        }
    }
}

/// One `MR x NR` tile of a `u8 x i8` product.
#[inline]
fn tile_u8i8(kernel: U8I8Kernel, a: &[i8], b: &[u8], kq: usize) -> Tile {
    match kernel {
        U8I8Kernel::Portable => tile_portable(a, b, kq),
        #[cfg(target_arch = "x86_64")]
        U8I8Kernel::Avx2Pair | U8I8Kernel::Avx2Quad => {
            // SAFETY: `choose` returns an AVX2 kernel only when the CPU has AVX2.
            let t = unsafe {
                if kernel == U8I8Kernel::Avx2Quad {
                    tile_u8i8_avx2::<true>(a, b, kq)
                } else {
                    tile_u8i8_avx2::<false>(a, b, kq)
                }
            };
            let mut out = [[0i64; NR]; MR];
            for (o, t) in out.iter_mut().zip(&t) {
                for (o, &t) in o.iter_mut().zip(t) {
                    *o = t as i64;
                }
            }
            out
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => tile_portable(a, b, kq),
    }
}

/// Weights of one product, in one of the two element paths.
#[derive(Debug, Clone)]
pub enum PackedWeights {
    /// i8 weights against u8 activations, with the kernel chosen for their bounds.
    U8I8(PackedA<i8>, U8I8Kernel),
    /// i16 weights against i16 activations (portable, i64 sums).
    I16(PackedA<i16>),
}

impl PackedWeights {
    pub fn rows(&self) -> usize {
        match self {
            PackedWeights::U8I8(a, _) => a.m,
            PackedWeights::I16(a) => a.m,
        }
    }
    pub fn depth(&self) -> usize {
        match self {
            PackedWeights::U8I8(a, _) => a.k,
            PackedWeights::I16(a) => a.k,
        }
    }
    pub fn bytes(&self) -> usize {
        match self {
            PackedWeights::U8I8(a, _) => a.bytes(),
            PackedWeights::I16(a) => a.bytes(),
        }
    }
    pub fn kernel_name(&self) -> &'static str {
        match self {
            PackedWeights::U8I8(_, k) => k.name(),
            PackedWeights::I16(_) => "portable-i16",
        }
    }
}

/// Activation panels in the element type of a [`PackedWeights`] path.
pub enum PackedB<'a> {
    U8(&'a [u8]),
    I16(&'a [i16]),
}

/// Element types of activation panels.
pub trait ActInt: Int {
    fn panels(s: &[Self]) -> PackedB<'_>;
}
impl ActInt for u8 {
    fn panels(s: &[u8]) -> PackedB<'_> {
        PackedB::U8(s)
    }
}
impl ActInt for i16 {
    fn panels(s: &[i16]) -> PackedB<'_> {
        PackedB::I16(s)
    }
}

/// Computes rows `rows` (a range of whole panels except maybe the last) of the product of
/// `w` with `panels` consecutive activation panels starting at column `j0`, applying `ep` and
/// storing through `store(row, col, value)`.
pub fn compute_block(
    w: &PackedWeights,
    b: PackedB<'_>,
    j0: usize,
    n: usize,
    rows: std::ops::Range<usize>,
    ep: &Epilogue<'_>,
    store: &mut impl FnMut(usize, usize, f32),
) {
    let k = w.depth();
    let kq = quads(k);
    let plen = b_panel_len(k);
    let m = w.rows();
    debug_assert!(rows.start.is_multiple_of(MR));
    let npanels = match &b {
        PackedB::U8(s) => s.len() / plen,
        PackedB::I16(s) => s.len() / plen,
    };
    for p in (rows.start / MR)..rows.end.div_ceil(MR) {
        for bp in 0..npanels {
            let jb = j0 + bp * NR;
            if jb >= n {
                break;
            }
            let tile = match (w, &b) {
                (PackedWeights::U8I8(a, kern), PackedB::U8(s)) => {
                    tile_u8i8(*kern, a.panel(p), &s[bp * plen..(bp + 1) * plen], kq)
                }
                (PackedWeights::I16(a), PackedB::I16(s)) => {
                    tile_portable(a.panel(p), &s[bp * plen..(bp + 1) * plen], kq)
                }
                _ => unreachable!("activation panels are packed for the weights' path"),
            };
            for (rr, trow) in tile.iter().enumerate() {
                let r = p * MR + rr;
                if r >= m.min(rows.end) {
                    break;
                }
                let (mult, bias) = (ep.mult[r], ep.bias.map_or(0.0, |b| b[r]));
                let corr = ep.zero_corr.map_or(0, |z| z[r]);
                for (c, &acc) in trow.iter().enumerate().take((n - jb).min(NR)) {
                    store(r, jb + c, ep.act.apply((acc - corr) as f32 * mult + bias));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    fn naive(w: &[i64], x: &[i64], m: usize, k: usize, n: usize) -> Vec<i64> {
        let mut c = vec![0i64; m * n];
        for r in 0..m {
            for j in 0..n {
                c[r * n + j] = (0..k).map(|kk| w[r * k + kk] * x[kk * n + j]).sum();
            }
        }
        c
    }

    /// Every kernel gives the exact integer sums on odd shapes (partial tiles and quads).
    #[test]
    fn u8i8_kernels_are_exact() {
        let mut seed = 7;
        for &(m, k, n, amax, wmax) in &[
            (5usize, 7usize, 19usize, 255u32, 28u32),
            (4, 64, 16, 255, 64),
            (9, 1000, 33, 255, 32),
            (3, 4608, 17, 200, 28),
            (1, 1, 1, 255, 64),
        ] {
            let w: Vec<i8> = (0..m * k)
                .map(|_| (lcg(&mut seed) % (2 * wmax as u64 + 1)) as i64 - wmax as i64)
                .map(|v| v as i8)
                .collect();
            let x: Vec<u8> = (0..k * n)
                .map(|_| (lcg(&mut seed) % (amax as u64 + 1)) as u8)
                .collect();
            let want = naive(
                &w.iter().map(|&v| v as i64).collect::<Vec<_>>(),
                &x.iter().map(|&v| v as i64).collect::<Vec<_>>(),
                m,
                k,
                n,
            );
            let bounds = U8I8Bounds {
                act_max: amax,
                weight_max: wmax,
            };
            let mut kernels = vec![U8I8Kernel::Portable];
            if avx2_available() {
                kernels.push(U8I8Kernel::Avx2Pair);
                if bounds.quad_fits_i16() {
                    kernels.push(U8I8Kernel::Avx2Quad);
                }
            }
            for kern in kernels {
                let pw = PackedWeights::U8I8(PackedA::new(m, k, &w), kern);
                let plen = b_panel_len(k);
                let np = n.div_ceil(NR);
                let mut b = vec![0u8; np * plen];
                for p in 0..np {
                    pack_b_panel(k, n, p * NR, &mut b[p * plen..(p + 1) * plen], |kk, j| {
                        x[kk * n + j]
                    });
                }
                let ones = vec![1f32; m];
                let ep = Epilogue {
                    mult: &ones,
                    bias: None,
                    act: Activation::None,
                    zero_corr: None,
                };
                let mut got = vec![f32::NAN; m * n];
                compute_block(&pw, PackedB::U8(&b), 0, n, 0..m, &ep, &mut |r, j, v| {
                    got[r * n + j] = v
                });
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g, w as f32, "{kern:?} m{m} k{k} n{n} at {i}");
                }
            }
        }
    }

    /// The i16 path is exact where i32 would overflow, and the epilogue scales, biases and
    /// activates per row.
    #[test]
    fn i16_path_and_epilogue() {
        let (m, k, n) = (6, 4608, 5);
        let w: Vec<i16> = (0..m * k)
            .map(|i| if i % 2 == 0 { 448 } else { -3 })
            .collect();
        let x: Vec<i16> = (0..k * n).map(|_| 4032).collect();
        let pw = PackedWeights::I16(PackedA::new(m, k, &w));
        let plen = b_panel_len(k);
        let mut b = vec![0i16; plen];
        pack_b_panel(k, n, 0, &mut b, |kk, j| x[kk * n + j]);
        let mult: Vec<f32> = (0..m).map(|r| 2f32.powi(-(r as i32))).collect();
        let bias: Vec<f32> = (0..m).map(|r| -(r as f32)).collect();
        let ep = Epilogue {
            mult: &mult,
            bias: Some(&bias),
            act: Activation::Relu,
            zero_corr: None,
        };
        let mut got = vec![f32::NAN; m * n];
        compute_block(&pw, PackedB::I16(&b), 0, n, 0..m, &ep, &mut |r, j, v| {
            got[r * n + j] = v
        });
        let sum = (k as i64 / 2) * 4032 * (448 - 3);
        assert!(sum > i32::MAX as i64);
        for r in 0..m {
            let want = (sum as f32 * mult[r] + bias[r]).max(0.0);
            assert_eq!(got[r * n], want);
        }
    }
}
