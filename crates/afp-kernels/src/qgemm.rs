//! Exact integer GEMM for AFP's integer view (DESIGN.md §1): every AFP value is `n * 2^u`
//! with a small integer `n`, so a layer computes `sum_k n_w * n_a` exactly in integers and
//! scales the sum once per output channel (`mult`, a power of two for AFP weights), before
//! bias and activation. No weight or activation is turned back into a float before the sum.
//!
//! Two element paths:
//! - `u8 x i8` (activations u8, weights i8): AVX2 `vpmaddubsw` + `vpmaddwd` into i32, or
//!   the portable loop. `vpmaddubsw` saturates a pair sum at i16, so the AVX2 kernel is only
//!   chosen when `2 * max|a| * max|w| <= 32767` ([`U8I8Bounds`]); when `4 * max|a| * max|w|
//!   <= 32767` two pair sums are added in i16 before widening (one `vpmaddwd` per 8 products
//!   instead of per 4).
//! - `i16 x i16`: the portable loop with i64 sums, for integers that need 16 bits.
//!
//! Layout: K runs in quads of 4. Weights are packed once, in panels of [`MR`] rows
//! (`[panel][quad][row][4]`). Activations are read as [`NR`]-column panels of `[quad][col][4]`
//! with any stride between quads: a channel-quad image (`[c/4][pixel][4]`) is such a panel
//! at every pixel offset, so 1x1 convolutions read their input in place.

use crate::Activation;

/// Rows (output channels) of a micro-tile.
pub const MR: usize = 4;
/// Columns (output pixels, or batch rows of a Gemm) of a micro-tile.
pub const NR: usize = 16;

// A tile's rows are whole channel quads (the quad store of `OutPtr` relies on it).
const _: () = assert!(MR.is_multiple_of(4));

/// Integer element types of packed operands.
pub trait Int: Copy + Default + Send + Sync + 'static {
    fn widen(self) -> i64;
    /// `v as Self` (callers keep `v` in range).
    fn from_i32(v: i32) -> Self;
}
macro_rules! int_impl {
    ($($t:ty),*) => {$(
        impl Int for $t {
            #[inline(always)]
            fn widen(self) -> i64 {
                self as i64
            }
            #[inline(always)]
            fn from_i32(v: i32) -> Self {
                v as $t
            }
        }
    )*};
}
int_impl!(i8, u8, i16);

/// Weights `[m, 4 * kq]` packed in panels of [`MR`] rows: element `(r, kk)` of panel `p` is at
/// `p * kq * MR * 4 + (kk / 4) * MR * 4 + r * 4 + kk % 4`. Rows past `m` are zero.
#[derive(Debug, Clone)]
pub struct PackedA<T> {
    pub m: usize,
    pub kq: usize,
    data: Vec<T>,
    /// The same weights as 4-bit indices into a table, for the matrix-vector kernel (see
    /// [`PackedA::add_nibbles`]).
    nibbles: Option<Nibbles>,
}

/// Weights that take at most 16 distinct values, as 4-bit indices for the matrix-vector
/// kernels, in groups of [`GROUP_ROWS`] rows: group `g`'s quads `2s` and `2s + 1` are the 64
/// bytes at `(g * pairs + s) * 64`, byte `j` holding in its low nibble the index of weight
/// `(16g + j / 4, 8s + j % 4)` and in its high nibble that of `(16g + j / 4, 8s + 4 + j % 4)`.
/// One 64-byte load, two table lookups and two multiply-adds against a broadcast activation
/// quad give 16 rows' sums over 8 k: the same integer products as from the i8 panels, from a
/// quarter of the bytes and no expanded column. Rows past `m`, and the quad past an odd `kq`
/// (multiplied by zero activations), hold the index of 0.
#[derive(Debug, Clone)]
struct Nibbles {
    data: Vec<u8>,
    /// Weight per index (unused indices 0).
    table: [i8; 16],
    /// Quad pairs per row group: `kq.div_ceil(2)`.
    pairs: usize,
}

/// Rows of one group of the 4-bit matrix-vector layout ([`Nibbles`]).
pub const GROUP_ROWS: usize = 16;

impl<T: Int> PackedA<T> {
    /// Packs the row-major `[m, 4 * kq]` matrix `w`.
    pub fn new(m: usize, kq: usize, w: &[T]) -> PackedA<T> {
        let k = 4 * kq;
        assert_eq!(w.len(), m * k, "qgemm: weight length");
        // 16 values of slack: the matrix-vector kernel reads whole 32-byte pairs of quads.
        let mut data = vec![T::default(); m.div_ceil(MR) * kq * MR * 4 + 16];
        for r in 0..m {
            let base = (r / MR) * kq * MR * 4 + (r % MR) * 4;
            for (kk, &v) in w[r * k..(r + 1) * k].iter().enumerate() {
                data[base + (kk / 4) * MR * 4 + kk % 4] = v;
            }
        }
        PackedA {
            m,
            kq,
            data,
            nibbles: None,
        }
    }

    fn panel(&self, p: usize) -> &[T] {
        let len = self.kq * MR * 4;
        &self.data[p * len..(p + 1) * len]
    }

    /// Panel `p` and everything after it (the matrix-vector kernel may read 16 values past
    /// the panel's end, where they are multiplied by zeros).
    fn panel_from(&self, p: usize) -> &[T] {
        &self.data[p * self.kq * MR * 4..]
    }

    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<T>()
            + self.nibbles.as_ref().map_or(0, |n| n.data.len())
    }
}

impl PackedA<i8> {
    /// Adds the 4-bit copy of the weights (kept beside the i8 panels, which the tile kernels
    /// read) when they take at most 16 distinct values; otherwise leaves the weights as they
    /// are.
    pub fn add_nibbles(&mut self) {
        // The packed data holds zeros (its slack at least), so 0 gets an index.
        let mut seen = [false; 256];
        for &v in &self.data {
            seen[(v as i16 + 128) as usize] = true;
        }
        // Index per value, in increasing order of value.
        let mut table = [0i8; 16];
        let mut index = [0u8; 256];
        let present = seen.iter().enumerate().filter(|(_, &s)| s);
        for (count, (slot, _)) in present.enumerate() {
            if count == 16 {
                return;
            }
            table[count] = (slot as i16 - 128) as i8;
            index[slot] = count as u8;
        }
        let (kq, m) = (self.kq, self.m);
        // The index of weight (r, 4q + t), 0's past the matrix.
        let at = |r: usize, q: usize, t: usize| -> u8 {
            let v = match r < m && q < kq {
                true => self.data[(r / MR) * kq * MR * 4 + q * MR * 4 + (r % MR) * 4 + t],
                false => 0,
            };
            index[(v as i16 + 128) as usize]
        };
        let pairs = kq.div_ceil(2);
        let groups = m.div_ceil(GROUP_ROWS);
        let mut data = vec![0u8; groups * pairs * 64];
        for (i, byte) in data.iter_mut().enumerate() {
            let (g, s, j) = (i / (pairs * 64), i / 64 % pairs, i % 64);
            let r = g * GROUP_ROWS + j / 4;
            *byte = at(r, 2 * s, j % 4) | at(r, 2 * s + 1, j % 4) << 4;
        }
        self.nibbles = Some(Nibbles { data, table, pairs });
    }

    /// Whether the 4-bit copy is there (and so used by the AVX2 and VNNI matrix-vector
    /// kernels).
    pub fn has_nibbles(&self) -> bool {
        self.nibbles.is_some()
    }

    /// The 4-bit copy, where a matrix-vector kernel reads it.
    fn gemv_nibbles(&self, kern: U8I8Kernel) -> Option<&Nibbles> {
        match kern {
            U8I8Kernel::Portable => None,
            _ if nibbles_off() => None,
            _ => self.nibbles.as_ref(),
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

/// Test-only switch: columns are made for the i8 panels even where the 4-bit copy is there,
/// so tests can compare the two (flipped under `KERNEL_PATH_LOCK`).
#[cfg(test)]
pub(crate) static NO_NIBBLES: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

#[inline]
fn nibbles_off() -> bool {
    #[cfg(test)]
    return NO_NIBBLES.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(test))]
    false
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

#[cfg(test)]
pub(crate) static FORCE_NO_VNNI: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Whether the AVX-512 VNNI integer kernels (`vpdpbusd`, `vpdpwssd`; with F, BW, DQ and VL)
/// can run here.
#[inline]
pub fn vnni_available() -> bool {
    #[cfg(test)]
    if FORCE_PORTABLE.load(std::sync::atomic::Ordering::Relaxed)
        || FORCE_NO_VNNI.load(std::sync::atomic::Ordering::Relaxed)
    {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
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
    /// AVX-512 VNNI: `vpdpbusd` adds four exact `u8 x i8` products straight into i32 (no
    /// i16 step), so it is exact for any bounds whose i32 sum fits.
    Vnni,
}

impl U8I8Kernel {
    /// The fastest exact kernel for these bounds on this CPU. Every `u8 x i8` kernel sums in
    /// i32: callers check [`U8I8Bounds::sum_fits_i32`] first.
    pub fn choose(b: U8I8Bounds) -> U8I8Kernel {
        if vnni_available() {
            U8I8Kernel::Vnni
        } else if !avx2_available() || !b.pair_fits_i16() {
            U8I8Kernel::Portable
        } else if b.quad_fits_i16() {
            U8I8Kernel::Avx2Quad
        } else {
            U8I8Kernel::Avx2Pair
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            U8I8Kernel::Portable => "u8i8-portable",
            U8I8Kernel::Avx2Pair => "u8i8-avx2",
            U8I8Kernel::Avx2Quad => "u8i8-avx2-quad",
            U8I8Kernel::Vnni => "u8i8-vnni",
        }
    }

    /// Every kernel that can run here exactly for these bounds (the tests run each).
    pub fn available(b: U8I8Bounds) -> Vec<U8I8Kernel> {
        let mut k = vec![U8I8Kernel::Portable];
        if avx2_available() && b.pair_fits_i16() {
            k.push(U8I8Kernel::Avx2Pair);
            if b.quad_fits_i16() {
                k.push(U8I8Kernel::Avx2Quad);
            }
        }
        if vnni_available() {
            k.push(U8I8Kernel::Vnni);
        }
        k
    }
}

/// Which kernel an `i16 x i16` product runs, chosen once per layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum I16Kernel {
    /// Scalar, i64 sums.
    Portable,
    /// `vpmaddwd` with i32 sums over runs of at most `chunk_quads` quads, each run's sums
    /// then added in i64: exact for any depth.
    Avx2 { chunk_quads: usize },
    /// AVX-512 VNNI `vpdpwssd` (two products added into each i32 lane), in runs as `Avx2`.
    Vnni { chunk_quads: usize },
}

impl I16Kernel {
    /// The fastest exact kernel on this CPU for activation and weight integers up to
    /// `act_max` and `weight_max` (both at most `i16::MAX`).
    pub fn choose(act_max: u32, weight_max: u32) -> I16Kernel {
        // An i32 lane sums 2 products per quad: 2 * quads * act_max * weight_max <= i32::MAX.
        let per_quad = 2 * act_max.max(1) as u64 * weight_max.max(1) as u64;
        let chunk_quads = (i32::MAX as u64 / per_quad).max(1) as usize;
        if vnni_available() {
            I16Kernel::Vnni { chunk_quads }
        } else if avx2_available() {
            I16Kernel::Avx2 { chunk_quads }
        } else {
            I16Kernel::Portable
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            I16Kernel::Portable => "i16-portable",
            I16Kernel::Avx2 { .. } => "i16-avx2",
            I16Kernel::Vnni { .. } => "i16-vnni",
        }
    }
}

/// Weights of one product, in one of the two element paths.
#[derive(Debug, Clone)]
pub enum PackedWeights {
    /// i8 weights against u8 activations, with the kernel chosen for their bounds.
    U8I8(PackedA<i8>, U8I8Kernel),
    /// i16 weights against i16 activations (i64 sums), with the kernel chosen for their bounds.
    I16(PackedA<i16>, I16Kernel),
}

impl PackedWeights {
    pub fn rows(&self) -> usize {
        match self {
            PackedWeights::U8I8(a, _) => a.m,
            PackedWeights::I16(a, _) => a.m,
        }
    }
    pub fn quads(&self) -> usize {
        match self {
            PackedWeights::U8I8(a, _) => a.kq,
            PackedWeights::I16(a, _) => a.kq,
        }
    }
    pub fn bytes(&self) -> usize {
        match self {
            PackedWeights::U8I8(a, _) => a.bytes(),
            PackedWeights::I16(a, _) => a.bytes(),
        }
    }
    pub fn kernel_name(&self) -> &'static str {
        match self {
            PackedWeights::U8I8(_, k) => k.name(),
            PackedWeights::I16(_, k) => k.name(),
        }
    }
}

/// Activation operand: `data[off + q * quad_stride + c * 4 + t]` is element `(4q + t, c)`
/// of a panel at offset `off`. Every panel read must lie inside `data` (see [`Self::check`]).
#[derive(Clone, Copy)]
pub struct Panels<'a, T> {
    pub data: &'a [T],
    pub quad_stride: usize,
}

