//! Convolution and Gemm layers computed from AFP integers ([`crate::qgemm`]). The f32 input
//! is rounded to the layer's activation grid as integers (the same rounding as
//! `afp_format::Grid`) and stored channel-quad interleaved (`[c/4][pixel][4]`), multiplied
//! exactly with the integer weights (K ordered kernel position, then channel), and each output
//! is `act(sum * 2^u + bias)`, with `2^u` the product of the weight and activation units.

use rayon::prelude::*;
use std::cell::RefCell;

use crate::conv::{valid_range, Conv2d};
use crate::qgemm::{
    compute, ActInt, Epilogue, I16Kernel, Int, OutPtr, PackedA, PackedWeights, Panels, QuadStore,
    U8I8Bounds, U8I8Kernel, MR, NR,
};
use crate::tap_rows::TapRows;
use crate::Activation;

/// Rounds f32 values to the integer view `n` of an AFP grid in `Subnormal` zero mode
/// (`v = n * 2^unit_exp`): nearest value, ties to the even code, saturating at `±max`,
/// negative inputs of unsigned formats to 0, NaN to `+max`. Bit-identical to
/// `Grid::encode` followed by `Format::integer` (tested in afp-quant against every format).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActEncoder {
    inv_unit: f32,
    man_bits: i32,
    max: i32,
    signed: bool,
}

impl ActEncoder {
    /// `unit_exp = t - M`; `max` the format's largest `|n|`. `None` when `2^-unit_exp` is not
    /// a normal f32 or `max` does not fit an i32.
    pub fn new(unit_exp: i32, man_bits: u32, max: u64, signed: bool) -> Option<ActEncoder> {
        if !(-126..=127).contains(&-unit_exp) || max > i32::MAX as u64 || man_bits > 23 {
            return None;
        }
        Some(ActEncoder {
            inv_unit: f32::from_bits(((127 - unit_exp) as u32) << 23),
            man_bits: man_bits as i32,
            max: max as i32,
            signed,
        })
    }

    /// Whether every step of the grid is one unit (`E <= 1`: `max < 2^(M+1)`); then
    /// [`ActEncoder::encode_uniform`] applies.
    pub fn is_uniform(&self) -> bool {
        // The bound 2^22 keeps `round_even_small` exact.
        (self.max as i64) < (2i64 << self.man_bits) && self.max < (1 << 22)
    }

    /// [`ActEncoder::encode`] for uniform grids ([`ActEncoder::is_uniform`]): a clamp and a
    /// rounding, branch-free enough to vectorize.
    #[inline(always)]
    pub fn encode_uniform(&self, x: f32) -> i32 {
        let a = x * self.inv_unit;
        let (lo, hi) = (
            if self.signed { -self.max as f32 } else { 0.0 },
            self.max as f32,
        );
        // NaN fails `a < hi` and goes to max, as in the grid.
        let c = round_even_small(if a < hi { a.max(lo) } else { hi });
        // SAFETY: c is finite and within [-max, max], max <= i32::MAX (checked in `new`).
        // (The checked `as` cast keeps the loop from vectorizing.)
        unsafe { c.to_int_unchecked::<i32>() }
    }

    /// [`ActEncoder::encode_uniform`] of 8 values, plus `zero`, in registers: the clamp, the
    /// rounding (`cvtps` rounds half to even, as [`round_even_small`]) and NaN to `+max`.
    /// The grid must be uniform ([`ActEncoder::is_uniform`]).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(crate) fn encode_uniform_avx2(
        &self,
        x: std::arch::x86_64::__m256,
        zero: u8,
    ) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        let lo = _mm256_set1_ps(if self.signed { -self.max as f32 } else { 0.0 });
        let hi = _mm256_set1_ps(self.max as f32);
        let a = _mm256_mul_ps(x, _mm256_set1_ps(self.inv_unit));
        let below = _mm256_cmp_ps::<_CMP_LT_OQ>(a, hi);
        let c = _mm256_blendv_ps(hi, _mm256_max_ps(a, lo), below);
        _mm256_add_epi32(_mm256_cvtps_epi32(c), _mm256_set1_epi32(zero as i32))
    }

    /// [`ActEncoder::encode_uniform_avx2`] on 16 values.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) fn encode_uniform_avx512(
        &self,
        x: std::arch::x86_64::__m512,
        zero: u8,
    ) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        let lo = _mm512_set1_ps(if self.signed { -self.max as f32 } else { 0.0 });
        let hi = _mm512_set1_ps(self.max as f32);
        let a = _mm512_mul_ps(x, _mm512_set1_ps(self.inv_unit));
        let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, hi);
        // Lanes below `hi` take max(a, lo); the others, NaN included, `hi`.
        let c = _mm512_mask_blend_ps(below, hi, _mm512_max_ps(a, lo));
        _mm512_add_epi32(_mm512_cvtps_epi32(c), _mm512_set1_epi32(zero as i32))
    }

    #[inline]
    pub fn encode(&self, x: f32) -> i32 {
        if x < 0.0 && !self.signed {
            return 0;
        }
        // Exact: a power-of-two scaling (overflow goes to inf, which saturates below).
        let a = x.abs() * self.inv_unit;
        let n = if a < self.max as f32 {
            // Binade of `a` decides the step 2^j between neighbouring integers of the grid:
            // 1 below 2^(M+1), doubling with each binade above.
            let e = ((a.to_bits() >> 23) & 0xff) as i32 - 127;
            let j = (e - self.man_bits).max(0);
            let step = f32::from_bits(((127 + j) as u32) << 23);
            let s = a / step;
            // With no mantissa bits a tie lies between the exponent fields j + 1 and j + 2:
            // the even field wins, which is the upper value iff j is even.
            let r = if self.man_bits == 0 && s == 1.5 {
                if j % 2 == 0 {
                    2.0
                } else {
                    1.0
                }
            } else {
                round_even_small(s)
            };
            ((r * step) as i32).min(self.max)
        } else {
            self.max // also NaN
        };
        if x < 0.0 {
            -n
        } else {
            n
        }
    }
}

/// Rounds `|v| < 2^22` to the nearest integer, ties to even: adding and removing 1.5 * 2^23
/// leaves no fraction bits in f32's default rounding mode. (`f32::round_ties_even` is a libm
/// call on baseline x86-64, far slower in the encoding loop.)
#[inline(always)]
fn round_even_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (v + MAGIC) - MAGIC
}

/// How a layer's activation integers are stored for the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActStore {
    /// u8; signed activations (|n| <= 127) are stored as `n + 128`, corrected per row.
    U8 {
        zero: u8,
    },
    I16,
}

/// Integer weights of a layer and the path they run on.
#[derive(Debug, Clone)]
enum QWeights {
    /// One packed matrix per group, K ordered `(ky, kx, channel)` with channels padded to
    /// quads, or with `tap_rows` `(ky, (kx, channel))` with kernel rows padded to quads.
    Gemm {
        groups: Vec<PackedWeights>,
        tap_rows: Option<TapRows>,
        store: ActStore,
        /// `zero * sum_k w[r][k]` per output row: the shift of signed activations stored as u8.
        zero_corr: Option<Vec<i64>>,
    },
    /// Depthwise: `[c_out, kh * kw]`; the same integers as f32 when every window sum stays
    /// below 2^24, where f32 sums of integer products are exact, and the FP32 depthwise
    /// kernel's AVX2 rows cover the shape (see `run_depthwise`).
    Depthwise(Vec<i32>, Option<Vec<f32>>),
}

/// A convolution on AFP integers.
#[derive(Debug, Clone)]
pub struct QConv {
    pub conv: Conv2d,
    /// Shared by the copies that differ in how they pass activations (see
    /// [`QConv::writing_quads`]).
    weights: std::sync::Arc<QWeights>,
    enc: ActEncoder,
    mult: Vec<f32>,
    bias: Option<Vec<f32>>,
    /// A per-channel scale and shift after the bias (see [`QConv::with_affine`]).
    affine: Option<(Vec<f32>, Vec<f32>)>,
    pub act: Activation,
    /// The input tensor holds this layer's u8 channel quads, not f32 (see
    /// [`QConv::reading_quads`]).
    quads_in: bool,
    /// The output is stored as the next layer's u8 channel quads: its encoder and zero shift.
    quads_out: Option<(ActEncoder, u8)>,
    /// The output is stored as f32 and, after it in the same buffer, as one reader's u8
    /// channel quads: that reader's encoder and zero shift (see [`QConv::writing_codes_too`]).
    codes_too: Option<(ActEncoder, u8)>,
}

/// Whether a tensor of shape `[n, c, h, w]`, as f32, has room for its u8 channel quads and
/// the panel of slack the kernels read past them: the space a producer writing quads
/// ([`QConv::writing_quads`]) finds in its f32 output buffer.
pub fn quads_fit(shape: &[usize]) -> bool {
    quads_f32_len(shape).is_some_and(|len| len <= shape.iter().product())
}

/// The f32 elements a buffer needs to hold the channel quads of an `[n, c, h, w]` tensor and
/// the panel of slack its reader may touch: a quarter of the f32 tensor's, about. `None` for
/// other shapes.
pub fn quads_f32_len(shape: &[usize]) -> Option<usize> {
    let [n, c, h, w] = shape else {
        return None;
    };
    let quads = n * c.div_ceil(4) * 4 * h * w;
    Some((quads + NR * 4).div_ceil(4))
}

/// Chooses the activation storage for a layer of depth `k` and weights up to `w_max`.
fn act_store(
    k: usize,
    w_max: u32,
    enc: &ActEncoder,
) -> Result<(ActStore, Option<U8I8Kernel>), String> {
    let fits_u8 = if enc.signed {
        enc.max <= 127
    } else {
        enc.max <= 255
    };
    if fits_u8 && w_max <= 127 {
        let bounds = U8I8Bounds {
            act_max: if enc.signed { 255 } else { enc.max as u32 },
            weight_max: w_max,
        };
        if bounds.sum_fits_i32(k) {
            let zero = if enc.signed { 128 } else { 0 };
            return Ok((ActStore::U8 { zero }, Some(U8I8Kernel::choose(bounds))));
        }
    }
    if enc.max <= i16::MAX as i32 && w_max <= i16::MAX as u32 {
        return Ok((ActStore::I16, None));
    }
    Err(format!(
        "activation integers up to {} and weight integers up to {w_max} fit no integer container (i8/u8/i16)",
        enc.max
    ))
}

/// Reusable buffers of a [`QConv`] run (owned by the caller, like the f32 scratch).
#[derive(Default)]
pub struct QScratch {
    quads_u8: Vec<u8>,
    quads_i16: Vec<i16>,
}

type DwBuffers = (Vec<f32>, crate::depthwise::PaddedPlane);

thread_local! {
    /// The f32 depthwise path's encoded plane and padded copy.
    static DW_F32: RefCell<DwBuffers> =
        const { RefCell::new((Vec::new(), crate::depthwise::PaddedPlane::new())) };
    static PLANE: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
    static BLOCK_U8: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static BLOCK_I16: RefCell<Vec<i16>> = const { RefCell::new(Vec::new()) };
}

