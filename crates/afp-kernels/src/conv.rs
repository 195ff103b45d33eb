//! 2-D convolution (NCHW) via im2col + GEMM, with a fused bias/activation
//! epilogue. With AVX2+FMA, im2col happens inside the GEMM's packing of the
//! right-hand operand (no im2col buffer) for output planes of
//! `IMPLICIT_MIN_OHW` pixels or more.

use rayon::prelude::*;

use crate::matmul::{threads_for, MatLayout};
use crate::sgemm::{self, conv_gemm_fused, gemm_fused, Bias, ConvB, Epilogue, Lhs};

/// Output planes at least this large use implicit im2col (see `Conv2d::run`).
const IMPLICIT_MIN_OHW: usize = 128;
use crate::{depthwise, Activation};

/// A 2-D convolution's static parameters (ONNX `Conv` attributes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub c_in: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    /// `[h, w]`.
    pub stride: [usize; 2],
    /// `[h, w]`.
    pub dilation: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    pub group: usize,
}

/// Output extent of a sliding window (0 if the padded input is too small).
pub(crate) fn window_out(
    len: usize,
    pad_lo: usize,
    pad_hi: usize,
    k: usize,
    dil: usize,
    stride: usize,
) -> usize {
    let eff = (k - 1) * dil + 1;
    let padded = len + pad_lo + pad_hi;
    if padded < eff {
        0
    } else {
        (padded - eff) / stride + 1
    }
}

/// For a kernel column offset `off = kj * dil - pad_left` (may be negative),
/// the output columns `[ox0, ox1)` whose input column `ox * stride + off`
/// lies inside `[0, w)`.
#[inline]
pub(crate) fn valid_range(off: isize, stride: usize, w: usize, ow: usize) -> (usize, usize) {
    let s = stride as isize;
    let ox0 = if off >= 0 { 0 } else { ((-off) + s - 1) / s } as usize;
    let lim = w as isize - off; // need ox * s < lim
    let ox1 = if lim <= 0 {
        0
    } else {
        ((lim + s - 1) / s) as usize
    };
    let ox1 = ox1.min(ow);
    (ox0.min(ox1), ox1)
}

