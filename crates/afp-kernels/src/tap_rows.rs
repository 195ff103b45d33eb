//! Tap rows: the integer path's input layout for convolutions with few input channels, such
//! as ResNet's 3-channel stem.
//!
//! The usual layout pads each pixel's channels to a quad (4 integers), so a 7x7 kernel over
//! 3 channels takes 49 quads, a quarter of them zeros. Here the input is stored
//! channel-interleaved (`[row][column][channel]`, with the padding columns and one all-zero
//! row encoded), so the `kw * c_in` values under one kernel row are contiguous: K is ordered
//! `(ky, (kx, channel))` with each kernel row padded to whole quads by zero weights (7 rows of
//! 21 values: 42 quads). A panel column is then `kh` copies of `quads` words, or with AVX-512
//! VBMI one byte permute per quad for 16 columns at once, where the channel-quad layout
//! needed a bounds-checked copy per tap.

use rayon::prelude::*;

use crate::qconv::{ActEncoder, BlockBuf};
use crate::qgemm::{ActInt, NR};
use crate::Conv2d;

/// Elements past the last image's rows that a panel gather may read (the vector path loads
/// 128 bytes from its first column; the scalar one reads up to 3 elements past a run).
const SLACK: usize = 128;

/// The K order of a tap-row convolution: per kernel row, the `kw * c_in` values of
/// `(kx, channel)` in `quads` quads, the last padded with zero weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TapRows {
    pub quads: usize,
}

/// Where the encoded rows of one input size lie: image `i`, row `iy`, padded column `px`,
/// channel `c` at `i * image + iy * row + px * c_in + c`; row `h` of each image is all zero
/// codes (it stands for the rows above and below the image).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowGeometry {
    pub row: usize,
    pub image: usize,
}

impl TapRows {
    /// The layout for a one-group convolution with unit column dilation whose kernel rows
    /// take fewer quads as `(kx, channel)` runs than as per-tap channel quads.
    pub fn choose(c: &Conv2d) -> Option<TapRows> {
        if c.group != 1 || c.dilation[1] != 1 || c.kw < 2 {
            return None;
        }
        let quads = (c.kw * c.c_in).div_ceil(4);
        (quads < c.kw * c.c_in.div_ceil(4)).then_some(TapRows { quads })
    }

    /// Quads of K.
    pub fn depth_quads(&self, c: &Conv2d) -> usize {
        c.kh * self.quads
    }

    /// Weight rows `[c_out, c_in * kh * kw]` (ONNX order) in this K order, zero-padded.
    pub fn reorder(&self, c: &Conv2d, w: &[i32]) -> Vec<i32> {
        let k = c.c_in * c.kh * c.kw;
        let kq4 = self.depth_quads(c) * 4;
        let mut out = vec![0i32; c.c_out * kq4];
        for (row, dst) in w.chunks(k).zip(out.chunks_mut(kq4)) {
            for ci in 0..c.c_in {
                for ky in 0..c.kh {
                    for kx in 0..c.kw {
                        dst[ky * self.quads * 4 + kx * c.c_in + ci] =
                            row[(ci * c.kh + ky) * c.kw + kx];
                    }
                }
            }
        }
        out
    }

    /// The encoded rows of an `h x w` input: each row holds the left padding, the image
    /// columns and enough right padding for the last output column's kernel row.
    pub fn geometry(&self, c: &Conv2d, h: usize, w: usize) -> RowGeometry {
        let (_, ow) = c.out_hw(h, w);
        let cols = (w + c.pads[1] + c.pads[3]).max((ow.max(1) - 1) * c.stride[1] + c.kw);
        let row = cols * c.c_in;
        RowGeometry {
            row,
            image: (h + 1) * row,
        }
    }

    /// Elements of the encoded input of `n` images, slack included.
    pub fn encoded_len(&self, c: &Conv2d, n: usize, h: usize, w: usize) -> usize {
        n * self.geometry(c, h, w).image + SLACK
    }