impl<T> Panels<'_, T> {
    /// Whether the panel at `off` with `kq` quads lies inside `data`.
    #[inline]
    fn check(&self, off: usize, kq: usize) -> bool {
        kq == 0 || off + (kq - 1) * self.quad_stride + NR * 4 <= self.data.len()
    }
}

/// Activation panels in the element type of a [`PackedWeights`] path.
#[derive(Clone, Copy)]
pub enum ActPanels<'a> {
    U8(Panels<'a, u8>),
    I16(Panels<'a, i16>),
}

/// Element types of activation panels.
pub trait ActInt: Int {
    fn panels(p: Panels<'_, Self>) -> ActPanels<'_>;
    /// `dst[4p + t] = rows[t][p]` for `p < len`: channel rows into channel quads, as whole
    /// words so the loop vectorizes.
    fn interleave4(rows: &[[Self; 64]; 4], len: usize, dst: &mut [Self]);
}
impl ActInt for u8 {
    fn panels(p: Panels<'_, u8>) -> ActPanels<'_> {
        ActPanels::U8(p)
    }
    #[inline(always)]
    fn interleave4(rows: &[[u8; 64]; 4], len: usize, dst: &mut [u8]) {
        let mut words = [0u32; 64];
        for (p, w) in words.iter_mut().enumerate() {
            *w = rows[0][p] as u32
                | (rows[1][p] as u32) << 8
                | (rows[2][p] as u32) << 16
                | (rows[3][p] as u32) << 24;
        }
        for (d, w) in dst.chunks_exact_mut(4).zip(&words[..len]) {
            d.copy_from_slice(&w.to_le_bytes());
        }
    }
}
impl ActInt for i16 {
    fn panels(p: Panels<'_, i16>) -> ActPanels<'_> {
        ActPanels::I16(p)
    }
    #[inline(always)]
    fn interleave4(rows: &[[i16; 64]; 4], len: usize, dst: &mut [i16]) {
        for (p, d) in dst.chunks_exact_mut(4).enumerate().take(len) {
            d.copy_from_slice(&[rows[0][p], rows[1][p], rows[2][p], rows[3][p]]);
        }
    }
}

/// The portable micro-kernel for one `MR x NR` tile over all of K, in i64.
#[inline]
fn tile_portable<A: Int, B: Int>(a: &[A], b: Panels<'_, B>, off: usize, kq: usize) -> Tile {
    let mut acc = [[0i64; NR]; MR];
    for q in 0..kq {
        let aq = &a[q * MR * 4..(q + 1) * MR * 4];
        let bq = &b.data[off + q * b.quad_stride..off + q * b.quad_stride + NR * 4];
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
    Tile::I64(acc)
}

/// A `u8 x i8` tile's sums from one of the vector kernels ([`acc_u8i8_vnni`] for `Vnni`,
/// else [`acc_u8i8_avx2`]).
///
/// # Safety
/// `kern` is not `Portable` and the CPU has what it needs (AVX2; AVX-512 F, BW and VNNI for
/// `Vnni`); `a` must hold `kq * MR * 4` values and `b.check(off, kq)` must hold (the caller,
/// [`tile`], asserts both).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tile_u8i8_simd(
    kern: U8I8Kernel,
    a: &[i8],
    b: Panels<'_, u8>,
    off: usize,
    kq: usize,
) -> [[i32; NR]; MR] {
    use std::arch::x86_64::*;
    let mut out = [[0i32; NR]; MR];
    if kern == U8I8Kernel::Vnni {
        // SAFETY: forwarded contract.
        unsafe { tile_u8i8_vnni(a, b, off, kq, &mut out) };
        return out;
    }
    // SAFETY: forwarded contract.
    let acc = unsafe {
        match kern {
            U8I8Kernel::Avx2Quad => acc_u8i8_avx2::<true>(a, b, off, kq),
            _ => acc_u8i8_avx2::<false>(a, b, off, kq),
        }
    };
    for (o, acc_r) in out.iter_mut().zip(&acc) {
        // SAFETY: each row holds NR = 16 i32, written as two 8-lane vectors.
        unsafe {
            _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, acc_r[0]);
            _mm256_storeu_si256(o.as_mut_ptr().add(8) as *mut __m256i, acc_r[1]);
        }
    }
    out
}

/// The `u8 x i8` tile's sums in registers: row `r`, columns `8h..8h+8` in `acc[r][h]`.
///
/// # Safety
/// The CPU must have AVX2, `a` must hold `kq * MR * 4` values and `b.check(off, kq)` must
/// hold (both asserted by the caller).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn acc_u8i8_avx2<const QUAD: bool>(
    a: &[i8],
    b: Panels<'_, u8>,
    off: usize,
    kq: usize,
) -> [[std::arch::x86_64::__m256i; 2]; MR] {
    use std::arch::x86_64::*;
    let ap = a.as_ptr();
    let bp = b.data.as_ptr().add(off);
    let st = b.quad_stride;
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); 2]; MR];
    // SAFETY (both macros): q < kq, r < MR and h < 2; A quad q row r is 4 bytes at
    // q*16 + r*4 < kq*MR*4, B quad q half h is 32 bytes ending at q*st + h*32 + 32 <= the
    // checked panel extent. Macros, not closures, so the intrinsics inline under AVX2.
    macro_rules! wq {
        ($q:expr, $r:expr) => {
            _mm256_set1_epi32((ap.add($q * MR * 4 + $r * 4) as *const i32).read_unaligned())
        };
    }
    macro_rules! bq {
        ($q:expr, $h:expr) => {
            _mm256_loadu_si256(bp.add($q * st + $h * 32) as *const __m256i)
        };
    }
    let mut q = 0;
    if QUAD {
        while q + 2 <= kq {
            let (b00, b01, b10, b11) = (bq!(q, 0), bq!(q, 1), bq!(q + 1, 0), bq!(q + 1, 1));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let (w0, w1) = (wq!(q, r), wq!(q + 1, r));
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
        let (b0, b1) = (bq!(q, 0), bq!(q, 1));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let w = wq!(q, r);
            let p0 = _mm256_maddubs_epi16(b0, w);
            let p1 = _mm256_maddubs_epi16(b1, w);
            acc_r[0] = _mm256_add_epi32(acc_r[0], _mm256_madd_epi16(p0, ones));
            acc_r[1] = _mm256_add_epi32(acc_r[1], _mm256_madd_epi16(p1, ones));
        }
        q += 1;
    }
    acc
}

/// A `u8 x i8` tile's sums with AVX-512 VNNI ([`acc_u8i8_vnni`]) written to `out`.
///
/// # Safety
/// As [`acc_u8i8_vnni`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_u8i8_vnni(
    a: &[i8],
    b: Panels<'_, u8>,
    off: usize,
    kq: usize,
    out: &mut [[i32; NR]; MR],
) {
    use std::arch::x86_64::*;
    // SAFETY: forwarded contract.
    let acc = unsafe { acc_u8i8_vnni(a, b, off, kq) };
    for (o, &acc_r) in out.iter_mut().zip(&acc) {
        // SAFETY: each row holds NR = 16 i32, one 16-lane vector.
        unsafe { _mm512_storeu_si512(o.as_mut_ptr() as *mut __m512i, acc_r) };
    }
}

/// The `u8 x i8` tile's sums with AVX-512 VNNI, row `r`'s 16 columns in `acc[r]`: one
/// `vpdpbusd` per row and quad (a quad's 16 columns are one 64-byte vector), even and odd
/// quads in separate accumulators so consecutive `vpdpbusd`s do not wait on each other.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VNNI; otherwise as [`acc_u8i8_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn acc_u8i8_vnni(
    a: &[i8],
    b: Panels<'_, u8>,
    off: usize,
    kq: usize,
) -> [std::arch::x86_64::__m512i; MR] {
    use std::arch::x86_64::*;
    let ap = a.as_ptr();
    let bp = b.data.as_ptr().add(off);
    let st = b.quad_stride;
    let mut even = [_mm512_setzero_si512(); MR];
    let mut odd = [_mm512_setzero_si512(); MR];
    // SAFETY (both macros): q < kq and r < MR; A quad q row r is 4 bytes at q*16 + r*4 <
    // kq*MR*4, B quad q is the 64 bytes at q*st, inside the checked panel extent.
    macro_rules! wq {
        ($q:expr, $r:expr) => {
            _mm512_set1_epi32((ap.add($q * MR * 4 + $r * 4) as *const i32).read_unaligned())
        };
    }
    macro_rules! bq {
        ($q:expr) => {
            _mm512_loadu_si512(bp.add($q * st) as *const __m512i)
        };
    }
    let mut q = 0;
    while q + 2 <= kq {
        let (b0, b1) = (bq!(q), bq!(q + 1));
        for r in 0..MR {
            even[r] = _mm512_dpbusd_epi32(even[r], b0, wq!(q, r));
            odd[r] = _mm512_dpbusd_epi32(odd[r], b1, wq!(q + 1, r));
        }
        q += 2;
    }
    if q < kq {
        let b0 = bq!(q);
        for (r, e) in even.iter_mut().enumerate() {
            *e = _mm512_dpbusd_epi32(*e, b0, wq!(q, r));
        }
    }
    std::array::from_fn(|r| _mm512_add_epi32(even[r], odd[r]))
}

