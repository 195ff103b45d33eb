//! Error-compensating rounding (GPTQ, Frantar et al. 2023, after OBQ): weights are rounded
//! one input column at a time, and each column's rounding error is pushed onto the columns not
//! yet rounded through the inverse Hessian of the layer's input, `H = X Xᵀ`, so the layer's
//! *output* on calibration data stays close. Works on any level set: each output channel is
//! rounded to its own grid (AFP with its offset, or INT with its scale).

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

/// `sum x xᵀ` over a layer input's vectors (one per output position), for one group of a
/// grouped convolution. Accumulated in f32 with the GEMM kernel (large sums of products of
/// activations; the damping added before factoring dwarfs the rounding error).
#[derive(Debug, Clone)]
pub struct Hessian {
    pub k: usize,
    pub h: Vec<f32>,
    pub samples: usize,
}

impl Hessian {
    pub fn new(k: usize) -> Hessian {
        Hessian {
            k,
            h: vec![0.0; k * k],
            samples: 0,
        }
    }

    /// Adds `n` row vectors `x` (`n x k`, row-major).
    pub fn add(&mut self, x: &[f32], n: usize) {
        use afp_kernels::{matmul, MatLayout};
        let k = self.k;
        assert_eq!(
            x.len(),
            n * k,
            "Hessian::add: {} values for {n} x {k}",
            x.len()
        );
        if n == 0 {
            return;
        }
        // H += Xᵀ X: lhs is X read column-major.
        matmul(
            k,
            k,
            n,
            &mut self.h,
            k,
            true,
            x,
            MatLayout::col_major(k),
            x,
            MatLayout::row_major(k),
            1.0,
            afp_kernels::threads_for(k, k, n),
        );
        self.samples += n;
    }
}

/// Options of the rounding.
#[derive(Debug, Clone, Copy)]
pub struct GptqOptions {
    /// Added to the diagonal, relative to its mean (GPTQ's `percdamp`).
    pub damp: f64,
    /// Round the columns with the largest input energy first (GPTQ's `act_order`).
    pub act_order: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions {
            damp: 0.01,
            act_order: true,
        }
    }
}

/// Block size of the factorization and the inverse: a panel of this many columns stays in
/// cache while the rest of the matrix streams past it once.
const BLOCK: usize = 64;

/// Columns whose rounding errors [`Factor::round`] collects before updating the columns after
/// them.
const LAZY_COLS: usize = 64;

/// Rows of weights that [`Factor::round`] rounds together: they share each streamed row of
/// `U`, and a column of a tile (32 f64, 8 AVX2 registers) stays in registers while a block's
/// errors are pushed onto it.
const TILE: usize = 32;

