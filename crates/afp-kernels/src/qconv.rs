//! Convolution and Gemm layers computed from AFP integers ([`crate::qgemm`]): the f32 input
//! is rounded to the layer's activation grid as integers (the same rounding as
//! `afp_format::Grid`), multiplied exactly with the integer weights, and each output is
//! `act(sum * 2^u + bias)`, with `2^u` the product of the weight and activation units.

use rayon::prelude::*;
use std::cell::RefCell;

use crate::conv::Conv2d;
use crate::qgemm::{
    b_panel_len, compute_block, pack_b_panel, quads, ActInt, Epilogue, PackedA, PackedWeights,
    U8I8Bounds, U8I8Kernel, MR, NR,
};
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

    pub fn max(&self) -> u32 {
        self.max as u32
    }
    pub fn is_signed(&self) -> bool {
        self.signed
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
                s.round_ties_even()
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
    /// One packed matrix per group.
    Gemm {
        groups: Vec<PackedWeights>,
        store: ActStore,
        /// `zero * sum_k w[r][k]` per output row: the shift of signed activations stored as u8.
        zero_corr: Option<Vec<i64>>,
    },
    /// Depthwise: `[c_out, kh * kw]`.
    Depthwise(Vec<i32>),
}

/// A convolution (or, with a 1x1 kernel on a 1x1 image, a Gemm) on AFP integers.
#[derive(Debug, Clone)]
pub struct QConv {
    pub conv: Conv2d,
    weights: QWeights,
    enc: ActEncoder,
    mult: Vec<f32>,
    bias: Option<Vec<f32>>,
    pub act: Activation,
}

/// Chooses the activation storage and packs `[rows, k]` integer weights for it.
fn pack_weights(
    rows: usize,
    k: usize,
    w: &[i32],
    w_max: u32,
    enc: &ActEncoder,
) -> Result<(PackedWeights, ActStore), String> {
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
            let w8: Vec<i8> = w.iter().map(|&v| v as i8).collect();
            let store = ActStore::U8 {
                zero: if enc.signed { 128 } else { 0 },
            };
            return Ok((
                PackedWeights::U8I8(PackedA::new(rows, k, &w8), U8I8Kernel::choose(bounds)),
                store,
            ));
        }
    }
    if enc.max <= i16::MAX as i32 && w_max <= i16::MAX as u32 {
        let w16: Vec<i16> = w.iter().map(|&v| v as i16).collect();
        return Ok((
            PackedWeights::I16(PackedA::new(rows, k, &w16)),
            ActStore::I16,
        ));
    }
    Err(format!(
        "activation integers up to {} and weight integers up to {w_max} fit no integer container (i8/u8/i16)",
        enc.max
    ))
}

thread_local! {
    /// Per-thread packed activation block, reused across calls.
    static B_U8: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static B_I16: RefCell<Vec<i16>> = const { RefCell::new(Vec::new()) };
    static PLANE: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
}

/// Activation panels per block: the block stays in L2 (about 192 KiB).
fn panels_per_block(k: usize, elem: usize) -> usize {
    (192 * 1024 / (b_panel_len(k) * elem).max(1)).clamp(1, 64)
}

/// Reusable buffers of a [`QConv`] run (owned by the caller, like the f32 scratch).
#[derive(Default)]
pub struct QScratch {
    u8s: Vec<u8>,
    i16s: Vec<i16>,
}