    /// Encodes `n` images into `dst` ([`TapRows::encoded_len`] elements): element (image
    /// `i`, channel `ch`, pixel `p`) of the input is at `i * img + ch * chan + p * pix`.
    #[allow(clippy::too_many_arguments)]
    pub fn encode<T: ActInt>(
        &self,
        c: &Conv2d,
        (n, h, w): (usize, usize, usize),
        input: &[f32],
        (img, chan, pix): (usize, usize, usize),
        enc: &ActEncoder,
        zero: T,
        dst: &mut [T],
    ) {
        let geo = self.geometry(c, h, w);
        assert_eq!(dst.len(), n * geo.image + SLACK, "tap rows: encoded length");
        let (body, slack) = dst.split_at_mut(n * geo.image);
        slack.fill(zero);
        let cin = c.c_in;
        let left = c.pads[1] * cin;
        let avx2 = crate::qgemm::avx2_available();
        body.par_chunks_mut(geo.row).enumerate().for_each_init(
            || (vec![0f32; w * cin], vec![zero; w * cin]),
            |(xs, codes), (r, row)| {
                let (i, iy) = (r / (h + 1), r % (h + 1));
                if iy == h {
                    row.fill(zero);
                    return;
                }
                // The padding columns; the image's are written below.
                row[..left].fill(zero);
                row[left + w * cin..].fill(zero);
                // The row's channels one after another, contiguous.
                let base = i * img + iy * w * pix;
                for (ch, x) in xs.chunks_exact_mut(w).enumerate() {
                    let at = base + ch * chan;
                    match pix {
                        1 => x.copy_from_slice(&input[at..at + w]),
                        _ => {
                            for (ix, x) in x.iter_mut().enumerate() {
                                *x = input[at + ix * pix];
                            }
                        }
                    }
                }
                let row = &mut row[left..left + w * cin];
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: AVX2 is present (checked at run time above).
                    unsafe { encode_row_avx2(enc, (zero, cin), xs, codes, row) };
                    return;
                }
                let _ = avx2;
                encode_row(enc, (zero, cin), xs, codes, row);
            },
        );
    }

    /// Packs `dst.len() / (kq * NR * 4)` panels of columns from `j0` (output pixels; those
    /// past `ohw` get the zero code) of one image, whose encoded rows start at `src[0]`
    /// (`src` runs to the end of the encoded buffer, slack included). Panel quad
    /// `ky * quads + q` of column `j` holds the 4 values from element `4q` of the kernel
    /// row's run; values past the run meet zero weights.
    pub fn gather<T: BlockBuf>(
        &self,
        c: &Conv2d,
        (h, w): (usize, usize),
        src: &[T],
        zero: T,
        j0: usize,
        dst: &mut [T],
    ) {
        let geo = self.geometry(c, h, w);
        let (oh, ow) = c.out_hw(h, w);
        let ohw = oh * ow;
        let kq = self.depth_quads(c);
        let panel_len = kq * NR * 4;
        let cin = c.c_in;
        // The start of column `j`'s run for kernel row `ky`.
        let start = |j: usize, ky: usize| -> usize {
            let (oy, ox) = (j / ow, j % ow);
            let iy = (oy * c.stride[0] + ky * c.dilation[0]) as isize - c.pads[0] as isize;
            let row = if iy >= 0 && (iy as usize) < h {
                iy as usize
            } else {
                h
            };
            row * geo.row + ox * c.stride[1] * cin
        };
        #[cfg(target_arch = "x86_64")]
        let vector = match T::as_u8(src) {
            Some(bytes) if vbmi_available() && 15 * c.stride[1] * cin + 4 * self.quads <= 128 => {
                Some((bytes, permute_indices(self.quads, c.stride[1] * cin)))
            }
            _ => None,
        };
        for (p, panel) in dst.chunks_exact_mut(panel_len).enumerate() {
            let jp = j0 + p * NR;
            #[cfg(target_arch = "x86_64")]
            if let Some((bytes, idx)) = &vector {
                if jp + NR <= ohw && jp % ow + NR <= ow {
                    let panel = T::as_u8_mut(panel).expect("u8 like the source");
                    for ky in 0..c.kh {
                        let s = start(jp, ky);
                        assert!(s + 128 <= bytes.len(), "tap rows: gather past the slack");
                        let out = &mut panel[ky * self.quads * NR * 4..][..self.quads * NR * 4];
                        // SAFETY: AVX-512 F, BW and VBMI present (checked in
                        // `vbmi_available`); the 128 bytes read from `s` are inside `bytes`
                        // (asserted); `out` holds `quads` panel rows of 64 bytes, and `idx`
                        // one index vector per quad.
                        unsafe { permute_row(&bytes[s..s + 128], idx, out) };
                    }
                    continue;
                }
            }
            let (panel4, _) = panel.as_chunks_mut::<4>();
            for col in 0..NR {
                let j = jp + col;
                for ky in 0..c.kh {
                    for q in 0..self.quads {
                        let d = &mut panel4[(ky * self.quads + q) * NR + col];
                        *d = match j < ohw {
                            true => {
                                let s = start(j, ky) + 4 * q;
                                [src[s], src[s + 1], src[s + 2], src[s + 3]]
                            }
                            false => [zero; 4],
                        };
                    }
                }
            }
        }
    }
}