/// The upper-triangular `U` with `Uᵀ U = H⁻¹` (what GPTQ's update uses), from a symmetric
/// positive definite `H` (`k x k`, f64). With `J` the reversal, `J H J = L Lᵀ` (Cholesky)
/// gives `H⁻¹ = (J L⁻¹ J)ᵀ (J L⁻¹ J)`, so `U = J L⁻¹ J`: one factorization and one
/// triangular inverse, no explicit inverse of `H`. Both are blocked (a `k = 4608` matrix is
/// 170 MB: unblocked, every step would stream it from memory), and their loops run inside
/// pulp's widest-ISA wrapper (see `simd_op!`).
fn inverse_factor(h: &[f64], k: usize) -> Result<Vec<f64>, String> {
    let arch = pulp::Arch::new();
    // Reversed copy; only the lower triangle is used.
    let mut l = vec![0f64; k * k];
    l.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
        for (j, v) in row.iter_mut().enumerate().take(i + 1) {
            *v = h[(k - 1 - i) * k + (k - 1 - j)];
        }
    });
    // Right-looking blocked Cholesky, in place.
    for kb in (0..k).step_by(BLOCK) {
        let e = (kb + BLOCK).min(k);
        arch.dispatch(DiagonalBlock {
            l: &mut l,
            k,
            kb,
            e,
        })?;
        let (top, below) = l.split_at_mut(e * k);
        let diag = &top[kb * k..];
        // The panel below it, then the trailing update with it (rows independent).
        below.par_chunks_mut(k).for_each(|row| {
            arch.dispatch(PanelRow {
                row,
                diag,
                k,
                kb,
                e,
            })
        });
        let panel: Vec<f64> = below
            .chunks(k)
            .flat_map(|row| row[kb..e].iter().copied())
            .collect();
        below
            .par_chunks_mut(GROUP * k)
            .enumerate()
            .for_each(|(b, rows)| {
                arch.dispatch(TrailingRows {
                    rows,
                    panel: &panel,
                    k,
                    w: e - kb,
                    e,
                    r0: b * GROUP,
                })
            });
    }
    // M = L⁻¹ (lower), a block of columns at a time (blocks are independent): row c of `mt`
    // holds column c of M; each row of L is read once per block.
    let mut mt = vec![0f64; k * k];
    mt.par_chunks_mut(BLOCK * k)
        .enumerate()
        .for_each(|(b, cols)| {
            arch.dispatch(InverseColumns {
                l: &l,
                k,
                c0: b * BLOCK,
                cols,
            })
        });
    // U[a][b] = M[k-1-a][k-1-b] = mt[k-1-b][k-1-a].
    let mut u = vec![0f64; k * k];
    u.par_chunks_mut(k).enumerate().for_each(|(a, row)| {
        for (b, v) in row.iter_mut().enumerate().skip(a) {
            *v = mt[(k - 1 - b) * k + (k - 1 - a)];
        }
    });
    Ok(u)
}

/// The loops below run inside pulp's widest-ISA wrapper (`arch.dispatch`) through these
/// `WithSimd` structs, whose `with_simd` and loops are `#[inline(always)]`, so the loops are
/// compiled with the wrapper's features (AVX2 where present). A closure would not do: its body
/// is a function of its own, compiled for the baseline ISA (SSE2), which LLVM does not inline
/// into the wrapper. The arithmetic is the same at any vector width (no reassociation, no FMA
/// contraction): only the speed changes.
macro_rules! simd_op {
    ($name:ident { $($field:ident: $ty:ty),* $(,)? } -> $out:ty = $body:ident) => {
        struct $name<'a> {
            $($field: $ty),*
        }
        impl WithSimd for $name<'_> {
            type Output = $out;
            #[inline(always)]
            fn with_simd<S: Simd>(self, _simd: S) -> $out {
                let $name { $($field),* } = self;
                $body($($field),*)
            }
        }
    };
}