/// Integer activations of one layer input, as stored for the kernels.
enum Plane<'a> {
    U8(&'a [u8]),
    I16(&'a [i16]),
}

impl QConv {
    /// `w` holds the weight integers `[c_out, c_in / group * kh * kw]` with `|w| <= w_max`;
    /// output channel `r` is `act(sum * mult[r] + bias[r])`.
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
        let k = conv.c_in / g * conv.kh * conv.kw;
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
        let weights = if conv.is_depthwise() {
            QWeights::Depthwise(w.to_vec())
        } else {
            let cog = conv.c_out / g;
            let mut groups = Vec::with_capacity(g);
            let mut store = None;
            for gi in 0..g {
                let (p, s) =
                    pack_weights(cog, k, &w[gi * cog * k..(gi + 1) * cog * k], w_max, &enc)?;
                groups.push(p);
                store = Some(s);
            }
            let store = store.expect("group >= 1");
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
                store,
                zero_corr,
            }
        };
        Ok(QConv {
            conv,
            weights,
            enc,
            mult,
            bias,
            act,
        })
    }

    /// Bytes of weight data held (integers, scales, bias).
    pub fn weight_bytes(&self) -> usize {
        let w = match &self.weights {
            QWeights::Gemm { groups, .. } => groups.iter().map(|p| p.bytes()).sum(),
            QWeights::Depthwise(w) => w.len() * 4,
        };
        w + 4 * self.mult.len() + 4 * self.bias.as_ref().map_or(0, |b| b.len())
    }

    /// The kernel this layer runs (for reports).
    pub fn kernel_name(&self) -> &'static str {
        match &self.weights {
            QWeights::Gemm { groups, .. } => groups[0].kernel_name(),
            QWeights::Depthwise(_) => "depthwise-i32",
        }
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
        let c = &self.conv;
        let (oh, ow) = c.out_hw(h, w);
        assert_eq!(input.len(), n * c.c_in * h * w, "qconv: input length");
        assert_eq!(out.len(), n * c.c_out * oh * ow, "qconv: output length");
        if out.is_empty() {
            return;
        }
        match &self.weights {
            QWeights::Depthwise(wts) => self.run_depthwise(wts, h, w, input, out),
            QWeights::Gemm {
                groups,
                store,
                zero_corr,
            } => {
                let hw = h * w;
                let plane = match *store {
                    ActStore::U8 { zero } => {
                        scratch.u8s.resize(input.len(), 0);
                        encode_into(&self.enc, input, &mut scratch.u8s, |v| {
                            (v + zero as i32) as u8
                        });
                        Plane::U8(&scratch.u8s)
                    }
                    ActStore::I16 => {
                        scratch.i16s.resize(input.len(), 0);
                        encode_into(&self.enc, input, &mut scratch.i16s, |v| v as i16);
                        Plane::I16(&scratch.i16s)
                    }
                };
                let zero_code = match *store {
                    ActStore::U8 { zero } => zero,
                    ActStore::I16 => 0,
                };
                let g = c.group;
                let (cig, cog) = (c.c_in / g, c.c_out / g);
                let ohw = oh * ow;
                let threads = rayon::current_num_threads();
                // Work units: (image, group, chunk of output rows); each packs its own
                // activation blocks, so chunks of one image repeat the packing (cheap next to
                // the product) in exchange for parallelism at batch 1.
                let panels = cog.div_ceil(MR);
                let chunks = if n * g >= threads {
                    1
                } else {
                    threads.div_ceil(n * g).min(panels)
                };
                let rows_per_chunk = panels.div_ceil(chunks) * MR;
                let units: Vec<(usize, usize, std::ops::Range<usize>)> = (0..n)
                    .flat_map(|img| {
                        (0..g).flat_map(move |gi| {
                            (0..cog)
                                .step_by(rows_per_chunk)
                                .map(move |r0| (img, gi, r0..(r0 + rows_per_chunk).min(cog)))
                        })
                    })
                    .collect();
                // Output rows of one unit are contiguous: hand each unit its own slice.
                let mut slices: Vec<&mut [f32]> = Vec::with_capacity(units.len());
                let mut rest = out;
                for (_, _, rows) in &units {
                    let (a, b) = rest.split_at_mut(rows.len() * ohw);
                    slices.push(a);
                    rest = b;
                }
                units
                    .into_par_iter()
                    .zip(slices)
                    .for_each(|((img, gi, rows), dst)| {
                        let base = (img * c.c_in + gi * cig) * hw;
                        let wts = &groups[gi];
                        let row0 = gi * cog;
                        let mult = &self.mult[row0..row0 + cog];
                        let bias = self.bias.as_ref().map(|b| &b[row0..row0 + cog]);
                        let corr = zero_corr.as_ref().map(|z| &z[row0..row0 + cog]);
                        let ep = Epilogue {
                            mult,
                            bias,
                            act: self.act,
                            zero_corr: corr,
                        };
                        let r0 = rows.start;
                        let mut store = |r: usize, j: usize, v: f32| dst[(r - r0) * ohw + j] = v;
                        match &plane {
                            Plane::U8(p) => B_U8.with(|b| {
                                self.gemm_unit(
                                    wts,
                                    &p[base..base + cig * hw],
                                    zero_code,
                                    (h, w, oh, ow),
                                    rows.clone(),
                                    &ep,
                                    &mut b.borrow_mut(),
                                    &mut store,
                                )
                            }),
                            Plane::I16(p) => B_I16.with(|b| {
                                self.gemm_unit(
                                    wts,
                                    &p[base..base + cig * hw],
                                    0i16,
                                    (h, w, oh, ow),
                                    rows.clone(),
                                    &ep,
                                    &mut b.borrow_mut(),
                                    &mut store,
                                )
                            }),
                        }
                    });
            }
        }
    }

    /// Rows `rows` of one image and group: pack blocks of activation panels (im2col happens
    /// in the packing), multiply with every weight panel of `rows`.
    #[allow(clippy::too_many_arguments)]
    fn gemm_unit<T: ActInt>(
        &self,
        wts: &PackedWeights,
        x: &[T],
        zero: T,
        (h, w, oh, ow): (usize, usize, usize, usize),
        rows: std::ops::Range<usize>,
        ep: &Epilogue<'_>,
        buf: &mut Vec<T>,
        store: &mut impl FnMut(usize, usize, f32),
    ) {
        let c = &self.conv;
        let k = wts.depth();
        let ohw = oh * ow;
        let plen = b_panel_len(k);
        let per_block = panels_per_block(k, std::mem::size_of::<T>());
        let npanels = ohw.div_ceil(NR);
        buf.resize(per_block * plen, T::default());
        let direct = c.kh == 1 && c.kw == 1 && c.stride == [1, 1] && c.pads == [0; 4];
        let mut p0 = 0;
        while p0 < npanels {
            let np = per_block.min(npanels - p0);
            for bp in 0..np {
                let j0 = (p0 + bp) * NR;
                let dst = &mut buf[bp * plen..(bp + 1) * plen];
                if direct {
                    pack_b_panel(k, ohw, j0, dst, |kk, j| x[kk * h * w + j]);
                } else {
                    pack_conv_panel(c, x, zero, (h, w, ow), k, ohw, j0, dst);
                }
            }
            compute_block(
                wts,
                T::panels(&buf[..np * plen]),
                p0 * NR,
                ohw,
                rows.clone(),
                ep,
                store,
            );
            p0 += np;
        }
    }

    fn run_depthwise(&self, wts: &[i32], h: usize, w: usize, input: &[f32], out: &mut [f32]) {
        let c = &self.conv;
        let (oh, ow) = c.out_hw(h, w);
        let (ohw, hw, kk) = (oh * ow, h * w, c.kh * c.kw);
        let per_in = c.c_out / c.c_in;
        out.par_chunks_mut(ohw).enumerate().for_each(|(idx, dst)| {
            let (img, co) = (idx / c.c_out, idx % c.c_out);
            let ci = co / per_in;
            let x = &input[(img * c.c_in + ci) * hw..(img * c.c_in + ci + 1) * hw];
            let wk = &wts[co * kk..(co + 1) * kk];
            PLANE.with(|p| {
                let mut p = p.borrow_mut();
                p.clear();
                p.extend(x.iter().map(|&v| self.enc.encode(v)));
                let mut acc = vec![0i32; ohw];
                for ky in 0..c.kh {
                    for kx in 0..c.kw {
                        let wv = wk[ky * c.kw + kx];
                        if wv == 0 {
                            continue;
                        }
                        let offx = (kx * c.dilation[1]) as isize - c.pads[1] as isize;
                        let (ox0, ox1) = crate::conv::valid_range(offx, c.stride[1], w, ow);
                        for oy in 0..oh {
                            let iy = (oy * c.stride[0] + ky * c.dilation[0]) as isize
                                - c.pads[0] as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            let row = &p[iy as usize * w..(iy as usize + 1) * w];
                            let arow = &mut acc[oy * ow..(oy + 1) * ow];
                            for (ox, a) in arow.iter_mut().enumerate().take(ox1).skip(ox0) {
                                let ix = (ox * c.stride[1]) as isize + offx;
                                *a += wv * row[ix as usize];
                            }
                        }
                    }
                }
                let (m, b) = (self.mult[co], self.bias.as_ref().map_or(0.0, |b| b[co]));
                for (d, &a) in dst.iter_mut().zip(&acc) {
                    *d = self.act.apply(a as f32 * m + b);
                }
            });
        });
    }
}

