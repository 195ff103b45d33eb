//! The lookup path: layers whose weights are kept as one code byte each and decoded through a
//! small table, for formats whose integers fit no integer container (wide exponents such as
//! E4M3 / E5M2) and for plans without activation formats (weights only). The multiply-add is
//! f32.
//!
//! A weight is `table[code] * row_scale[row]`: the table holds the format's values at offset
//! 0 (or INT's integers) and the row scale the channel's power-of-two offset (or real scale).
//! The convolution decodes the codes of one `MR x KC` strip at a time into the FP32 GEMM's
//! packed-A buffer (cache-resident; the f32 weight tensor never exists), so its sums are the
//! FP32 engine's on the decoded weights, bit for bit, with the same blocking. Without AVX2 the
//! portable GEMM needs f32 rows: one group's weights are decoded for the call.

use crate::conv::Conv2d;
use crate::sgemm::{avx2_available, Lhs};
use crate::Activation;

/// A `rows x cols` weight matrix as code bytes (row-major), a decoding table and a factor per
/// row.
#[derive(Clone, Debug)]
pub struct CodedWeights {
    rows: usize,
    cols: usize,
    codes: Vec<u8>,
    /// Every byte decodes (codes a format does not use decode to 0).
    table: Box<[f32; 256]>,
    row_scale: Vec<f32>,
    /// Codes are below `32 * pieces` (the register decoder's table pieces).
    pieces: usize,
}

impl CodedWeights {
    /// `table` has one value per code (at most 256; missing entries decode to 0), `row_scale`
    /// one factor per row. Fails on lengths that do not match or non-finite entries.
    pub fn new(
        rows: usize,
        cols: usize,
        codes: Vec<u8>,
        table: &[f32],
        row_scale: Vec<f32>,
    ) -> Result<Self, String> {
        if codes.len() != rows * cols {
            return Err(format!("{} codes for {rows} x {cols} weights", codes.len()));
        }
        if table.len() > 256 || table.iter().any(|v| !v.is_finite()) {
            return Err(format!(
                "a decoding table needs at most 256 finite values (got {})",
                table.len()
            ));
        }
        if row_scale.len() != rows || row_scale.iter().any(|v| !v.is_finite()) {
            return Err(format!(
                "{} finite row factors needed (got {})",
                rows,
                row_scale.len()
            ));
        }
        let mut full = Box::new([0.0f32; 256]);
        full[..table.len()].copy_from_slice(table);
        let top = codes.iter().copied().max().unwrap_or(0) as usize;
        Ok(Self {
            rows,
            cols,
            codes,
            table: full,
            row_scale,
            pieces: top / 32 + 1,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held: codes, table and row factors.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * (self.table.len() + self.row_scale.len())
    }

    /// The weight at `(r, c)`.
    pub fn value(&self, r: usize, c: usize) -> f32 {
        self.table[self.codes[r * self.cols + c] as usize] * self.row_scale[r]
    }

    /// All rows as a GEMM left-hand operand.
    pub(crate) fn view(&self) -> CodedRows<'_> {
        CodedRows {
            codes: &self.codes,
            k: self.cols,
            table: &self.table,
            row_scale: &self.row_scale,
            pieces: self.pieces,
        }
    }
}

/// Row-major coded rows (`row_scale.len()` rows of `k` codes): the left-hand operand of the
/// FP32 GEMM on the lookup path.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CodedRows<'a> {
    pub codes: &'a [u8],
    pub k: usize,
    pub table: &'a [f32; 256],
    pub row_scale: &'a [f32],
    /// Every code is below `32 * pieces`.
    pub pieces: usize,
}

impl CodedRows<'_> {
    pub fn rows(&self) -> usize {
        self.row_scale.len()
    }

    /// Rows `r0..r0 + n`.
    pub fn row_range(&self, r0: usize, n: usize) -> Self {
        Self {
            codes: &self.codes[r0 * self.k..(r0 + n) * self.k],
            k: self.k,
            table: self.table,
            row_scale: &self.row_scale[r0..r0 + n],
            pieces: self.pieces,
        }
    }

    /// Decodes row `r`, columns `c0..c0 + dst.len()`: `table[code] * row_scale[r]`.
    #[inline]
    pub fn decode_row(&self, r: usize, c0: usize, dst: &mut [f32]) {
        let codes = &self.codes[r * self.k + c0..][..dst.len()];
        decode(self.table, self.pieces, codes, self.row_scale[r], dst);
    }

    /// Decodes every row into `dst` (`rows * k`, row-major).
    pub fn decode_into(&self, dst: &mut [f32]) {
        for (r, row) in dst
            .chunks_exact_mut(self.k.max(1))
            .take(self.rows())
            .enumerate()
        {
            self.decode_row(r, 0, row);
        }
    }
}