simd_op!(DiagonalBlock { l: &'a mut [f64], k: usize, kb: usize, e: usize } -> Result<(), String> = factor_diagonal_block);
simd_op!(PanelRow { row: &'a mut [f64], diag: &'a [f64], k: usize, kb: usize, e: usize } -> () = solve_panel_row);
simd_op!(TrailingRows { rows: &'a mut [f64], panel: &'a [f64], k: usize, w: usize, e: usize, r0: usize } -> () = update_trailing_rows);
simd_op!(InverseColumns { l: &'a [f64], k: usize, c0: usize, cols: &'a mut [f64] } -> () = invert_columns);

/// Cholesky of the diagonal block `kb..e` (its rows already hold the updates of the blocks
/// before it).
#[inline(always)]
fn factor_diagonal_block(l: &mut [f64], k: usize, kb: usize, e: usize) -> Result<(), String> {
    for i in kb..e {
        for j in kb..=i {
            let s = l[i * k + j] - dot(&l[i * k + kb..i * k + j], &l[j * k + kb..j * k + j]);
            if i == j {
                if !(s > 0.0 && s.is_finite()) {
                    return Err(format!(
                        "the input Hessian is not positive definite (pivot {s} at {i})"
                    ));
                }
                l[i * k + i] = s.sqrt();
            } else {
                l[i * k + j] = s / l[j * k + j];
            }
        }
    }
    Ok(())
}

/// Columns `kb..e` of one row below the diagonal block, by forward substitution against the
/// factored block (`diag` starts at the block's first row).
#[inline(always)]
fn solve_panel_row(row: &mut [f64], diag: &[f64], k: usize, kb: usize, e: usize) {
    for j in kb..e {
        let d = &diag[(j - kb) * k..];
        let s = row[j] - dot(&row[kb..j], &d[kb..j]);
        row[j] = s / d[j];
    }
}

/// The trailing update of rows `e + r0..` (`rows`, up to [`GROUP`] of them) with the solved
/// panel (`w` columns per row). A whole group shares each load of a panel row.
#[inline(always)]
fn update_trailing_rows(rows: &mut [f64], panel: &[f64], k: usize, w: usize, e: usize, r0: usize) {
    let g = rows.len() / k;
    let p = |r: usize| &panel[r * w..(r + 1) * w];
    if g == GROUP {
        let pis: [&[f64]; GROUP] = std::array::from_fn(|gg| p(r0 + gg));
        for j in e..=e + r0 {
            let sums = dots_shared(pis, p(j - e));
            for (gg, sum) in sums.into_iter().enumerate() {
                rows[gg * k + j] -= sum;
            }
        }
        for (gg, pi) in pis.into_iter().enumerate().skip(1) {
            for j in e + r0 + 1..=e + r0 + gg {
                rows[gg * k + j] -= dot(pi, p(j - e));
            }
        }
    } else {
        for (gg, row) in rows.chunks_exact_mut(k).enumerate() {
            let pi = p(r0 + gg);
            for (j, v) in row.iter_mut().enumerate().take(e + r0 + gg + 1).skip(e) {
                *v -= dot(pi, p(j - e));
            }
        }
    }
}

/// Columns `c0..` of `L⁻¹` (as rows of `cols`) by forward substitution down the rows of `L`,
/// [`GROUP`] rows at a time: a column's entries for a group of rows share each load of the
/// column's entries they all use, then each row finishes its sum in turn (the later rows' sums
/// use the entries the earlier rows have just produced).
#[inline(always)]
fn invert_columns(l: &[f64], k: usize, c0: usize, cols: &mut [f64]) {
    let row = |i: usize| &l[i * k..(i + 1) * k];
    for i0 in (c0..k).step_by(GROUP) {
        let i1 = (i0 + GROUP).min(k);
        for (cc, col) in cols.chunks_exact_mut(k).enumerate() {
            let c = c0 + cc;
            if c < i0 && i1 - i0 == GROUP {
                // Whole chunks of 8 up to the first row's: the same for every row of the group.
                let shared = c + (i0 - c) / 8 * 8;
                let mut acc = [[0f64; 8]; GROUP];
                let lis: [&[f64]; GROUP] = std::array::from_fn(|g| &row(i0 + g)[c..shared]);
                accumulate(&mut acc, lis, &col[c..shared]);
                for (g, acc) in acc.iter_mut().enumerate() {
                    let i = i0 + g;
                    let li = row(i);
                    let whole = c + (i - c) / 8 * 8;
                    accumulate(
                        std::array::from_mut(acc),
                        [&li[shared..whole]],
                        &col[shared..whole],
                    );
                    col[i] = -finish(acc, &li[whole..i], &col[whole..i]) / li[i];
                }
            } else {
                for i in i0.max(c)..i1 {
                    let li = row(i);
                    col[i] = if i == c {
                        1.0 / li[i]
                    } else {
                        -dot(&li[c..i], &col[c..i]) / li[i]
                    };
                }
            }
        }
    }
}

/// Rows that share loads in the factorization's loops (4 rows' accumulators and the shared
/// chunk fill 10 of AVX2's 16 registers).
const GROUP: usize = 4;

/// `dot(a[g], b)` for each `g`, bit for bit, with each chunk of `b` loaded once.
#[inline(always)]
fn dots_shared<const G: usize>(a: [&[f64]; G], b: &[f64]) -> [f64; G] {
    let whole = b.len() / 8 * 8;
    let mut acc = [[0f64; 8]; G];
    accumulate(&mut acc, a.map(|x| &x[..whole]), &b[..whole]);
    std::array::from_fn(|g| finish(&acc[g], &a[g][whole..], &b[whole..]))
}

/// [`dot`]'s main loop for `G` rows against one `b` whose length is a multiple of 8: each
/// row's lanes accumulate as in `dot`.
#[inline(always)]
fn accumulate<const G: usize>(acc: &mut [[f64; 8]; G], a: [&[f64]; G], b: &[f64]) {
    for x in a {
        assert_eq!(x.len(), b.len());
    }
    for (m, y) in b.chunks_exact(8).enumerate() {
        for g in 0..G {
            let x = &a[g][m * 8..m * 8 + 8];
            for t in 0..8 {
                acc[g][t] += x[t] * y[t];
            }
        }
    }
}

/// [`dot`]'s end: the lanes' sum, then the products past the last whole chunk.
#[inline(always)]
fn finish(acc: &[f64; 8], ra: &[f64], rb: &[f64]) -> f64 {
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Dot product with eight accumulators (lets the compiler vectorize without reassociating):
/// lane `t` sums the products at `t` mod 8 over the whole chunks of 8, the lanes are added
/// pairwise, then the products past the last whole chunk one by one.
#[inline(always)]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    dots_shared([a], b)[0]
}

/// Rounds `w` (`rows x k`, row-major: output channels by input columns of one group) so that
/// `(W - Q) X` stays small. `round(row, value)` rounds one value to row `row`'s grid.
/// Returns the rounded weights (each a value of its row's grid).
pub fn round(
    w: &[f32],
    rows: usize,
    hess: &Hessian,
    o: GptqOptions,
    round: &(dyn Fn(usize, f32) -> f32 + Sync),
) -> Result<Vec<f32>, String> {
    Factor::new(hess, o)?.round(w, rows, round)
}

/// The damped, reordered inverse-Hessian factor of one group: computed once, it rounds the
/// weights to any number of grids (the candidate widths of a bit allocation).
pub struct Factor {
    k: usize,
    perm: Vec<usize>,
    dead: Vec<bool>,
    u: Vec<f64>,
}

impl Factor {
    pub fn new(hess: &Hessian, o: GptqOptions) -> Result<Factor, String> {
        let k = hess.k;
        let n = hess.samples.max(1) as f64;
        let mut h: Vec<f64> = hess.h.iter().map(|&v| v as f64 / n).collect();
        // Inputs that are always zero carry no information: their weights round on their own.
        let dead: Vec<bool> = (0..k).map(|i| h[i * k + i] <= 0.0).collect();
        for i in (0..k).filter(|&i| dead[i]) {
            h[i * k + i] = 1.0;
        }
        let mean_diag = (0..k).map(|i| h[i * k + i]).sum::<f64>() / k as f64;
        for i in 0..k {
            h[i * k + i] += o.damp * mean_diag;
        }
        // Column order.
        let mut perm: Vec<usize> = (0..k).collect();
        if o.act_order {
            perm.sort_by(|&a, &b| h[b * k + b].total_cmp(&h[a * k + a]).then(a.cmp(&b)));
        }
        let hp: Vec<f64> = (0..k * k)
            .map(|ij| h[perm[ij / k] * k + perm[ij % k]])
            .collect();
        let u = inverse_factor(&hp, k)?;
        Ok(Factor { k, perm, dead, u })
    }

    /// As [`round`], with this factor.
    pub fn round(
        &self,
        w: &[f32],
        rows: usize,
        round: &(dyn Fn(usize, f32) -> f32 + Sync),
    ) -> Result<Vec<f32>, String> {
        let Factor { k, perm, dead, u } = self;
        let k = *k;
        if w.len() != rows * k {
            return Err(format!("{} weights for {rows} x {k}", w.len()));
        }
        // Rows are independent given U; tiles of rows share each streamed row of U.
        let arch = pulp::Arch::new();
        let mut out = vec![0f32; rows * k];
        out.par_chunks_mut(TILE * k)
            .enumerate()
            .for_each(|(t, out_tile)| {
                let r0 = t * TILE;
                let nr = out_tile.len() / k;
                // Column-major tile: wt[j * nr + r], permuted columns.
                let mut wt = vec![0f64; k * nr];
                for r in 0..nr {
                    for (j, &pj) in perm.iter().enumerate() {
                        wt[j * nr + r] = if dead[pj] {
                            0.0
                        } else {
                            w[(r0 + r) * k + pj] as f64
                        };
                    }
                }
                // Lazy updates: the error of each column is pushed at once onto the rest of its
                // block, and onto the columns after the block only when the block is done, so
                // the tile streams from memory once per block instead of once per column. Each
                // weight still receives its updates one column at a time in column order: the
                // result is the unblocked algorithm's, bit for bit.
                let mut errs = vec![0f64; LAZY_COLS * nr];
                arch.dispatch(RoundTile {
                    u,
                    k,
                    perm,
                    round,
                    r0,
                    wt: &mut wt,
                    errs: &mut errs,
                    out_tile,
                });
            });
        Ok(out)
    }
}

simd_op!(RoundTile {
    u: &'a [f64],
    k: usize,
    perm: &'a [usize],
    round: &'a (dyn Fn(usize, f32) -> f32 + Sync),
    r0: usize,
    wt: &'a mut [f64],
    errs: &'a mut [f64],
    out_tile: &'a mut [f32],
} -> () = round_tile);

/// Rounds one tile of rows (`wt`: column-major, permuted columns) with lazy updates; see
/// [`Factor::round`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn round_tile(
    u: &[f64],
    k: usize,
    perm: &[usize],
    round: &(dyn Fn(usize, f32) -> f32 + Sync),
    r0: usize,
    wt: &mut [f64],
    errs: &mut [f64],
    out_tile: &mut [f32],
) {
    let nr = out_tile.len() / k;
    for kb in (0..k).step_by(LAZY_COLS) {
        let e = (kb + LAZY_COLS).min(k);
        for i in kb..e {
            let d = u[i * k + i];
            let err = &mut errs[(i - kb) * nr..(i - kb + 1) * nr];
            for r in 0..nr {
                let v = wt[i * nr + r];
                let q = round(r0 + r, v as f32);
                out_tile[r * k + perm[i]] = q;
                err[r] = (v - q as f64) / d;
            }
            let urow = &u[i * k..(i + 1) * k];
            for j in i + 1..e {
                let c = urow[j];
                let col = &mut wt[j * nr..(j + 1) * nr];
                for r in 0..nr {
                    col[r] -= err[r] * c;
                }
            }
        }
        let (errs, rest) = (&errs[..(e - kb) * nr], &mut wt[e * nr..]);
        if nr == TILE {
            update_after_block::<TILE>(rest, errs, u, k, kb, e);
        } else {
            for (j, col) in (e..k).zip(rest.chunks_exact_mut(nr)) {
                for (i, err) in (kb..e).zip(errs.chunks_exact(nr)) {
                    let c = u[i * k + j];
                    for r in 0..nr {
                        col[r] -= err[r] * c;
                    }
                }
            }
        }
    }
}

/// The lazy update of the columns after a block, for a whole tile of `N` rows: each column
/// stays in registers while the block's errors are subtracted from it one by one, in order
/// (the same operations as the loop for other tile heights).
#[inline(always)]
fn update_after_block<const N: usize>(
    cols: &mut [f64],
    errs: &[f64],
    u: &[f64],
    k: usize,
    kb: usize,
    e: usize,
) {
    for (j, col) in (e..k).zip(cols.chunks_exact_mut(N)) {
        let mut acc = [0f64; N];
        acc.copy_from_slice(col);
        for (i, err) in (kb..e).zip(errs.chunks_exact(N)) {
            let c = u[i * k + j];
            for r in 0..N {
                acc[r] -= err[r] * c;
            }
        }
        col.copy_from_slice(&acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn the_inverse_factor_reproduces_the_inverse() {
        for k in [1, 37, 64, 150] {
            check_inverse_factor(k);
        }
    }

    fn check_inverse_factor(k: usize) {
        let mut s = 7u64;
        let a: Vec<f64> = (0..k * 2 * k).map(|_| lcg(&mut s) as f64).collect();
        let mut h = vec![0f64; k * k];
        for i in 0..k {
            for j in 0..k {
                h[i * k + j] = (0..2 * k)
                    .map(|p| a[i * 2 * k + p] * a[j * 2 * k + p])
                    .sum();
            }
        }
        let u = inverse_factor(&h, k).unwrap();
        // (Uᵀ U) H = I.
        for i in 0..k {
            for j in 0..k {
                let v: f64 = (0..k)
                    .map(|m| {
                        (0..k).map(|p| u[p * k + i] * u[p * k + m]).sum::<f64>() * h[m * k + j]
                    })
                    .sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-8, "({i},{j}) = {v}");
            }
            for j in 0..i {
                assert_eq!(u[i * k + j], 0.0);
            }
        }
    }

    /// The blocked, grouped factorization and inverse give the plain algorithm's `U` bit for
    /// bit: every entry is the same sequence of operations (plans depend on it). `k` spans
    /// whole and partial blocks, and groups of rows with and without a remainder.
    #[test]
    fn the_inverse_factor_equals_the_plain_algorithm() {
        for k in [1, 5, 64, 150, 203] {
            let mut s = 3u64;
            let n = k + 9;
            let a: Vec<f64> = (0..k * n).map(|_| lcg(&mut s) as f64).collect();
            let mut h = vec![0f64; k * k];
            for i in 0..k {
                for j in 0..k {
                    h[i * k + j] = (0..n).map(|p| a[i * n + p] * a[j * n + p]).sum();
                }
                h[i * k + i] += 0.1;
            }
            let got = inverse_factor(&h, k).unwrap();
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                plain_inverse_factor(&h, k)
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>(),
                "k = {k}"
            );
        }
    }

    /// [`inverse_factor`] entry by entry: Cholesky of the reversed matrix, each entry's sum
    /// taken a block of `BLOCK` columns at a time, then column by column `L⁻¹`.
    fn plain_inverse_factor(h: &[f64], k: usize) -> Vec<f64> {
        let mut l = vec![0f64; k * k];
        for i in 0..k {
            for j in 0..=i {
                let mut s = h[(k - 1 - i) * k + (k - 1 - j)];
                let jb = j / BLOCK * BLOCK;
                for b in (0..jb).step_by(BLOCK) {
                    s -= dot(
                        &l[i * k + b..i * k + b + BLOCK],
                        &l[j * k + b..j * k + b + BLOCK],
                    );
                }
                s -= dot(&l[i * k + jb..i * k + j], &l[j * k + jb..j * k + j]);
                l[i * k + j] = if i == j { s.sqrt() } else { s / l[j * k + j] };
            }
        }
        let mut u = vec![0f64; k * k];
        for c in 0..k {
            let mut col = vec![0f64; k];
            for i in c..k {
                let li = &l[i * k..(i + 1) * k];
                col[i] = if i == c {
                    1.0 / li[i]
                } else {
                    -dot(&li[c..i], &col[c..i]) / li[i]
                };
            }
            for (i, v) in col.iter().enumerate().skip(c) {
                u[(k - 1 - i) * k + (k - 1 - c)] = *v;
            }
        }
        u
    }

    /// On correlated inputs, GPTQ's output error is well below nearest rounding's.
    #[test]
    fn gptq_beats_nearest_rounding_on_the_output() {
        let (k, rows, n) = (48, 8, 400);
        let mut s = 11u64;
        // Inputs with strong correlations: a few latent factors plus noise.
        let f: Vec<f32> = (0..n * 4).map(|_| lcg(&mut s)).collect();
        let mix: Vec<f32> = (0..4 * k).map(|_| lcg(&mut s)).collect();
        let x: Vec<f32> = (0..n * k)
            .map(|ij| {
                let (p, i) = (ij / k, ij % k);
                (0..4).map(|t| f[p * 4 + t] * mix[t * k + i]).sum::<f32>() + 0.05 * lcg(&mut s)
            })
            .collect();
        let w: Vec<f32> = (0..rows * k).map(|_| lcg(&mut s)).collect();
        let mut hs = Hessian::new(k);
        hs.add(&x, n);
        let step = 0.25f32;
        let grid = |_: usize, v: f32| (v / step).round().clamp(-8.0, 7.0) * step;
        let nearest: Vec<f32> = w.iter().map(|&v| grid(0, v)).collect();
        let out_err = |q: &[f32]| -> f64 {
            let mut e = 0f64;
            for p in 0..n {
                for r in 0..rows {
                    let d: f32 = (0..k)
                        .map(|i| (w[r * k + i] - q[r * k + i]) * x[p * k + i])
                        .sum();
                    e += (d as f64).powi(2);
                }
            }
            e
        };
        for act_order in [false, true] {
            let o = GptqOptions {
                damp: 0.01,
                act_order,
            };
            let q = round(&w, rows, &hs, o, &grid).unwrap();
            // Every value is on the grid.
            assert!(q.iter().all(|&v| grid(0, v) == v));
            let (eg, en) = (out_err(&q), out_err(&nearest));
            assert!(
                eg < 0.5 * en,
                "act_order {act_order}: gptq {eg} vs nearest {en}"
            );
        }
    }

    /// The lazy block updates give the plain column-by-column algorithm's weights bit for bit,
    /// with `k` spanning two whole blocks and a partial one and a partial last tile of rows.
    #[test]
    fn lazy_updates_equal_the_plain_algorithm() {
        let (k, rows, n) = (2 * LAZY_COLS + 37, 35, 300);
        let mut s = 5u64;
        let x: Vec<f32> = (0..n * k).map(|_| lcg(&mut s)).collect();
        let w: Vec<f32> = (0..rows * k).map(|_| lcg(&mut s)).collect();
        let mut hs = Hessian::new(k);
        hs.add(&x, n);
        let grid = |r: usize, v: f32| {
            let step = 0.125 * (1 + r % 3) as f32;
            (v / step).round().clamp(-8.0, 7.0) * step
        };
        let f = Factor::new(&hs, GptqOptions::default()).unwrap();
        let got = f.round(&w, rows, &grid).unwrap();
        // The plain algorithm: each column's error onto every later column, in turn.
        let Factor { perm, dead, u, .. } = &f;
        let mut want = vec![0f32; rows * k];
        for r in 0..rows {
            let mut wr: Vec<f64> = perm
                .iter()
                .map(|&pj| if dead[pj] { 0.0 } else { w[r * k + pj] as f64 })
                .collect();
            for i in 0..k {
                let q = grid(r, wr[i] as f32);
                want[r * k + perm[i]] = q;
                let err = (wr[i] - q as f64) / u[i * k + i];
                for j in i + 1..k {
                    wr[j] -= err * u[i * k + j];
                }
            }
        }
        assert_eq!(got, want);
    }
}
