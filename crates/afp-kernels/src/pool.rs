//! ONNX MaxPool / AveragePool / GlobalAveragePool over NCHW planes.

use rayon::prelude::*;

use crate::conv::valid_range;

/// Pooling window parameters (ONNX `MaxPool` / `AveragePool` attributes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool2d {
    pub kh: usize,
    pub kw: usize,
    /// `[h, w]`.
    pub stride: [usize; 2],
    /// `[h, w]`.
    pub dilation: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    pub ceil_mode: bool,
}

/// Output extent as ONNX Runtime computes it: with `ceil_mode`, round up but
/// drop a last window that would start inside the end padding.
fn pool_out(
    len: usize,
    pad_lo: usize,
    pad_hi: usize,
    k: usize,
    dil: usize,
    stride: usize,
    ceil: bool,
) -> usize {
    let eff = (k - 1) * dil + 1;
    let padded = len + pad_lo + pad_hi;
    if padded < eff {
        return 0;
    }
    let span = padded - eff;
    if !ceil {
        return span / stride + 1;
    }
    let mut out = span.div_ceil(stride) + 1;
    if (out - 1) * stride >= len + pad_lo {
        out -= 1;
    }
    out
}

/// Minimum number of window taps per rayon job.
const MIN_JOB_TAPS: usize = 32 * 1024;

