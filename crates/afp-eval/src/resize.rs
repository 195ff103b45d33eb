//! Pillow-exact 8-bit BILINEAR resize (separable, fixed-point weights with 22 fractional bits).
//!
//! Mirrors Pillow's `ImagingResample` for 8-bit images: `precompute_coeffs` with the triangle filter,
//! `normalize_coeffs_8bpc`, one pass per axis into an 8-bit image (see [`resize_bilinear_pillow`] for the pass
//! order). A pass whose size does not change is skipped, as in Pillow (it would be the identity anyway).

use image::RgbImage;

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point weights of one output pixel along one axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AxisCoeffs {
    /// First input index per output pixel.
    pub start: Vec<usize>,
    /// Number of taps per output pixel.
    pub len: Vec<usize>,
    /// `max_len` integer weights per output pixel (unused tail is zero).
    pub weights: Vec<i32>,
    /// Stride of `weights`.
    pub max_len: usize,
}

fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Compute Pillow's integer BILINEAR weights for resizing an axis of `in_size` pixels to `out_size`.
pub fn axis_coeffs(in_size: usize, out_size: usize) -> AxisCoeffs {
    assert!(in_size > 0 && out_size > 0, "resize sizes must be positive");
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // triangle filter support 1.0 times filterscale
    let max_len = (support.ceil() as usize) * 2 + 1;
    let ss = 1.0 / filterscale;
    let mut start = Vec::with_capacity(out_size);
    let mut len = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * max_len];
    let mut k = vec![0f64; max_len];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // `as i64` truncates toward zero like C's (int) cast.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(max_len);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = bilinear((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * max_len..(xx + 1) * max_len];
        for (x, kx) in k.iter().enumerate().take(n) {
            let w = if ww != 0.0 { kx / ww } else { *kx };
            let scaled = w * (1u32 << PRECISION_BITS) as f64;
            row[x] = if w < 0.0 {
                (scaled - 0.5) as i32
            } else {
                (scaled + 0.5) as i32
            };
        }
        start.push(xmin);
        len.push(n);
    }
    AxisCoeffs {
        start,
        len,
        weights,
        max_len,
    }
}

#[inline]
fn clip8(ss: i32) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

fn horizontal(src: &RgbImage, out_w: u32) -> RgbImage {
    let (w, h) = src.dimensions();
    let c = axis_coeffs(w as usize, out_w as usize);
    let mut dst = RgbImage::new(out_w, h);
    let sraw = src.as_raw();
    let in_stride = w as usize * 3;
    let out_stride = out_w as usize * 3;
    for (y, drow) in dst.chunks_exact_mut(out_stride).enumerate() {
        let srow = &sraw[y * in_stride..(y + 1) * in_stride];
        for xx in 0..out_w as usize {
            let xmin = c.start[xx];
            let k = &c.weights[xx * c.max_len..xx * c.max_len + c.len[xx]];
            let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
            for (j, &kj) in k.iter().enumerate() {
                let p = &srow[(xmin + j) * 3..(xmin + j) * 3 + 3];
                ss[0] += p[0] as i32 * kj;
                ss[1] += p[1] as i32 * kj;
                ss[2] += p[2] as i32 * kj;
            }
            drow[xx * 3] = clip8(ss[0]);
            drow[xx * 3 + 1] = clip8(ss[1]);
            drow[xx * 3 + 2] = clip8(ss[2]);
        }
    }
    dst
}

fn vertical(src: &RgbImage, out_h: u32) -> RgbImage {
    let (w, h) = src.dimensions();
    let c = axis_coeffs(h as usize, out_h as usize);
    let mut dst = RgbImage::new(w, out_h);
    let sraw = src.as_raw();
    let stride = w as usize * 3;
    for (yy, drow) in dst.chunks_exact_mut(stride).enumerate() {
        let ymin = c.start[yy];
        let k = &c.weights[yy * c.max_len..yy * c.max_len + c.len[yy]];
        for (i, d) in drow.iter_mut().enumerate() {
            let mut ss = 1i32 << (PRECISION_BITS - 1);
            for (j, &kj) in k.iter().enumerate() {
                ss += sraw[(ymin + j) * stride + i] as i32 * kj;
            }
            *d = clip8(ss);
        }
    }
    dst
}

/// Resize an RGB8 image to `out_w` x `out_h` exactly like Pillow's `Image.resize(size, Image.BILINEAR)`.
///
/// Pass order: horizontal first, except when the height shrinks by more than twice as many pixels as the width
/// does (`out_h < h && h - out_h > 2 * (w - out_w)`), where Pillow 13 runs the vertical pass first
/// (Pillow PR #9549; determined against Pillow 13.0.0 on 390 random size pairs plus grids, see the fixtures).
/// The order only matters when both axes change; for the bundled 227 -> 256 upscale it is horizontal first.
pub fn resize_bilinear_pillow(src: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    assert!(out_w > 0 && out_h > 0, "resize target must be non-empty");
    let (w, h) = src.dimensions();
    match (out_w != w, out_h != h) {
        (false, false) => src.clone(),
        (true, false) => horizontal(src, out_w),
        (false, true) => vertical(src, out_h),
        (true, true) => {
            if vertical_first(w, h, out_w, out_h) {
                horizontal(&vertical(src, out_h), out_w)
            } else {
                vertical(&horizontal(src, out_w), out_h)
            }
        }
    }
}

/// Pillow 13's choice of running the vertical pass first.
pub fn vertical_first(w: u32, h: u32, out_w: u32, out_h: u32) -> bool {
    out_h < h && (h as i64 - out_h as i64) > 2 * (w as i64 - out_w as i64)
}
