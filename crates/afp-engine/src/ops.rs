//! Runtime implementations of the non-kernel operators (data movement, broadcasting
//! arithmetic, reductions). The heavy kernels (Conv, Gemm, pooling) live in `afp-kernels`.

use crate::fold::{broadcast_index, strides};
use crate::ir::{Activation, BinOp, PadMode};
use rayon::prelude::*;

/// `out = act(a op b)` with numpy broadcasting. Fast paths: equal shapes, scalar, and `b`
/// constant along the trailing axes (per-channel); otherwise an index map.
#[allow(clippy::too_many_arguments)] // two operands with their shapes, like the kernels
pub fn binary(
    op: BinOp,
    act: Activation,
    a: &[f32],
    ash: &[usize],
    b: &[f32],
    bsh: &[usize],
    out: &mut [f32],
    osh: &[usize],
) {
    if ash == osh && bsh == osh {
        out.par_chunks_mut(1 << 14)
            .zip(a.par_chunks(1 << 14))
            .zip(b.par_chunks(1 << 14))
            .for_each(|((o, a), b)| {
                for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
                    *o = act.apply(op.apply(x, y));
                }
            });
    } else if ash == osh && b.len() == 1 {
        let y = b[0];
        for (o, &x) in out.iter_mut().zip(a) {
            *o = act.apply(op.apply(x, y));
        }
    } else if bsh == osh && a.len() == 1 {
        let x = a[0];
        for (o, &y) in out.iter_mut().zip(b) {
            *o = act.apply(op.apply(x, y));
        }
    } else {
        let ia = broadcast_index(osh, ash);
        let ib = broadcast_index(osh, bsh);
        for ((o, &i), &j) in out.iter_mut().zip(&ia).zip(&ib) {
            *o = act.apply(op.apply(a[i], b[j]));
        }
    }
}

/// `out = act(sum of parts)`, all of the output's shape; one parallel pass.
pub fn sum_same_shape(parts: &[&[f32]], act: Activation, out: &mut [f32]) {
    const CHUNK: usize = 1 << 14;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, o)| {
        let (base, n) = (ci * CHUNK, o.len());
        o.copy_from_slice(&parts[0][base..base + n]);
        for p in &parts[1..] {
            for (a, &b) in o.iter_mut().zip(&p[base..base + n]) {
                *a += b;
            }
        }
        act.apply_slice(o);
    });
}

/// Per-channel `x * scale[c] + shift[c]` on axis 1, then `act`.
pub fn channel_affine(
    act: Activation,
    x: &[f32],
    shape: &[usize],
    scale: &[f32],
    shift: &[f32],
    out: &mut [f32],
) {
    let c = shape.get(1).copied().unwrap_or(1);
    let inner: usize = shape.iter().skip(2).product();
    out.par_chunks_mut(inner.max(1))
        .zip(x.par_chunks(inner.max(1)))
        .enumerate()
        .for_each(|(i, (o, x))| {
            let ch = i % c;
            let (s, t) = (scale[ch], shift[ch]);
            for (o, &v) in o.iter_mut().zip(x) {
                *o = act.apply(v * s + t);
            }
        });
}

pub fn transpose(x: &[f32], shape: &[usize], perm: &[usize], out: &mut [f32]) {
    let (idx, _) = crate::fold::transpose_index(shape, perm);
    for (o, &i) in out.iter_mut().zip(&idx) {
        *o = x[i];
    }
}

/// Concatenation of `parts` (data, shape) along `axis`.
pub fn concat(parts: &[(&[f32], &[usize])], axis: usize, out: &mut [f32]) {
    let outer: usize = parts[0].1[..axis].iter().product();
    let mut pos = 0;
    for o in 0..outer {
        for (data, shape) in parts {
            let chunk: usize = shape[axis..].iter().product();
            out[pos..pos + chunk].copy_from_slice(&data[o * chunk..(o + 1) * chunk]);
            pos += chunk;
        }
    }
}