/// Activation elements with a per-thread buffer for packed panel blocks.
pub(crate) trait BlockBuf: ActInt {
    fn with_block<R>(f: impl FnOnce(&mut Vec<Self>) -> R) -> R;
    /// The values as bytes, for the u8 path's matrix-vector kernel.
    fn as_u8(s: &[Self]) -> Option<&[u8]>;
    /// The same, writable (the u8 path's register encoder).
    fn as_u8_mut(s: &mut [Self]) -> Option<&mut [u8]>;
    /// Bytes as these values (quads written by the producer: u8 only).
    fn from_u8(s: &[u8]) -> Option<&[Self]>;
}
impl BlockBuf for u8 {
    fn with_block<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        BLOCK_U8.with(|b| f(&mut b.borrow_mut()))
    }
    fn as_u8(s: &[u8]) -> Option<&[u8]> {
        Some(s)
    }
    fn as_u8_mut(s: &mut [u8]) -> Option<&mut [u8]> {
        Some(s)
    }
    fn from_u8(s: &[u8]) -> Option<&[u8]> {
        Some(s)
    }
}
impl BlockBuf for i16 {
    fn with_block<R>(f: impl FnOnce(&mut Vec<i16>) -> R) -> R {
        BLOCK_I16.with(|b| f(&mut b.borrow_mut()))
    }
    fn as_u8(_: &[i16]) -> Option<&[u8]> {
        None
    }
    fn as_u8_mut(_: &mut [i16]) -> Option<&mut [u8]> {
        None
    }
    fn from_u8(_: &[u8]) -> Option<&[i16]> {
        None
    }
}

/// Up to this many output pixels (batch rows of a Gemm), a plain 1x1 product runs as
/// matrix-vector products, one column at a time.
const GEMV_MAX_COLS: usize = 4;

/// Where a layer's input elements are: image `i`, channel `c`, pixel `p` at
/// `i * img + c * chan + p * pix`.
#[derive(Debug, Clone, Copy)]
struct InLayout {
    img: usize,
    chan: usize,
    pix: usize,
}

/// Where output element (image `i`, channel `r`, pixel `j`) goes: `i * img + r * rs + j * cs`.
#[derive(Debug, Clone, Copy)]
struct OutLayout {
    img: usize,
    rs: usize,
    cs: usize,
}

/// One run's input and where its data and outputs lie.
#[derive(Clone, Copy)]
struct Io<'a> {
    n: usize,
    h: usize,
    w: usize,
    input: &'a [f32],
    inl: InLayout,
    outl: OutLayout,
    /// Laid out as the output; added before `act`.
    residual: Option<&'a [f32]>,
    act: Activation,
}

/// Channel quads of one convolution: `(ky, kx, quad)` is K quad `(ky * kw + kx) * cq + quad`.
fn quads_per_pos(cig: usize) -> usize {
    cig.div_ceil(4)
}