impl Pool2d {
    /// Output `(height, width)` for an input of `h x w`.
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            pool_out(
                h,
                self.pads[0],
                self.pads[2],
                self.kh,
                self.dilation[0],
                self.stride[0],
                self.ceil_mode,
            ),
            pool_out(
                w,
                self.pads[1],
                self.pads[3],
                self.kw,
                self.dilation[1],
                self.stride[1],
                self.ceil_mode,
            ),
        )
    }

    fn check(&self, n_c: usize, h: usize, w: usize, input: &[f32], out: &[f32]) -> (usize, usize) {
        assert!(
            self.kh > 0 && self.kw > 0 && self.stride.iter().chain(&self.dilation).all(|&v| v > 0),
            "pool: kernel, stride and dilation must be positive: {self:?}"
        );
        let (oh, ow) = self.out_hw(h, w);
        assert_eq!(input.len(), n_c * h * w, "pool: input length");
        assert_eq!(out.len(), n_c * oh * ow, "pool: output length");
        (oh, ow)
    }

    /// Input row of output row `oy`, kernel row `ki`, if inside the image.
    #[inline]
    fn in_row(&self, oy: usize, ki: usize, h: usize) -> Option<usize> {
        let iy = (oy * self.stride[0] + ki * self.dilation[0]) as isize - self.pads[0] as isize;
        (iy >= 0 && iy < h as isize).then_some(iy as usize)
    }

    /// Per kernel column: valid output columns `[ox0, ox1)` and the input column of `ox0`.
    fn col_ranges(&self, w: usize, ow: usize) -> Vec<(usize, usize, usize)> {
        (0..self.kw)
            .map(|kj| {
                let off = (kj * self.dilation[1]) as isize - self.pads[1] as isize;
                let (ox0, ox1) = valid_range(off, self.stride[1], w, ow);
                let start = if ox0 < ox1 {
                    (ox0 as isize * self.stride[1] as isize + off) as usize
                } else {
                    0
                };
                (ox0, ox1, start)
            })
            .collect()
    }

    /// ONNX MaxPool over `n_c` planes of `h x w`. Padding never wins; a window
    /// entirely in padding yields `f32::MIN` (as ONNX Runtime's lowest()).
    pub fn max(&self, n_c: usize, h: usize, w: usize, input: &[f32], out: &mut [f32]) {
        let (oh, ow) = self.check(n_c, h, w, input, out);
        if out.is_empty() {
            return;
        }
        let cols = self.col_ranges(w, ow);
        let sw = self.stride[1];
        let min_len = (MIN_JOB_TAPS / (oh * ow * self.kh * self.kw).max(1)).max(1);
        // Stride 2 (the ResNet stem's pool): each input row is split once into its even and
        // odd columns, so every window column is a contiguous, vectorizable max.
        let split_rows = sw == 2;
        #[cfg(target_arch = "x86_64")]
        let wide = is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let wide = false;
        out.par_chunks_mut(oh * ow)
            .enumerate()
            .with_min_len(min_len)
            .for_each_init(
                || vec![0f32; if split_rows { w } else { 0 }],
                |split, (p, o)| {
                    let plane = &input[p * h * w..][..h * w];
                    #[cfg(target_arch = "x86_64")]
                    if wide {
                        // SAFETY: AVX-512F was detected above.
                        return unsafe { self.max_plane_avx512(plane, w, o, ow, split, &cols) };
                    }
                    self.max_plane(plane, w, o, ow, split, &cols)
                },
            );
    }

    /// [`Pool2d::max_plane`] compiled for AVX-512 (16-lane maxima and even/odd splits).
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn max_plane_avx512(
        &self,
        plane: &[f32],
        w: usize,
        o: &mut [f32],
        ow: usize,
        split: &mut [f32],
        cols: &[(usize, usize, usize)],
    ) {
        self.max_plane(plane, w, o, ow, split, cols)
    }

    /// One plane of [`Pool2d::max`]: `o` (rows of `ow`) from `plane` (rows of `w`), `split` a
    /// row's worth of scratch for stride 2.
    #[inline(always)]
    fn max_plane(
        &self,
        plane: &[f32],
        w: usize,
        o: &mut [f32],
        ow: usize,
        split: &mut [f32],
        cols: &[(usize, usize, usize)],
    ) {
        let h = plane.len() / w;
        let sw = self.stride[1];
        let split_rows = sw == 2;
        for (oy, row) in o.chunks_exact_mut(ow).enumerate() {
            row.fill(f32::MIN);
            for ki in 0..self.kh {
                let Some(iy) = self.in_row(oy, ki, h) else {
                    continue;
                };
                let src = &plane[iy * w..][..w];
                if split_rows {
                    crate::split_even_odd(src, split);
                }
                for &(ox0, ox1, start) in cols {
                    let dst = &mut row[ox0..ox1];
                    if split_rows {
                        // Columns start, start + 2, ...: one run of one half.
                        let at = crate::split_index(start, w);
                        let run = &split[at..at + dst.len()];
                        dst.iter_mut().zip(run).for_each(|(o, &x)| *o = o.max(x));
                    } else {
                        dst.iter_mut()
                            .zip(src[start..].iter().step_by(sw))
                            .for_each(|(o, &x)| *o = o.max(x));
                    }
                }
            }
        }
    }

    /// ONNX AveragePool over `n_c` planes of `h x w`. With
    /// `count_include_pad`, the divisor counts taps inside the padded extent
    /// (not the extra ceil-mode overhang), like ONNX Runtime.
    pub fn avg(
        &self,
        n_c: usize,
        h: usize,
        w: usize,
        input: &[f32],
        count_include_pad: bool,
        out: &mut [f32],
    ) {
        let (oh, ow) = self.check(n_c, h, w, input, out);
        if out.is_empty() {
            return;
        }
        let cols = self.col_ranges(w, ow);
        let sw = self.stride[1];
        // Number of taps counted per output column / row.
        let count_1d = |o: usize,
                        k: usize,
                        s: usize,
                        d: usize,
                        pad_lo: usize,
                        pad_hi: usize,
                        len: usize|
         -> f32 {
            let (lo, hi) = if count_include_pad {
                (-(pad_lo as isize), (len + pad_hi) as isize)
            } else {
                (0, len as isize)
            };
            (0..k)
                .filter(|&t| {
                    let i = (o * s + t * d) as isize - pad_lo as isize;
                    i >= lo && i < hi
                })
                .count() as f32
        };
        let col_cnt: Vec<f32> = (0..ow)
            .map(|ox| {
                count_1d(
                    ox,
                    self.kw,
                    sw,
                    self.dilation[1],
                    self.pads[1],
                    self.pads[3],
                    w,
                )
            })
            .collect();
        let row_cnt: Vec<f32> = (0..oh)
            .map(|oy| {
                count_1d(
                    oy,
                    self.kh,
                    self.stride[0],
                    self.dilation[0],
                    self.pads[0],
                    self.pads[2],
                    h,
                )
            })
            .collect();
        let min_len = (MIN_JOB_TAPS / (oh * ow * self.kh * self.kw).max(1)).max(1);
        out.par_chunks_mut(oh * ow)
            .enumerate()
            .with_min_len(min_len)
            .for_each(|(p, o)| {
                let plane = &input[p * h * w..][..h * w];
                for (oy, row) in o.chunks_exact_mut(ow).enumerate() {
                    row.fill(0.0);
                    for ki in 0..self.kh {
                        let Some(iy) = self.in_row(oy, ki, h) else {
                            continue;
                        };
                        let src = &plane[iy * w..][..w];
                        for &(ox0, ox1, start) in &cols {
                            let dst = &mut row[ox0..ox1];
                            dst.iter_mut()
                                .zip(src[start..].iter().step_by(sw))
                                .for_each(|(o, &x)| *o += x);
                        }
                    }
                    let rc = row_cnt[oy];
                    for (v, &cc) in row.iter_mut().zip(&col_cnt) {
                        let cnt = rc * cc;
                        *v = if cnt > 0.0 { *v / cnt } else { 0.0 };
                    }
                }
            });
    }
}

/// ONNX GlobalAveragePool: `out[i] = mean(input[i*hw .. (i+1)*hw])` for `i < n_c`.
pub fn global_avg_pool(n_c: usize, hw: usize, input: &[f32], out: &mut [f32]) {
    assert_eq!(input.len(), n_c * hw, "global_avg_pool: input length");
    assert_eq!(out.len(), n_c, "global_avg_pool: output length");
    if hw == 0 {
        out.fill(0.0);
        return;
    }
    let inv = 1.0 / hw as f32;
    let min_len = (MIN_JOB_TAPS / hw).max(1);
    out.par_iter_mut()
        .zip(input.par_chunks(hw))
        .with_min_len(min_len)
        .for_each(|(o, plane)| {
            // 8 independent partial sums: vectorizable and deterministic.
            let mut acc = [0.0f32; 8];
            let chunks = plane.chunks_exact(8);
            let rem = chunks.remainder();
            for c in chunks {
                for (a, &x) in acc.iter_mut().zip(c) {
                    *a += x;
                }
            }
            let s: f32 = acc.iter().sum::<f32>() + rem.iter().sum::<f32>();
            *o = s * inv;
        });
}