/// Two adjacent `u8 x i8` tiles' sums with AVX-512 VNNI (`MR` rows by `2 * NR` columns, the
/// panels at `off0` and `off1`): each row's weight quad is broadcast once for both panels, and
/// the 8 accumulators are independent, so no even/odd split is needed to hide the
/// `vpdpbusd` latency. Per output it halves the broadcasts and the calls of a single tile.
///
/// # Safety
/// As [`acc_u8i8_vnni`], for both panels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn acc_u8i8_vnni_pair(
    a: &[i8],
    b: Panels<'_, u8>,
    (off0, off1): (usize, usize),
    kq: usize,
) -> [[std::arch::x86_64::__m512i; MR]; 2] {
    use std::arch::x86_64::*;
    let ap = a.as_ptr();
    let (bp0, bp1) = (b.data.as_ptr().add(off0), b.data.as_ptr().add(off1));
    let st = b.quad_stride;
    let (mut acc0, mut acc1) = ([_mm512_setzero_si512(); MR], [_mm512_setzero_si512(); MR]);
    for q in 0..kq {
        // SAFETY: q < kq; B quad q of each panel is the 64 bytes at q*st inside its checked
        // extent; A quad q row r is 4 bytes at q*16 + r*4 < kq*MR*4.
        let (b0, b1) = (
            _mm512_loadu_si512(bp0.add(q * st) as *const __m512i),
            _mm512_loadu_si512(bp1.add(q * st) as *const __m512i),
        );
        for (r, (a0, a1)) in acc0.iter_mut().zip(&mut acc1).enumerate() {
            let wq = _mm512_set1_epi32((ap.add(q * MR * 4 + r * 4) as *const i32).read_unaligned());
            *a0 = _mm512_dpbusd_epi32(*a0, b0, wq);
            *a1 = _mm512_dpbusd_epi32(*a1, b1, wq);
        }
    }
    [acc0, acc1]
}

/// A strip of `2 * pairs` whole `u8 x i8` tiles (`MR` rows from `r0`, columns from `j0`, the
/// activation panel of tile `t` at `off0 + t * stride`), two at a time with
/// [`acc_u8i8_vnni_pair`], each stored through the 16-lane epilogue as
/// [`tile_store_u8i8_vnni`] would; the residual is prefetched as in [`compute`] (`end` is the
/// caller's last column).
///
/// # Safety
/// As [`tile_store_u8i8_vnni`] for every tile; the last tile's panel must pass `b.check`
/// (the earlier ones lie below it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn strip_store_u8i8_vnni(
    a: &[i8],
    b: Panels<'_, u8>,
    (off0, stride, pairs): (usize, usize, usize),
    kq: usize,
    r0: usize,
    (j0, end): (usize, usize),
    ep: &Epilogue<'_>,
    lohi: (f32, f32),
    out: OutPtr,
) {
    // The last tile's bounds hold for the earlier ones: their elements lie below it.
    check_whole_tile(r0, j0 + (2 * pairs - 1) * NR, ep, out);
    let rows = RowsEpilogue::new(r0, ep, lohi);
    for i in 0..pairs {
        let j = j0 + 2 * i * NR;
        for t in [RESIDUAL_PREFETCH_TILES, RESIDUAL_PREFETCH_TILES + 1] {
            prefetch_residual(ep, out, r0, MR, j + t * NR, end);
        }
        let offs = (off0 + 2 * i * stride, off0 + (2 * i + 1) * stride);
        // SAFETY: forwarded contract; both panels lie at or below the checked last one.
        let acc = unsafe { acc_u8i8_vnni_pair(a, b, offs, kq) };
        for (half, acc) in acc.iter().enumerate() {
            // SAFETY: inside the strip checked above; exclusive (contract).
            unsafe { rows.store(rows.sums_f32(acc), j + half * NR, out) };
        }
    }
}

/// `i16 x i16` tile with AVX2: `vpmaddwd` against each row's quad of weights broadcast,
/// eight columns at a time (16 accumulators would not fit the registers). Each i32 lane holds
/// the sum of 2 products per quad over at most `chunk` quads (the caller's bound keeps it
/// exact); the two lanes of a column are then added into the i64 sums.
///
/// # Safety
/// The CPU must have AVX2, `a` must hold `kq * MR * 4` values and `b.check(off, kq)` must
/// hold (both asserted by the caller, [`tile`]); `chunk >= 1`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tile_i16_avx2(
    a: &[i16],
    b: Panels<'_, i16>,
    off: usize,
    kq: usize,
    chunk: usize,
) -> [[i64; NR]; MR] {
    use std::arch::x86_64::*;
    let ap = a.as_ptr();
    let bp = b.data.as_ptr().add(off);
    let st = b.quad_stride;
    let mut out = [[0i64; NR]; MR];
    let mut q0 = 0;
    while q0 < kq {
        let q1 = (q0 + chunk.max(1)).min(kq);
        for half in 0..2 {
            let mut acc = [[_mm256_setzero_si256(); 2]; MR];
            for q in q0..q1 {
                // SAFETY: columns 8*half .. 8*half + 8 of quad q, 4 values each: 16 values at
                // q*st + 32*half and 16 after them, inside the checked panel extent; row r's
                // quad of weights is 4 values at q*MR*4 + r*4 < kq*MR*4.
                let b0 = _mm256_loadu_si256(bp.add(q * st + half * 32) as *const __m256i);
                let b1 = _mm256_loadu_si256(bp.add(q * st + half * 32 + 16) as *const __m256i);
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let w = _mm256_set1_epi64x(
                        (ap.add(q * MR * 4 + r * 4) as *const i64).read_unaligned(),
                    );
                    acc_r[0] = _mm256_add_epi32(acc_r[0], _mm256_madd_epi16(b0, w));
                    acc_r[1] = _mm256_add_epi32(acc_r[1], _mm256_madd_epi16(b1, w));
                }
            }
            for (o, acc_r) in out.iter_mut().zip(&acc) {
                for (h, &v) in acc_r.iter().enumerate() {
                    let mut lanes = [0i32; 8];
                    // SAFETY: 8 i32 into an 8-element array.
                    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, v);
                    for j in 0..4 {
                        o[half * 8 + h * 4 + j] += lanes[2 * j] as i64 + lanes[2 * j + 1] as i64;
                    }
                }
            }
        }
        q0 = q1;
    }
    out
}

/// `i16 x i16` tile with AVX-512 VNNI: `vpdpwssd` against each row's broadcast quad of
/// weights, a quad's 16 columns in two 64-byte vectors; each i32 lane sums 2 products per quad
/// over runs of at most `chunk` quads, as [`tile_i16_avx2`], and the two lanes of a column
/// are then added into the i64 sums.
///
/// # Safety
/// AVX-512 F, BW and VNNI present; otherwise as [`tile_i16_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_i16_vnni(
    a: &[i16],
    b: Panels<'_, i16>,
    off: usize,
    kq: usize,
    chunk: usize,
) -> [[i64; NR]; MR] {
    use std::arch::x86_64::*;
    let ap = a.as_ptr();
    let bp = b.data.as_ptr().add(off);
    let st = b.quad_stride;
    let mut out = [[0i64; NR]; MR];
    let mut q0 = 0;
    while q0 < kq {
        let q1 = (q0 + chunk.max(1)).min(kq);
        // Row r, columns 8h..8h+8 (two lanes each) in acc[r][h].
        let mut acc = [[_mm512_setzero_si512(); 2]; MR];
        for q in q0..q1 {
            // SAFETY: quad q's 16 columns are 64 values at q*st, inside the checked panel
            // extent; row r's quad of weights is 4 values at q*MR*4 + r*4 < kq*MR*4.
            let b0 = _mm512_loadu_si512(bp.add(q * st) as *const __m512i);
            let b1 = _mm512_loadu_si512(bp.add(q * st + 32) as *const __m512i);
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let w =
                    _mm512_set1_epi64((ap.add(q * MR * 4 + r * 4) as *const i64).read_unaligned());
                acc_r[0] = _mm512_dpwssd_epi32(acc_r[0], b0, w);
                acc_r[1] = _mm512_dpwssd_epi32(acc_r[1], b1, w);
            }
        }
        for (o, acc_r) in out.iter_mut().zip(&acc) {
            for (h, &v) in acc_r.iter().enumerate() {
                let mut lanes = [0i32; 16];
                // SAFETY: 16 i32 into a 16-element array.
                _mm512_storeu_si512(lanes.as_mut_ptr() as *mut __m512i, v);
                for j in 0..8 {
                    o[h * 8 + j] += lanes[2 * j] as i64 + lanes[2 * j + 1] as i64;
                }
            }
        }
        q0 = q1;
    }
    out
}

/// The bounds a whole tile's vector store relies on: unit column stride, the tile's last
/// output (f32 element or quad byte) and residual element inside their slices, and a uniform
/// grid for the register encoder.
fn check_whole_tile(r0: usize, j0: usize, ep: &Epilogue<'_>, out: OutPtr) {
    assert!(out.cs == 1, "qgemm: vector store needs unit column stride");
    let last = (r0 + MR - 1) * out.rs + j0 + NR - 1;
    if let Some((_, len)) = out.vals {
        assert!(last < len, "qgemm: output tile out of bounds");
    }
    if let Some((q, _, len)) = out.codes {
        assert!(
            q.enc.is_uniform(),
            "qgemm: the register encoder needs a uniform grid"
        );
        assert!(
            q.at(r0 + MR - 1, j0 + NR - 1) < len,
            "qgemm: output tile out of bounds"
        );
    }
    if let Some(res) = ep.residual {
        assert!(last < res.len(), "qgemm: residual tile out of bounds");
    }
}