impl QConv {
    /// `w` holds the weight integers `[c_out, c_in / group * kh * kw]` (ONNX order) with
    /// `|w| <= w_max`; output channel `r` is `act(sum * mult[r] + bias[r])`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        conv: Conv2d,
        w: &[i32],
        w_max: u32,
        enc: ActEncoder,
        mult: Vec<f32>,
        bias: Option<Vec<f32>>,
        act: Activation,
    ) -> Result<QConv, String> {
        let g = conv.group;
        if g == 0 || !conv.c_in.is_multiple_of(g) || !conv.c_out.is_multiple_of(g) {
            return Err(format!(
                "group {g} must divide c_in {} and c_out {}",
                conv.c_in, conv.c_out
            ));
        }
        let cig = conv.c_in / g;
        let khw = conv.kh * conv.kw;
        let k = cig * khw;
        if w.len() != conv.c_out * k || mult.len() != conv.c_out {
            return Err(format!(
                "{} weights and {} scales for {} x {k}",
                w.len(),
                mult.len(),
                conv.c_out
            ));
        }
        if bias.as_ref().is_some_and(|b| b.len() != conv.c_out) {
            return Err("bias length differs from the output channels".into());
        }
        if w.iter().any(|v| v.unsigned_abs() > w_max) {
            return Err(format!("a weight integer exceeds the bound {w_max}"));
        }
        let weights = if conv.is_depthwise() {
            // |window sum| <= taps * max|n_a| * max|n_w|: exact in f32 below 2^24; and the
            // FP32 kernel's AVX2 rows must cover the shape.
            let bound = khw as u64 * enc.max.unsigned_abs() as u64 * w_max as u64;
            let exact_f32 = bound < 1 << 24 && crate::depthwise::fast_ok(&conv, Activation::None);
            QWeights::Depthwise(
                w.to_vec(),
                exact_f32.then(|| w.iter().map(|&v| v as f32).collect()),
            )
        } else {
            let cog = conv.c_out / g;
            let cq = quads_per_pos(cig);
            let tap_rows = TapRows::choose(&conv);
            let kq = tap_rows.map_or(khw * cq, |t| t.depth_quads(&conv));
            let (store, kernel) = act_store(k, w_max, &enc)?;
            // Reorder K from (channel, ky, kx) to (ky, kx, channel padded to quads), or to
            // the tap rows' order.
            let reorder = |rows: &[i32]| -> Vec<i32> {
                if let Some(t) = tap_rows {
                    return t.reorder(&conv, rows);
                }
                let mut out = vec![0i32; rows.len() / k * kq * 4];
                for (r, row) in rows.chunks(k).enumerate() {
                    for ci in 0..cig {
                        for pos in 0..khw {
                            out[r * kq * 4 + (pos * cq) * 4 + ci] = row[ci * khw + pos];
                        }
                    }
                }
                out
            };
            let groups = (0..g)
                .map(|gi| {
                    let wg = reorder(&w[gi * cog * k..(gi + 1) * cog * k]);
                    match kernel {
                        Some(kern) => {
                            let w8: Vec<i8> = wg.iter().map(|&v| v as i8).collect();
                            PackedWeights::U8I8(PackedA::new(cog, kq, &w8), kern)
                        }
                        None => {
                            let w16: Vec<i16> = wg.iter().map(|&v| v as i16).collect();
                            let kern = I16Kernel::choose(enc.max as u32, w_max);
                            PackedWeights::I16(PackedA::new(cog, kq, &w16), kern)
                        }
                    }
                })
                .collect();
            let zero_corr = match store {
                ActStore::U8 { zero } if zero != 0 => Some(
                    w.chunks(k)
                        .map(|row| zero as i64 * row.iter().map(|&v| v as i64).sum::<i64>())
                        .collect(),
                ),
                _ => None,
            };
            QWeights::Gemm {
                groups,
                tap_rows,
                store,
                zero_corr,
            }
        };
        Ok(QConv {
            conv,
            weights: std::sync::Arc::new(weights),
            enc,
            mult,
            bias,
            affine: None,
            act,
            quads_in: false,
            quads_out: None,
            codes_too: None,
        })
    }

    /// The encoder and zero shift of this layer's input codes when it can read them as u8
    /// channel quads made by its producer ([`QConv::writing_quads`]): a one-group integer
    /// product with u8 activations, not in tap rows.
    pub fn quads_input(&self) -> Option<(ActEncoder, u8)> {
        match &*self.weights {
            QWeights::Gemm {
                store: ActStore::U8 { zero },
                tap_rows: None,
                ..
            } if self.conv.group == 1 => Some((self.enc, *zero)),
            _ => None,
        }
    }

    /// This layer reading its input as the u8 channel quads its producer wrote into the f32
    /// tensor's buffer (see [`QConv::writing_quads`]) instead of encoding it: the same bits.
    pub fn reading_quads(&self) -> Result<QConv, String> {
        if self.quads_input().is_none() {
            return Err(
                "only one-group integer products with u8 inputs, not in tap rows, read quads"
                    .into(),
            );
        }
        Ok(QConv {
            quads_in: true,
            ..self.clone()
        })
    }

    /// This layer storing its output, after bias, affine step, residual and activation, as
    /// the u8 channel quads `[image][quad][pixel][4]` of the next layer's input codes (`enc`,
    /// `zero`: that layer's [`QConv::quads_input`]), in the bytes of its f32 output buffer,
    /// which must have room for them ([`quads_fit`]): the encoding fused into the epilogue.
    /// The output tensor then holds codes, readable only by that layer.
    pub fn writing_quads(&self, enc: ActEncoder, zero: u8) -> Result<QConv, String> {
        if !self.one_group_product() || self.codes_too.is_some() {
            return Err("only one-group integer products write quads".into());
        }
        Ok(QConv {
            quads_out: Some((enc, zero)),
            ..self.clone()
        })
    }

    /// An integer product (not depthwise) with one group: its outputs can be stored as codes.
    fn one_group_product(&self) -> bool {
        matches!(&*self.weights, QWeights::Gemm { .. }) && self.conv.group == 1
    }

    /// The input `[n, c_in, h, w]` (f32) encoded as this layer's channel quads, in a buffer
    /// of [`quads_f32_len`] elements whose bytes are the codes: what a producer writing quads
    /// hands over, for [`QConv::reading_quads`]. The same codes the layer makes itself.
    pub fn encode_input_quads(
        &self,
        n: usize,
        h: usize,
        w: usize,
        input: &[f32],
    ) -> Result<Vec<f32>, String> {
        let (enc, zero) = self
            .quads_input()
            .ok_or("only one-group integer products with u8 inputs read quads")?;
        let c = self.conv.c_in;
        if input.len() != n * c * h * w {
            return Err(format!(
                "{} input values for [{n}, {c}, {h}, {w}]",
                input.len()
            ));
        }
        let len = quads_f32_len(&[n, c, h, w]).expect("a 4-d shape");
        let mut buf = vec![0f32; len];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
        let (cq, hw) = (quads_per_pos(c), h * w);
        let (quads, slack) = bytes.split_at_mut(n * cq * hw * 4);
        let inl = InLayout {
            img: c * hw,
            chan: hw,
            pix: 1,
        };
        encode_quads(quads, input, inl, (n, 1, c, cq, hw), &enc, zero);
        slack.fill(zero);
        Ok(buf)
    }

    /// Whether this layer reads its input as codes ([`QConv::reading_quads`]).
    pub fn reads_quads(&self) -> bool {
        self.quads_in
    }

    /// Whether the output tensor holds the next layer's codes ([`QConv::writing_quads`]).
    pub fn writes_quads(&self) -> bool {
        self.quads_out.is_some()
    }

    /// This layer storing its output as f32, for readers that need f32 (a residual Add), and
    /// also, right after the `n * c_out * oh * ow` values in the same buffer, as the u8
    /// channel quads of one reader that takes codes (`enc`, `zero`: its
    /// [`QConv::quads_input`]; [`quads_f32_len`] more elements, which the buffer must have):
    /// that reader's encoding fused into this epilogue when the output has other readers.
    pub fn writing_codes_too(&self, enc: ActEncoder, zero: u8) -> Result<QConv, String> {
        if !self.one_group_product() || self.quads_out.is_some() {
            return Err("only one-group integer products with f32 outputs write codes too".into());
        }
        Ok(QConv {
            codes_too: Some((enc, zero)),
            ..self.clone()
        })
    }

    /// Whether the output buffer also holds a reader's codes ([`QConv::writing_codes_too`]).
    pub fn writes_codes_too(&self) -> bool {
        self.codes_too.is_some()
    }

    /// Fuses a following per-channel `x * scale + shift` (an unfolded BatchNormalization) and
    /// its activation into the epilogue, replacing this layer's own activation, which must be
    /// none: `act((sum * mult + bias) * scale + shift)`, the same f32 operations in the same
    /// order as the separate node.
    pub fn with_affine(
        mut self,
        scale: Vec<f32>,
        shift: Vec<f32>,
        act: Activation,
    ) -> Result<QConv, String> {
        if self.act != Activation::None {
            return Err("an activation lies between the layer and its scale".into());
        }
        if scale.len() != self.conv.c_out || shift.len() != self.conv.c_out {
            return Err("scale and shift need one value per output channel".into());
        }
        self.affine = Some((scale, shift));
        self.act = act;
        Ok(self)
    }

    /// Bytes of weight data held (integers, scales, bias).
    pub fn weight_bytes(&self) -> usize {
        let w = match &*self.weights {
            QWeights::Gemm { groups, .. } => groups.iter().map(|p| p.bytes()).sum(),
            QWeights::Depthwise(w, _) => w.len() * 4,
        };
        w + 4 * self.mult.len() + 4 * self.bias.as_ref().map_or(0, |b| b.len())
    }

    /// The kernel this layer runs (for reports).
    pub fn kernel_name(&self) -> &'static str {
        match &*self.weights {
            QWeights::Gemm { groups, .. } => groups[0].kernel_name(),
            QWeights::Depthwise(_, Some(_)) => "depthwise-exact-f32",
            QWeights::Depthwise(_, None) => "depthwise-i32",
        }
    }

    /// The activation applied in the epilogue.
    pub fn act(&self) -> Activation {
        self.act
    }

    /// input `[n, c_in, h, w]` f32, out `[n, c_out, oh, ow]`.
    pub fn run(
        &self,
        n: usize,
        h: usize,
        w: usize,
        input: &[f32],
        out: &mut [f32],
        scratch: &mut QScratch,
    ) {
        self.run_add(n, h, w, input, None, self.act, out, scratch)
    }

    /// As [`QConv::run`], adding `residual` (shaped as `out`) to the layer's output and then
    /// applying `act` instead of the layer's own activation, which must be none: the bits of
    /// the layer followed by a separate `Add` and activation.
    #[allow(clippy::too_many_arguments)]
    pub fn run_add(
        &self,
        n: usize,
        h: usize,
        w: usize,
        input: &[f32],
        residual: Option<&[f32]>,
        act: Activation,
        out: &mut [f32],
        scratch: &mut QScratch,
    ) {
        let c = &self.conv;
        let (oh, ow) = c.out_hw(h, w);
        // Channel quads take the buffer's first quarter or so (`quads_f32_len`); f32 tensors
        // all of it.
        let (in_shape, out_shape) = ([n, c.c_in, h, w], [n, c.c_out, oh, ow]);
        let out_len = out_shape.iter().product::<usize>();
        match self.quads_in {
            true => assert!(
                quads_f32_len(&in_shape).is_some_and(|l| input.len() >= l),
                "qconv: input quads length"
            ),
            false => assert_eq!(
                input.len(),
                in_shape.iter().product(),
                "qconv: input length"
            ),
        }
        match (self.quads_out, self.codes_too) {
            (Some(_), _) => assert!(
                quads_f32_len(&out_shape).is_some_and(|l| out.len() >= l),
                "qconv: output quads length"
            ),
            (None, Some(_)) => assert!(
                quads_f32_len(&out_shape).is_some_and(|l| out.len() >= out_len + l),
                "qconv: output and codes length"
            ),
            (None, None) => assert_eq!(out.len(), out_len, "qconv: output length"),
        }
        if let Some(r) = residual {
            assert_eq!(r.len(), out_len, "qconv: residual length");
            assert_eq!(
                self.act,
                Activation::None,
                "qconv: activation before a residual"
            );
        }
        if out.is_empty() {
            return;
        }
        if let QWeights::Depthwise(wts, wts_f32) = &*self.weights {
            self.run_depthwise(wts, wts_f32.as_deref(), h, w, input, out);
            if let Some(res) = residual {
                // The depthwise kernel has no residual epilogue: one pass after it.
                for (o, &r) in out.iter_mut().zip(res) {
                    *o = act.apply(*o + r);
                }
            }
            return;
        }
        let inl = InLayout {
            img: c.c_in * h * w,
            chan: h * w,
            pix: 1,
        };
        let outl = OutLayout {
            img: c.c_out * oh * ow,
            rs: oh * ow,
            cs: 1,
        };
        let io = Io {
            n,
            h,
            w,
            input,
            inl,
            outl,
            residual,
            act,
        };
        self.run_gemm(io, out, scratch);
    }

    /// Encodes the input into channel quads, gathers im2col panels unless the convolution is
    /// a plain 1x1, then multiplies in parallel tasks of (image, group, rows, columns).
    fn run_gemm(&self, io: Io<'_>, out: &mut [f32], scratch: &mut QScratch) {
        let QWeights::Gemm {
            groups,
            tap_rows,
            store,
            zero_corr,
        } = &*self.weights
        else {
            unreachable!("depthwise handled by the caller")
        };
        let w = (groups.as_slice(), *tap_rows);
        match *store {
            ActStore::U8 { zero } => self.run_typed(
                io,
                out,
                w,
                zero_corr.as_deref(),
                zero,
                &mut scratch.quads_u8,
            ),
            ActStore::I16 => self.run_typed(io, out, w, None, 0i16, &mut scratch.quads_i16),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run_typed<T: BlockBuf>(
        &self,
        io: Io<'_>,
        out: &mut [f32],
        (groups, tap_rows): (&[PackedWeights], Option<TapRows>),
        zero_corr: Option<&[i64]>,
        zero: T,
        quads: &mut Vec<T>,
    ) {
        let Io {
            n,
            h,
            w,
            input,
            inl,
            outl,
            residual,
            act,
        } = io;
        let c = &self.conv;
        let g = c.group;
        let (cig, cog) = (c.c_in / g, c.c_out / g);
        let cq = quads_per_pos(cig);
        let hw = h * w;
        let (oh, ow) = c.out_hw(h, w);
        let ohw = oh * ow;
        let khw = c.kh * c.kw;
        let kq = tap_rows.map_or(khw * cq, |t| t.depth_quads(c));
        // 1. Encode: [image][group][quad][pixel][4], plus one panel of slack so a direct read
        // of the last partial panel stays inside the buffer; or take the quads the producer
        // wrote into the input's buffer.
        // In tap rows, an image's encoded rows (see `tap_rows`).
        let plane = match tap_rows {
            Some(t) => t.geometry(c, h, w).image,
            None => cq * hw * 4,
        };
        let direct = c.kh == 1 && c.kw == 1 && c.stride == [1, 1] && c.pads == [0; 4];
        // A stride-2 im2col reads every other input column: each encoded row is split into
        // its even then its odd columns, so the gather copies contiguous runs.
        let phased = !direct && tap_rows.is_none() && c.stride[1] == 2 && w > 1;
        let given: &[T] = match self.quads_in {
            true => {
                let q = T::from_u8(bytemuck::cast_slice(input)).expect("quads_in: u8 storage");
                assert!(
                    q.len() >= n * g * plane + NR * 4,
                    "qconv: input quads too short"
                );
                q
            }
            false => &[],
        };
        let quads: &[T] = if let Some(t) = tap_rows {
            let len = t.encoded_len(c, n, h, w);
            quads.resize(len, zero);
            let layout = (inl.img, inl.chan, inl.pix);
            t.encode(
                c,
                (n, h, w),
                input,
                layout,
                &self.enc,
                zero,
                &mut quads[..len],
            );
            &quads[..len]
        } else if self.quads_in && !phased {
            given
        } else {
            // The encoder writes every element of the planes (the zero code in missing
            // channels), so only the slack is set.
            quads.resize(n * g * plane + NR * 4, zero);
            quads[n * g * plane..].fill(zero);
            let dst = &mut quads[..n * g * plane];
            if self.quads_in {
                dst.copy_from_slice(&given[..n * g * plane]);
            } else {
                encode_quads(dst, input, inl, (n, g, cig, cq, hw), &self.enc, zero);
            }
            if phased {
                dst.par_chunks_mut(w * 4).with_min_len(64).for_each_init(
                    || vec![zero; w * 4],
                    |tmp, row| {
                        tmp.copy_from_slice(row);
                        let (t4, _) = tmp.as_chunks::<4>();
                        let (r4, _) = row.as_chunks_mut::<4>();
                        crate::split_even_odd(t4, r4);
                    },
                );
            }
            quads
        };
        // 2. Multiply, in tasks of (image and group, block of columns, rows). Each task packs
        // its block of activation panels (a copy of channel quads for a plain 1x1, im2col
        // otherwise) into a per-thread buffer that stays in L2, then runs every weight panel
        // of its rows over it. Rows are split only when there are too few blocks for the
        // threads, which repeats the (small) packing.
        let npanels = ohw.div_ceil(NR);
        let panel_len = kq * NR * 4;
        let elem = std::mem::size_of::<T>();
        let threads = rayon::current_num_threads();
        // A narrow last panel costs a fraction of a whole one (see `qgemm::narrow_tail`): it
        // is a block of its own, after the balanced blocks of whole panels.
        let narrow = crate::qgemm::narrow_tail(&groups[0], ohw % NR);
        let whole = if narrow { ohw / NR } else { npanels };
        let most_per_block = (160 * 1024 / (panel_len * elem).max(1)).clamp(1, whole.max(1));
        let blocks = match whole {
            0 => 0,
            _ => block_count(whole, most_per_block, n * g, threads),
        };
        // Block `b < blocks` covers panels `b * whole / blocks..(b + 1) * whole / blocks`
        // (sizes differ by one at most); block `blocks` is the narrow panel.
        let block_panels = |b: usize| match b < blocks {
            true => (b * whole / blocks, (b + 1) * whole / blocks),
            false => (whole, whole + 1),
        };
        let row_panels = cog.div_ceil(MR);
        let chunks = (2 * threads)
            .div_ceil(n * g * blocks.max(1))
            .clamp(1, row_panels);
        let rows_per = row_panels.div_ceil(chunks) * MR;
        // Codes are stored one quad plane set per image (one group: checked in
        // `writing_quads` and `writing_codes_too`).
        let per_image = c.c_out.div_ceil(4) * 4 * ohw;
        let store = |(enc, zero): (ActEncoder, u8)| QuadStore {
            enc,
            zero,
            pixels: ohw,
        };
        let outs: Vec<OutPtr> = match self.quads_out {
            Some(ek) => code_planes(out, n, per_image)
                .into_iter()
                .map(|o| OutPtr::quads(o, store(ek), outl.rs, outl.cs))
                .collect(),
            None => {
                // With codes too, they follow the n images' values.
                let (vals, codes) = out.split_at_mut(n * outl.img);
                let codes: Vec<Option<(&mut [u8], QuadStore)>> = match self.codes_too {
                    Some(ek) => code_planes(codes, n, per_image)
                        .into_iter()
                        .map(|b| Some((b, store(ek))))
                        .collect(),
                    None => (0..n).map(|_| None).collect(),
                };
                vals.chunks_mut(outl.img)
                    .zip(codes)
                    .flat_map(|(o, mut codes)| {
                        (0..g)
                            .map(|gi| {
                                let start = gi * cog * outl.rs;
                                let p = OutPtr::new(&mut o[start..], outl.rs, outl.cs);
                                match codes.take() {
                                    Some((b, st)) => p.with_codes(b, st),
                                    None => p,
                                }
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect()
            }
        };
        // The epilogue of image and group `ig`: its group's rows of the scales, biases and
        // shifts, and its part of the residual (from the base of its `OutPtr`).
        let epilogue = |ig: usize| {
            let gi = ig % g;
            let rows = gi * cog..(gi + 1) * cog;
            Epilogue {
                mult: &self.mult[rows.clone()],
                bias: self.bias.as_ref().map(|b| &b[rows.clone()]),
                act,
                zero_corr: zero_corr.map(|z| &z[rows.clone()]),
                affine: self
                    .affine
                    .as_ref()
                    .map(|(a, b)| (&a[rows.clone()], &b[rows.clone()])),
                residual: residual.map(|r| &r[(ig / g) * outl.img + gi * cog * outl.rs..]),
            }
        };
        if direct && ohw <= GEMV_MAX_COLS && matches!(groups[0], PackedWeights::U8I8(..)) {
            if let Some(qb) = T::as_u8(quads) {
                // Memory bound: split the rows finely so both threads stream weights, in
                // whole row groups of the 4-bit kernels where they run.
                let chunks = (4 * threads).clamp(1, row_panels);
                let mut rows_per = row_panels.div_ceil(chunks) * MR;
                if matches!(&groups[0], PackedWeights::U8I8(a, _) if a.has_nibbles()) {
                    rows_per = rows_per.next_multiple_of(crate::qgemm::GROUP_ROWS);
                }
                let tasks: Vec<(usize, std::ops::Range<usize>)> = (0..n * g)
                    .flat_map(|ig| {
                        (0..cog)
                            .step_by(rows_per)
                            .map(move |r0| (ig, r0..(r0 + rows_per).min(cog)))
                    })
                    .collect();
                // Each column expanded once, before the tasks that share it.
                let xes: Vec<crate::qgemm::Column> = (0..n * g * ohw)
                    .map(|c| {
                        let (ig, j) = (c / ohw, c % ohw);
                        let src = &qb[ig * plane..(ig + 1) * plane];
                        let quad = |q: usize| -> [u8; 4] {
                            let i = (q * hw + j) * 4;
                            [src[i], src[i + 1], src[i + 2], src[i + 3]]
                        };
                        crate::qgemm::Column::new(&groups[ig % g], (0..kq).map(quad))
                    })
                    .collect();
                tasks.into_par_iter().for_each(|(ig, rows)| {
                    let gi = ig % g;
                    let ep = epilogue(ig);
                    for (j, xe) in xes[ig * ohw..(ig + 1) * ohw].iter().enumerate() {
                        // SAFETY: tasks partition (image, group, rows); each writes its rows
                        // of every column once.
                        unsafe {
                            crate::qgemm::gemv(&groups[gi], xe, rows.clone(), j, &ep, outs[ig])
                        };
                    }
                });
                return;
            }
        }
        let mut tasks = Vec::new();
        for ig in 0..n * g {
            for b in 0..blocks {
                for r0 in (0..cog).step_by(rows_per) {
                    tasks.push((ig, b, r0..(r0 + rows_per).min(cog)));
                }
            }
        }
        if narrow {
            // Cheap: rows split over every thread (its packing is one panel).
            let rows_per = row_panels.div_ceil(threads.min(row_panels)) * MR;
            for ig in 0..n * g {
                for r0 in (0..cog).step_by(rows_per) {
                    tasks.push((ig, blocks, r0..(r0 + rows_per).min(cog)));
                }
            }
        }
        tasks.into_par_iter().for_each(|(ig, b, rows)| {
            let gi = ig % g;
            let ep = epilogue(ig);
            let (p0, p1) = block_panels(b);
            let np = p1 - p0;
            let colr = p0 * NR..((p0 + np) * NR).min(ohw);
            // The image's quads, and one panel of slack past them (the buffer has it at its
            // end): a partial last panel copies columns it never stores. Tap rows read on to
            // the end of the buffer (the next image's rows or the slack).
            let src = match tap_rows {
                Some(_) => &quads[ig * plane..],
                None => &quads[ig * plane..(ig * plane + plane + NR * 4).min(quads.len())],
            };
            T::with_block(|buf| {
                // Every element is written below (a copy or the gather, zeros included), so
                // the buffer is not cleared first.
                buf.resize(np * panel_len, zero);
                if let Some(t) = tap_rows {
                    t.gather(c, (h, w), src, zero, p0 * NR, buf);
                } else if direct {
                    // Quad by quad, so each read of the source is one contiguous run.
                    for q in 0..kq {
                        let run = &src[q * hw * 4 + p0 * NR * 4..][..np * NR * 4];
                        for (bp, v) in run.chunks_exact(NR * 4).enumerate() {
                            let d: &mut [T; NR * 4] = (&mut buf[bp * panel_len + q * NR * 4..]
                                [..NR * 4])
                                .try_into()
                                .expect("one panel row");
                            let v: &[T; NR * 4] = v.try_into().expect("one panel row");
                            *d = *v;
                        }
                    }
                } else {
                    for (bp, dst) in buf.chunks_mut(panel_len).enumerate() {
                        let geo = (h, w, ow, phased);
                        gather_panel(c, src, zero, geo, cq, ohw, (p0 + bp) * NR, dst);
                    }
                }
                let panels = T::panels(Panels {
                    data: buf,
                    quad_stride: NR * 4,
                });
                // SAFETY: tasks partition (image, group, rows, columns); each output element
                // is written by exactly one task, through the OutPtr of its image and group.
                unsafe { compute(&groups[gi], panels, panel_len, rows, colr, &ep, outs[ig]) };
            });
        });
    }

    /// Depthwise layers sum each window's integer products. When the sums stay below 2^24
    /// (`wts_f32`), they are computed in f32 lanes by the FP32 depthwise kernel's FMA rows:
    /// products and partial sums of such integers are exact in f32, so the result is the
    /// integer sum, bit for bit. Otherwise in i32.
    fn run_depthwise(
        &self,
        wts: &[i32],
        wts_f32: Option<&[f32]>,
        h: usize,
        w: usize,
        input: &[f32],
        out: &mut [f32],
    ) {
        let c = &self.conv;
        let (oh, ow) = c.out_hw(h, w);
        let (ohw, hw, kk) = (oh * ow, h * w, c.kh * c.kw);
        let per_in = c.c_out / c.c_in;
        let avx2 = crate::qgemm::avx2_available();
        // Small planes (7x7 outputs) do a few hundred products per channel: several channels
        // per task, or scheduling costs more than the work.
        let per_task = (32768 / (ohw * kk).max(1)).max(1);
        out.par_chunks_mut(ohw)
            .enumerate()
            .with_min_len(per_task)
            .for_each(|(idx, dst)| {
                let (img, co) = (idx / c.c_out, idx % c.c_out);
                let ci = co / per_in;
                let x = &input[(img * c.c_in + ci) * hw..(img * c.c_in + ci + 1) * hw];
                if let Some(wf) = wts_f32 {
                    DW_F32.with_borrow_mut(|(plane, pad)| {
                        plane.resize(hw, 0.0);
                        encode_plane(&self.enc, x, plane, |n| n as f32);
                        let wk = &wf[co * kk..(co + 1) * kk];
                        // The sums into `dst`, then the epilogue in place.
                        let none = Activation::None;
                        crate::depthwise::fast_plane(c, h, w, plane, wk, 0.0, none, dst, pad);
                    });
                    self.epilogue_plane(co, dst);
                    return;
                }
                let wk = &wts[co * kk..(co + 1) * kk];
                PLANE.with(|p| {
                    let mut p = p.borrow_mut();
                    p.clear();
                    p.resize(hw + ohw + w, 0);
                    let (plane, rest) = p.split_at_mut(hw);
                    let (acc, row_tmp) = rest.split_at_mut(ohw);
                    let ch = DwChannel {
                        conv: c,
                        enc: &self.enc,
                        hw: (h, w, oh, ow),
                    };
                    if avx2 {
                        // SAFETY: AVX2 is present (checked at run time above).
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            depthwise_channel_avx2(&ch, x, wk, plane, row_tmp, acc)
                        };
                        #[cfg(not(target_arch = "x86_64"))]
                        depthwise_channel(&ch, x, wk, plane, row_tmp, acc);
                    } else {
                        depthwise_channel(&ch, x, wk, plane, row_tmp, acc);
                    }
                    for (d, &a) in dst.iter_mut().zip(acc.iter()) {
                        *d = a as f32;
                    }
                    self.epilogue_plane(co, dst);
                });
            });
    }

    /// A depthwise output plane of channel `co` from its integer sums (held exactly in f32):
    /// `act((sum * mult + bias) * scale + shift)`.
    fn epilogue_plane(&self, co: usize, dst: &mut [f32]) {
        let (m, b) = (self.mult[co], self.bias.as_ref().map_or(0.0, |b| b[co]));
        for d in dst.iter_mut() {
            *d = *d * m + b;
        }
        if let Some((sc, sh)) = &self.affine {
            let (sc, sh) = (sc[co], sh[co]);
            dst.iter_mut().for_each(|x| *x = *x * sc + sh);
        }
        self.act.apply_slice(dst);
    }
}

/// One depthwise channel's geometry and input encoder.
struct DwChannel<'a> {
    conv: &'a Conv2d,
    enc: &'a ActEncoder,
    /// Input h, w and output h, w.
    hw: (usize, usize, usize, usize),
}

/// Encodes one input channel `x` into `plane` and sums its integer window products into
/// `acc` (one i32 per output pixel). Each tap adds one contiguous slice of a row to one of the
/// output row, which vectorizes: with stride 2 in x the encoded rows are first split into
/// their even then odd columns (through `row_tmp`, `w` long), since the columns one tap reads
/// share a parity.
#[inline(always)]
fn depthwise_channel(
    ch: &DwChannel<'_>,
    x: &[f32],
    wk: &[i32],
    plane: &mut [i32],
    row_tmp: &mut [i32],
    acc: &mut [i32],
) {
    let c = ch.conv;
    let (h, w, oh, ow) = ch.hw;
    encode_plane(ch.enc, x, plane, |n| n);
    let s = c.stride[1];
    let phased = s == 2 && w > 1;
    if phased {
        for row in plane.chunks_exact_mut(w) {
            row_tmp[..w].copy_from_slice(row);
            crate::split_even_odd(&row_tmp[..w], row);
        }
    }
    acc.fill(0);
    for ky in 0..c.kh {
        for kx in 0..c.kw {
            let wv = wk[ky * c.kw + kx];
            if wv == 0 {
                continue;
            }
            let offx = (kx * c.dilation[1]) as isize - c.pads[1] as isize;
            let (ox0, ox1) = crate::conv::valid_range(offx, s, w, ow);
            if ox0 >= ox1 {
                continue;
            }
            let ix0 = (ox0 * s) as isize + offx;
            for oy in 0..oh {
                let iy = (oy * c.stride[0] + ky * c.dilation[0]) as isize - c.pads[0] as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let arow = &mut acc[oy * ow + ox0..oy * ow + ox1];
                let line = &plane[iy as usize * w..(iy as usize + 1) * w];
                if s == 1 || phased {
                    // Columns ix0, ix0 + s, ...: contiguous (in the split row when s == 2).
                    let start = match phased {
                        true => crate::split_index(ix0 as usize, w),
                        false => ix0 as usize,
                    };
                    let n = arow.len();
                    for (a, &v) in arow.iter_mut().zip(&line[start..start + n]) {
                        *a += wv * v;
                    }
                } else {
                    let row = &line[ix0 as usize..];
                    for (a, &v) in arow.iter_mut().zip(row.iter().step_by(s)) {
                        *a += wv * v;
                    }
                }
            }
        }
    }
}

/// `dst[i] = to(code of x[i])`: one depthwise input plane, with the uniform-grid test taken
/// once, outside the loop (so each loop vectorizes where its caller is compiled for AVX2).
#[inline(always)]
pub(crate) fn encode_plane<T>(enc: &ActEncoder, x: &[f32], dst: &mut [T], to: impl Fn(i32) -> T) {
    if enc.is_uniform() {
        for (d, &v) in dst.iter_mut().zip(x) {
            *d = to(enc.encode_uniform(v));
        }
    } else {
        for (d, &v) in dst.iter_mut().zip(x) {
            *d = to(enc.encode(v));
        }
    }
}

/// [`depthwise_channel`] compiled for AVX2.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn depthwise_channel_avx2(
    ch: &DwChannel<'_>,
    x: &[f32],
    wk: &[i32],
    plane: &mut [i32],
    row_tmp: &mut [i32],
    acc: &mut [i32],
) {
    depthwise_channel(ch, x, wk, plane, row_tmp, acc)
}

/// How many blocks of column panels a product over `images` images (and groups) is cut
/// into: enough that no block holds more than `most` panels, and, when there are few tasks,
/// a multiple of the threads, so that equal blocks keep every thread busy to the end (13
/// panels as 4, 4, 4, 1 left one thread idle for a quarter of the layer).
fn block_count(npanels: usize, most: usize, images: usize, threads: usize) -> usize {
    let mut b = npanels.div_ceil(most.max(1)).max(1);
    if images * b < 4 * threads {
        while !(images * b).is_multiple_of(threads) && b < npanels {
            b += 1;
        }
    }
    b
}

/// The bytes of `buf` as `n` images' quad plane sets of `per_image` bytes each (an
/// output stored as codes); asserts the room.
fn code_planes(buf: &mut [f32], n: usize, per_image: usize) -> Vec<&mut [u8]> {
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(buf);
    assert!(
        n * per_image <= bytes.len(),
        "qconv: no room for output codes"
    );
    bytes.chunks_mut(per_image.max(1)).take(n).collect()
}

/// Encodes a layer input into channel quads `[image][group][quad][pixel][4]`, every element
/// written (the zero code in padding channels).
fn encode_quads<T: BlockBuf>(
    dst: &mut [T],
    input: &[f32],
    inl: InLayout,
    (n, g, cig, cq, hw): (usize, usize, usize, usize, usize),
    enc: &ActEncoder,
    zero: T,
) {
    debug_assert_eq!(dst.len(), n * g * cq * hw * 4);
    if hw == 1 {
        // One pixel per quad (a Gemm at batch 1, a 1x1 plane): the quads are the channels
        // in order, too few per plane to hand out to threads one by one.
        let z = zero.widen() as i32;
        for (ig, d) in dst.chunks_exact_mut(cq * 4).enumerate() {
            let (img, gi) = (ig / g, ig % g);
            let base = img * inl.img + gi * cig * inl.chan;
            let (d, pad) = d.split_at_mut(cig);
            pad.fill(zero);
            if inl.chan == 1 {
                encode_plane(enc, &input[base..base + cig], d, |n| T::from_i32(n + z));
            } else {
                for (c, d) in d.iter_mut().enumerate() {
                    *d = T::from_i32(enc.encode(input[base + c * inl.chan]) + z);
                }
            }
        }
        return;
    }
    let avx2 = crate::qgemm::avx2_available();
    // Quad planes split into runs of pixels, so a 3-channel stem (one plane) still uses
    // every thread.
    const RUN: usize = 4096;
    dst.par_chunks_mut(hw * 4)
        .enumerate()
        .flat_map(|(idx, plane)| {
            plane
                .par_chunks_mut(RUN * 4)
                .enumerate()
                .map(move |(r, d)| (idx, r * RUN, d))
        })
        .for_each(|(idx, p0, dst)| {
            let (ig, q) = (idx / cq, idx % cq);
            let (img, gi) = (ig / g, ig % g);
            let chans = cig.saturating_sub(4 * q).min(4);
            let base = img * inl.img + (gi * cig + 4 * q) * inl.chan + p0 * inl.pix;
            let src = QuadSource {
                input,
                base,
                chan: inl.chan,
                pix: inl.pix,
                chans,
            };
            if avx2 {
                // SAFETY: AVX2 is present (checked at run time just above).
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    let whole = match T::as_u8_mut(dst) {
                        Some(d) if enc.is_uniform() && src.pix == 1 => {
                            encode_quad_u8_uniform_avx2(enc, zero.widen() as u8, &src, d)
                        }
                        _ => 0,
                    };
                    let rest = QuadSource {
                        base: src.base + whole,
                        ..src
                    };
                    encode_quad_avx2(enc, zero, &rest, &mut dst[whole * 4..])
                };
                #[cfg(not(target_arch = "x86_64"))]
                encode_quad(enc, zero, &src, dst);
            } else {
                encode_quad(enc, zero, &src, dst);
            }
        });
}

/// The up to 4 channels of one quad of a layer input.
struct QuadSource<'a> {
    input: &'a [f32],
    base: usize,
    chan: usize,
    pix: usize,
    chans: usize,
}