/// Encodes `input` into `dst` in parallel, storing each integer through `conv`.
fn encode_into<T: Send>(
    enc: &ActEncoder,
    input: &[f32],
    dst: &mut [T],
    conv: impl Fn(i32) -> T + Sync,
) {
    dst.par_chunks_mut(1 << 14)
        .zip(input.par_chunks(1 << 14))
        .for_each(|(d, x)| {
            for (d, &x) in d.iter_mut().zip(x) {
                *d = conv(enc.encode(x));
            }
        });
}

/// im2col of one panel: columns `j0..j0+NR` (output pixels) of the `[k, ohw]` patch matrix
/// of one image and group `x: [cig, h, w]`; padding reads the encoded zero.
#[allow(clippy::too_many_arguments)]
fn pack_conv_panel<T: crate::qgemm::Int>(
    c: &Conv2d,
    x: &[T],
    zero: T,
    (h, w, ow): (usize, usize, usize),
    k: usize,
    ohw: usize,
    j0: usize,
    dst: &mut [T],
) {
    let cols = ohw.saturating_sub(j0).min(NR);
    let mut base_y = [0isize; NR];
    let mut base_x = [0isize; NR];
    for cc in 0..cols {
        let j = j0 + cc;
        base_y[cc] = ((j / ow) * c.stride[0]) as isize - c.pads[0] as isize;
        base_x[cc] = ((j % ow) * c.stride[1]) as isize - c.pads[1] as isize;
    }
    let khw = c.kh * c.kw;
    for q in 0..quads(k) {
        let row = &mut dst[q * NR * 4..(q + 1) * NR * 4];
        for t in 0..4 {
            let kk = q * 4 + t;
            if kk >= k {
                for cc in 0..NR {
                    row[cc * 4 + t] = T::default();
                }
                continue;
            }
            let (ci, r) = (kk / khw, kk % khw);
            let (ky, kx) = (r / c.kw, r % c.kw);
            let dy = (ky * c.dilation[0]) as isize;
            let dx = (kx * c.dilation[1]) as isize;
            let plane = &x[ci * h * w..(ci + 1) * h * w];
            for cc in 0..cols {
                let (iy, ix) = (base_y[cc] + dy, base_x[cc] + dx);
                row[cc * 4 + t] = if iy >= 0 && iy < h as isize && ix >= 0 && ix < w as isize {
                    plane[iy as usize * w + ix as usize]
                } else {
                    zero
                };
            }
            for cc in cols..NR {
                row[cc * 4 + t] = T::default();
            }
        }
    }
}