/// A whole `u8 x i8` tile (`MR` rows from `r0`, `NR` columns from `j0`, unit column stride)
/// computed and stored through the epilogue in registers: `(sum - corr) * mult + bias`, the
/// affine step, the residual, then the clamp `(lo, hi)` of the epilogue's activation
/// ([`Activation::clamp_bounds`]), the same f32 operations in the same order as
/// [`store_tile`] (multiply then add, never fused), so both give the same bits.
///
/// # Safety
/// `kern` is one of the AVX2 kernels and the CPU has AVX2; otherwise as [`acc_u8i8_avx2`];
/// no other thread touches the tile's output elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_store_u8i8_avx2(
    kern: U8I8Kernel,
    a: &[i8],
    b: Panels<'_, u8>,
    off: usize,
    kq: usize,
    r0: usize,
    j0: usize,
    ep: &Epilogue<'_>,
    (lo, hi): (f32, f32),
    out: OutPtr,
) {
    use std::arch::x86_64::*;
    // None keeps NaN (max(NaN, -inf) would give -inf), as `store_tile` does.
    let clamp = ep.act != Activation::None;
    let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    check_whole_tile(r0, j0, ep, out);
    // With quads: each row's codes shifted into byte `row % 4` of its pixels' words, one
    // vector of 8 pixels per half tile, stored once the quad's rows are all in.
    let mut words = [_mm256_setzero_si256(); NR / 8];
    // SAFETY: forwarded contract.
    let acc = unsafe {
        match kern {
            U8I8Kernel::Avx2Quad => acc_u8i8_avx2::<true>(a, b, off, kq),
            _ => acc_u8i8_avx2::<false>(a, b, off, kq),
        }
    };
    for (rr, acc_r) in acc.iter().enumerate() {
        let r = r0 + rr;
        let m = _mm256_set1_ps(ep.mult[r]);
        let bias = _mm256_set1_ps(ep.bias.map_or(0.0, |b| b[r]));
        // |corr| <= 255 * 64 * K, within i32 (checked at build).
        let corr = _mm256_set1_epi32(ep.zero_corr.map_or(0, |z| z[r]) as i32);
        let affine = ep
            .affine
            .map(|(sc, sh)| (_mm256_set1_ps(sc[r]), _mm256_set1_ps(sh[r])));
        let base = r * out.rs + j0;
        for (h, &acc_h) in acc_r.iter().enumerate() {
            let x = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc_h, corr));
            let mut v = _mm256_add_ps(_mm256_mul_ps(x, m), bias);
            if let Some((sc, sh)) = affine {
                v = _mm256_add_ps(_mm256_mul_ps(v, sc), sh);
            }
            if let Some(res) = ep.residual {
                // SAFETY: base + 8h + 7 <= last < res.len() (asserted above).
                v = _mm256_add_ps(v, unsafe {
                    _mm256_loadu_ps(res.as_ptr().add(base + 8 * h))
                });
            }
            if clamp {
                // max(v, lo) returns lo for NaN, as f32::max does in `store_tile`.
                v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
            }
            if let Some((p, _)) = out.vals {
                // SAFETY: base + 8h + 7 <= last < the values' length (asserted above); this
                // tile's elements belong to this call (function contract).
                unsafe { _mm256_storeu_ps(p.add(base + 8 * h), v) };
            }
            if let Some((q, p, _)) = out.codes {
                let codes = q.enc.encode_uniform_avx2(v, q.zero);
                let shifted = _mm256_sllv_epi32(codes, _mm256_set1_epi32(8 * (r % 4) as i32));
                words[h] = _mm256_or_si256(words[h], shifted);
                if r % 4 == 3 {
                    let at = q.at(r - 3, j0 + 8 * h);
                    // SAFETY: the 8 words of pixels j0 + 8h.. of this quad end at or before
                    // the tile's last byte < the codes' length (asserted above); this tile's
                    // elements belong to this call (function contract).
                    unsafe { _mm256_storeu_si256(p.add(at) as *mut __m256i, words[h]) };
                    words[h] = _mm256_setzero_si256();
                }
            }
        }
    }
}

/// [`tile_store_u8i8_avx2`] for the VNNI kernel, with the epilogue on whole 16-lane rows
/// ([`RowsEpilogue`]).
///
/// # Safety
/// As [`acc_u8i8_vnni`]; no other thread touches the tile's output elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_store_u8i8_vnni(
    a: &[i8],
    b: Panels<'_, u8>,
    off: usize,
    kq: usize,
    r0: usize,
    j0: usize,
    ep: &Epilogue<'_>,
    lohi: (f32, f32),
    out: OutPtr,
) {
    check_whole_tile(r0, j0, ep, out);
    // SAFETY: forwarded contract.
    let acc = unsafe { acc_u8i8_vnni(a, b, off, kq) };
    let rows = RowsEpilogue::new(r0, ep, lohi);
    // SAFETY: the tile's bounds checked above; exclusive (contract).
    unsafe { rows.store(rows.sums_f32(&acc), j0, out) };
}

/// The `i16 x i16` VNNI tile stored through the 16-lane epilogue: the i64 sums less the
/// zero correction, converted to f32 (`vcvtqq2ps` rounds to nearest even, as `as f32`).
///
/// # Safety
/// AVX-512 F, BW, DQ and VNNI present; otherwise as [`tile_i16_vnni`]; no other thread
/// touches the tile's output elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_store_i16_vnni(
    a: &[i16],
    b: Panels<'_, i16>,
    off: usize,
    kq: usize,
    chunk: usize,
    r0: usize,
    j0: usize,
    ep: &Epilogue<'_>,
    lohi: (f32, f32),
    out: OutPtr,
) {
    use std::arch::x86_64::*;
    check_whole_tile(r0, j0, ep, out);
    // SAFETY: forwarded contract.
    let t = unsafe { tile_i16_vnni(a, b, off, kq, chunk) };
    let x: [__m512; MR] = std::array::from_fn(|rr| {
        let corr = _mm512_set1_epi64(ep.zero_corr.map_or(0, |z| z[r0 + rr]));
        // SAFETY: 8 i64 from each half of a 16-element row.
        let (lo, hi) = unsafe {
            (
                _mm512_loadu_si512(t[rr].as_ptr() as *const __m512i),
                _mm512_loadu_si512(t[rr].as_ptr().add(8) as *const __m512i),
            )
        };
        let lo = _mm512_cvtepi64_ps(_mm512_sub_epi64(lo, corr));
        let hi = _mm512_cvtepi64_ps(_mm512_sub_epi64(hi, corr));
        _mm512_insertf32x8::<1>(_mm512_castps256_ps512(lo), hi)
    });
    // SAFETY: the tile's bounds checked above; exclusive (contract).
    unsafe { RowsEpilogue::new(r0, ep, lohi).store(x, j0, out) };
}

/// The 16-lane epilogue of one row panel (`MR` rows from `r0`), its rows' constants
/// broadcast once for all the tiles of a strip (the per-tile epilogue call that set them
/// for every tile took a third of a K = 64 layer's time in `perf`). From
/// `x[r] = (sum - corr) as f32`: `x * mult + bias`, the affine step, the residual, the clamp
/// `(lo, hi)`, then the f32 store or the encoding into the next layer's quads; the same f32
/// operations in the same order as [`store_tile`] (multiply then add, never fused), so the
/// same bits.
#[cfg(target_arch = "x86_64")]
struct RowsEpilogue<'a> {
    r0: usize,
    mult: [std::arch::x86_64::__m512; MR],
    bias: [std::arch::x86_64::__m512; MR],
    /// The zero correction of u8 sums, in i32: `|corr| <= 255 * 64 * K` (checked at build).
    corr: [std::arch::x86_64::__m512i; MR],
    affine: Option<[(std::arch::x86_64::__m512, std::arch::x86_64::__m512); MR]>,
    residual: Option<&'a [f32]>,
    /// None keeps NaN (max(NaN, -inf) would give -inf), as `store_tile` does.
    clamp: Option<(std::arch::x86_64::__m512, std::arch::x86_64::__m512)>,
}

#[cfg(target_arch = "x86_64")]
impl<'a> RowsEpilogue<'a> {
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn new(r0: usize, ep: &Epilogue<'a>, (lo, hi): (f32, f32)) -> RowsEpilogue<'a> {
        use std::arch::x86_64::*;
        RowsEpilogue {
            r0,
            mult: std::array::from_fn(|rr| _mm512_set1_ps(ep.mult[r0 + rr])),
            bias: std::array::from_fn(|rr| _mm512_set1_ps(ep.bias.map_or(0.0, |b| b[r0 + rr]))),
            corr: std::array::from_fn(|rr| {
                _mm512_set1_epi32(ep.zero_corr.map_or(0, |z| z[r0 + rr]) as i32)
            }),
            affine: ep.affine.map(|(sc, sh)| {
                std::array::from_fn(|rr| (_mm512_set1_ps(sc[r0 + rr]), _mm512_set1_ps(sh[r0 + rr])))
            }),
            residual: ep.residual,
            clamp: (ep.act != Activation::None).then(|| (_mm512_set1_ps(lo), _mm512_set1_ps(hi))),
        }
    }

    /// A `u8 x i8` tile's i32 sums less each row's zero correction, as f32.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn sums_f32(&self, acc: &[std::arch::x86_64::__m512i; MR]) -> [std::arch::x86_64::__m512; MR] {
        use std::arch::x86_64::*;
        std::array::from_fn(|rr| _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[rr], self.corr[rr])))
    }

    /// Stores the tile at columns `j0..j0 + 16` of these rows. Always inlined (left to
    /// itself, LLVM kept it a call per tile, the tile passed through memory), which
    /// `#[target_feature]` does not allow, so the features are the caller's.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and the caller is compiled with it (all callers are
    /// `#[target_feature(enable = "avx512f", ..)]`); [`check_whole_tile`] passed for this
    /// tile; no other thread touches its output elements.
    #[inline(always)]
    unsafe fn store(&self, x: [std::arch::x86_64::__m512; MR], j0: usize, out: OutPtr) {
        use std::arch::x86_64::*;
        // With quads: each row's codes shifted into byte `row % 4` of its pixels' words, stored
        // once the quad's rows are all in.
        let mut words = _mm512_setzero_si512();
        for (rr, &x) in x.iter().enumerate() {
            let r = self.r0 + rr;
            let base = r * out.rs + j0;
            let mut v = _mm512_add_ps(_mm512_mul_ps(x, self.mult[rr]), self.bias[rr]);
            if let Some(aff) = &self.affine {
                v = _mm512_add_ps(_mm512_mul_ps(v, aff[rr].0), aff[rr].1);
            }
            if let Some(res) = self.residual {
                // SAFETY: base + 15 <= the tile's last element < res.len() (checked by the
                // caller).
                v = _mm512_add_ps(v, unsafe { _mm512_loadu_ps(res.as_ptr().add(base)) });
            }
            if let Some((lo, hi)) = self.clamp {
                // max(v, lo) returns lo for NaN, as f32::max does in `store_tile`.
                v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
            }
            if let Some((p, _)) = out.vals {
                // SAFETY: base + 15 <= the tile's last element < the values' length (checked
                // by the caller); this tile's elements belong to this call (contract).
                unsafe { _mm512_storeu_ps(p.add(base), v) };
            }
            if let Some((q, p, _)) = out.codes {
                let codes = q.enc.encode_uniform_avx512(v, q.zero);
                let shifted = _mm512_sllv_epi32(codes, _mm512_set1_epi32(8 * (r % 4) as i32));
                words = _mm512_or_si512(words, shifted);
                if r % 4 == 3 {
                    let at = q.at(r - 3, j0);
                    // SAFETY: the 16 words of pixels j0.. of this quad end at or before the
                    // tile's last byte < the codes' length (checked by the caller); this tile's
                    // elements belong to this call (contract).
                    unsafe { _mm512_storeu_si512(p.add(at) as *mut __m512i, words) };
                    words = _mm512_setzero_si512();
                }
            }
        }
    }
}

