//! The one safe wrapper around `gemm::gemm`, and the ONNX-style public GEMM.

use crate::sgemm::{gemm_fused, Bias, Epilogue, Lhs};
use crate::Activation;

/// Products with fewer multiply-adds than this run single-threaded inside
/// `gemm` (measured: below it, rayon fork/join costs more than it saves).
pub(crate) const PAR_MIN_MACS: usize = 1 << 19;

/// Number of threads to hand to `gemm` for an `m x n x k` product, from the
/// caller's rayon pool.
pub fn threads_for(m: usize, n: usize, k: usize) -> usize {
    let t = rayon::current_num_threads();
    if t > 1 && m.saturating_mul(n).saturating_mul(k) >= PAR_MIN_MACS {
        t
    } else {
        1
    }
}

/// Strides of a matrix operand inside a slice: element `(i, j)` is at
/// `i * rs + j * cs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatLayout {
    /// Row stride (elements).
    pub rs: usize,
    /// Column stride (elements).
    pub cs: usize,
}

impl MatLayout {
    /// Row-major `[rows, ld]` storage.
    pub const fn row_major(ld: usize) -> Self {
        MatLayout { rs: ld, cs: 1 }
    }
    /// Column-major storage (the transpose of a row-major `[cols, ld]` array).
    pub const fn col_major(ld: usize) -> Self {
        MatLayout { rs: 1, cs: ld }
    }
}

/// One past the largest offset touched by a `rows x cols` matrix with these
/// strides (rows, cols > 0), or `None` on overflow / beyond `isize::MAX`.
fn span(rows: usize, cols: usize, l: MatLayout) -> Option<usize> {
    let last = (rows - 1)
        .checked_mul(l.rs)?
        .checked_add((cols - 1).checked_mul(l.cs)?)?;
    let s = last.checked_add(1)?;
    (s <= isize::MAX as usize && l.rs <= isize::MAX as usize && l.cs <= isize::MAX as usize)
        .then_some(s)
}