/// Encodes one quad `dst: [pixel][4]`, in runs of 64 pixels: gather each channel's run,
/// encode it contiguously (vectorizes), then interleave into whole 4-byte pixels.
#[inline(always)]
fn encode_quad<T: ActInt>(enc: &ActEncoder, zero: T, src: &QuadSource<'_>, dst: &mut [T]) {
    let hw = dst.len() / 4;
    let z = zero.widen() as i32;
    let uniform = enc.is_uniform();
    let mut xs = [0f32; 64];
    let mut tmp = [[zero; 64]; 4];
    for p0 in (0..hw).step_by(64) {
        let len = (hw - p0).min(64);
        for (t, tmp) in tmp.iter_mut().enumerate().take(src.chans) {
            let b = src.base + t * src.chan + p0 * src.pix;
            if src.pix == 1 {
                xs[..len].copy_from_slice(&src.input[b..b + len]);
            } else {
                for (p, x) in xs[..len].iter_mut().enumerate() {
                    *x = src.input[b + p * src.pix];
                }
            }
            if uniform {
                for (d, &x) in tmp[..len].iter_mut().zip(&xs) {
                    *d = T::from_i32(enc.encode_uniform(x) + z);
                }
            } else {
                for (d, &x) in tmp[..len].iter_mut().zip(&xs) {
                    *d = T::from_i32(enc.encode(x) + z);
                }
            }
        }
        T::interleave4(&tmp, len, &mut dst[p0 * 4..(p0 + len) * 4]);
    }
}