/// Computes and stores a whole tile with the epilogue in registers when the kernel and the
/// activation allow it; returns false (having done nothing) otherwise.
///
/// # Safety
/// As [`compute`]; the tile is whole (`MR` rows, `NR` columns, unit column stride).
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn tile_store_fast(
    w: &PackedWeights,
    p: usize,
    b: ActPanels<'_>,
    off: usize,
    r0: usize,
    j0: usize,
    ep: &Epilogue<'_>,
    out: OutPtr,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let (PackedWeights::U8I8(a, kern), ActPanels::U8(b)) = (w, b) {
        let lohi = ep.act.clamp_bounds();
        let uniform = out.codes_uniform();
        if let (Some(lohi), false, true) = (lohi, *kern == U8I8Kernel::Portable, uniform) {
            let kq = w.quads();
            assert!(b.check(off, kq), "qgemm: activation panel out of bounds");
            let a = a.panel(p);
            // SAFETY: the AVX2 kernels are chosen only with AVX2 present, VNNI only with
            // AVX-512 F, BW, VL and VNNI (which imply AVX2); the panel bounds are asserted
            // above, `a.panel` holds kq * MR * 4 values; the tile is whole and exclusive
            // (function contract).
            unsafe {
                match kern {
                    U8I8Kernel::Vnni => tile_store_u8i8_vnni(a, b, off, kq, r0, j0, ep, lohi, out),
                    _ => tile_store_u8i8_avx2(*kern, a, b, off, kq, r0, j0, ep, lohi, out),
                }
            };
            return true;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if let (PackedWeights::I16(a, I16Kernel::Vnni { chunk_quads }), ActPanels::I16(b)) = (w, b) {
        let uniform = out.codes_uniform();
        if let (Some(lohi), true) = (ep.act.clamp_bounds(), uniform) {
            let kq = w.quads();
            assert!(b.check(off, kq), "qgemm: activation panel out of bounds");
            // SAFETY: this kernel is chosen only with AVX-512 F, BW, DQ, VL and VNNI present;
            // the panel bounds are asserted above, `a.panel` holds kq * MR * 4 values; the
            // tile is whole and exclusive (function contract).
            unsafe {
                tile_store_i16_vnni(a.panel(p), b, off, kq, *chunk_quads, r0, j0, ep, lohi, out)
            };
            return true;
        }
    }
    let _ = (w, p, b, off, r0, j0, ep, out);
    false
}

/// Computes and stores a strip of `2 * pairs` whole tiles (`MR` rows from `r0`, columns from
/// `j0`, tile `t`'s activation panel at `off0 + t * stride`) two at a time when the kernel is
/// the `u8 x i8` VNNI one and the epilogue runs in registers; returns false (having done
/// nothing) otherwise.
///
/// # Safety
/// As [`compute`]; the tiles are whole (`MR` rows, `NR` columns, unit column stride).
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn strip_store_fast(
    w: &PackedWeights,
    p: usize,
    b: ActPanels<'_>,
    (off0, stride, pairs): (usize, usize, usize),
    r0: usize,
    (j0, end): (usize, usize),
    ep: &Epilogue<'_>,
    out: OutPtr,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let (PackedWeights::U8I8(a, U8I8Kernel::Vnni), ActPanels::U8(b)) = (w, b) {
        let uniform = out.codes_uniform();
        if let (Some(lohi), true, true) = (ep.act.clamp_bounds(), uniform, pairs > 0) {
            let kq = w.quads();
            let last = off0 + (2 * pairs - 1) * stride;
            assert!(b.check(last, kq), "qgemm: activation panel out of bounds");
            // SAFETY: this kernel is chosen only with AVX-512 F, BW, DQ, VL and VNNI present;
            // the last panel's bounds are asserted above (the others lie below it), `a.panel`
            // holds kq * MR * 4 values; the tiles are whole and exclusive (function contract).
            unsafe {
                strip_store_u8i8_vnni(
                    a.panel(p),
                    b,
                    (off0, stride, pairs),
                    kq,
                    r0,
                    (j0, end),
                    ep,
                    lohi,
                    out,
                )
            };
            return true;
        }
    }
    let _ = (w, p, b, off0, stride, pairs, r0, j0, end, ep, out);
    false
}

/// Integer sums of one tile.
#[allow(clippy::large_enum_variant)] // lives on the stack for one tile; never boxed or stored
enum Tile {
    I32([[i32; NR]; MR]),
    I64([[i64; NR]; MR]),
}

/// One `MR x NR` tile: weight panel `p` times the activation panel at `off`.
#[inline]
fn tile(w: &PackedWeights, p: usize, b: ActPanels<'_>, off: usize) -> Tile {
    let kq = w.quads();
    match (w, b) {
        (PackedWeights::U8I8(a, kern), ActPanels::U8(b)) => {
            assert!(b.check(off, kq), "qgemm: activation panel out of bounds");
            let a = a.panel(p);
            match kern {
                #[cfg(target_arch = "x86_64")]
                U8I8Kernel::Avx2Quad | U8I8Kernel::Avx2Pair | U8I8Kernel::Vnni => {
                    // SAFETY: the AVX2 kernels are chosen only with AVX2 present, VNNI only
                    // with AVX-512 F, BW, VL and VNNI; panel bounds asserted above, and
                    // `a.panel` holds kq * MR * 4 values.
                    Tile::I32(unsafe { tile_u8i8_simd(*kern, a, b, off, kq) })
                }
                _ => tile_portable(a, b, off, kq),
            }
        }
        (PackedWeights::I16(a, kern), ActPanels::I16(b)) => {
            assert!(b.check(off, kq), "qgemm: activation panel out of bounds");
            match *kern {
                #[cfg(target_arch = "x86_64")]
                I16Kernel::Vnni { chunk_quads } => {
                    // SAFETY: chosen only with AVX-512 F, BW, VL and VNNI present; panel bounds
                    // asserted above, and `a.panel` holds kq * MR * 4 values.
                    Tile::I64(unsafe { tile_i16_vnni(a.panel(p), b, off, kq, chunk_quads) })
                }
                #[cfg(target_arch = "x86_64")]
                I16Kernel::Avx2 { chunk_quads } => {
                    // SAFETY: chosen only with AVX2 present; panel bounds asserted above, and
                    // `a.panel` holds kq * MR * 4 values.
                    Tile::I64(unsafe { tile_i16_avx2(a.panel(p), b, off, kq, chunk_quads) })
                }
                _ => tile_portable(a.panel(p), b, off, kq),
            }
        }
        _ => panic!("qgemm: activation panels are not in the weights' element type"),
    }
}

/// One activation column for [`gemv`], in the form its weights' kernel reads: the quads (4
/// consecutive k as one word, a zero word past an odd count) for the 4-bit kernels, which
/// broadcast them; otherwise expanded, quad `q` repeated for the 4 rows of a panel,
/// `[quad][row][4]`, plus 16 zeros of slack.
pub struct Column {
    quads: Vec<u32>,
    expanded: Vec<u8>,
}

impl Column {
    /// The column of `x_quads` (`w.quads()` of them) for weights `w`.
    pub fn new(w: &PackedWeights, x_quads: impl Iterator<Item = [u8; 4]>) -> Column {
        let kq = w.quads();
        let mut c = Column {
            quads: Vec::new(),
            expanded: Vec::new(),
        };
        match w {
            PackedWeights::U8I8(a, kern) if a.gemv_nibbles(*kern).is_some() => {
                c.quads.extend(x_quads.take(kq).map(u32::from_le_bytes));
                c.quads.resize(2 * kq.div_ceil(2), 0);
            }
            _ => {
                c.expanded.resize(kq * 16 + 16, 0);
                for (d, q) in c.expanded.chunks_exact_mut(16).zip(x_quads.take(kq)) {
                    for r in d.chunks_exact_mut(4) {
                        r.copy_from_slice(&q);
                    }
                }
            }
        }
        c
    }
}

/// Sums of one `u8 x i8` weight panel against one expanded column, AVX2: 32 products per
/// `vpmaddubsw` with all lanes used (two quads of four rows).
///
/// # Safety
/// AVX2 present; `a` holds at least `kq * 16 + 16` values; `xe` too (both asserted by the caller).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn panel_dot_avx2(a: &[i8], xe: &[u8], kq: usize) -> [i32; MR] {
    use std::arch::x86_64::*;
    let (ap, xp) = (a.as_ptr(), xe.as_ptr());
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); 4];
    let mut qq = 0;
    // SAFETY (all loads): 32 bytes at qq*16 with qq < kq, within kq*16 + 16 (asserted).
    while qq + 8 <= kq {
        for (u, acc_u) in acc.iter_mut().enumerate() {
            let o = (qq + 2 * u) * 16;
            let av = _mm256_loadu_si256(ap.add(o) as *const __m256i);
            let xv = _mm256_loadu_si256(xp.add(o) as *const __m256i);
            *acc_u = _mm256_add_epi32(
                *acc_u,
                _mm256_madd_epi16(_mm256_maddubs_epi16(xv, av), ones),
            );
        }
        qq += 8;
    }
    while qq < kq {
        // A trailing odd quad pairs with 16 zeros of the expanded column's slack.
        let av = _mm256_loadu_si256(ap.add(qq * 16) as *const __m256i);
        let xv = _mm256_loadu_si256(xp.add(qq * 16) as *const __m256i);
        acc[0] = _mm256_add_epi32(
            acc[0],
            _mm256_madd_epi16(_mm256_maddubs_epi16(xv, av), ones),
        );
        qq += 2;
    }
    // SAFETY: AVX2 present (this function's contract).
    unsafe { row_sums(acc) }
}

/// The 4 row sums of a panel's accumulators (each 32-bit lane holds a partial sum of row
/// `lane % 4`).
///
/// # Safety
/// AVX2 present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn row_sums(acc: [std::arch::x86_64::__m256i; 4]) -> [i32; MR] {
    use std::arch::x86_64::*;
    let s = _mm256_add_epi32(
        _mm256_add_epi32(acc[0], acc[1]),
        _mm256_add_epi32(acc[2], acc[3]),
    );
    let r = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
    let mut out = [0i32; MR];
    // SAFETY: 4 i32 into a 4-element array.
    unsafe { _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, r) };
    out
}

/// As [`panel_dot_avx2`] with AVX-512 VNNI: one `vpdpbusd` per 64 weights (4 quads of 4
/// rows), the last partial vector read with a byte mask.
///
/// # Safety
/// AVX-512 F, BW and VNNI present; `a` and `xe` hold at least `kq * 16` values (asserted by
/// the caller).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn panel_dot_vnni(a: &[i8], xe: &[u8], kq: usize) -> [i32; MR] {
    use std::arch::x86_64::*;
    let (ap, xp) = (a.as_ptr(), xe.as_ptr());
    let mut acc = [_mm512_setzero_si512(); 4];
    let mut qq = 0;
    // SAFETY (all loads): 64 bytes at qq*16 with qq + 4 <= kq, within kq*16 (contract).
    while qq + 16 <= kq {
        for (u, acc_u) in acc.iter_mut().enumerate() {
            let o = (qq + 4 * u) * 16;
            let av = _mm512_loadu_si512(ap.add(o) as *const __m512i);
            let xv = _mm512_loadu_si512(xp.add(o) as *const __m512i);
            *acc_u = _mm512_dpbusd_epi32(*acc_u, xv, av);
        }
        qq += 16;
    }
    while qq + 4 <= kq {
        let av = _mm512_loadu_si512(ap.add(qq * 16) as *const __m512i);
        let xv = _mm512_loadu_si512(xp.add(qq * 16) as *const __m512i);
        acc[0] = _mm512_dpbusd_epi32(acc[0], xv, av);
        qq += 4;
    }
    if qq < kq {
        // The last 1 to 3 quads: masked-off bytes are not read (and are zero).
        let mask: __mmask64 = (1u64 << ((kq - qq) * 16)) - 1;
        // SAFETY: the unmasked bytes are the (kq - qq) * 16 bytes at qq*16, within kq*16.
        let av = _mm512_maskz_loadu_epi8(mask, ap.add(qq * 16));
        let xv = _mm512_maskz_loadu_epi8(mask, xp.add(qq * 16) as *const i8);
        acc[0] = _mm512_dpbusd_epi32(acc[0], xv, av);
    }
    let s = _mm512_add_epi32(
        _mm512_add_epi32(acc[0], acc[1]),
        _mm512_add_epi32(acc[2], acc[3]),
    );
    let h = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64::<1>(s));
    // SAFETY: AVX2 present (implied by AVX-512 F).
    unsafe {
        row_sums([
            h,
            _mm256_setzero_si256(),
            _mm256_setzero_si256(),
            _mm256_setzero_si256(),
        ])
    }
}