/// `dst[i, j] = (accumulate ? dst[i, j] : 0) + scale * sum_p a[i, p] * b[p, j]`
/// for `i < m, j < n, p < k`. `dst` is row-major with row stride `dst_rs`
/// (column stride 1); `a` (`m x k`) and `b` (`k x n`) have arbitrary strides.
/// `threads > 1` lets `gemm` split the product over the current rayon pool.
///
/// This is the crate's only `unsafe` code. The call into `gemm::gemm` is sound because:
/// * every offset `gemm` may touch is in bounds: for each operand we compute
///   (with overflow checks) one past its largest offset `(rows-1)*rs +
///   (cols-1)*cs` and assert it is `<= len` of the slice it points into, and
///   that all strides fit in `isize` (so the pointer arithmetic cannot wrap);
/// * distinct `(i, j)` of `dst` are distinct elements (column stride 1 and
///   `dst_rs >= n` unless `m == 1`), so `gemm`'s threads never write the same
///   element, and `dst` is an exclusive `&mut` borrow while `a`, `b` are shared
///   borrows: Rust's borrow rules guarantee `dst` aliases neither input;
/// * every element is an initialized `f32` (slices), so reading `dst` when
///   `accumulate` is set is defined, and `gemm` writes only plain `f32`s;
/// * empty products (`m`, `n` or `k` zero) never reach `gemm` (pointers of
///   empty slices are not dereferenceable).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    a: &[f32],
    a_l: MatLayout,
    b: &[f32],
    b_l: MatLayout,
    scale: f32,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let d_l = MatLayout::row_major(dst_rs);
    assert!(
        m == 1 || dst_rs >= n,
        "matmul: dst row stride {dst_rs} < n {n} (rows would overlap)"
    );
    let d_span = span(m, n, d_l).expect("matmul: dst layout overflows");
    assert!(
        d_span <= dst.len(),
        "matmul: dst needs {d_span} elements, has {}",
        dst.len()
    );
    if k == 0 {
        if !accumulate {
            for row in dst[..d_span].chunks_mut(dst_rs.max(n)) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let a_span = span(m, k, a_l).expect("matmul: lhs layout overflows");
    assert!(
        a_span <= a.len(),
        "matmul: lhs needs {a_span} elements, has {}",
        a.len()
    );
    let b_span = span(k, n, b_l).expect("matmul: rhs layout overflows");
    assert!(
        b_span <= b.len(),
        "matmul: rhs needs {b_span} elements, has {}",
        b.len()
    );
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: see the function documentation: all offsets are bounds-checked
    // above, strides fit in isize, dst is exclusively borrowed and its
    // elements are pairwise distinct, and m, n, k > 0.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.as_ptr(),
            a_l.cs as isize,
            a_l.rs as isize,
            b.as_ptr(),
            b_l.cs as isize,
            b_l.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

/// The `C` input of ONNX `Gemm`, broadcast to `[m, n]`.
#[derive(Clone, Copy, Debug)]
pub enum GemmBias<'a> {
    /// `[n]` (or `[1, n]`): one value per column, same for every row.
    Row(&'a [f32]),
    /// `[m, n]`.
    Full(&'a [f32]),
    /// `[m]` (or `[m, 1]`): one value per row.
    Col(&'a [f32]),
    /// A single value.
    Scalar(f32),
}

/// `out[m, n] = act(alpha * op(a) * op(b) + beta * c)`, all row-major;
/// `op(a)` is `[m, k]` (`a` is `[k, m]` if `trans_a`), `op(b)` is `[k, n]`
/// (`b` is `[n, k]` if `trans_b`); `c` is broadcast per [`GemmBias`].
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    trans_a: bool,
    b: &[f32],
    trans_b: bool,
    alpha: f32,
    beta: f32,
    c: Option<GemmBias>,
    act: Activation,
    out: &mut [f32],
) {
    assert_eq!(
        a.len(),
        m * k,
        "gemm: a has {} elements, expected m*k",
        a.len()
    );
    assert_eq!(
        b.len(),
        k * n,
        "gemm: b has {} elements, expected k*n",
        b.len()
    );
    assert_eq!(
        out.len(),
        m * n,
        "gemm: out has {} elements, expected m*n",
        out.len()
    );
    let c = c.filter(|_| beta != 0.0);
    // A per-row / per-column bias with beta 1 is added in the GEMM epilogue;
    // other forms are written to `out` first and accumulated into.
    let mut bias = Bias::None;
    let mut accumulate = false;
    if let Some(c) = c {
        match c {
            GemmBias::Row(r) => {
                assert_eq!(r.len(), n, "gemm: row bias must have n elements");
                if beta == 1.0 {
                    bias = Bias::Col(r);
                } else {
                    for row in out.chunks_exact_mut(n) {
                        row.iter_mut().zip(r).for_each(|(o, &v)| *o = beta * v);
                    }
                    accumulate = true;
                }
            }
            GemmBias::Full(f) => {
                assert_eq!(f.len(), m * n, "gemm: full bias must have m*n elements");
                out.iter_mut().zip(f).for_each(|(o, &v)| *o = beta * v);
                accumulate = true;
            }
            GemmBias::Col(cb) => {
                assert_eq!(cb.len(), m, "gemm: column bias must have m elements");
                if beta == 1.0 {
                    bias = Bias::Row(cb);
                } else {
                    for (row, &v) in out.chunks_exact_mut(n.max(1)).zip(cb) {
                        row.fill(beta * v);
                    }
                    accumulate = true;
                }
            }
            GemmBias::Scalar(v) => {
                out.fill(beta * v);
                accumulate = true;
            }
        }
    }
    if trans_b && !trans_a && m <= DOT_MAX_ROWS {
        let epi = Epilogue {
            alpha,
            accumulate,
            bias,
            residual: None,
            act,
        };
        return gemm_dots(m, n, k, a, b, epi, out);
    }
    let a_l = if trans_a {
        MatLayout::col_major(m)
    } else {
        MatLayout::row_major(k)
    };
    let b_l = if trans_b {
        MatLayout::col_major(k)
    } else {
        MatLayout::row_major(n)
    };
    gemm_fused(
        m,
        n,
        k,
        Lhs::F32(a, a_l),
        b,
        b_l,
        out,
        n,
        Epilogue {
            alpha,
            accumulate,
            bias,
            residual: None,
            act,
        },
        threads_for(m, n, k),
    );
}

/// Output rows up to which a Gemm with `B` given transposed (ONNX `transB = 1`, as
/// classifiers are exported) is computed as dot products of contiguous rows: the GEMM
/// would gather `B` column by column into its packed strips, which costs more than the
/// multiply-adds when few rows reuse them.
const DOT_MAX_ROWS: usize = 16;

/// `out = epi(a bᵀ)` for `a` `m x k` and `bt` `n x k`, both row-major.
fn gemm_dots(m: usize, n: usize, k: usize, a: &[f32], bt: &[f32], epi: Epilogue, out: &mut [f32]) {
    use rayon::prelude::*;
    if m == 0 || n == 0 {
        return;
    }
    /// Output features per task (their weight rows, 32 x k values, are read once).
    const BLOCK: usize = 32;
    let block = |bi: usize| {
        let j0 = bi * BLOCK;
        let nb = BLOCK.min(n - j0);
        let mut res = vec![0.0f32; nb * m];
        crate::dot::dots(&bt[j0 * k..][..nb * k], a, k, m, &mut res);
        (j0, res)
    };
    let nblocks = n.div_ceil(BLOCK);
    let blocks: Vec<(usize, Vec<f32>)> = if threads_for(m, n, k) > 1 {
        (0..nblocks).into_par_iter().map(block).collect()
    } else {
        (0..nblocks).map(block).collect()
    };
    // The GEMM epilogue's order: alpha * product, + C, + bias, then the activation.
    for (j0, res) in blocks {
        for (o, col) in res.chunks_exact(m).enumerate() {
            let j = j0 + o;
            for (i, &d) in col.iter().enumerate() {
                let dst = &mut out[i * n + j];
                let mut v = epi.alpha * d;
                if epi.accumulate {
                    v += *dst;
                }
                v += match epi.bias {
                    Bias::None => 0.0,
                    Bias::Row(bv) => bv[i],
                    Bias::Col(bv) => bv[j],
                };
                *dst = epi.act.apply(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_rand::rand_vec;

    /// The safe wrapper against a naive triple loop: odd sizes, all four
    /// transposition combinations, strided (padded) dst, accumulate on/off,
    /// 1 and 2 threads.
    #[test]
    fn matmul_matches_naive() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let mut seed = 7;
        let shapes = [
            (1, 1, 1),
            (3, 5, 7),
            (17, 1, 9),
            (1, 33, 4),
            (31, 29, 65),
            (64, 64, 64),
            (70, 130, 257),
            (5, 300, 2),
            (129, 67, 0),
        ];
        for &(m, n, k) in &shapes {
            for ta in [false, true] {
                for tb in [false, true] {
                    for accumulate in [false, true] {
                        for threads in [1, 2] {
                            let a = rand_vec(m * k, &mut seed);
                            let b = rand_vec(k * n, &mut seed);
                            let ld = n + 3;
                            let init = rand_vec(m * ld, &mut seed);
                            let mut dst = init.clone();
                            let a_l = if ta {
                                MatLayout::col_major(m)
                            } else {
                                MatLayout::row_major(k)
                            };
                            let b_l = if tb {
                                MatLayout::col_major(k)
                            } else {
                                MatLayout::row_major(n)
                            };
                            let scale = 0.75;
                            pool.install(|| {
                                matmul(
                                    m, n, k, &mut dst, ld, accumulate, &a, a_l, &b, b_l, scale,
                                    threads,
                                )
                            });
                            for i in 0..m {
                                for j in 0..ld {
                                    let got = dst[i * ld + j];
                                    if j >= n {
                                        assert_eq!(got, init[i * ld + j], "padding written");
                                        continue;
                                    }
                                    let mut s = 0.0f64;
                                    for p in 0..k {
                                        s += a[i * a_l.rs + p * a_l.cs] as f64
                                            * b[p * b_l.rs + j * b_l.cs] as f64;
                                    }
                                    let mut want = scale as f64 * s;
                                    if accumulate {
                                        want += init[i * ld + j] as f64;
                                    }
                                    assert!(
                                        (got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                        "m{m} n{n} k{k} ta{ta} tb{tb} acc{accumulate} ({i},{j}): {got} vs {want}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "rhs needs")]
    fn matmul_rejects_short_operand() {
        let a = vec![0.0; 6];
        let b = vec![0.0; 5];
        let mut d = vec![0.0; 4];
        matmul(
            2,
            2,
            3,
            &mut d,
            2,
            false,
            &a,
            MatLayout::row_major(3),
            &b,
            MatLayout::row_major(2),
            1.0,
            1,
        );
    }

    #[test]
    #[should_panic(expected = "rows would overlap")]
    fn matmul_rejects_overlapping_dst_rows() {
        let a = vec![0.0; 6];
        let b = vec![0.0; 6];
        let mut d = vec![0.0; 8];
        matmul(
            2,
            2,
            3,
            &mut d,
            1,
            false,
            &a,
            MatLayout::row_major(3),
            &b,
            MatLayout::row_major(2),
            1.0,
            1,
        );
    }
}