impl Conv2d {
    /// Output `(height, width)` for an input of `h x w`.
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            window_out(
                h,
                self.pads[0],
                self.pads[2],
                self.kh,
                self.dilation[0],
                self.stride[0],
            ),
            window_out(
                w,
                self.pads[1],
                self.pads[3],
                self.kw,
                self.dilation[1],
                self.stride[1],
            ),
        )
    }

    /// Multiply-adds per output element: `c_in / group * kh * kw` (0 for group 0, which
    /// [`Conv2d::run`] rejects).
    pub fn depth(&self) -> usize {
        self.c_in.checked_div(self.group).unwrap_or(0) * self.kh * self.kw
    }

    /// A 1x1 convolution, stride 1, no padding, one group: a matrix product per image.
    pub fn pointwise(c_in: usize, c_out: usize) -> Conv2d {
        Conv2d {
            c_in,
            c_out,
            kh: 1,
            kw: 1,
            stride: [1, 1],
            dilation: [1, 1],
            pads: [0; 4],
            group: 1,
        }
    }

    pub(crate) fn is_depthwise(&self) -> bool {
        self.group > 1 && self.group == self.c_in && self.c_out.is_multiple_of(self.c_in)
    }

    /// 1x1, stride 1, no padding: each image's input is the GEMM's right-hand matrix as is.
    pub(crate) fn is_pointwise_direct(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.pads == [0; 4]
    }

    /// input `[n, c_in, h, w]`; weight `[c_out, c_in/group, kh, kw]`; bias
    /// `[c_out]`; out `[n, c_out, oh, ow]`. Adds bias, then applies `act`
    /// (fused epilogue). `scratch` is reusable workspace (grown as needed).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        n: usize,
        h: usize,
        w: usize,
        input: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        act: Activation,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        self.run_add(n, h, w, input, weight, bias, None, act, out, scratch)
    }

    /// As [`Conv2d::run`], adding `residual` (shaped as `out`) after the bias and before
    /// `act`: the bits of the convolution followed by a separate `Add` and activation.
    #[allow(clippy::too_many_arguments)]
    pub fn run_add(
        &self,
        n: usize,
        h: usize,
        w: usize,
        input: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        act: Activation,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let weight = Lhs::F32(weight, MatLayout::row_major(self.depth()));
        self.run_lhs(n, h, w, input, weight, bias, residual, act, out, scratch)
    }

    /// [`Conv2d::run_add`] with the weights as a GEMM operand (f32 or coded). Depthwise
    /// convolutions need f32 weights.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_lhs(
        &self,
        n: usize,
        h: usize,
        w: usize,
        input: &[f32],
        weight: Lhs,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        act: Activation,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let g = self.group;
        assert!(
            g > 0 && self.c_in.is_multiple_of(g) && self.c_out.is_multiple_of(g),
            "conv: group {g} must divide c_in {} and c_out {}",
            self.c_in,
            self.c_out
        );
        assert!(
            self.kh > 0
                && self.kw > 0
                && self.stride[0] > 0
                && self.stride[1] > 0
                && self.dilation[0] > 0
                && self.dilation[1] > 0,
            "conv: kernel, stride and dilation must be positive: {self:?}"
        );
        let (oh, ow) = self.out_hw(h, w);
        let (cig, cog) = (self.c_in / g, self.c_out / g);
        let kk = cig * self.kh * self.kw;
        assert_eq!(input.len(), n * self.c_in * h * w, "conv: input length");
        match weight {
            Lhs::F32(wf, _) => assert_eq!(wf.len(), self.c_out * kk, "conv: weight length"),
            Lhs::Coded(wc) => assert!(
                wc.rows() == self.c_out && wc.k == kk,
                "conv: coded weights are not {} x {kk}",
                self.c_out
            ),
        }
        assert_eq!(out.len(), n * self.c_out * oh * ow, "conv: output length");
        if let Some(b) = bias {
            assert_eq!(b.len(), self.c_out, "conv: bias length");
        }
        if let Some(r) = residual {
            assert_eq!(r.len(), out.len(), "conv: residual length");
        }
        let ohw = oh * ow;
        if out.is_empty() {
            return;
        }
        if let Some(res) = residual {
            if kk == 0 || self.is_depthwise() {
                // Kernels without a residual epilogue: the product, then one pass.
                self.run_lhs(
                    n,
                    h,
                    w,
                    input,
                    weight,
                    bias,
                    None,
                    Activation::None,
                    out,
                    scratch,
                );
                for (o, &r) in out.iter_mut().zip(res) {
                    *o = act.apply(*o + r);
                }
                return;
            }
        }
        if kk == 0 {
            // No input channels: output is bias only.
            for (p, plane) in out.chunks_mut(ohw).enumerate() {
                plane.fill(0.0);
                act.apply_slice_bias(plane, bias.map_or(0.0, |b| b[p % self.c_out]));
            }
            return;
        }
        if self.is_depthwise() {
            let Lhs::F32(weight, _) = weight else {
                panic!("conv: the depthwise kernel needs f32 weights");
            };
            return depthwise::run(self, n, h, w, input, weight, bias, act, out);
        }

        if crate::pointwise::handles(self, n, ohw, act, &weight) {
            return crate::pointwise::run(
                n, self.c_out, kk, ohw, &weight, input, bias, residual, act, out,
            );
        }
        let direct = self.is_pointwise_direct();
        // With the AVX2 kernel, im2col is done inside the GEMM's packing of
        // B (no col buffer) unless the output plane is small (then the
        // explicit buffer is small and stays in cache).
        let implicit = !direct
            && ohw >= IMPLICIT_MIN_OHW
            && sgemm::avx2_available()
            && act.clamp_bounds().is_some();
        let col_size = if direct || implicit { 0 } else { kk * ohw };
        let tasks = n * g;
        let task_out = cog * ohw;
        let threads = rayon::current_num_threads().max(1);
        let task = Task {
            conv: self,
            h,
            w,
            oh,
            ow,
            input,
            weight,
            bias,
            residual,
            act,
            direct,
            implicit,
        };

        // Whole rounds of `threads` tasks (images x groups) run with single-threaded
        // GEMMs, each task taken by whichever thread comes free first (so a core the
        // machine slows for a moment computes fewer of them); the leftover tasks run one
        // after the other, each parallel inside (im2col, GEMM, epilogue).
        let par_tasks = if threads > 1 && tasks >= threads {
            tasks - tasks % threads
        } else {
            0
        };
        let workers = if par_tasks > 0 { threads } else { 1 };
        if scratch.len() < workers * col_size {
            scratch.resize(workers * col_size, 0.0);
        }
        let (out_par, out_seq) = out.split_at_mut(par_tasks * task_out);
        if par_tasks > 0 {
            // One im2col buffer per pool thread, found by the thread's index (each lock
            // is only ever taken by its own thread, so it never waits).
            let cols: Vec<std::sync::Mutex<&mut [f32]>> = if col_size == 0 {
                (0..threads).map(|_| Default::default()).collect()
            } else {
                scratch[..threads * col_size]
                    .chunks_mut(col_size)
                    .map(std::sync::Mutex::new)
                    .collect()
            };
            out_par
                .par_chunks_mut(task_out)
                .enumerate()
                .with_max_len(1)
                .for_each(|(t, o)| {
                    let slot = rayon::current_thread_index().unwrap_or(0) % threads;
                    let mut col = cols[slot].lock().unwrap_or_else(|e| e.into_inner());
                    task.run(t, o, &mut col, 1);
                });
        }
        for (i, o) in out_seq.chunks_mut(task_out).enumerate() {
            let t = par_tasks + i;
            let inner = threads_for(cog, ohw, kk);
            task.run(t, o, &mut scratch[..col_size], inner);
        }
    }
}