/// The [`GROUP_ROWS`] row sums of row group `nib` (its `pairs * 64` bytes of the 4-bit
/// layout, see [`Nibbles`]) against the column's quads `xq` (`2 * pairs` words), AVX2: per
/// 32 index bytes two table lookups (`vpshufb`), then `vpmaddubsw` against the broadcast
/// activation quads and `vpmaddwd` into 8 rows' i32 lanes. `QUAD`: the two quads' pair sums
/// are added in i16 first (only when [`U8I8Bounds::quad_fits_i16`]).
///
/// # Safety
/// AVX2 present; `nib.len() == pairs * 64` and `xq.len() == 2 * pairs` (asserted by the
/// caller).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn group_dot_nibbles_avx2<const QUAD: bool>(
    nib: &[u8],
    table: &[i8; 16],
    xq: &[u32],
    pairs: usize,
) -> [i32; GROUP_ROWS] {
    use std::arch::x86_64::*;
    let np = nib.as_ptr();
    let ones = _mm256_set1_epi16(1);
    let low = _mm256_set1_epi8(0x0F);
    // SAFETY: 16 bytes from a 16-element array.
    let tv =
        _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(table.as_ptr() as *const __m128i) });
    // Rows 0..8 and 8..16.
    let mut acc = [_mm256_setzero_si256(); 2];
    for s in 0..pairs {
        let x0 = _mm256_set1_epi32(xq[2 * s] as i32);
        let x1 = _mm256_set1_epi32(xq[2 * s + 1] as i32);
        for (h, acc_h) in acc.iter_mut().enumerate() {
            // SAFETY: 32 bytes at s*64 + 32h, within pairs * 64 (contract).
            let nv = unsafe { _mm256_loadu_si256(np.add(s * 64 + 32 * h) as *const __m256i) };
            let lo = _mm256_shuffle_epi8(tv, _mm256_and_si256(nv, low));
            let hi = _mm256_shuffle_epi8(tv, _mm256_and_si256(_mm256_srli_epi16::<4>(nv), low));
            let (p0, p1) = (_mm256_maddubs_epi16(x0, lo), _mm256_maddubs_epi16(x1, hi));
            let s32 = if QUAD {
                _mm256_madd_epi16(_mm256_add_epi16(p0, p1), ones)
            } else {
                _mm256_add_epi32(_mm256_madd_epi16(p0, ones), _mm256_madd_epi16(p1, ones))
            };
            *acc_h = _mm256_add_epi32(*acc_h, s32);
        }
    }
    let mut out = [0i32; GROUP_ROWS];
    // SAFETY: 16 i32 into a 16-element array, as two 8-lane vectors.
    unsafe {
        _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, acc[0]);
        _mm256_storeu_si256(out.as_mut_ptr().add(8) as *mut __m256i, acc[1]);
    }
    out
}

/// As [`group_dot_nibbles_avx2`] with AVX-512 VNNI: per 64 index bytes two table lookups and
/// two `vpdpbusd` give all 16 rows' sums over 8 k; two quad pairs per step into separate
/// accumulators.
///
/// # Safety
/// AVX-512 F, BW and VNNI present; otherwise as [`group_dot_nibbles_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn group_dot_nibbles_vnni(
    nib: &[u8],
    table: &[i8; 16],
    xq: &[u32],
    pairs: usize,
) -> [i32; GROUP_ROWS] {
    use std::arch::x86_64::*;
    let np = nib.as_ptr();
    let low = _mm512_set1_epi8(0x0F);
    // SAFETY: 16 bytes from a 16-element array.
    let tv = _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(table.as_ptr() as *const __m128i) });
    // One step: the 64 bytes of pair `s` (16 rows x 8 k) decoded into the low and high
    // nibbles' weights and multiplied into two accumulators.
    let step = |s: usize, a_lo: __m512i, a_hi: __m512i| -> (__m512i, __m512i) {
        // SAFETY: 64 bytes at s*64, within pairs * 64 (contract).
        let nv = unsafe { _mm512_loadu_si512(np.add(s * 64) as *const __m512i) };
        let lo = _mm512_shuffle_epi8(tv, _mm512_and_si512(nv, low));
        let hi = _mm512_shuffle_epi8(tv, _mm512_and_si512(_mm512_srli_epi16::<4>(nv), low));
        (
            _mm512_dpbusd_epi32(a_lo, _mm512_set1_epi32(xq[2 * s] as i32), lo),
            _mm512_dpbusd_epi32(a_hi, _mm512_set1_epi32(xq[2 * s + 1] as i32), hi),
        )
    };
    // Two steps per iteration into four named accumulators: kept in registers (an indexed
    // array of them was kept on the stack, every step a store and a reload), and
    // consecutive `vpdpbusd`s do not wait on each other.
    let (mut a0, mut a1, mut a2, mut a3) = (
        _mm512_setzero_si512(),
        _mm512_setzero_si512(),
        _mm512_setzero_si512(),
        _mm512_setzero_si512(),
    );
    let mut s = 0;
    while s + 2 <= pairs {
        (a0, a1) = step(s, a0, a1);
        (a2, a3) = step(s + 1, a2, a3);
        s += 2;
    }
    if s < pairs {
        (a0, a1) = step(s, a0, a1);
    }
    let sum = _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));
    let mut out = [0i32; GROUP_ROWS];
    // SAFETY: 16 i32 into a 16-element array.
    unsafe { _mm512_storeu_si512(out.as_mut_ptr() as *mut __m512i, sum) };
    out
}

/// Rows `rows` (from a multiple of [`MR`]) of `w` (u8 x i8 path) times one activation
/// column `x` (made by [`Column::new`] for `w`), stored as column `col` through `ep`. Memory
/// bound: each weight is read once and used for one product.
///
/// # Safety
/// No other thread may touch the output elements of `rows` in column `col` during the call.
pub unsafe fn gemv(
    w: &PackedWeights,
    x: &Column,
    rows: std::ops::Range<usize>,
    col: usize,
    ep: &Epilogue<'_>,
    out: OutPtr,
) {
    let PackedWeights::U8I8(a, kern) = w else {
        panic!("qgemm: gemv needs the u8 x i8 path");
    };
    let kq = a.kq;
    let end = rows.end.min(a.m);
    // Stores `sums[i]` as row `r0 + i`, for the rows `lo..hi` (from a multiple of MR).
    let store = |sums: &[i32], r0: usize, lo: usize, hi: usize| {
        // SAFETY: forwarded contract.
        unsafe { store_column(&sums[lo - r0..hi - r0], lo, col, ep, out) };
    };
    // The column's form says which weights to read (see `Column::new`).
    if let (Some(nb), false) = (&a.nibbles, x.quads.is_empty()) {
        assert_eq!(
            x.quads.len(),
            2 * nb.pairs,
            "qgemm: column not made for these weights"
        );
        let glen = nb.pairs * 64;
        for g in (rows.start / GROUP_ROWS)..end.div_ceil(GROUP_ROWS) {
            let nib = &nb.data[g * glen..(g + 1) * glen];
            let sums = match kern {
                // SAFETY (all three): VNNI is chosen only with AVX-512 F, BW, VL and VNNI,
                // the AVX2 kernels only with AVX2 (pair sums exact, as for the tiles); `nib`
                // is pairs * 64 bytes and the quads 2 * pairs words (asserted above).
                #[cfg(target_arch = "x86_64")]
                U8I8Kernel::Vnni => unsafe {
                    group_dot_nibbles_vnni(nib, &nb.table, &x.quads, nb.pairs)
                },
                #[cfg(target_arch = "x86_64")]
                U8I8Kernel::Avx2Quad => unsafe {
                    group_dot_nibbles_avx2::<true>(nib, &nb.table, &x.quads, nb.pairs)
                },
                #[cfg(target_arch = "x86_64")]
                U8I8Kernel::Avx2Pair => unsafe {
                    group_dot_nibbles_avx2::<false>(nib, &nb.table, &x.quads, nb.pairs)
                },
                _ => unreachable!("no 4-bit kernel for {kern:?}"),
            };
            let r0 = g * GROUP_ROWS;
            store(&sums, r0, rows.start.max(r0), end.min(r0 + GROUP_ROWS));
        }
        return;
    }
    let xe = &x.expanded;
    assert!(xe.len() >= kq * 16 + 16, "qgemm: short expanded column");
    for p in (rows.start / MR)..end.div_ceil(MR) {
        let panel = a.panel_from(p);
        assert!(panel.len() >= kq * 16 + 16);
        let sums: [i32; MR] = match kern {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: chosen only with AVX2 present (pair sums exact, as for the tile
            // kernel); both operands hold kq * 16 + 16 values (asserted above).
            U8I8Kernel::Avx2Pair | U8I8Kernel::Avx2Quad => unsafe { panel_dot_avx2(panel, xe, kq) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: chosen only with AVX-512 F, BW and VNNI present; both operands hold
            // kq * 16 + 16 values (asserted above).
            U8I8Kernel::Vnni => unsafe { panel_dot_vnni(panel, xe, kq) },
            _ => {
                let mut s = [0i32; MR];
                for q in 0..kq {
                    for (r, s) in s.iter_mut().enumerate() {
                        for t in 0..4 {
                            let i = q * 16 + r * 4 + t;
                            *s += panel[i] as i32 * xe[i] as i32;
                        }
                    }
                }
                s
            }
        };
        let r0 = p * MR;
        store(&sums, r0, r0, end.min(r0 + MR));
    }
}

/// What follows the integer sum, per output row `r`: `act((sum - zero_corr[r]) * mult[r] +
/// bias[r])`.
pub struct Epilogue<'a> {
    pub mult: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub act: Activation,
    /// The shift of signed activations stored as u8 (`zero * sum_k w[r][k]`).
    pub zero_corr: Option<&'a [i64]>,
    /// A following per-channel `x * scale[r] + shift[r]` (an unfolded BatchNormalization),
    /// applied after the bias and before `act`, in that order of f32 operations.
    pub affine: Option<(&'a [f32], &'a [f32])>,
    /// A tensor laid out as the output (the `OutPtr`'s strides from the same base), added
    /// after the affine step and before `act`: a fused residual `Add`.
    pub residual: Option<&'a [f32]>,
}

/// Output of a product, to one or both of: f32 values, element `(r, j)` at
/// `vals[r * rs + j * cs]`; the next layer's input codes, element `(r, j)` encoded at byte
/// `((r / 4) * pixels + j) * 4 + r % 4` of `codes` (a residual is read at `r * rs + j * cs`
/// either way). Shared by the threads of one product, each writing its own disjoint set of
/// `(r, j)`.
#[derive(Clone, Copy)]
pub struct OutPtr {
    /// f32 outputs and their length.
    vals: Option<(*mut f32, usize)>,
    /// Codes: how they are stored, their bytes and length.
    codes: Option<(QuadStore, *mut u8, usize)>,
    rs: usize,
    cs: usize,
}

/// How a product's outputs are stored as the next layer's u8 input codes: that layer's
/// encoder and zero shift (signed codes are stored as `n + 128`), and the pixels per channel.
#[derive(Clone, Copy, Debug)]
pub struct QuadStore {
    pub enc: crate::qconv::ActEncoder,
    pub zero: u8,
    pub pixels: usize,
}

impl QuadStore {
    /// The byte of output `(r, j)`.
    #[inline(always)]
    fn at(&self, r: usize, j: usize) -> usize {
        ((r / 4) * self.pixels + j) * 4 + r % 4
    }

    #[inline(always)]
    fn code(&self, v: f32) -> u8 {
        (self.enc.encode(v) + self.zero as i32) as u8
    }
}

// SAFETY: `OutPtr` is only written through `store_tile`, whose callers give each (row,
// column) of a product to exactly one thread; the slice it came from outlives the product.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// `out` must hold every `(r, j)` the product writes (checked per tile).
    pub fn new(out: &mut [f32], rs: usize, cs: usize) -> OutPtr {
        OutPtr {
            vals: Some((out.as_mut_ptr(), out.len())),
            codes: None,
            rs,
            cs,
        }
    }

    /// Outputs encoded into channel quads `out: [quad][pixel][4]` (see [`QuadStore`]); `rs`
    /// and `cs` place the residual. Rows past the last output channel in its quad get the
    /// zero code. `out` must hold every quad the product writes (checked per tile).
    pub fn quads(out: &mut [u8], store: QuadStore, rs: usize, cs: usize) -> OutPtr {
        OutPtr {
            vals: None,
            codes: Some((store, out.as_mut_ptr(), out.len())),
            rs,
            cs,
        }
    }

    /// Whether any codes are on a uniform grid, as the register encoders need.
    fn codes_uniform(&self) -> bool {
        self.codes.is_none_or(|(q, ..)| q.enc.is_uniform())
    }

    /// These f32 outputs and, as well, their codes in `codes` (as [`OutPtr::quads`] stores
    /// them): a layer whose output has f32 readers and one that takes its codes.
    pub fn with_codes(self, codes: &mut [u8], store: QuadStore) -> OutPtr {
        OutPtr {
            codes: Some((store, codes.as_mut_ptr(), codes.len())),
            ..self
        }
    }
}

