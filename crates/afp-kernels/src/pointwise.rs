//! FP32 1x1 convolutions (stride 1, no padding, one group) over many pixels, with AVX-512:
//! the input is read where it lies instead of being packed.
//!
//! A 1x1 convolution is the GEMM `out[M x P] = W[M x K] * x[K x P]` on each image's planes.
//! The general GEMM packs `x` into panels, which is cheap next to the products when `M` is
//! large, but MobileNet-style layers project to 16 to 32 channels: each panel then serves
//! one to three row strips and packing costs as much as the arithmetic. Here an output tile
//! is up to 24 channels x 16 pixels, its accumulators stay in registers, and each step over
//! `K` loads 16 pixels of one input plane (prefetched a few tiles ahead, since the `K`
//! planes are `K` streams no hardware prefetcher follows) and does up to 24 FMAs with
//! broadcast weights. The weights are rearranged once per call, channel chunk by chunk with
//! `K` outer, so each step's weights are one contiguous run (rows `K` floats apart would
//! fall into a few L1 sets).
//!
//! Sums run over `K` in order from zero, then the bias, the residual and the clamp are
//! applied in that order, as the GEMM's epilogue does. The GEMM adds its `K` blocks of 256
//! one after the other, so for `K > 256` the two differ in rounding, not in anything exact
//! (integer-valued sums agree bit for bit). Coded weights are decoded into the same layout,
//! so the lookup path sums exactly as the FP32 path on the decoded weights.

use rayon::prelude::*;

use crate::conv::Conv2d;
use crate::sgemm::{Lhs, OutPtr};
use crate::Activation;

/// Output channels per tile at most (24 accumulators of 32 registers).
const ROWS: usize = 24;
/// Pixels per tile: one 16-lane vector.
const COLS: usize = 16;
/// Tiles ahead that each input plane is prefetched.
const PREFETCH_TILES: usize = 4;
/// Input bytes of one task's column block at most (it is read once per channel chunk: L2).
const BLOCK_BYTES: usize = 256 * 1024;
/// Smallest plane: a plane under 8 tiles wastes too much of its last, partial tile (7x7
/// planes stay with the GEMM).
const MIN_PIXELS: usize = 128;
/// Fewest columns per call (images x pixels): below, rearranging the weights costs too much
/// against the products (14x14 layers stay with the GEMM below batch 8).
const MIN_COLUMNS: usize = 1568;

/// Whether the CPU has AVX-512F.
fn cpu_has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this path is taken: AVX-512F, and the tests have not forced the portable paths.
fn available() -> bool {
    crate::sgemm::avx2_available() && cpu_has_avx512f()
}

/// Whether `conv` on `n` images of `pixels` pixels, with `act` and these weights, runs here:
/// projections only (no more outputs than inputs). Expansions re-read each input tile once
/// per 24 output channels and write many planes at once; measured in the engine, the GEMM
/// (one packed panel for every row strip) is faster for them.
pub(crate) fn handles(conv: &Conv2d, n: usize, pixels: usize, act: Activation, w: &Lhs) -> bool {
    let row_major = match w {
        Lhs::F32(_, l) => l.cs == 1 && l.rs == conv.c_in,
        Lhs::Coded(_) => true,
    };
    conv.is_pointwise_direct()
        && conv.group == 1
        && conv.c_in > 0
        && conv.c_out <= conv.c_in
        && pixels >= MIN_PIXELS
        && n * pixels >= MIN_COLUMNS
        && act.clamp_bounds().is_some()
        && row_major
        && available()
}

/// Channel chunks: `(first row, rows, rows computed)`, the last of 8, 16 or 24 (zero rows
/// pad a chunk).
fn chunks(m: usize) -> Vec<(usize, usize, usize)> {
    let mut v = Vec::new();
    let mut r0 = 0;
    while r0 < m {
        let rows = (m - r0).min(ROWS);
        v.push((r0, rows, rows.div_ceil(8) * 8));
        r0 += rows;
    }
    v
}