/// One quad of u8 codes on a uniform grid from 4 channels of contiguous pixels, 8 pixels per
/// step in registers: each 32-bit lane gathers one pixel's 4 codes. The clamp, the rounding
/// (`cvtps` rounds half to even, as [`round_even_small`]) and NaN to `+max` are those of
/// [`ActEncoder::encode_uniform`]. Returns how many pixels it did (a multiple of 8; the
/// caller encodes the rest).
///
/// Lanes of missing channels (`src.chans < 4`) get the zero code.
///
/// # Safety
/// The CPU must have AVX2; the encoder is uniform with `max + zero <= 255`; `src.pix == 1`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn encode_quad_u8_uniform_avx2(
    enc: &ActEncoder,
    zero: u8,
    src: &QuadSource<'_>,
    dst: &mut [u8],
) -> usize {
    use std::arch::x86_64::*;
    let hw = dst.len() / 4;
    let whole = hw / 8 * 8;
    let chans: Vec<&[f32]> = (0..src.chans)
        .map(|t| &src.input[src.base + t * src.chan..][..hw])
        .collect();
    // The zero code in the lanes of missing channels.
    let mut pad = 0i32;
    for t in src.chans..4 {
        pad |= (zero as i32) << (8 * t);
    }
    let pad = _mm256_set1_epi32(pad);
    for p in (0..whole).step_by(8) {
        let mut word = pad;
        for (t, ch) in chans.iter().enumerate() {
            // SAFETY: p + 8 <= whole <= hw = ch.len().
            let x = unsafe { _mm256_loadu_ps(ch.as_ptr().add(p)) };
            let n = enc.encode_uniform_avx2(x, zero);
            let shifted = _mm256_sllv_epi32(n, _mm256_set1_epi32(8 * t as i32));
            word = _mm256_or_si256(word, shifted);
        }
        // SAFETY: bytes 4p .. 4p + 32 <= 4 * whole <= dst.len().
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().add(4 * p) as *mut __m256i, word) };
    }
    whole
}

/// [`encode_quad`] compiled for AVX2 (8 lanes instead of SSE2's 4).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn encode_quad_avx2<T: ActInt>(
    enc: &ActEncoder,
    zero: T,
    src: &QuadSource<'_>,
    dst: &mut [T],
) {
    encode_quad(enc, zero, src, dst)
}