/// Stores rows `r0..r0+rows` and columns `j0..j0+cols` of a tile through the epilogue.
///
/// # Safety
/// No other thread may read or write these output elements during the call.
unsafe fn store_tile(
    t: &Tile,
    r0: usize,
    rows: usize,
    j0: usize,
    cols: usize,
    ep: &Epilogue<'_>,
    out: OutPtr,
) {
    let last = (r0 + rows - 1) * out.rs + (j0 + cols - 1) * out.cs;
    if let Some((_, len)) = out.vals {
        assert!(last < len, "qgemm: output tile out of bounds");
    }
    if let Some((q, _, len)) = out.codes {
        // Whole quads: the rows past the output channels get the zero code.
        assert!(
            q.at(r0 + rows - 1, j0 + cols - 1) | 3 < len,
            "qgemm: output tile out of bounds"
        );
    }
    let mut full = [0f32; NR];
    // Only the tile's columns (the matrix-vector kernel stores one).
    let v = &mut full[..cols];
    for rr in 0..rows {
        let r = r0 + rr;
        let (m, b) = (ep.mult[r], ep.bias.map_or(0.0, |b| b[r]));
        let corr = ep.zero_corr.map_or(0, |z| z[r]);
        match t {
            Tile::I32(t) => {
                let c32 = corr as i32; // |corr| <= 255 * 64 * K, within i32 (checked at build)
                for (v, &a) in v.iter_mut().zip(&t[rr]) {
                    *v = (a - c32) as f32 * m + b;
                }
            }
            Tile::I64(t) => {
                for (v, &a) in v.iter_mut().zip(&t[rr]) {
                    *v = (a - corr) as f32 * m + b;
                }
            }
        }
        if let Some((sc, sh)) = ep.affine {
            let (sc, sh) = (sc[r], sh[r]);
            v.iter_mut().for_each(|x| *x = *x * sc + sh);
        }
        let base = r * out.rs + j0 * out.cs;
        if let Some(res) = ep.residual {
            if out.cs == 1 {
                let res = &res[base..base + cols];
                v.iter_mut().zip(res).for_each(|(x, &a)| *x += a);
            } else {
                for (c, x) in v.iter_mut().enumerate() {
                    *x += res[base + c * out.cs];
                }
            }
        }
        // The common activations inline on the whole (fixed-size) row.
        match ep.act {
            Activation::None => {}
            Activation::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
            Activation::Clip { min, max } => v.iter_mut().for_each(|x| *x = x.max(min).min(max)),
            act => act.apply_slice(v),
        }
        if let Some((q, p, _)) = out.codes {
            for (c, &x) in v.iter().enumerate() {
                // SAFETY: q.at(r, j0 + c) <= the last byte of the tile's quads < len
                // (asserted); exclusive per the contract.
                unsafe { *p.add(q.at(r, j0 + c)) = q.code(x) };
            }
        }
        match out.vals {
            // SAFETY: base + cols - 1 <= last < len (asserted); exclusive per the contract.
            Some((p, _)) if out.cs == 1 => unsafe {
                std::ptr::copy_nonoverlapping(v.as_ptr(), p.add(base), cols)
            },
            Some((p, _)) => {
                for (c, &x) in v.iter().enumerate() {
                    // SAFETY: base + c * cs <= last < len; exclusive per the contract.
                    unsafe { *p.add(base + c * out.cs) = x };
                }
            }
            None => {}
        }
    }
    if let Some((q, p, _)) = out.codes {
        // The channels of the last quad past the output's (tiles start at whole quads).
        for r in r0 + rows..(r0 + rows).next_multiple_of(4) {
            for j in j0..j0 + cols {
                // SAFETY: within the tile's whole quads (asserted); exclusive per the contract.
                unsafe { *p.add(q.at(r, j)) = q.zero };
            }
        }
    }
}

/// Stores the sums of rows `r0..r0 + sums.len()` (at most [`GROUP_ROWS`], from a multiple of
/// 4) in column `col` through the epilogue: the operations of [`store_tile`] in its order,
/// without building a tile for one column.
///
/// # Safety
/// No other thread may read or write these output elements during the call.
unsafe fn store_column(sums: &[i32], r0: usize, col: usize, ep: &Epilogue<'_>, out: OutPtr) {
    let rows = sums.len();
    assert!(
        (1..=GROUP_ROWS).contains(&rows),
        "qgemm: column of {rows} rows"
    );
    if let Some((_, len)) = out.vals {
        assert!(
            (r0 + rows - 1) * out.rs + col * out.cs < len,
            "qgemm: output column out of bounds"
        );
    }
    if let Some((q, _, len)) = out.codes {
        // Whole quads: the rows past the output channels get the zero code.
        assert!(
            q.at(r0 + rows - 1, col) | 3 < len,
            "qgemm: output column out of bounds"
        );
    }
    let mut full = [0f32; GROUP_ROWS];
    let v = &mut full[..rows];
    for (i, (v, &s)) in v.iter_mut().zip(sums).enumerate() {
        let r = r0 + i;
        // |corr| <= 255 * 64 * K, within i32 (checked at build).
        let corr = ep.zero_corr.map_or(0, |z| z[r]) as i32;
        *v = (s - corr) as f32 * ep.mult[r] + ep.bias.map_or(0.0, |b| b[r]);
        if let Some((sc, sh)) = ep.affine {
            *v = *v * sc[r] + sh[r];
        }
        if let Some(res) = ep.residual {
            *v += res[r * out.rs + col * out.cs];
        }
    }
    ep.act.apply_slice(v);
    for (i, &x) in v.iter().enumerate() {
        let r = r0 + i;
        if let Some((q, p, _)) = out.codes {
            // SAFETY: q.at(r, col) <= the column's last quad byte < len (asserted);
            // exclusive per the contract.
            unsafe { *p.add(q.at(r, col)) = q.code(x) };
        }
        if let Some((p, _)) = out.vals {
            // SAFETY: r * rs + col * cs <= the last element < len (asserted); exclusive.
            unsafe { *p.add(r * out.rs + col * out.cs) = x };
        }
    }
    if let Some((q, p, _)) = out.codes {
        // The channels of the last quad past the output's.
        for r in r0 + rows..(r0 + rows).next_multiple_of(4) {
            // SAFETY: within the column's whole quads (asserted); exclusive per the contract.
            unsafe { *p.add(q.at(r, col)) = q.zero };
        }
    }
}

/// How many tiles ahead the residual of a fused Add is prefetched. Its rows lie an output
/// plane apart, a pattern the hardware prefetchers miss; a tile of a shallow layer takes
/// less time than one trip to memory.
const RESIDUAL_PREFETCH_TILES: usize = 4;