/// A Gemm `out[b, r] = act(sum_k x[b, k] * w[r, k] * mult[r] + bias[r])` on AFP integers:
/// the 1x1 convolution of a batch of 1x1 images, with the batch as the pixel axis.
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
        let conv = Conv2d {
            c_in: k,
            c_out: m,
            kh: 1,
            kw: 1,
            stride: [1, 1],
            dilation: [1, 1],
            pads: [0; 4],
            group: 1,
        };
        Ok(QGemm {
            inner: QConv::new(conv, w, w_max, enc, mult, bias, act)?,
        })
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

    /// `x: [batch, k]`, `out: [batch, m]`. Batch rows become pixels of one image so the
    /// product shares each weight panel across the batch.
    pub fn run(&self, batch: usize, x: &[f32], out: &mut [f32], scratch: &mut QScratch) {
        let (m, k) = (self.rows(), self.depth());
        assert_eq!(x.len(), batch * k, "qgemm: input length");
        assert_eq!(out.len(), batch * m, "qgemm: output length");
        // [batch, k] -> [k, batch] (one image of `batch` pixels), and back for the output.
        let mut xt = vec![0f32; x.len()];
        for b in 0..batch {
            for kk in 0..k {
                xt[kk * batch + b] = x[b * k + kk];
            }
        }
        let mut ot = vec![0f32; out.len()];
        self.inner.run(1, 1, batch, &xt, &mut ot, scratch);
        for r in 0..m {
            for b in 0..batch {
                out[b * m + r] = ot[r * batch + b];
            }
        }
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
                        }
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

    /// Every path (u8 unsigned, u8 with the signed shift, i16, depthwise; AVX2 and portable)
    /// gives exactly the reference on convolutions with strides, pads, dilations and groups.
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
        ];
        // (signed, unit_exp, man_bits, max): uE1M7, sE1M6, uE3M5 (i16), sE2M5.
        let encs = [
            (false, -6, 7u32, 255u64),
            (true, -5, 6, 127),
            (false, -8, 5, 4032),
            (true, -5, 5, 126),
        ];
        for force_portable in [false, true] {
            crate::qgemm::FORCE_PORTABLE.store(force_portable, std::sync::atomic::Ordering::SeqCst);
            for (c, n, h, w) in &cases {
                for &(signed, ue, mb, max) in &encs {
                    let enc = ActEncoder::new(ue, mb, max, signed).unwrap();
                    let k = c.c_in / c.group * c.kh * c.kw;
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
                    q.run(*n, *h, *w, &x, &mut got, &mut QScratch::default());
                    let want =
                        reference(c, *n, *h, *w, &x, &wt, &enc, &mult, &bias, Activation::Relu);
                    assert_eq!(
                        got,
                        want,
                        "{c:?} enc {signed} {max} kernel {}",
                        q.kernel_name()
                    );
                }
            }
        }
        crate::qgemm::FORCE_PORTABLE.store(false, std::sync::atomic::Ordering::SeqCst);
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
        let (m, k, batch) = (37, 70, 5);
        let mut seed = 3;
        let wt: Vec<i32> = (0..m * k)
            .map(|_| (lcg(&mut seed) % 25) as i32 - 12)
            .collect();
        let x: Vec<f32> = (0..batch * k)
            .map(|_| (lcg(&mut seed) % 1000) as f32 / 100.0)
            .collect();
        let enc = ActEncoder::new(-5, 7, 255, false).unwrap();
        let mult = vec![0.125f32; m];
        let q = QGemm::new(m, k, &wt, 12, enc, mult, None, Activation::None).unwrap();
        let mut got = vec![0f32; batch * m];
        q.run(batch, &x, &mut got, &mut QScratch::default());
        for b in 0..batch {
            for r in 0..m {
                let acc: i64 = (0..k)
                    .map(|kk| enc.encode(x[b * k + kk]) as i64 * wt[r * k + kk] as i64)
                    .sum();
                assert_eq!(got[b * m + r], acc as f32 * 0.125);
            }
        }
    }
}