/// im2col of one panel: columns `j0..j0+NR` (output pixels) of one image and group, from its
/// channel quads `src: [quad][pixel][4]`; K quad `(ky * kw + kx) * cq + quad`. Padding (and
/// the columns past `ohw` of a last, partial panel) reads the encoded zero. The panel's
/// columns are taken a run within one output row at a time, so each (tap, quad) is one
/// strided copy between two zero-filled ends, with no per-element bounds logic. `phased`:
/// stride 2 with each row of `src` stored as its even columns, then its odd ones (a copy of
/// contiguous quads).
#[allow(clippy::too_many_arguments)]
fn gather_panel<T: Int>(
    c: &Conv2d,
    src: &[T],
    zero: T,
    (h, w, ow, phased): (usize, usize, usize, bool),
    cq: usize,
    ohw: usize,
    j0: usize,
    dst: &mut [T],
) {
    let cols = ohw.saturating_sub(j0).min(NR);
    let hw = h * w;
    let (src4, _) = src.as_chunks::<4>();
    let (dst4, _) = dst.as_chunks_mut::<4>();
    let zero4 = [zero; 4];
    let taps = c.kh * c.kw;
    let (sy, sx) = (c.stride[0], c.stride[1]);
    // Per kernel column: its input offset and the output columns it finds inside the row
    // (two divisions, hoisted out of the run, row and quad loops).
    let col_range = |kx: usize| {
        let off = (kx * c.dilation[1]) as isize - c.pads[1] as isize;
        let (vx0, vx1) = valid_range(off, sx, w, ow);
        (off, vx0, vx1)
    };
    let mut small = [(0isize, 0usize, 0usize); 16];
    let big: Vec<(isize, usize, usize)>;
    let ranges: &[(isize, usize, usize)] = if c.kw <= small.len() {
        for (kx, r) in small.iter_mut().enumerate().take(c.kw) {
            *r = col_range(kx);
        }
        &small[..c.kw]
    } else {
        big = (0..c.kw).map(col_range).collect();
        &big
    };
    let mut cc0 = 0;
    while cc0 < cols {
        let (oy, ox0) = ((j0 + cc0) / ow, (j0 + cc0) % ow);
        let len = (ow - ox0).min(cols - cc0);
        for ky in 0..c.kh {
            let iy = (oy * sy + ky * c.dilation[0]) as isize - c.pads[0] as isize;
            let row_ok = iy >= 0 && iy < h as isize;
            for (kx, &(off, vx0, vx1)) in ranges.iter().enumerate() {
                let pos = ky * c.kw + kx;
                // Output columns whose input column lies inside the row, within this run.
                let (a, b) = (vx0.clamp(ox0, ox0 + len), vx1.clamp(ox0, ox0 + len));
                for q in 0..cq {
                    let d = &mut dst4[(pos * cq + q) * NR + cc0..][..len];
                    if !row_ok || a >= b {
                        d.fill(zero4);
                        continue;
                    }
                    d[..a - ox0].fill(zero4);
                    d[b - ox0..].fill(zero4);
                    let row = &src4[q * hw + iy as usize * w..][..w];
                    let first = (a as isize * sx as isize + off) as usize;
                    let mid = &mut d[a - ox0..b - ox0];
                    // The start of a contiguous run (columns first, first + 2, ... share a
                    // parity: one run of a half).
                    let start = match (sx, phased) {
                        (1, _) => Some(first),
                        (_, true) => Some(crate::split_index(first, w)),
                        _ => None,
                    };
                    if let Some(start) = start {
                        let run = &row[start..start + mid.len()];
                        // A whole panel row is one fixed-size copy (a vector move, not a call).
                        match (
                            <&mut [[T; 4]; NR]>::try_from(&mut *mid),
                            <&[[T; 4]; NR]>::try_from(run),
                        ) {
                            (Ok(m), Ok(r)) => *m = *r,
                            _ => mid.copy_from_slice(run),
                        }
                    } else {
                        for (dv, sv) in mid.iter_mut().zip(row[first..].iter().step_by(sx)) {
                            *dv = *sv;
                        }
                    }
                }
            }
        }
        cc0 += len;
    }
    if cols < NR {
        for pos_q in 0..taps * cq {
            dst4[pos_q * NR + cols..(pos_q + 1) * NR].fill(zero4);
        }
    }
}

/// A Gemm `out[b, r] = act(sum_k x[b, k] * w[r, k] * mult[r] + bias[r])` on AFP integers:
/// a 1x1 convolution whose pixels are the batch rows.
#[derive(Debug, Clone)]
pub struct QGemm {
    inner: QConv,
}