#[cfg(test)]
pub(crate) static FORCE_SCALAR_DECODE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Whether the AVX-512 register decoder can run here.
fn avx512_decode_available() -> bool {
    #[cfg(test)]
    if FORCE_SCALAR_DECODE.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `dst[i] = table[codes[i]] * scale`, for codes below `32 * pieces`: in registers with
/// AVX-512 where the CPU has it, else through the table in memory. The same f32 values
/// either way (one lookup, one multiply).
pub(crate) fn decode(table: &[f32; 256], pieces: usize, codes: &[u8], scale: f32, dst: &mut [f32]) {
    assert_eq!(codes.len(), dst.len(), "decode: lengths");
    assert!((1..=8).contains(&pieces), "decode: table pieces");
    #[cfg(target_arch = "x86_64")]
    if avx512_decode_available() {
        // SAFETY: AVX-512 F, BW and VL present (checked above); lengths and pieces asserted.
        unsafe { decode_avx512(table, pieces, codes, scale, dst) };
        return;
    }
    for (d, &c) in dst.iter_mut().zip(codes) {
        *d = table[c as usize] * scale;
    }
}

/// The table lives in registers as 32-entry pieces, two 16-float vectors each: one
/// `vpermt2ps` looks 16 codes up in a piece (it reads the code's low 5 bits), and for tables
/// past 32 entries each further piece's result replaces the lanes whose code is at least its
/// start. 16 codes a step, the last step masked.
///
/// # Safety
/// AVX-512 F, BW and VL present; `codes.len() == dst.len()`; `1 <= pieces <= 8`; every code is
/// below `32 * pieces` (codes past it would take the last piece's entry for their low bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn decode_avx512(
    table: &[f32; 256],
    pieces: usize,
    codes: &[u8],
    scale: f32,
    dst: &mut [f32],
) {
    use std::arch::x86_64::*;
    let tp = table.as_ptr();
    // SAFETY: piece p < 8 is the 32 floats at 32p, inside the 256-entry table.
    let piece = |p: usize| unsafe {
        (
            _mm512_loadu_ps(tp.add(32 * p)),
            _mm512_loadu_ps(tp.add(32 * p + 16)),
        )
    };
    let t: [(__m512, __m512); 8] = std::array::from_fn(|p| match p < pieces {
        true => piece(p),
        false => (_mm512_setzero_ps(), _mm512_setzero_ps()),
    });
    let sv = _mm512_set1_ps(scale);
    let n = dst.len();
    let mut i = 0;
    while i < n {
        let len = (n - i).min(16);
        let mask: __mmask16 = if len == 16 {
            u16::MAX
        } else {
            (1u16 << len) - 1
        };
        // SAFETY: the enabled lanes are codes i..i+len and dst i..i+len, inside both slices
        // (equal lengths, asserted by the caller); masked-off lanes are not accessed.
        let c = unsafe { _mm_maskz_loadu_epi8(mask, codes.as_ptr().add(i) as *const i8) };
        let idx = _mm512_cvtepu8_epi32(c);
        let mut v = _mm512_permutex2var_ps(t[0].0, idx, t[0].1);
        // (A plain slice: `skip`/`take` adapters here stayed calls, outside the features.)
        for (p, &(lo, hi)) in (1..).zip(&t[1..pieces]) {
            let from = _mm512_cmpge_epu32_mask(idx, _mm512_set1_epi32(32 * p));
            v = _mm512_mask_mov_ps(v, from, _mm512_permutex2var_ps(lo, idx, hi));
        }
        // SAFETY: as the load above.
        unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr().add(i), mask, _mm512_mul_ps(v, sv)) };
        i += 16;
    }
}

/// Runs `f` on `w` decoded into a fresh buffer (the paths that need f32 rows: the portable
/// GEMM and the depthwise kernel; a buffer per call, as these may run inside one another's
/// rayon jobs).
pub(crate) fn with_decoded<R>(w: CodedRows, f: impl FnOnce(&[f32]) -> R) -> R {
    let mut buf = vec![0.0f32; w.rows() * w.k];
    w.decode_into(&mut buf);
    f(&buf)
}

/// A convolution with coded weights `[c_out, c_in/group * kh * kw]`.
#[derive(Clone, Debug)]
pub struct LookupConv {
    conv: Conv2d,
    weights: CodedWeights,
    bias: Option<Vec<f32>>,
    act: Activation,
}