/// The weights rearranged per chunk: `[k][rows computed]`, zeros in the padding rows.
fn rearrange(w: &Lhs, m: usize, k: usize) -> Vec<f32> {
    let cs = chunks(m);
    let len: usize = cs.iter().map(|c| c.2 * k).sum();
    let mut out = vec![0f32; len];
    let mut row = vec![0f32; k];
    let mut at = 0;
    for &(r0, rows, rk) in &cs {
        for r in 0..rows {
            let src: &[f32] = match w {
                Lhs::F32(a, _) => &a[(r0 + r) * k..][..k],
                Lhs::Coded(c) => {
                    c.decode_row(r0 + r, 0, &mut row);
                    &row
                }
            };
            for (kk, &v) in src.iter().enumerate() {
                out[at + kk * rk + r] = v;
            }
        }
        at += rk * k;
    }
    out
}

/// `out = act(W x + bias + residual)` for `n` images: `x` is `[n, k, pixels]`, `out` and
/// `residual` `[n, m, pixels]`, `w` `m x k`. Callers check [`handles`] first.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    n: usize,
    m: usize,
    k: usize,
    pixels: usize,
    w: &Lhs,
    x: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    act: Activation,
    out: &mut [f32],
) {
    assert!(cpu_has_avx512f(), "pointwise: AVX-512F is required");
    assert_eq!(x.len(), n * k * pixels, "pointwise: input length");
    assert_eq!(out.len(), n * m * pixels, "pointwise: output length");
    if let Some(b) = bias {
        assert_eq!(b.len(), m, "pointwise: bias length");
    }
    if let Some(r) = residual {
        assert_eq!(r.len(), out.len(), "pointwise: residual length");
    }
    let (lo, hi) = act
        .clamp_bounds()
        .expect("clamp activations only (handles)");
    let wr = rearrange(w, m, k);
    let cs = chunks(m);
    // Column blocks: whole tiles, as even as whole tiles allow, small enough to stay in L2,
    // and at least two per thread over the batch.
    let tiles = pixels.div_ceil(COLS);
    let threads = rayon::current_num_threads().max(1);
    let by_cache = (tiles * COLS * k * 4).div_ceil(BLOCK_BYTES);
    // (Rounded up to a multiple of the threads: an odd block out idles a thread at the end.)
    let blocks = by_cache
        .max((2 * threads).div_ceil(n))
        .next_multiple_of(threads)
        .clamp(1, tiles);
    let bounds = |b: usize| ((b * tiles / blocks) * COLS).min(pixels);
    let outp = OutPtr(out.as_mut_ptr());
    (0..n * blocks).into_par_iter().for_each(|t| {
        let (img, b) = (t / blocks, t % blocks);
        let (j0, j1) = (bounds(b), bounds(b + 1));
        let xi = &x[img * k * pixels..][..k * pixels];
        let mut wat = 0;
        for &(r0, rows, rk) in &cs {
            let wc = &wr[wat..][..rk * k];
            wat += rk * k;
            let base = (img * m + r0) * pixels;
            let bias = bias.map(|b| &b[r0..r0 + rows]);
            let res = residual.map(|r| &r[base..][..(rows - 1) * pixels + j1]);
            let mut j = j0;
            while j < j1 {
                let cols = (j1 - j).min(COLS);
                let tile = Tile {
                    k,
                    w: wc,
                    x: xi,
                    pixels,
                    j,
                    cols,
                    rows,
                    bias,
                    res,
                    lo,
                    hi,
                };
                // SAFETY: AVX-512F is present (asserted above). The tile
                // reads input columns `j..j + cols` of each of the `k` planes of `xi` and
                // residual rows `0..rows` of `res` at those columns (all checked in
                // `tile_rows`), and writes those columns of output rows `r0..r0 + rows` of
                // image `img`: tasks cover disjoint column ranges of each image, so no two
                // write the same element.
                unsafe {
                    let o = outp.at(base);
                    match rk {
                        24 => tile_rows::<24>(&tile, o),
                        16 => tile_rows::<16>(&tile, o),
                        _ => tile_rows::<8>(&tile, o),
                    }
                }
                j += COLS;
            }
        }
    });
}

/// One output tile's operands: rows `0..rows` of a chunk (weights `w`, `[k][R]`), input
/// columns `j..j + cols` of the `k` planes of `x`.
struct Tile<'a> {
    k: usize,
    w: &'a [f32],
    x: &'a [f32],
    pixels: usize,
    j: usize,
    cols: usize,
    rows: usize,
    bias: Option<&'a [f32]>,
    res: Option<&'a [f32]>,
    lo: f32,
    hi: f32,
}