impl QGemm {
    /// `w`: integer weights `[m, k]`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        m: usize,
        k: usize,
        w: &[i32],
        w_max: u32,
        enc: ActEncoder,
        mult: Vec<f32>,
        bias: Option<Vec<f32>>,
        act: Activation,
    ) -> Result<QGemm, String> {
        let mut inner = QConv::new(Conv2d::pointwise(k, m), w, w_max, enc, mult, bias, act)?;
        // A Gemm runs at batch 1 as a matrix-vector product, memory bound: weights of at
        // most 16 distinct values (4-bit formats) get a copy at half the bytes for it.
        if let Some(QWeights::Gemm { groups, .. }) = std::sync::Arc::get_mut(&mut inner.weights) {
            for g in groups.iter_mut() {
                if let PackedWeights::U8I8(a, _) = g {
                    a.add_nibbles();
                }
            }
        }
        Ok(QGemm { inner })
    }
    pub fn rows(&self) -> usize {
        self.inner.conv.c_out
    }
    pub fn depth(&self) -> usize {
        self.inner.conv.c_in
    }
    pub fn weight_bytes(&self) -> usize {
        self.inner.weight_bytes()
    }
    pub fn kernel_name(&self) -> &'static str {
        self.inner.kernel_name()
    }

    /// `x: [batch, k]`, `out: [batch, m]`, read and written in place (the batch rows are the
    /// pixels of one image).
    pub fn run(&self, batch: usize, x: &[f32], out: &mut [f32], scratch: &mut QScratch) {
        let (m, k) = (self.rows(), self.depth());
        assert_eq!(x.len(), batch * k, "qgemm: input length");
        assert_eq!(out.len(), batch * m, "qgemm: output length");
        if out.is_empty() {
            return;
        }
        let inl = InLayout {
            img: batch * k,
            chan: 1,
            pix: k,
        };
        let outl = OutLayout {
            img: batch * m,
            rs: 1,
            cs: m,
        };
        let io = Io {
            n: 1,
            h: 1,
            w: batch,
            input: x,
            inl,
            outl,
            residual: None,
            act: self.inner.act,
        };
        self.inner.run_gemm(io, out, scratch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use afp_format::{Format, Grid, ZeroMode};

    /// The encoder equals `Grid::encode` + `Format::integer` for every Subnormal format of
    /// 2..8 bits with an i32 integer view, at several offsets, on values around every level
    /// (ties included), out of range, negative, NaN and infinities.
    #[test]
    fn encoder_matches_the_grid() {
        for signed in [true, false] {
            for bits in 2..=8u32 {
                let mag = if signed { bits - 1 } else { bits };
                for e in 0..=mag {
                    let Ok(f) = Format::new(signed, e, mag - e, ZeroMode::Subnormal) else {
                        continue;
                    };
                    if f.int_bound() > i32::MAX as f64 {
                        continue;
                    }
                    for t in [-9, -3, 0, 2] {
                        let g = Grid::new(f, t).unwrap();
                        let enc = ActEncoder::new(
                            g.int_unit_exp(),
                            f.man_bits(),
                            f.int_bound() as u64,
                            signed,
                        )
                        .unwrap();
                        let lv = g.levels();
                        let mut xs = vec![0.0, -0.0, f32::INFINITY, -f32::INFINITY, 1e30, -1e30];
                        for w in lv.windows(2) {
                            let mid = (w[0] + w[1]) / 2.0;
                            xs.extend([w[0], mid, mid.next_up(), mid.next_down(), -mid]);
                        }
                        let top = *lv.last().unwrap();
                        xs.extend([top * 1.01, top * 1.5, -top * 3.0]);
                        for &x in &xs {
                            let want = f.integer(g.encode_finite(x)).unwrap() as i32;
                            assert_eq!(enc.encode(x), want, "{} t={t} x={x}", f.name());
                            if enc.is_uniform() {
                                assert_eq!(enc.encode_uniform(x), want, "{} t={t} x={x}", f.name());
                            }
                        }
                        assert_eq!(enc.is_uniform(), e <= 1, "{}", f.name());
                        let want = f.integer(g.encode_finite(f32::NAN)).unwrap() as i32;
                        assert_eq!(enc.encode(f32::NAN), want, "{} NaN", f.name());
                    }
                }
            }
        }
    }

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    /// Reference: the integer convolution in i64 from the encoded input, then the same
    /// epilogue arithmetic.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        c: &Conv2d,
        n: usize,
        h: usize,
        w: usize,
        x: &[f32],
        wt: &[i32],
        enc: &ActEncoder,
        mult: &[f32],
        bias: &[f32],
        act: Activation,
    ) -> Vec<f32> {
        let (oh, ow) = c.out_hw(h, w);
        let (cig, cog) = (c.c_in / c.group, c.c_out / c.group);
        let k = cig * c.kh * c.kw;
        let mut out = vec![0f32; n * c.c_out * oh * ow];
        for img in 0..n {
            for co in 0..c.c_out {
                let gi = co / cog;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0i64;
                        for ci in 0..cig {
                            for ky in 0..c.kh {
                                for kx in 0..c.kw {
                                    let iy = (oy * c.stride[0] + ky * c.dilation[0]) as isize
                                        - c.pads[0] as isize;
                                    let ix = (ox * c.stride[1] + kx * c.dilation[1]) as isize
                                        - c.pads[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let xi = x[((img * c.c_in + gi * cig + ci) * h + iy as usize)
                                        * w
                                        + ix as usize];
                                    let wi = wt[co * k + (ci * c.kh + ky) * c.kw + kx];
                                    acc += enc.encode(xi) as i64 * wi as i64;
                                }
                            }
                        }
                        out[((img * c.c_out + co) * oh + oy) * ow + ox] =
                            act.apply(acc as f32 * mult[co] + bias[co]);
                    }
                }
            }
        }
        out
    }

    /// The u8 register encoder (uniform grids, 8 pixels a step) equals the scalar encoder on
    /// ties, clamping, negatives, NaN and infinities, signed and unsigned, with a tail of
    /// pixels left to the scalar loop, missing channels at the zero code, planes in runs.
    #[test]
    fn register_encoder_matches_the_scalar_one() {
        let specials = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            0.0,
            1e30,
            -1e30,
        ];
        let encs = [(false, -6, 7u32, 255u64, 0u8), (true, -5, 6, 127, 128)];
        for (signed, ue, mb, max, zero) in encs {
            let enc = ActEncoder::new(ue, mb, max, signed).unwrap();
            assert!(enc.is_uniform());
            let unit = 2f32.powi(ue);
            // Whole quads, a 3-channel quad (the stem), a plane split into runs.
            for (cig, hw) in [(4usize, 37usize), (3, 37), (2, 4100)] {
                let input: Vec<f32> = (0..cig * hw)
                    .map(|i| match i % 5 {
                        0 => specials[(i / 5) % specials.len()],
                        1 => ((i % 300) as f32 - 150.0 + 0.5) * unit, // ties
                        _ => ((i % 300) as f32 - 120.0) * 0.37 * unit,
                    })
                    .collect();
                let mut got = vec![zero; 4 * hw];
                let inl = InLayout {
                    img: cig * hw,
                    chan: hw,
                    pix: 1,
                };
                encode_quads(&mut got, &input, inl, (1, 1, cig, 1, hw), &enc, zero);
                for p in 0..hw {
                    for t in 0..4 {
                        let want = if t < cig {
                            (enc.encode(input[t * hw + p]) + zero as i32) as u8
                        } else {
                            zero
                        };
                        assert_eq!(got[p * 4 + t], want, "{signed} {cig}x{hw} pixel {p} ch {t}");
                    }
                }
                // The 16-lane encoder of the VNNI epilogue, on the same values.
                #[cfg(target_arch = "x86_64")]
                if crate::qgemm::vnni_available() {
                    use std::arch::x86_64::*;
                    for chunk in input.chunks_exact(16) {
                        let mut codes = [0i32; 16];
                        // SAFETY: AVX-512 F present (checked above); 16 floats read from a
                        // 16-element chunk, 16 i32 written to a 16-element array.
                        unsafe {
                            let v = _mm512_loadu_ps(chunk.as_ptr());
                            let c = enc.encode_uniform_avx512(v, zero);
                            _mm512_storeu_si512(codes.as_mut_ptr() as *mut __m512i, c);
                        }
                        for (&x, &c) in chunk.iter().zip(&codes) {
                            assert_eq!(c, enc.encode(x) + zero as i32, "{signed} {x}");
                        }
                    }
                }
            }
        }
    }

    /// A producer storing its output as the consumer's input quads, and the consumer reading
    /// them, give the consumer's outputs bit for bit as handing over f32 does: 1x1 and 3x3
    /// consumers, stride 2 (the split rows), a narrow last panel (7x7), the matrix-vector
    /// path (2x2 pixels), output channels not a multiple of 4, a fused residual; uniform
    /// unsigned and signed codes (the register epilogue) and a non-uniform grid (the scalar
    /// one); AVX2 and portable.
    #[test]
    fn quads_between_layers_equal_f32() {
        let mut seed = 23;
        // (producer, consumer, n, h, w, residual on the producer)
        let cases: Vec<(Conv2d, Conv2d, usize, usize, usize, bool)> = vec![
            (
                conv(8, 10, 3, 3, [1, 1], [1, 1], [1; 4], 1),
                conv(10, 12, 1, 1, [1, 1], [1, 1], [0; 4], 1),
                1,
                9,
                11,
                false,
            ),
            (
                conv(12, 8, 1, 1, [1, 1], [1, 1], [0; 4], 1),
                conv(8, 6, 3, 3, [1, 1], [1, 1], [1; 4], 1),
                2,
                7,
                7,
                true,
            ),
            (
                conv(8, 8, 1, 1, [1, 1], [1, 1], [0; 4], 1),
                conv(8, 8, 3, 3, [2, 2], [1, 1], [1; 4], 1),
                1,
                10,
                12,
                false,
            ),
            (
                conv(16, 8, 1, 1, [1, 1], [1, 1], [0; 4], 1),
                conv(8, 8, 1, 1, [1, 1], [1, 1], [0; 4], 1),
                3,
                2,
                2,
                true,
            ),
        ];
        // The consumer's input codes: uE1M7, sE1M6 (stored + 128), a non-uniform uE2M5.
        let encs = [
            (false, -6, 7u32, 255u64),
            (true, -5, 6, 127),
            (false, -6, 5, 252),
        ];
        let _path = crate::test_rand::KERNEL_PATH_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Each integer path this CPU has: the best (VNNI where present), AVX2, portable.
        for (no_vnni, force_portable) in [(false, false), (true, false), (false, true)] {
            crate::qgemm::FORCE_NO_VNNI.store(no_vnni, std::sync::atomic::Ordering::SeqCst);
            crate::qgemm::FORCE_PORTABLE.store(force_portable, std::sync::atomic::Ordering::SeqCst);
            for (pc, cc, n, h, w, residual) in &cases {
                for &(signed, ue, mb, max) in &encs {
                    let mut layer = |c: &Conv2d, enc: ActEncoder, act| {
                        let k = c.depth();
                        let wt: Vec<i32> = (0..c.c_out * k)
                            .map(|_| (lcg(&mut seed) % 57) as i32 - 28)
                            .collect();
                        let mult = (0..c.c_out)
                            .map(|r| 2f32.powi(-12 - (r as i32 % 3)))
                            .collect();
                        let bias = (0..c.c_out).map(|r| r as f32 * 0.125 - 0.5).collect();
                        QConv::new(c.clone(), &wt, 28, enc, mult, Some(bias), act).unwrap()
                    };
                    let in_enc = ActEncoder::new(-6, 7, 255, false).unwrap();
                    let p_act = if *residual {
                        Activation::None
                    } else {
                        Activation::Relu
                    };
                    let prod = layer(pc, in_enc, p_act);
                    let cons_enc = ActEncoder::new(ue, mb, max, signed).unwrap();
                    let cons = layer(cc, cons_enc, Activation::Relu);
                    let x: Vec<f32> = (0..n * pc.c_in * h * w)
                        .map(|_| (lcg(&mut seed) % 20000) as f32 / 4000.0)
                        .collect();
                    let (oh, ow) = pc.out_hw(*h, *w);
                    let mid_len = n * pc.c_out * oh * ow;
                    let res: Vec<f32> = (0..mid_len)
                        .map(|_| (lcg(&mut seed) % 2000) as f32 / 500.0 - 2.0)
                        .collect();
                    let res = residual.then_some(&res[..]);
                    let (qh, qw) = cc.out_hw(oh, ow);
                    let run_pair = |prod: &QConv, cons: &QConv| {
                        let mut scratch = QScratch::default();
                        let mut mid = vec![f32::NAN; mid_len];
                        let act = Activation::Relu;
                        prod.run_add(*n, *h, *w, &x, res, act, &mut mid, &mut scratch);
                        let mut out = vec![f32::NAN; n * cc.c_out * qh * qw];
                        cons.run(*n, oh, ow, &mid, &mut out, &mut scratch);
                        (mid, out)
                    };
                    let (mid, want) = run_pair(&prod, &cons);
                    assert!(quads_fit(&[*n, pc.c_out, oh, ow]));
                    let (enc, zero) = cons.quads_input().unwrap();
                    assert_eq!(zero, if signed { 128 } else { 0 });
                    let (mid_quads, got) = run_pair(
                        &prod.writing_quads(enc, zero).unwrap(),
                        &cons.reading_quads().unwrap(),
                    );
                    assert_eq!(got, want, "{pc:?} -> {cc:?}, codes {signed} {max}");
                    // The codes handed over are the consumer's own encoding of the f32
                    // output, the zero code in the channels past the last quad's included.
                    let cq = pc.c_out.div_ceil(4);
                    let mut own = vec![0u8; n * cq * oh * ow * 4];
                    let inl = InLayout {
                        img: pc.c_out * oh * ow,
                        chan: oh * ow,
                        pix: 1,
                    };
                    let shape = (*n, 1, pc.c_out, cq, oh * ow);
                    encode_quads(&mut own, &mid, inl, shape, &enc, zero);
                    let handed: &[u8] = bytemuck::cast_slice(&mid_quads);
                    assert_eq!(
                        &handed[..own.len()],
                        &own[..],
                        "{pc:?} codes {signed} {max}"
                    );
                    // The consumer's own encoder for handed-over codes gives the same bytes,
                    // and the consumer reading them computes the same outputs.
                    let (ch, cw) = (oh, ow);
                    let enc_in = cons.encode_input_quads(*n, ch, cw, &mid).unwrap();
                    let own_in: &[u8] = bytemuck::cast_slice(&enc_in);
                    assert_eq!(&own_in[..own.len()], &own[..], "{cc:?} encode_input_quads");
                    let mut again = vec![f32::NAN; want.len()];
                    cons.reading_quads().unwrap().run(
                        *n,
                        ch,
                        cw,
                        &enc_in,
                        &mut again,
                        &mut QScratch::default(),
                    );
                    assert_eq!(again, want, "{cc:?} from encode_input_quads");
                    // Codes too: the same f32 output, and after it the consumer's codes,
                    // byte for byte its own encoding (a buffer full of junk first).
                    let both = prod.writing_codes_too(enc, zero).unwrap();
                    let extra = quads_f32_len(&[*n, pc.c_out, oh, ow]).unwrap();
                    let mut buf = vec![f32::from_bits(0x7FC0_A5A5); mid_len + extra];
                    let act = Activation::Relu;
                    let mut scratch = QScratch::default();
                    both.run_add(*n, *h, *w, &x, res, act, &mut buf, &mut scratch);
                    let (vals, codes) = buf.split_at(mid_len);
                    let same = vals
                        .iter()
                        .zip(&mid)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{pc:?} codes too: values");
                    let code_bytes: &[u8] = bytemuck::cast_slice(codes);
                    assert_eq!(
                        &code_bytes[..own.len()],
                        &own[..],
                        "{pc:?} codes too: codes"
                    );
                    let mut from_codes = vec![f32::NAN; want.len()];
                    let reader = cons.reading_quads().unwrap();
                    reader.run(*n, ch, cw, codes, &mut from_codes, &mut scratch);
                    assert_eq!(from_codes, want, "{cc:?} reading codes written too");
                }
            }
        }
        crate::qgemm::FORCE_PORTABLE.store(false, std::sync::atomic::Ordering::SeqCst);
        crate::qgemm::FORCE_NO_VNNI.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    #[test]
    fn block_counts_balance_the_threads() {
        // 13 panels of at most 4: four blocks (3, 3, 3, 4), an even count for 2 threads.
        assert_eq!(block_count(13, 4, 1, 2), 4);
        // 49 panels of at most 8: 7 blocks would leave one thread a block more.
        assert_eq!(block_count(49, 8, 1, 2), 8);
        // Enough tasks already, or too few panels to round up.
        assert_eq!(block_count(196, 17, 1, 2), 12);
        assert_eq!(block_count(1, 4, 1, 2), 1);
        assert_eq!(block_count(3, 1, 1, 2), 3);
        // Images count as tasks: 3 blocks of one image would be rounded to 4, of two not.
        assert_eq!(block_count(5, 2, 1, 2), 4);
        assert_eq!(block_count(5, 2, 2, 2), 3);
    }

    /// Every path (u8 unsigned, u8 with the signed shift, i16, depthwise; AVX2 and portable)
    /// gives exactly the reference on convolutions with strides, pads, dilations and groups,
    /// with and without a fused residual add.
    #[test]
    fn qconv_matches_the_integer_reference() {
        let mut seed = 11;
        let cases: Vec<(Conv2d, usize, usize, usize)> = vec![
            (conv(8, 20, 1, 1, [1, 1], [1, 1], [0; 4], 1), 2, 5, 7),
            (conv(3, 16, 3, 3, [2, 2], [1, 1], [1, 1, 1, 1], 1), 1, 9, 11),
            (conv(6, 9, 3, 3, [1, 1], [2, 2], [2, 1, 0, 2], 3), 2, 8, 6),
            (conv(5, 5, 3, 3, [1, 1], [1, 1], [1, 1, 1, 1], 5), 1, 6, 7),
            (conv(4, 8, 5, 5, [2, 1], [1, 1], [2, 2, 2, 2], 4), 1, 9, 9),
            (conv(64, 12, 1, 1, [1, 1], [1, 1], [0; 4], 1), 3, 1, 1),
            // Stride 2 in x (the even/odd split rows): 1x1, and dilated with odd pads.
            (conv(8, 12, 1, 1, [2, 2], [1, 1], [0; 4], 1), 2, 9, 12),
            (conv(4, 8, 3, 3, [1, 2], [1, 2], [1, 3, 2, 0], 1), 1, 7, 13),
            (conv(3, 8, 7, 7, [2, 2], [1, 1], [3; 4], 1), 1, 21, 40),
            // Tap rows (few input channels): the stem at 2 images; 1 channel; 2 channels with
            // row dilation, uneven pads and stride 2 in x (16-column vector gathers where a
            // panel lies in one output row); a stride too wide for the vector gather.
            (conv(3, 8, 7, 7, [2, 2], [1, 1], [3; 4], 1), 2, 20, 38),
            (conv(1, 8, 3, 3, [1, 1], [1, 1], [1; 4], 1), 2, 5, 18),
            (conv(2, 12, 5, 5, [1, 2], [2, 1], [2, 1, 2, 3], 1), 1, 9, 40),
            (conv(3, 8, 11, 11, [4, 4], [1, 1], [2; 4], 1), 1, 30, 61),
            // 7x7 outputs: 49 columns, a last panel of one (done column by column).
            (conv(8, 12, 3, 3, [1, 1], [1, 1], [1; 4], 1), 2, 7, 7),
            // Depthwise with stride 2 (split rows): 3x3 and 5x5, odd and even widths.
            (conv(6, 6, 3, 3, [2, 2], [1, 1], [1; 4], 6), 2, 9, 11),
            (conv(4, 4, 5, 5, [2, 2], [1, 1], [2, 1, 2, 2], 4), 1, 12, 14),
        ];
        // (signed, unit_exp, man_bits, max): uE1M7, sE1M6, uE3M5 (i16), sE2M5.
        let encs = [
            (false, -6, 7u32, 255u64),
            (true, -5, 6, 127),
            (false, -8, 5, 4032),
            (true, -5, 5, 126),
        ];
        // Buffers are not cleared between layers: start them full of junk, so a code the
        // encoder or the gather fails to write shows in the results.
        let mut shared = QScratch {
            quads_u8: vec![0xA5; 1 << 16],
            quads_i16: vec![0x5A5A; 1 << 16],
        };
        rayon::broadcast(|_| {
            BLOCK_U8.with_borrow_mut(|b| *b = vec![0xA5; 1 << 18]);
            BLOCK_I16.with_borrow_mut(|b| *b = vec![0x5A5A; 1 << 18]);
        });
        let _path = crate::test_rand::KERNEL_PATH_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (no_vnni, force_portable) in [(false, false), (true, false), (false, true)] {
            crate::qgemm::FORCE_NO_VNNI.store(no_vnni, std::sync::atomic::Ordering::SeqCst);
            crate::qgemm::FORCE_PORTABLE.store(force_portable, std::sync::atomic::Ordering::SeqCst);
            // The f32 depthwise path runs on the FP32 kernel's AVX2 rows.
            crate::sgemm::FORCE_PORTABLE.store(force_portable, std::sync::atomic::Ordering::SeqCst);
            for (c, n, h, w) in &cases {
                for &(signed, ue, mb, max) in &encs {
                    let enc = ActEncoder::new(ue, mb, max, signed).unwrap();
                    let k = c.depth();
                    let w_max = 28u32;
                    let wt: Vec<i32> = (0..c.c_out * k)
                        .map(|_| (lcg(&mut seed) % 57) as i32 - 28)
                        .collect();
                    let x: Vec<f32> = (0..n * c.c_in * h * w)
                        .map(|_| (lcg(&mut seed) % 20000) as f32 / 2000.0 - 3.0)
                        .collect();
                    let mult: Vec<f32> = (0..c.c_out)
                        .map(|r| 2f32.powi(-(r as i32 % 5) - 8))
                        .collect();
                    let bias: Vec<f32> = (0..c.c_out).map(|r| r as f32 * 0.25 - 1.0).collect();
                    let q = QConv::new(
                        c.clone(),
                        &wt,
                        w_max,
                        enc,
                        mult.clone(),
                        Some(bias.clone()),
                        Activation::Relu,
                    )
                    .unwrap();
                    let (oh, ow) = c.out_hw(*h, *w);
                    let mut got = vec![f32::NAN; n * c.c_out * oh * ow];
                    q.run(*n, *h, *w, &x, &mut got, &mut shared);
                    let want =
                        reference(c, *n, *h, *w, &x, &wt, &enc, &mult, &bias, Activation::Relu);
                    assert_eq!(
                        got,
                        want,
                        "{c:?} enc {signed} {max} kernel {}",
                        q.kernel_name()
                    );
                    // A fused residual Add: the bits of the layer without activation, then
                    // the add, then the activation.
                    let q0 = QConv::new(
                        c.clone(),
                        &wt,
                        w_max,
                        enc,
                        mult.clone(),
                        Some(bias.clone()),
                        Activation::None,
                    )
                    .unwrap();
                    let res: Vec<f32> = (0..got.len())
                        .map(|_| (lcg(&mut seed) % 2000) as f32 / 500.0 - 2.0)
                        .collect();
                    let mut fused = vec![f32::NAN; got.len()];
                    let mut scratch = QScratch::default();
                    let act = Activation::Relu;
                    q0.run_add(*n, *h, *w, &x, Some(&res), act, &mut fused, &mut scratch);
                    let plain =
                        reference(c, *n, *h, *w, &x, &wt, &enc, &mult, &bias, Activation::None);
                    let want: Vec<f32> = plain
                        .iter()
                        .zip(&res)
                        .map(|(&p, &r)| act.apply(p + r))
                        .collect();
                    assert_eq!(fused, want, "{c:?} enc {signed} {max} residual");
                }
            }
        }
        crate::qgemm::FORCE_PORTABLE.store(false, std::sync::atomic::Ordering::SeqCst);
        crate::qgemm::FORCE_NO_VNNI.store(false, std::sync::atomic::Ordering::SeqCst);
        crate::sgemm::FORCE_PORTABLE.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(
        c_in: usize,
        c_out: usize,
        kh: usize,
        kw: usize,
        stride: [usize; 2],
        dilation: [usize; 2],
        pads: [usize; 4],
        group: usize,
    ) -> Conv2d {
        Conv2d {
            c_in,
            c_out,
            kh,
            kw,
            stride,
            dilation,
            pads,
            group,
        }
    }

    /// A Gemm equals the reference on a batch, with the batch as pixels.
    #[test]
    fn qgemm_matches_the_integer_reference() {
        let (m, k) = (37, 70);
        let mut seed = 3;
        let wt: Vec<i32> = (0..m * k)
            .map(|_| (lcg(&mut seed) % 25) as i32 - 12)
            .collect();
        let enc = ActEncoder::new(-5, 7, 255, false).unwrap();
        let mult = vec![0.125f32; m];
        let q = QGemm::new(m, k, &wt, 12, enc, mult, None, Activation::None).unwrap();
        // Batches 1 and 2 take the matrix-vector path, 5 the tiled one.
        for batch in [1, 2, 5] {
            let x: Vec<f32> = (0..batch * k)
                .map(|_| (lcg(&mut seed) % 1000) as f32 / 100.0)
                .collect();
            let mut got = vec![0f32; batch * m];
            q.run(batch, &x, &mut got, &mut QScratch::default());
            for b in 0..batch {
                for r in 0..m {
                    let acc: i64 = (0..k)
                        .map(|kk| enc.encode(x[b * k + kk]) as i64 * wt[r * k + kk] as i64)
                        .sum();
                    assert_eq!(got[b * m + r], acc as f32 * 0.125, "batch {batch}");
                }
            }
        }
    }

    /// 4-bit weights (E2M1's integers) at batch 1 run from the nibble copy: the same outputs
    /// as from the i8 panels and as the integer reference, bit for bit, for partial row groups,
    /// an odd number of quads, and row groups split between tasks; 17 distinct values get no
    /// copy.
    #[test]
    fn nibble_weights_equal_the_i8_ones() {
        const E2M1: [i32; 15] = [-12, -8, -6, -4, -3, -2, -1, 0, 1, 2, 3, 4, 6, 8, 12];
        let mut seed = 9;
        let _path = crate::test_rand::KERNEL_PATH_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // The VNNI kernels where the CPU has them, then AVX2.
        for (no_vnni, (m, k)) in [false, true]
            .into_iter()
            .flat_map(|v| [(37, 16 * 5), (10, 16 * 8), (5, 2048), (21, 84)].map(|s| (v, s)))
        {
            crate::qgemm::FORCE_NO_VNNI.store(no_vnni, std::sync::atomic::Ordering::SeqCst);
            let wt: Vec<i32> = (0..m * k)
                .map(|_| E2M1[(lcg(&mut seed) % 15) as usize])
                .collect();
            let enc = ActEncoder::new(-5, 7, 255, false).unwrap();
            let q = QGemm::new(
                m,
                k,
                &wt,
                12,
                enc,
                vec![0.125f32; m],
                None,
                Activation::None,
            )
            .unwrap();
            let QWeights::Gemm { groups, .. } = q.inner.weights.as_ref() else {
                panic!("a Gemm has packed weights");
            };
            let PackedWeights::U8I8(a, _) = &groups[0] else {
                panic!("E2M1 weights take the u8 x i8 path");
            };
            assert!(a.has_nibbles(), "{m}x{k}");
            let x: Vec<f32> = (0..k)
                .map(|_| (lcg(&mut seed) % 1000) as f32 / 100.0)
                .collect();
            let mut with = vec![0f32; m];
            q.run(1, &x, &mut with, &mut QScratch::default());
            crate::qgemm::NO_NIBBLES.store(true, std::sync::atomic::Ordering::SeqCst);
            let mut without = vec![0f32; m];
            q.run(1, &x, &mut without, &mut QScratch::default());
            crate::qgemm::NO_NIBBLES.store(false, std::sync::atomic::Ordering::SeqCst);
            for r in 0..m {
                let acc: i64 = (0..k)
                    .map(|kk| enc.encode(x[kk]) as i64 * wt[r * k + kk] as i64)
                    .sum();
                assert_eq!(with[r], acc as f32 * 0.125, "{m}x{k} row {r}");
                assert_eq!(
                    with[r].to_bits(),
                    without[r].to_bits(),
                    "{m}x{k} row {r} {}",
                    q.kernel_name()
                );
            }
        }
        crate::qgemm::FORCE_NO_VNNI.store(false, std::sync::atomic::Ordering::SeqCst);
        let wt: Vec<i32> = (0..4 * 64).map(|i| (i % 17) - 8).collect();
        let enc = ActEncoder::new(-5, 7, 255, false).unwrap();
        let q = QGemm::new(4, 64, &wt, 8, enc, vec![1.0; 4], None, Activation::None).unwrap();
        let QWeights::Gemm { groups, .. } = q.inner.weights.as_ref() else {
            panic!("a Gemm has packed weights");
        };
        assert!(matches!(&groups[0], PackedWeights::U8I8(a, _) if !a.has_nibbles()));
    }
}