/// One image row: `xs` holds its channels one after another (`w` values each); they are
/// encoded contiguously into `codes` (a loop that vectorizes), then interleaved into `row`
/// (`w` pixels of `c_in` values).
#[inline(always)]
fn encode_row<T: ActInt>(
    enc: &ActEncoder,
    (zero, cin): (T, usize),
    xs: &[f32],
    codes: &mut [T],
    row: &mut [T],
) {
    let z = zero.widen() as i32;
    crate::qconv::encode_plane(enc, xs, codes, |n| T::from_i32(n + z));
    let w = xs.len() / cin;
    for (ix, px) in row.chunks_exact_mut(cin).enumerate() {
        for (ch, v) in px.iter_mut().enumerate() {
            *v = codes[ch * w + ix];
        }
    }
}

/// [`encode_row`] compiled for AVX2.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn encode_row_avx2<T: ActInt>(
    enc: &ActEncoder,
    zero_cin: (T, usize),
    xs: &[f32],
    codes: &mut [T],
    row: &mut [T],
) {
    encode_row(enc, zero_cin, xs, codes, row)
}

/// Whether the byte-permute gather can run: AVX-512 F, BW and VBMI (tests turn it off with
/// the integer kernels' switches, so the scalar gather runs on this CPU too).
#[inline]
fn vbmi_available() -> bool {
    #[cfg(test)]
    if crate::qgemm::FORCE_PORTABLE.load(std::sync::atomic::Ordering::Relaxed)
        || crate::qgemm::FORCE_NO_VNNI.load(std::sync::atomic::Ordering::Relaxed)
    {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vbmi")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Per quad `q`, the byte indices of 16 columns `step` bytes apart: byte `4 * col + t` of
/// the panel row takes byte `col * step + 4 * q + t` of the 128 read from the first column.
#[cfg(target_arch = "x86_64")]
fn permute_indices(quads: usize, step: usize) -> Vec<[u8; 64]> {
    (0..quads)
        .map(|q| std::array::from_fn(|b| ((b / 4) * step + 4 * q + b % 4) as u8))
        .collect()
}

/// One kernel row of 16 columns: each quad's panel row (64 bytes) permuted out of the 128
/// bytes `src` with `vpermt2b`.
///
/// # Safety
/// AVX-512 F, BW and VBMI present; `src` holds 128 bytes, `out` `64 * idx.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn permute_row(src: &[u8], idx: &[[u8; 64]], out: &mut [u8]) {
    use std::arch::x86_64::*;
    debug_assert!(src.len() >= 128 && out.len() >= 64 * idx.len());
    // SAFETY (loads and stores): src holds 128 bytes, idx 64 per entry, out 64 per quad.
    let lo = _mm512_loadu_si512(src.as_ptr() as *const __m512i);
    let hi = _mm512_loadu_si512(src.as_ptr().add(64) as *const __m512i);
    for (q, ix) in idx.iter().enumerate() {
        let i = _mm512_loadu_si512(ix.as_ptr() as *const __m512i);
        let v = _mm512_permutex2var_epi8(lo, i, hi);
        _mm512_storeu_si512(out.as_mut_ptr().add(64 * q) as *mut __m512i, v);
    }
}
