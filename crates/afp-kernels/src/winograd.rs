//! 3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray,
//! 2016): each 2x2 output tile is computed from a 4x4 input tile with 16 products instead of
//! 36, so the arithmetic is 16 GEMMs of `c_out x c_in` by `c_in x tiles`, 2.25x fewer
//! multiply-adds than the 3x3 convolution as one GEMM.
//!
//! `U = G g Gᵀ` transforms each 3x3 filter into 4x4, `V = Bᵀ d B` each input tile, the GEMMs
//! give `M[ξ] = U[ξ] V[ξ]` for the 16 positions `ξ`, and `Y = Aᵀ M A` is the 2x2 output
//! tile. The transforms only add, subtract and halve, so the result differs from the direct
//! sum by rounding alone (about 1e-6 relative on ResNet-50's layers).
//!
//! Layouts: `V` is `[c_in][16][tiles]` (each channel's transform is one contiguous block,
//! written by one task; the GEMM reads `V[ξ]` with a row stride of `16 * tiles`), `M` is
//! `[16][c_out][tiles]` (each GEMM writes one block). Images are transformed together, so
//! the GEMMs at batch 8 have 8 images' tiles as their columns.

use rayon::prelude::*;

use crate::matmul::MatLayout;
use crate::sgemm::{gemm_fused, Bias, Epilogue, Lhs};
use crate::{Activation, Conv2d};

/// Tiles per GEMM column block at most, across images: bounds the transform buffers
/// (`V` and `M` are `16 x channels x tiles` each).
const MAX_TILES: usize = 4096;

/// Whether a convolution goes through F(2x2, 3x3): 3x3, stride 1, padding 1, no dilation or
/// groups, with enough channels and pixels for the transforms to pay (measured on ResNet-50's
/// shapes: 1.4x to 1.7x at 56x56 to 14x14 with 64 to 256 channels, none at 7x7).
pub(crate) fn applies(c: &Conv2d, h: usize, w: usize) -> bool {
    c.kh == 3
        && c.kw == 3
        && c.stride == [1, 1]
        && c.dilation == [1, 1]
        && c.pads == [1; 4]
        && c.group == 1
        && c.c_in >= 64
        && c.c_out >= 64
        && h >= 14
        && w >= 14
}