/// Padding of any rank; `pads` = begins then ends.
pub fn pad(
    x: &[f32],
    shape: &[usize],
    pads: &[usize],
    mode: PadMode,
    value: f32,
    out: &mut [f32],
    osh: &[usize],
) {
    let r = shape.len();
    let ist = strides(shape);
    let last = r - 1;
    let (inner_in, inner_out) = (shape[last], osh[last]);
    let rows = out.len() / inner_out.max(1);
    let mut coord = vec![0usize; r.saturating_sub(1)];
    let src = |c: isize, d: usize| -> Option<usize> {
        let n = shape[d] as isize;
        if (0..n).contains(&c) {
            return Some(c as usize);
        }
        match mode {
            PadMode::Constant => None,
            PadMode::Edge => Some(c.clamp(0, n - 1) as usize),
            PadMode::Reflect => Some(if c < 0 {
                (-c) as usize
            } else {
                (2 * (n - 1) - c) as usize
            }),
        }
    };
    for row in 0..rows {
        let o = &mut out[row * inner_out..(row + 1) * inner_out];
        let mut base = Some(0usize);
        for (d, &c) in coord.iter().enumerate() {
            base = base.and_then(|b| src(c as isize - pads[d] as isize, d).map(|s| b + s * ist[d]));
        }
        match base {
            None => o.fill(value),
            Some(b) => {
                for (j, v) in o.iter_mut().enumerate() {
                    *v = match src(j as isize - pads[last] as isize, last) {
                        Some(s) => x[b + s],
                        None => value,
                    };
                }
            }
        }
        let _ = inner_in;
        for d in (0..coord.len()).rev() {
            coord[d] += 1;
            if coord[d] < osh[d] {
                break;
            }
            coord[d] = 0;
        }
    }
}

/// Softmax over one axis (`coerce_2d`: over all axes from `axis` on, as opset < 13).
pub fn softmax(x: &[f32], shape: &[usize], axis: usize, coerce_2d: bool, out: &mut [f32]) {
    let (outer, n, inner) = if coerce_2d {
        (
            shape[..axis].iter().product::<usize>(),
            shape[axis..].iter().product::<usize>(),
            1,
        )
    } else {
        (
            shape[..axis].iter().product(),
            shape[axis],
            shape[axis + 1..].iter().product::<usize>(),
        )
    };
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| o * n * inner + k * inner + i;
            let m = (0..n).map(|k| x[at(k)]).fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for k in 0..n {
                let e = (x[at(k)] - m).exp();
                out[at(k)] = e;
                sum += e;
            }
            for k in 0..n {
                out[at(k)] /= sum;
            }
        }
    }
}

/// Mean over `axes` (sorted); the output has the reduced shape (keepdims does not change data).
pub fn reduce_mean(x: &[f32], shape: &[usize], axes: &[usize], out: &mut [f32]) {
    let kept: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect();
    let idx = crate::fold::broadcast_index(shape, &kept);
    out.fill(0.0);
    let mut acc = vec![0f64; out.len()];
    for (k, &v) in x.iter().enumerate() {
        // Index of the kept coordinates: broadcast_index maps each input element to its output slot.
        acc[idx[k]] += v as f64;
    }
    let count: usize = axes.iter().map(|&a| shape[a]).product();
    for (o, a) in out.iter_mut().zip(acc) {
        *o = (a / count as f64) as f32;
    }
}

pub fn slice(
    x: &[f32],
    shape: &[usize],
    starts: &[usize],
    steps: &[isize],
    osh: &[usize],
    out: &mut [f32],
) {
    let params: Vec<(usize, isize, usize)> = (0..shape.len())
        .map(|d| (starts[d], steps[d], osh[d]))
        .collect();
    let (idx, _) = crate::fold::slice_index(shape, &params);
    for (o, &i) in out.iter_mut().zip(&idx) {
        *o = x[i];
    }
}