impl LookupConv {
    pub fn new(
        conv: Conv2d,
        weights: CodedWeights,
        bias: Option<Vec<f32>>,
        act: Activation,
    ) -> Result<Self, String> {
        let k = conv.depth();
        if conv.group == 0 || weights.rows != conv.c_out || weights.cols != k {
            return Err(format!(
                "coded weights of {} x {} for a convolution of {} outputs and depth {k}",
                weights.rows, weights.cols, conv.c_out
            ));
        }
        if bias.as_ref().is_some_and(|b| b.len() != conv.c_out) {
            return Err(format!(
                "bias length differs from the {} outputs",
                conv.c_out
            ));
        }
        Ok(Self {
            conv,
            weights,
            bias,
            act,
        })
    }

    pub fn conv(&self) -> &Conv2d {
        &self.conv
    }

    pub fn act(&self) -> Activation {
        self.act
    }

    pub fn weight_bytes(&self) -> usize {
        self.weights.bytes()
    }

    pub fn kernel_name(&self) -> &'static str {
        if avx2_available() && !self.conv.is_depthwise() {
            "lookup-f32-avx2"
        } else {
            "lookup-f32"
        }
    }

    /// input `[n, c_in, h, w]`, out `[n, c_out, oh, ow]`.
    pub fn run(
        &self,
        n: usize,
        h: usize,
        w: usize,
        input: &[f32],
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let lhs = self.weights.view();
        if self.conv.is_depthwise() {
            // A few values per channel: decode them all and run the depthwise kernel.
            return with_decoded(lhs, |wf| {
                self.conv.run(
                    n,
                    h,
                    w,
                    input,
                    wf,
                    self.bias.as_deref(),
                    self.act,
                    out,
                    scratch,
                )
            });
        }
        self.conv.run_lhs(
            n,
            h,
            w,
            input,
            Lhs::Coded(lhs),
            self.bias.as_deref(),
            None,
            self.act,
            out,
            scratch,
        );
    }
}

/// `y[r, o] = act(alpha * sum_k x[r, k] * w[o, k] + bias[o])` with coded `w` (`[m, k]`).
#[derive(Clone, Debug)]
pub struct LookupGemm {
    weights: CodedWeights,
    alpha: f32,
    bias: Option<Vec<f32>>,
    act: Activation,
}

/// Output features per task (each decoded one row at a time, see [`LookupGemm::run`]).
const GEMM_ROW_BLOCK: usize = 16;

impl LookupGemm {
    pub fn new(
        weights: CodedWeights,
        alpha: f32,
        bias: Option<Vec<f32>>,
        act: Activation,
    ) -> Result<Self, String> {
        if bias.as_ref().is_some_and(|b| b.len() != weights.rows) {
            return Err(format!(
                "bias length differs from the {} outputs",
                weights.rows
            ));
        }
        if !alpha.is_finite() {
            return Err(format!("alpha {alpha} is not finite"));
        }
        Ok(Self {
            weights,
            alpha,
            bias,
            act,
        })
    }

    pub fn depth(&self) -> usize {
        self.weights.cols
    }

    pub fn act(&self) -> Activation {
        self.act
    }

    pub fn weight_bytes(&self) -> usize {
        self.weights.bytes()
    }