/// Computes one tile of `R` rows (the chunk's `rows <= R` are stored) into `out` (row `r`
/// at `out + r * pixels + j`).
///
/// # Safety
/// AVX-512F must be available; `out` must be valid for writes of rows `0..t.rows`, columns
/// `t.j..t.j + t.cols` at row stride `t.pixels`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_rows<const R: usize>(t: &Tile, out: *mut f32) {
    use std::arch::x86_64::*;
    assert!(t.rows <= R && t.cols >= 1 && t.cols <= COLS && t.j + t.cols <= t.pixels);
    assert!(t.w.len() >= t.k * R && t.x.len() >= t.k * t.pixels);
    let mask: __mmask16 = if t.cols == COLS {
        0xffff
    } else {
        (1u16 << t.cols) - 1
    };
    let mut acc = [_mm512_setzero_ps(); R];
    let (w, x) = (t.w.as_ptr(), t.x.as_ptr().add(t.j));
    for kk in 0..t.k {
        let plane = x.add(kk * t.pixels);
        // A prefetch never faults, but the address must not be formed past the allocation
        // with `add`.
        _mm_prefetch::<_MM_HINT_T0>(plane.wrapping_add(PREFETCH_TILES * COLS) as *const i8);
        // SAFETY: lanes `0..cols` are input columns `j..j + cols` of plane `kk` (asserted
        // inside `x`); masked-off lanes are not read.
        let v = _mm512_maskz_loadu_ps(mask, plane);
        let wk = w.add(kk * R);
        for (r, a) in acc.iter_mut().enumerate() {
            *a = _mm512_fmadd_ps(_mm512_set1_ps(*wk.add(r)), v, *a);
        }
    }
    let (lo, hi) = (_mm512_set1_ps(t.lo), _mm512_set1_ps(t.hi));
    for (r, &a) in acc.iter().enumerate().take(t.rows) {
        let mut v = a;
        if let Some(b) = t.bias {
            v = _mm512_add_ps(v, _mm512_set1_ps(b[r]));
        }
        if let Some(res) = t.res {
            let rr = &res[r * t.pixels + t.j..][..t.cols];
            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, rr.as_ptr()));
        }
        v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
        // SAFETY: the caller's contract: row `r < rows`, columns `j..j + cols`.
        _mm512_mask_storeu_ps(out.add(r * t.pixels + t.j), mask, v);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_rows<const R: usize>(_: &Tile, _: *mut f32) {
    unreachable!("pointwise: x86_64 only (cpu_has_avx512f() is false)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::MatLayout;
    use crate::test_rand::rand_vec;

    /// `act(W x + bias + residual)` with f64 sums.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        n: usize,
        m: usize,
        k: usize,
        p: usize,
        w: &[f32],
        x: &[f32],
        bias: Option<&[f32]>,
        res: Option<&[f32]>,
        act: Activation,
    ) -> Vec<f32> {
        let mut out = vec![0f32; n * m * p];
        for i in 0..n {
            for r in 0..m {
                for j in 0..p {
                    let s: f64 = (0..k)
                        .map(|kk| w[r * k + kk] as f64 * x[(i * k + kk) * p + j] as f64)
                        .sum();
                    let o = (i * m + r) * p + j;
                    let mut v = s as f32 + bias.map_or(0.0, |b| b[r]);
                    v += res.map_or(0.0, |rr| rr[o]);
                    out[o] = act.apply(v);
                }
            }
        }
        out
    }

    /// Tiles of 8, 16 and 24 rows with partial chunks and partial last tiles, one and several
    /// blocks per image, with and without bias and residual, under each clamp; writes stay
    /// inside the output (a guard follows it), through `Conv2d::run_add` as the engine calls it.
    #[test]
    fn tiles_match_the_reference_and_stay_inside() {
        let _path = crate::test_rand::KERNEL_PATH_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !available() {
            return;
        }
        let mut seed = 5;
        // (images, output channels, input channels, pixels): projections (the layers taken).
        let cases = [
            (1, 16, 32, 3136),
            (2, 24, 24, 1600),
            (1, 25, 300, 3200),
            (3, 7, 17, 1100),
            (1, 49, 64, 3137),
            (8, 40, 48, 400),
            (24, 1, 1, 131),
        ];
        for (ci, &(n, m, k, p)) in cases.iter().enumerate() {
            let w = rand_vec(m * k, &mut seed);
            let x = rand_vec(n * k * p, &mut seed);
            let bias = rand_vec(m, &mut seed);
            let res = rand_vec(n * m * p, &mut seed);
            let acts = [
                Activation::None,
                Activation::Relu,
                Activation::Clip {
                    min: -0.5,
                    max: 0.7,
                },
            ];
            let act = acts[ci % 3];
            let conv = Conv2d::pointwise(k, m);
            let lhs = Lhs::F32(&w, MatLayout::row_major(k));
            assert!(handles(&conv, n, p, act, &lhs), "case {ci}");
            for (b, r) in [
                (None, None),
                (Some(&bias[..]), None),
                (Some(&bias[..]), Some(&res[..])),
            ] {
                let want = reference(n, m, k, p, &w, &x, b, r, act);
                let len = n * m * p;
                let mut buf = vec![f32::NAN; len + 32];
                let mut scratch = Vec::new();
                conv.run_add(n, 1, p, &x, &w, b, r, act, &mut buf[..len], &mut scratch);
                assert!(
                    buf[len..].iter().all(|v| v.is_nan()),
                    "case {ci}: wrote past the output"
                );
                for (i, (&g, &e)) in buf[..len].iter().zip(&want).enumerate() {
                    let tol = 1e-5 * (1.0 + k as f32).sqrt() * (1.0 + e.abs());
                    assert!(
                        (g - e).abs() <= tol,
                        "case {ci} ({n},{m},{k},{p}) element {i}: {g} vs {e}"
                    );
                }
            }
        }
    }

    /// Coded weights (the lookup path) give the FP32 path's sums on the decoded weights, bit
    /// for bit.
    #[test]
    fn coded_weights_sum_as_their_decoded_values() {
        let _path = crate::test_rand::KERNEL_PATH_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !available() {
            return;
        }
        let (n, m, k, p) = (2, 20, 40, 1600);
        let mut seed = 9;
        let table: Vec<f32> = (0..16).map(|i| (i as f32 - 8.0) * 0.25).collect();
        let codes: Vec<u8> = (0..m * k).map(|i| ((i * 7 + i / 5) % 16) as u8).collect();
        let scale: Vec<f32> = (0..m).map(|r| 0.5 + r as f32 * 0.125).collect();
        let cw = crate::lookup::CodedWeights::new(m, k, codes, &table, scale).unwrap();
        let mut decoded = vec![0f32; m * k];
        cw.view().decode_into(&mut decoded);
        let x = rand_vec(n * k * p, &mut seed);
        let bias = rand_vec(m, &mut seed);
        let act = Activation::Relu;
        let (mut a, mut b) = (vec![0f32; n * m * p], vec![0f32; n * m * p]);
        let coded = Lhs::Coded(cw.view());
        let plain = Lhs::F32(&decoded, MatLayout::row_major(k));
        assert!(handles(&Conv2d::pointwise(k, m), n, p, act, &coded));
        run(n, m, k, p, &coded, &x, Some(&bias), None, act, &mut a);
        run(n, m, k, p, &plain, &x, Some(&bias), None, act, &mut b);
        assert!(a.iter().zip(&b).all(|(u, v)| u.to_bits() == v.to_bits()));
        assert!(a.iter().any(|&v| v > 0.0));
    }

    /// Planes too small, strides, pads, groups and other activations go to the GEMM.
    #[test]
    fn only_plain_1x1_layers_over_many_pixels() {
        let w = vec![0f32; 64];
        let lhs = Lhs::F32(&w, MatLayout::row_major(8));
        let c = Conv2d::pointwise(8, 8);
        let ok = available();
        let taken =
            |c: Conv2d, n: usize, pixels: usize, act: Activation| handles(&c, n, pixels, act, &lhs);
        assert_eq!(taken(c.clone(), 1, 3136, Activation::Relu), ok);
        assert!(!taken(c.clone(), 1, 49, Activation::Relu));
        assert!(!taken(c.clone(), 4, 196, Activation::Relu));
        assert_eq!(taken(c.clone(), 8, 196, Activation::Relu), ok);
        for other in [
            Conv2d {
                stride: [2, 2],
                ..c.clone()
            },
            Conv2d {
                pads: [1; 4],
                ..c.clone()
            },
            Conv2d {
                group: 2,
                ..c.clone()
            },
            // Expansions (more outputs than inputs) write more than they read: the GEMM.
            Conv2d::pointwise(8, 16),
        ] {
            assert!(!taken(other, 1, 3136, Activation::Relu));
        }
        assert!(!taken(c, 1, 3136, Activation::Sigmoid));
    }
}