/// Asks for the cache lines of the residual under the tile at rows `r0..r0+rows`, columns
/// `j0..j0+NR` (clipped to `end`), if the epilogue has a residual.
#[inline]
fn prefetch_residual(
    ep: &Epilogue<'_>,
    out: OutPtr,
    r0: usize,
    rows: usize,
    j0: usize,
    end: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(res) = ep.residual {
        if j0 >= end {
            return;
        }
        let last = (end - j0).min(NR) - 1;
        for r in r0..r0 + rows {
            for j in [j0, j0 + last] {
                if let Some(x) = res.get(r * out.rs + j * out.cs) {
                    // SAFETY: a prefetch of an address inside a live slice; it never faults
                    // and changes no memory.
                    unsafe {
                        std::arch::x86_64::_mm_prefetch(
                            (x as *const f32).cast::<i8>(),
                            std::arch::x86_64::_MM_HINT_T0,
                        )
                    };
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ep, out, r0, rows, j0, end);
}

/// Widest last panel done column by column by the matrix-vector kernel: per column it does
/// a sixteenth of a tile's multiplies, but with less parallelism and the weights read again.
/// Measured on ResNet-50: the 1-column tail of 7x7 outputs gains (the 3x3 layer of res5 at
/// batch 8: -19%), the 4-column tail of 14x14 outputs lost.
const NARROW_TAIL_COLS: usize = 2;

/// Whether [`compute`] does a last panel of `tail` columns (fewer than [`NR`]) column by
/// column: cheaper than a tile, which callers balancing work across threads must know.
pub fn narrow_tail(w: &PackedWeights, tail: usize) -> bool {
    matches!(
        w,
        PackedWeights::U8I8(
            _,
            U8I8Kernel::Avx2Pair | U8I8Kernel::Avx2Quad | U8I8Kernel::Vnni
        )
    ) && (1..=NARROW_TAIL_COLS).contains(&tail)
}

/// Computes rows `rows` and columns `cols` of `w` times the activation panels and stores them
/// through `ep`. The panel of columns `cols.start + i * NR..` starts at `i * panel_stride`
/// in `b`.
///
/// # Safety
/// No other thread may touch the output elements of `rows x cols` during the call.
pub unsafe fn compute(
    w: &PackedWeights,
    b: ActPanels<'_>,
    panel_stride: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    ep: &Epilogue<'_>,
    out: OutPtr,
) {
    let m = w.rows();
    let panel_off = |j0: usize| (j0 - cols.start) / NR * panel_stride;
    debug_assert!(rows.start.is_multiple_of(MR) && cols.start.is_multiple_of(NR));
    // A narrow last panel (7x7 outputs leave 1 column of 16) goes column by column through
    // the matrix-vector kernel, which multiplies only that column, where a tile would
    // multiply 16; its columns are expanded once for every row.
    let whole_end = cols.start + (cols.end - cols.start) / NR * NR;
    let narrow: Option<Vec<Column>> = match b {
        ActPanels::U8(bp) if narrow_tail(w, cols.end - whole_end) => {
            let (off, kq) = (panel_off(whole_end), w.quads());
            assert!(bp.check(off, kq), "qgemm: activation panel out of bounds");
            let expand = |c: usize| {
                let quad = |q: usize| -> [u8; 4] {
                    let i = off + q * bp.quad_stride + c * 4;
                    [bp.data[i], bp.data[i + 1], bp.data[i + 2], bp.data[i + 3]]
                };
                Column::new(w, (0..kq).map(quad))
            };
            Some((0..cols.end - whole_end).map(expand).collect())
        }
        _ => None,
    };
    let tiles_end = if narrow.is_some() {
        whole_end
    } else {
        cols.end
    };
    for p in (rows.start / MR)..rows.end.div_ceil(MR) {
        let r0 = p * MR;
        let nrows = (rows.end.min(m) - r0).min(MR);
        let mut j0 = cols.start;
        for d in 0..RESIDUAL_PREFETCH_TILES {
            prefetch_residual(ep, out, r0, nrows, j0 + d * NR, cols.end);
        }
        if nrows == MR && out.cs == 1 {
            let pairs = (tiles_end - j0) / (2 * NR);
            let strip = (panel_off(j0), panel_stride, pairs);
            // SAFETY: forwarded contract (whole tiles of this call).
            if unsafe { strip_store_fast(w, p, b, strip, r0, (j0, cols.end), ep, out) } {
                j0 += pairs * 2 * NR;
            }
        }
        while j0 < tiles_end {
            prefetch_residual(
                ep,
                out,
                r0,
                nrows,
                j0 + RESIDUAL_PREFETCH_TILES * NR,
                cols.end,
            );
            let whole = nrows == MR && cols.end - j0 >= NR && out.cs == 1;
            // SAFETY: forwarded contract.
            if whole && unsafe { tile_store_fast(w, p, b, panel_off(j0), r0, j0, ep, out) } {
                j0 += NR;
                continue;
            }
            let t = tile(w, p, b, panel_off(j0));
            // SAFETY: forwarded contract.
            unsafe { store_tile(&t, r0, nrows, j0, (cols.end - j0).min(NR), ep, out) };
            j0 += NR;
        }
        for (c, xe) in narrow.iter().flatten().enumerate() {
            // SAFETY: forwarded contract (these are this call's rows and columns).
            unsafe { gemv(w, xe, r0..r0 + nrows, whole_end + c, ep, out) };
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

    /// Panels `[quad][col][4]` of a `[4 kq, n]` matrix (columns padded to whole panels).
    fn panels<T: Int>(x: &[T], kq: usize, n: usize) -> (Vec<T>, usize) {
        let np = n.div_ceil(NR);
        let stride = np * NR * 4;
        let mut d = vec![T::default(); kq * stride];
        for q in 0..kq {
            for j in 0..n {
                for t in 0..4 {
                    d[q * stride + j * 4 + t] = x[(4 * q + t) * n + j];
                }
            }
        }
        (d, stride)
    }

    /// Every kernel gives the exact integer sums on odd shapes (partial tiles), and the
    /// epilogue (in registers for whole tiles, else per element) scales, shifts, biases,
    /// applies the affine step, adds the residual and activates per row, bit for bit the
    /// scalar order of operations, at any output strides.
    #[test]
    fn kernels_are_exact() {
        let mut seed = 7;
        for &(m, kq, n, amax, wmax) in &[
            (5usize, 2usize, 19usize, 255u32, 28u32),
            (4, 16, 16, 255, 64),
            (9, 250, 33, 255, 32),
            // Six whole tiles (a strip of three pairs) and a tail of 4 columns.
            (8, 7, 100, 255, 28),
            (3, 1152, 17, 200, 28),
            (1, 1, 1, 255, 64),
        ] {
            let k = 4 * kq;
            let w: Vec<i8> = (0..m * k)
                .map(|_| ((lcg(&mut seed) % (2 * wmax as u64 + 1)) as i64 - wmax as i64) as i8)
                .collect();
            let x: Vec<u8> = (0..k * n)
                .map(|_| (lcg(&mut seed) % (amax as u64 + 1)) as u8)
                .collect();
            let want: Vec<i64> = (0..m * n)
                .map(|i| {
                    let (r, j) = (i / n, i % n);
                    (0..k)
                        .map(|kk| w[r * k + kk] as i64 * x[kk * n + j] as i64)
                        .sum()
                })
                .collect();
            let bounds = U8I8Bounds {
                act_max: amax,
                weight_max: wmax,
            };
            let kernels = U8I8Kernel::available(bounds);
            let (b, stride) = panels(&x, kq, n);
            // Odd rows scale by a real factor (`--scale real`): a fused multiply-add would
            // round differently there.
            let mult: Vec<f32> = (0..m)
                .map(|r| 2f32.powi(-(r as i32)) * if r % 2 == 1 { 1.3 } else { 1.0 })
                .collect();
            let bias: Vec<f32> = (0..m).map(|r| (r as f32 - 2.0) * 0.3).collect();
            let corr: Vec<i64> = (0..m).map(|r| 3 * r as i64).collect();
            for kern in kernels {
                let pw = PackedWeights::U8I8(PackedA::new(m, kq, &w), kern);
                let clip = Activation::Clip {
                    min: -0.5,
                    max: 40.0,
                };
                let sc: Vec<f32> = (0..m).map(|r| 1.5 - 0.25 * r as f32).collect();
                let sh: Vec<f32> = (0..m).map(|r| 0.125 * r as f32).collect();
                let res: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32 * 0.75 - 2.0).collect();
                // (activation, transposed output, with an affine step, with a residual): whole
                // tiles with unit column stride take the in-register epilogue, the rest
                // `store_tile`.
                for (act, transposed, affine, residual) in [
                    (Activation::None, false, false, false),
                    (Activation::Relu, false, false, false),
                    (clip, false, false, true),
                    (Activation::Relu, false, true, true),
                    (clip, false, true, true),
                    (Activation::Sigmoid, false, true, true),
                    (Activation::Relu, true, true, true),
                ] {
                    let ep = Epilogue {
                        mult: &mult,
                        bias: Some(&bias),
                        act,
                        zero_corr: Some(&corr),
                        affine: affine.then_some((&sc[..], &sh[..])),
                        residual: residual.then_some(&res[..]),
                    };
                    let mut got = vec![f32::NAN; m * n];
                    let (rs, cs) = if transposed { (1, m) } else { (n, 1) };
                    let out = OutPtr::new(&mut got, rs, cs);
                    let b = ActPanels::U8(Panels {
                        data: &b,
                        quad_stride: stride,
                    });
                    // SAFETY: one thread writes the whole output.
                    unsafe { compute(&pw, b, NR * 4, 0..m, 0..n, &ep, out) };
                    for r in 0..m {
                        for j in 0..n {
                            let mut v = (want[r * n + j] - corr[r]) as f32 * mult[r] + bias[r];
                            if affine {
                                v = v * sc[r] + sh[r];
                            }
                            if residual {
                                v += res[r * rs + j * cs];
                            }
                            assert_eq!(
                                got[r * rs + j * cs].to_bits(),
                                act.apply(v).to_bits(),
                                "{kern:?} m{m} k{k} n{n} {act:?} affine {affine} residual \
                                 {residual} at ({r},{j})"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The i16 path is exact where i32 would overflow, with every kernel this CPU has.
    #[test]
    fn i16_path_sums_in_i64() {
        // Deep enough that even one i32 lane of the vector kernels (half a column's products)
        // would overflow without their chunked sums; columns differ, so a lane given to the
        // wrong column shows.
        let (m, kq, n) = (6, 2304, 21);
        let k = 4 * kq;
        let w: Vec<i16> = (0..m * k)
            .map(|i| match i % 2 {
                0 => 448 - (i % 5) as i16,
                _ => -3 + (i % 3) as i16,
            })
            .collect();
        let x: Vec<i16> = (0..k * n)
            .map(|i| 4032 - ((i % 7) * (i % n + 1)) as i16)
            .collect();
        let want: Vec<i64> = (0..m * n)
            .map(|i| {
                let (r, j) = (i / n, i % n);
                (0..k)
                    .map(|kk| w[r * k + kk] as i64 * x[kk * n + j] as i64)
                    .sum()
            })
            .collect();
        assert!(want.iter().all(|&s| s / 2 > i32::MAX as i64));
        let (b, stride) = panels(&x, kq, n);
        let ones = vec![1f32; m];
        let ep = Epilogue {
            mult: &ones,
            bias: None,
            act: Activation::None,
            zero_corr: None,
            affine: None,
            residual: None,
        };
        let chunk_quads = match I16Kernel::choose(4032, 448) {
            I16Kernel::Avx2 { chunk_quads } | I16Kernel::Vnni { chunk_quads } => chunk_quads,
            I16Kernel::Portable => 1,
        };
        assert!(chunk_quads < kq, "the sums span several runs");
        let mut kernels = vec![I16Kernel::Portable];
        if avx2_available() {
            kernels.push(I16Kernel::Avx2 { chunk_quads });
        }
        if vnni_available() {
            kernels.push(I16Kernel::Vnni { chunk_quads });
        }
        for kern in kernels {
            let mut got = vec![f32::NAN; m * n];
            let out = OutPtr::new(&mut got, n, 1);
            let pw = PackedWeights::I16(PackedA::new(m, kq, &w), kern);
            let b = ActPanels::I16(Panels {
                data: &b,
                quad_stride: stride,
            });
            // SAFETY: one thread writes the whole output.
            unsafe { compute(&pw, b, NR * 4, 0..m, 0..n, &ep, out) };
            for (i, (&g, &s)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, s as f32, "{kern:?} output {i}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn short_activation_panels_are_refused() {
        let pw = PackedWeights::U8I8(PackedA::new(4, 2, &[1i8; 32]), U8I8Kernel::Portable);
        let data = vec![0u8; 100];
        let b = ActPanels::U8(Panels {
            data: &data,
            quad_stride: 64,
        });
        let ones = [1f32; 4];
        let ep = Epilogue {
            mult: &ones,
            bias: None,
            act: Activation::None,
            zero_corr: None,
            affine: None,
            residual: None,
        };
        let mut got = vec![0f32; 64];
        let out = OutPtr::new(&mut got, 16, 1);
        // SAFETY: one thread writes the whole output.
        unsafe { compute(&pw, b, NR * 4, 0..4, 0..16, &ep, out) };
    }
}