    pub fn kernel_name(&self) -> &'static str {
        "lookup-f32"
    }

    /// `x [rows, k]`, `out [rows, m]`.
    pub fn run(&self, rows: usize, x: &[f32], out: &mut [f32]) {
        use rayon::prelude::*;
        let (m, k) = (self.weights.rows, self.weights.cols);
        assert_eq!(x.len(), rows * k, "lookup gemm: input length");
        assert_eq!(out.len(), rows * m, "lookup gemm: output length");
        if m == 0 || rows == 0 {
            return;
        }
        // Each task decodes its block of output features one row at a time (one row stays in
        // L1 while every input row passes over it); results are gathered into the row-major
        // output afterwards.
        let blocks: Vec<(usize, Vec<f32>)> = (0..m.div_ceil(GEMM_ROW_BLOCK))
            .into_par_iter()
            .map_init(
                || vec![0.0f32; k],
                |wrow, bi| {
                    let r0 = bi * GEMM_ROW_BLOCK;
                    let nr = GEMM_ROW_BLOCK.min(m - r0);
                    let mut res = vec![0.0f32; nr * rows];
                    let view = self.weights.view();
                    for o in 0..nr {
                        view.decode_row(r0 + o, 0, wrow);
                        crate::dot::dots(wrow, x, k, rows, &mut res[o * rows..][..rows]);
                    }
                    (r0, res)
                },
            )
            .collect();
        for (r0, res) in blocks {
            let nr = res.len() / rows;
            for o in 0..nr {
                let b = self.bias.as_ref().map_or(0.0, |b| b[r0 + o]);
                for r in 0..rows {
                    out[r * m + r0 + o] = self.act.apply(self.alpha * res[o * rows + r] + b);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rand::{rand_vec, KERNEL_PATH_LOCK};
    use std::sync::atomic::Ordering;

    /// The register decoder (where the CPU has it) and the table lookup both give
    /// `table[code] * scale` bit for bit, for tables of 1 to 8 pieces (codes up to 255),
    /// lengths with and without a partial last step, and negative zero and subnormal scales.
    #[test]
    fn register_decode_equals_the_table() {
        let mut seed = 5;
        let table: [f32; 256] = std::array::from_fn(|c| {
            let v = rand_vec(1, &mut seed)[0];
            v * 2f32.powi(c as i32 % 40 - 20)
        });
        let _path = KERNEL_PATH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for (scalar, pieces) in [false, true]
            .into_iter()
            .flat_map(|f| (1..=8usize).map(move |p| (f, p)))
        {
            FORCE_SCALAR_DECODE.store(scalar, Ordering::SeqCst);
            for len in [0usize, 1, 15, 16, 17, 33, 64, 250] {
                let codes: Vec<u8> = (0..len)
                    .map(|i| ((i * 37 + pieces * 11) % (32 * pieces)) as u8)
                    .collect();
                for scale in [0.75f32, -0.0, 1e-40, 3.5] {
                    let mut got = vec![f32::NAN; len];
                    decode(&table, pieces, &codes, scale, &mut got);
                    for (i, (&g, &c)) in got.iter().zip(&codes).enumerate() {
                        let want = table[c as usize] * scale;
                        assert_eq!(
                            g.to_bits(),
                            want.to_bits(),
                            "{pieces} pieces, len {len}, {i}, scalar {scalar}"
                        );
                    }
                }
            }
        }
        FORCE_SCALAR_DECODE.store(false, Ordering::SeqCst);
    }

    fn coded(rows: usize, cols: usize, seed: &mut u64) -> (CodedWeights, Vec<f32>) {
        // A 5-bit-like table: sign-symmetric values with wide exponents, codes above 32 unused.
        let table: Vec<f32> = (0..32)
            .map(|c| {
                let m = (c & 15) as f32;
                let v = (1.0 + (m % 4.0) / 4.0) * 2f32.powi((m / 4.0) as i32 * 3 - 4);
                if c >= 16 {
                    -v
                } else if c == 0 {
                    0.0
                } else {
                    v
                }
            })
            .collect();
        let codes: Vec<u8> = rand_vec(rows * cols, seed)
            .iter()
            .map(|v| ((v + 1.0) * 20.0) as u8) // 0..40: some codes decode to 0
            .collect();
        let scale: Vec<f32> = (0..rows)
            .map(|r| {
                if r % 3 == 2 {
                    0.37 + r as f32 * 0.01 // real scales too
                } else {
                    2f32.powi(r as i32 % 7 - 3)
                }
            })
            .collect();
        let mut full = table.clone();
        full.resize(256, 0.0);
        let decoded = codes
            .iter()
            .enumerate()
            .map(|(i, &c)| full[c as usize] * scale[i / cols.max(1)])
            .collect();
        let w = CodedWeights::new(rows, cols, codes, &table, scale).unwrap();
        (w, decoded)
    }

    /// The lookup convolution gives the FP32 convolution's bits on the decoded weights, on
    /// the AVX2 path (in-place and packed A, implicit and explicit im2col, direct 1x1) and the
    /// portable one, for groups, depthwise, strides, pads and batches.
    #[test]
    fn lookup_conv_matches_fp32_on_decoded_weights() {
        let _path = KERNEL_PATH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let conv = |c_in, c_out, k, s, p, g| Conv2d {
            c_in,
            c_out,
            kh: k,
            kw: k,
            stride: [s, s],
            dilation: [1, 1],
            pads: [p; 4],
            group: g,
        };
        let cases = [
            (conv(16, 24, 3, 1, 1, 1), 1, 14, 14),  // implicit im2col
            (conv(16, 20, 3, 2, 1, 1), 2, 9, 9),    // explicit im2col
            (conv(32, 40, 1, 1, 0, 1), 1, 7, 7),    // direct 1x1
            (conv(8, 12, 3, 1, 1, 2), 2, 6, 6),     // groups
            (conv(12, 12, 3, 1, 1, 12), 1, 8, 8),   // depthwise
            (conv(6, 4, 3, 1, 0, 1), 1, 5, 5),      // fewer rows than a tile: portable
            (conv(300, 16, 1, 1, 0, 1), 1, 20, 20), // depth over one KC slice
        ];
        let mut seed = 5;
        for force_portable in [false, true] {
            crate::sgemm::FORCE_PORTABLE.store(force_portable, Ordering::SeqCst);
            for (c, n, h, w) in &cases {
                let k = c.depth();
                let (cw, decoded) = coded(c.c_out, k, &mut seed);
                let x = rand_vec(n * c.c_in * h * w, &mut seed);
                let bias = rand_vec(c.c_out, &mut seed);
                let (oh, ow) = c.out_hw(*h, *w);
                let mut want = vec![0.0; n * c.c_out * oh * ow];
                let mut scratch = Vec::new();
                let act = Activation::Relu;
                c.run(
                    *n,
                    *h,
                    *w,
                    &x,
                    &decoded,
                    Some(&bias),
                    act,
                    &mut want,
                    &mut scratch,
                );
                let lc = LookupConv::new(c.clone(), cw, Some(bias), act).unwrap();
                let mut got = vec![f32::NAN; want.len()];
                lc.run(*n, *h, *w, &x, &mut got, &mut scratch);
                assert_eq!(got, want, "{c:?} portable {force_portable}");
                assert!(want.iter().any(|&v| v > 0.0), "{c:?}: all zero");
            }
        }
        crate::sgemm::FORCE_PORTABLE.store(false, Ordering::SeqCst);
    }

    /// The lookup Gemm against a double-precision sum on the decoded weights.
    #[test]
    fn lookup_gemm_matches_reference() {
        let mut seed = 9;
        for (rows, m, k) in [(1, 40, 70), (3, 17, 8), (2, 5, 1), (4, 33, 0)] {
            let (cw, decoded) = coded(m, k, &mut seed);
            let x = rand_vec(rows * k, &mut seed);
            let bias = rand_vec(m, &mut seed);
            let g = LookupGemm::new(cw, 0.5, Some(bias.clone()), Activation::None).unwrap();
            let mut out = vec![f32::NAN; rows * m];
            g.run(rows, &x, &mut out);
            for r in 0..rows {
                for o in 0..m {
                    let (mut s, mut mag) = (0.0f64, 0.0f64);
                    for q in 0..k {
                        let p = x[r * k + q] as f64 * decoded[o * k + q] as f64;
                        s += p;
                        mag += p.abs();
                    }
                    let want = 0.5 * s + bias[o] as f64;
                    let got = out[r * m + o] as f64;
                    assert!(
                        (got - want).abs() <= 1e-6 * (mag + 1.0),
                        "({rows}, {m}, {k}) [{r}, {o}]: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn coded_weights_reject_bad_shapes() {
        assert!(CodedWeights::new(2, 3, vec![0; 5], &[1.0], vec![1.0; 2]).is_err());
        assert!(CodedWeights::new(2, 3, vec![0; 6], &[1.0], vec![1.0; 3]).is_err());
        assert!(CodedWeights::new(2, 3, vec![0; 6], &[f32::NAN], vec![1.0; 2]).is_err());
        assert!(CodedWeights::new(2, 3, vec![0; 6], &[0.5; 257], vec![1.0; 2]).is_err());
        let w =
            CodedWeights::new(2, 3, vec![0, 1, 2, 1, 0, 200], &[0.0, 1.5], vec![1.0, 4.0]).unwrap();
        assert_eq!(w.value(1, 1), 0.0);
        assert_eq!(w.value(0, 1), 1.5);
        assert_eq!(w.value(1, 0), 6.0);
        assert_eq!(w.value(1, 2), 0.0); // unused code
        let c = Conv2d {
            c_in: 1,
            c_out: 2,
            kh: 1,
            kw: 3,
            stride: [1, 1],
            dilation: [1, 1],
            pads: [0; 4],
            group: 1,
        };
        assert!(
            LookupConv::new(c.clone(), w.clone(), Some(vec![0.0; 3]), Activation::None).is_err()
        );
        assert!(LookupConv::new(Conv2d { kw: 2, ..c }, w.clone(), None, Activation::None).is_err());
        assert!(LookupGemm::new(w, f32::INFINITY, None, Activation::None).is_err());
    }
}