/// `U[ξ][o][i] = (G g Gᵀ)[ξ]` for the weights `[c_out][c_in][3][3]`, with
/// `G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]]`.
pub(crate) fn transform_weights(weight: &[f32], c_out: usize, c_in: usize, u: &mut [f32]) {
    assert_eq!(weight.len(), c_out * c_in * 9);
    assert_eq!(u.len(), 16 * c_out * c_in);
    let oc = c_out * c_in;
    for (p, g) in weight.chunks_exact(9).enumerate() {
        // t = G g (4 x 3), then t Gᵀ (4 x 4).
        let mut t = [[0f32; 3]; 4];
        for j in 0..3 {
            let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
            t[0][j] = g0;
            t[1][j] = 0.5 * (g0 + g1 + g2);
            t[2][j] = 0.5 * (g0 - g1 + g2);
            t[3][j] = g2;
        }
        for (i, &[a, b, c]) in t.iter().enumerate() {
            let row = [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
            for (j, v) in row.into_iter().enumerate() {
                u[(i * 4 + j) * oc + p] = v;
            }
        }
    }
}

/// A convolution's weights transformed for F(2x2, 3x3) once, for a caller that runs the
/// convolution many times (the engine keeps one per layer): at batch 1 the transform reads
/// and writes more memory than the products, and on 14x14 planes it cancels the gain.
#[derive(Debug, Clone)]
pub struct WinogradWeights {
    u: Vec<f32>,
    c_out: usize,
    c_in: usize,
}

impl Conv2d {
    /// The transformed weights when this convolution on `h x w` inputs goes through
    /// F(2x2, 3x3) on this machine, else `None`. `weight` is `[c_out, c_in, 3, 3]`.
    pub fn winograd_weights(&self, h: usize, w: usize, weight: &[f32]) -> Option<WinogradWeights> {
        if !(applies(self, h, w) && crate::sgemm::avx2_available())
            || weight.len() != self.c_out * self.c_in * 9
        {
            return None;
        }
        let mut u = vec![0f32; 16 * self.c_out * self.c_in];
        transform_weights(weight, self.c_out, self.c_in, &mut u);
        Some(WinogradWeights {
            u,
            c_out: self.c_out,
            c_in: self.c_in,
        })
    }

    /// [`Conv2d::run_add`] with weights from [`Conv2d::winograd_weights`] (for the same
    /// convolution and input size).
    #[allow(clippy::too_many_arguments)]
    pub fn run_add_winograd(
        &self,
        n: usize,
        h: usize,
        w: usize,
        input: &[f32],
        weights: &WinogradWeights,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        act: Activation,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        assert!(
            applies(self, h, w) && weights.c_out == self.c_out && weights.c_in == self.c_in,
            "run_add_winograd: weights for {}x{} channels, or a convolution F(2x2, 3x3) does not take: {self:?} on {h}x{w}",
            weights.c_out,
            weights.c_in
        );
        assert_eq!(input.len(), n * self.c_in * h * w, "conv: input length");
        assert_eq!(out.len(), n * self.c_out * h * w, "conv: output length");
        if let Some(b) = bias {
            assert_eq!(b.len(), self.c_out, "conv: bias length");
        }
        if let Some(r) = residual {
            assert_eq!(r.len(), out.len(), "conv: residual length");
        }
        let need = workspace_len(self, n, h, w);
        if scratch.len() < need {
            scratch.resize(need, 0.0);
        }
        run(
            self, n, h, w, input, &weights.u, bias, residual, act, out, scratch,
        );
    }
}

/// Images transformed together, and the f32 elements of their `V` and `M`.
fn blocking(c: &Conv2d, n: usize, h: usize, w: usize) -> (usize, usize, usize) {
    let tiles = h.div_ceil(2) * w.div_ceil(2);
    let per_block = (MAX_TILES / tiles).clamp(1, n.max(1));
    let max_t = per_block * tiles;
    (per_block, 16 * c.c_in * max_t, 16 * c.c_out * max_t)
}

fn workspace_len(c: &Conv2d, n: usize, h: usize, w: usize) -> usize {
    let (_, v, m) = blocking(c, n, h, w);
    v + m
}

/// The convolution of `n` images `[n, c_in, h, w]` into `[n, c_out, h, w]` with the weights
/// transformed (`u`: `[16][c_out][c_in]`), adding `bias`, then `residual`, then `act` (the
/// order of the GEMM epilogue). `workspace` holds the transformed tiles.
#[allow(clippy::too_many_arguments)]
fn run(
    c: &Conv2d,
    n: usize,
    h: usize,
    w: usize,
    input: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    act: Activation,
    out: &mut [f32],
    workspace: &mut [f32],
) {
    let (ci, co) = (c.c_in, c.c_out);
    let (hw, th, tw) = (h * w, h.div_ceil(2), w.div_ceil(2));
    let tiles = th * tw;
    let (per_block, v_len, m_len) = blocking(c, n, h, w);
    let (v, rest) = workspace.split_at_mut(v_len);
    let m = &mut rest[..m_len];
    for i0 in (0..n).step_by(per_block) {
        let imgs = per_block.min(n - i0);
        let t_all = imgs * tiles;
        let v = &mut v[..16 * ci * t_all];
        let m = &mut m[..16 * co * t_all];
        // Input tiles, a channel (of every image in the block) per task.
        v.par_chunks_mut(16 * t_all).enumerate().for_each_init(
            || vec![0f32; 2 * (2 * th + 2) * (tw + 1) + 8 * (tw + 1)],
            |buf, (ch, vc)| {
                for img in 0..imgs {
                    let plane = &input[((i0 + img) * ci + ch) * hw..][..hw];
                    transform_input(plane, h, w, vc, t_all, img * tiles, buf);
                }
            },
        );
        // The 16 products, one per task.
        let v = &*v;
        m.par_chunks_mut(co * t_all)
            .enumerate()
            .for_each(|(xi, mx)| {
                let epi = Epilogue {
                    alpha: 1.0,
                    accumulate: false,
                    bias: Bias::None,
                    residual: None,
                    act: Activation::None,
                };
                gemm_fused(
                    co,
                    t_all,
                    ci,
                    Lhs::F32(&u[xi * co * ci..][..co * ci], MatLayout::row_major(ci)),
                    &v[xi * t_all..],
                    MatLayout::row_major(16 * t_all),
                    mx,
                    t_all,
                    epi,
                    1,
                );
            });
        // Output tiles, a plane per task.
        let m = &*m;
        let block_out = &mut out[i0 * co * hw..(i0 + imgs) * co * hw];
        block_out.par_chunks_mut(hw).enumerate().for_each_init(
            || vec![0f32; 4 * tw],
            |buf, (p, plane)| {
                let (img, o) = (p / co, p % co);
                let res = residual.map(|r| &r[((i0 + img) * co + o) * hw..][..hw]);
                let b = bias.map_or(0.0, |b| b[o]);
                let col0 = o * t_all + img * tiles;
                transform_output(m, co * t_all, col0, h, w, b, res, act, plane, buf);
            },
        );
    }
}

/// `V = Bᵀ d B` for every 4x4 tile of one channel's plane (padding 1), with
/// `Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`, into
/// `vc[ξ * stride + col0 + tile]`. Each padded row is split into its even and odd columns
/// first, so the tiles of a row are contiguous slices (no gathers).
fn transform_input(
    plane: &[f32],
    h: usize,
    w: usize,
    vc: &mut [f32],
    stride: usize,
    col0: usize,
    buf: &mut [f32],
) {
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let plen = tw + 1;
    let rows = 2 * th + 2;
    // Padded row r (input row r - 1; rows 0 and past h are the zero padding) at
    // `padded[r * rl..]`: its even padded columns (input columns 2j - 1), then its odd ones
    // (input columns 2j), `plen` each.
    let rl = 2 * plen;
    let (padded, u) = buf.split_at_mut(rows * rl);
    padded[..rl].fill(0.0);
    padded[(h + 1) * rl..].fill(0.0);
    for (y, row) in plane.chunks_exact(w).enumerate() {
        let dst = &mut padded[(y + 1) * rl..][..rl];
        // Padded column t = x + 1 goes to dst[(t % 2) * plen + t / 2]; t = 0 and t > w are
        // the padding, written here because `buf` is reused from channel to channel.
        crate::depthwise::deinterleave(row, dst, 2, 1, plen);
        dst[0] = 0.0;
        for t in w + 1..rl {
            dst[(t % 2) * plen + t / 2] = 0.0;
        }
    }
    let (ue, uo) = u.split_at_mut(4 * plen);
    for ty in 0..th {
        // Bᵀ down the tile's 4 rows, for the even and the odd columns.
        for (phase, dst) in [(0, &mut *ue), (1, &mut *uo)] {
            let r = |i: usize| &padded[(2 * ty + i) * rl + phase * plen..][..plen];
            let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
            let (d0, rest) = dst.split_at_mut(plen);
            let (d1, rest) = rest.split_at_mut(plen);
            let (d2, d3) = rest.split_at_mut(plen);
            for j in 0..plen {
                d0[j] = r0[j] - r2[j];
                d1[j] = r1[j] + r2[j];
                d2[j] = r2[j] - r1[j];
                d3[j] = r1[j] - r3[j];
            }
        }
        // B across: tile x has columns 2x - 1, 2x, 2x + 1, 2x + 2 = e[x], o[x], e[x+1], o[x+1].
        for i in 0..4 {
            let (a, b) = (&ue[i * plen..][..plen], &uo[i * plen..][..plen]);
            let at = |q: usize| (4 * i + q) * stride + col0 + ty * tw;
            let (s0, s1, s2, s3) = (at(0), at(1), at(2), at(3));
            // Four disjoint rows of `vc`, in increasing order.
            let (lo, hi) = vc.split_at_mut(s1);
            let d0 = &mut lo[s0..s0 + tw];
            let (mid, hi) = hi.split_at_mut(s2 - s1);
            let d1 = &mut mid[..tw];
            let (mid, hi) = hi.split_at_mut(s3 - s2);
            let d2 = &mut mid[..tw];
            let d3 = &mut hi[..tw];
            for x in 0..tw {
                let (p, q, r, s) = (a[x], b[x], a[x + 1], b[x + 1]);
                d0[x] = p - r;
                d1[x] = q + r;
                d2[x] = r - q;
                d3[x] = q - s;
            }
        }
    }
}

/// `Y = Aᵀ M A` for every tile of one output plane, `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`,
/// from `m[ξ * stride + col0 + tile]`; then `act(y + bias + residual)`.
#[allow(clippy::too_many_arguments)]
fn transform_output(
    m: &[f32],
    stride: usize,
    col0: usize,
    h: usize,
    w: usize,
    bias: f32,
    residual: Option<&[f32]>,
    act: Activation,
    plane: &mut [f32],
    buf: &mut [f32],
) {
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    for ty in 0..th {
        let mm = |xi: usize| &m[xi * stride + col0 + ty * tw..][..tw];
        let (y00, rest) = buf.split_at_mut(tw);
        let (y01, rest) = rest.split_at_mut(tw);
        let (y10, y11) = rest.split_at_mut(tw);
        let (m0, m1, m2, m3) = (mm(0), mm(1), mm(2), mm(3));
        let (m4, m5, m6, m7) = (mm(4), mm(5), mm(6), mm(7));
        let (m8, m9, m10, m11) = (mm(8), mm(9), mm(10), mm(11));
        let (m12, m13, m14, m15) = (mm(12), mm(13), mm(14), mm(15));
        for x in 0..tw {
            // Aᵀ down the columns, then across.
            let p0 = m0[x] + m4[x] + m8[x];
            let p1 = m1[x] + m5[x] + m9[x];
            let p2 = m2[x] + m6[x] + m10[x];
            let p3 = m3[x] + m7[x] + m11[x];
            let q0 = m4[x] - m8[x] - m12[x];
            let q1 = m5[x] - m9[x] - m13[x];
            let q2 = m6[x] - m10[x] - m14[x];
            let q3 = m7[x] - m11[x] - m15[x];
            y00[x] = p0 + p1 + p2;
            y01[x] = p1 - p2 - p3;
            y10[x] = q0 + q1 + q2;
            y11[x] = q1 - q2 - q3;
        }
        for (dy, (left, right)) in [(0, (&*y00, &*y01)), (1, (&*y10, &*y11))] {
            let y = 2 * ty + dy;
            if y >= h {
                break;
            }
            let row = &mut plane[y * w..][..w];
            for (pair, (&a, &b)) in row.chunks_exact_mut(2).zip(left.iter().zip(right)) {
                pair[0] = a;
                pair[1] = b;
            }
            if w % 2 == 1 {
                row[w - 1] = left[tw - 1];
            }
            match residual {
                Some(r) => {
                    let r = &r[y * w..][..w];
                    for (v, &rv) in row.iter_mut().zip(r) {
                        *v = act.apply(*v + bias + rv);
                    }
                }
                None => {
                    for v in row.iter_mut() {
                        *v = act.apply(*v + bias);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the direct sum in f64, on odd and even sizes, several images, with bias,
    /// residual and a clamp: the error is rounding only.
    #[test]
    fn winograd_equals_the_direct_convolution() {
        let mut seed = 5;
        for &(ci, co, h, w, n) in &[
            (64usize, 64usize, 14usize, 14usize, 1usize),
            (64, 72, 15, 17, 2),
            (70, 64, 16, 15, 3),
        ] {
            let c = Conv2d {
                c_in: ci,
                c_out: co,
                kh: 3,
                kw: 3,
                stride: [1, 1],
                dilation: [1, 1],
                pads: [1; 4],
                group: 1,
            };
            assert!(applies(&c, h, w));
            let x = crate::test_rand::rand_vec(n * ci * h * w, &mut seed);
            let wt = crate::test_rand::rand_vec(co * ci * 9, &mut seed);
            let b = crate::test_rand::rand_vec(co, &mut seed);
            let r = crate::test_rand::rand_vec(n * co * h * w, &mut seed);
            let act = Activation::Clip {
                min: -4.0,
                max: 5.0,
            };
            let mut got = vec![0f32; n * co * h * w];
            let mut u = vec![0f32; 16 * co * ci];
            transform_weights(&wt, co, ci, &mut u);
            let mut workspace = vec![0f32; workspace_len(&c, n, h, w)];
            run(
                &c,
                n,
                h,
                w,
                &x,
                &u,
                Some(&b),
                Some(&r),
                act,
                &mut got,
                &mut workspace,
            );
            // The public path (weights transformed once, where the machine runs it) is the
            // same computation.
            if let Some(ww) = c.winograd_weights(h, w, &wt) {
                let mut again = vec![0f32; got.len()];
                let mut scratch = Vec::new();
                c.run_add_winograd(
                    n,
                    h,
                    w,
                    &x,
                    &ww,
                    Some(&b),
                    Some(&r),
                    act,
                    &mut again,
                    &mut scratch,
                );
                assert_eq!(again, got);
            }
            let mut worst = 0f64;
            for img in 0..n {
                for o in 0..co {
                    for y in 0..h {
                        for xx in 0..w {
                            let mut s = 0f64;
                            for i in 0..ci {
                                for ky in 0..3 {
                                    for kx in 0..3 {
                                        let (iy, ix) = (y + ky, xx + kx);
                                        if iy < 1 || ix < 1 || iy > h || ix > w {
                                            continue;
                                        }
                                        let xv = x[((img * ci + i) * h + iy - 1) * w + ix - 1];
                                        let wv = wt[(o * ci + i) * 9 + ky * 3 + kx];
                                        s += xv as f64 * wv as f64;
                                    }
                                }
                            }
                            let at = ((img * co + o) * h + y) * w + xx;
                            let want = act.apply((s + b[o] as f64 + r[at] as f64) as f32);
                            worst = worst.max((got[at] - want).abs() as f64);
                        }
                    }
                }
            }
            println!("{ci}->{co} {h}x{w} n{n}: max error {worst:e}");
            assert!(worst < 4e-5, "{ci}->{co} {h}x{w} n{n}: max error {worst:e}");
        }
    }
}