/// Everything one (image, group) GEMM needs.
struct Task<'a> {
    conv: &'a Conv2d,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    input: &'a [f32],
    weight: Lhs<'a>,
    bias: Option<&'a [f32]>,
    /// Shaped as the whole output.
    residual: Option<&'a [f32]>,
    act: Activation,
    direct: bool,
    implicit: bool,
}

impl Task<'_> {
    /// Computes task `t = image * group + g` into `out` (`[c_out/group, oh*ow]`).
    fn run(&self, t: usize, out: &mut [f32], col: &mut [f32], threads: usize) {
        let c = self.conv;
        let g = c.group;
        let (ni, gi) = (t / g, t % g);
        let (cig, cog) = (c.c_in / g, c.c_out / g);
        let kk = cig * c.kh * c.kw;
        let hw = self.h * self.w;
        let ohw = self.oh * self.ow;
        let img = &self.input[(ni * c.c_in + gi * cig) * hw..][..cig * hw];
        let wg = match self.weight {
            Lhs::F32(wf, l) => Lhs::F32(&wf[gi * cog * kk..][..cog * kk], l),
            Lhs::Coded(wc) => Lhs::Coded(wc.row_range(gi * cog, cog)),
        };
        let bias = match self.bias {
            Some(b) => Bias::Row(&b[gi * cog..][..cog]),
            None => Bias::None,
        };
        let epi = Epilogue {
            alpha: 1.0,
            accumulate: false,
            bias,
            residual: self.residual.map(|r| &r[t * out.len()..][..out.len()]),
            act: self.act,
        };
        if self.implicit {
            let src = ConvB {
                img,
                channels: cig,
                h: self.h,
                w: self.w,
                oh: self.oh,
                ow: self.ow,
                kh: c.kh,
                kw: c.kw,
                stride: c.stride,
                dilation: c.dilation,
                pad: [c.pads[0], c.pads[1]],
            };
            return conv_gemm_fused(cog, kk, wg, src, out, epi, threads);
        }
        let rhs: &[f32] = if self.direct {
            img
        } else {
            self.im2col(img, cig, col, threads > 1);
            col
        };
        gemm_fused(
            cog,
            ohw,
            kk,
            wg,
            rhs,
            MatLayout::row_major(ohw),
            out,
            ohw,
            epi,
            threads,
        );
    }

    /// `col[(c*kh + ki)*kw + kj, oy*ow + ox] = img[c, oy*sh + ki*dh - pt, ox*sw + kj*dw - pl]` (0 outside).
    fn im2col(&self, img: &[f32], cig: usize, col: &mut [f32], parallel: bool) {
        let c = self.conv;
        let (h, w, ow) = (self.h, self.w, self.ow);
        let ohw = self.oh * ow;
        let per_chan = c.kh * c.kw * ohw;
        let col = &mut col[..cig * per_chan];
        let one_channel = |(ci, dst): (usize, &mut [f32])| {
            let plane = &img[ci * h * w..][..h * w];
            for ki in 0..c.kh {
                for kj in 0..c.kw {
                    let row = &mut dst[(ki * c.kw + kj) * ohw..][..ohw];
                    let off = (kj * c.dilation[1]) as isize - c.pads[1] as isize;
                    let (ox0, ox1) = valid_range(off, c.stride[1], w, ow);
                    for (oy, drow) in row.chunks_exact_mut(ow).enumerate() {
                        let iy =
                            (oy * c.stride[0] + ki * c.dilation[0]) as isize - c.pads[0] as isize;
                        if iy < 0 || iy >= h as isize || ox0 == ox1 {
                            drow.fill(0.0);
                            continue;
                        }
                        let src = &plane[iy as usize * w..][..w];
                        drow[..ox0].fill(0.0);
                        drow[ox1..].fill(0.0);
                        let start = (ox0 as isize * c.stride[1] as isize + off) as usize;
                        let d = &mut drow[ox0..ox1];
                        if c.stride[1] == 1 {
                            d.copy_from_slice(&src[start..start + d.len()]);
                        } else {
                            d.iter_mut()
                                .zip(src[start..].iter().step_by(c.stride[1]))
                                .for_each(|(o, &s)| *o = s);
                        }
                    }
                }
            }
        };
        if parallel {
            col.par_chunks_mut(per_chan)
                .enumerate()
                .for_each(one_channel);
        } else {
            col.chunks_mut(per_chan).enumerate().for_each(one_channel);
        }
    }
}
