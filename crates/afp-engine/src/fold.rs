//! Constant folding: evaluates nodes whose inputs are all constants (shape arithmetic such as
//! Shape/Gather/Concat/Cast/Slice, and constant subgraphs of exporters) once, at load time.

use crate::error::{node_err, Result};
use crate::tensor::{Const, ConstData};
use afp_onnx::{attr_int, attr_ints, attr_tensor, NodeProto};

/// Operators that can be folded when all their inputs are constant.
pub const FOLDABLE: &[&str] = &[
    "Constant",
    "Identity",
    "Dropout",
    "Shape",
    "Size",
    "Gather",
    "Concat",
    "Cast",
    "ConstantOfShape",
    "Slice",
    "Reshape",
    "Flatten",
    "Transpose",
    "Unsqueeze",
    "Squeeze",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Range",
    "Expand",
    "Equal",
    "Where",
    "Floor",
    "Ceil",
    "Sqrt",
    "Neg",
    "Relu",
    "Min",
    "Max",
];

/// The `i`-th of a node's optional inputs (absent when out of range or empty).
pub fn nth<T: Copy>(v: &[Option<T>], i: usize) -> Option<T> {
    v.get(i).copied().flatten()
}

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Numpy-style broadcast of two shapes.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return None;
        };
    }
    Some(out)
}

/// For each element of `out_shape`, the flat index of the element of `in_shape` that
/// broadcasts to it.
pub fn broadcast_index(out_shape: &[usize], in_shape: &[usize]) -> Vec<usize> {
    let r = out_shape.len();
    let off = r - in_shape.len();
    let in_strides = strides(in_shape);
    let n: usize = out_shape.iter().product();
    let mut idx = Vec::with_capacity(n);
    let mut coord = vec![0usize; r];
    for _ in 0..n {
        let mut f = 0;
        for (d, &c) in coord.iter().enumerate().skip(off) {
            if in_shape[d - off] != 1 {
                f += c * in_strides[d - off];
            }
        }
        idx.push(f);
        for d in (0..r).rev() {
            coord[d] += 1;
            if coord[d] < out_shape[d] {
                break;
            }
            coord[d] = 0;
        }
    }
    idx
}

fn gather_const(c: &Const, idx: &[usize], shape: Vec<usize>) -> Const {
    match &c.data {
        ConstData::F32(v) => Const::f32(shape, idx.iter().map(|&i| v[i]).collect()),
        ConstData::I64(v) => Const::i64(shape, idx.iter().map(|&i| v[i]).collect()),
    }
}

/// Normalizes a possibly negative axis for a tensor of rank `rank`.
pub fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    (0..rank as i64).contains(&a).then_some(a as usize)
}

/// Flatten's axis, in `[-rank, rank]` (negative counts from the end, so -1 is `rank - 1`).
pub fn flatten_axis(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    (0..=rank as i64).contains(&a).then_some(a as usize)
}

/// Index permutation of a transpose.
pub fn transpose_index(shape: &[usize], perm: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let in_strides = strides(shape);
    let n: usize = shape.iter().product();
    let mut idx = Vec::with_capacity(n);
    let mut coord = vec![0usize; shape.len()];
    for _ in 0..n {
        idx.push(
            coord
                .iter()
                .zip(perm)
                .map(|(&c, &p)| c * in_strides[p])
                .sum(),
        );
        for d in (0..out_shape.len()).rev() {
            coord[d] += 1;
            if coord[d] < out_shape[d] {
                break;
            }
            coord[d] = 0;
        }
    }
    (idx, out_shape)
}

/// Output shape of Reshape given the requested shape (0 copies, -1 infers).
pub fn reshape_shape(input: &[usize], req: &[i64], allowzero: bool) -> Option<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(req.len());
    let mut infer = None;
    for (i, &d) in req.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => out.push(*input.get(i)?),
            d if d >= 0 => out.push(d as usize),
            _ => return None,
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return None;
        }
        out[i] = total / known;
    } else if known != total {
        return None;
    }
    Some(out)
}

/// Normalized slice parameters for one axis: (start, step, count).
pub fn slice_axis(dim: usize, start: i64, end: i64, step: i64) -> Option<(usize, isize, usize)> {
    if step == 0 {
        return None;
    }
    let d = dim as i64;
    let clamp = |v: i64, lo: i64, hi: i64| v.max(lo).min(hi);
    let norm = |v: i64| if v < 0 { v + d } else { v };
    let (s, e) = if step > 0 {
        (clamp(norm(start), 0, d), clamp(norm(end), 0, d))
    } else {
        (clamp(norm(start), -1, d - 1), clamp(norm(end), -1, d - 1))
    };
    let count = if step > 0 {
        ((e - s).max(0) + step - 1) / step
    } else {
        ((s - e).max(0) + (-step) - 1) / (-step)
    };
    Some((s.max(0) as usize, step as isize, count as usize))
}

/// Slice parameters of a Slice node (opset >= 10 inputs or opset < 10 attributes), per axis.
pub fn slice_params(
    node: &NodeProto,
    shape: &[usize],
    consts: &[Option<&Const>],
) -> Result<Vec<(usize, isize, usize)>> {
    let err = |r: &str| node_err(node.name(), node.op_type(), r);
    let (starts, ends, axes, steps) = if consts.len() <= 1 && attr_ints(node, "starts").is_some() {
        (
            attr_ints(node, "starts").unwrap_or(&[]).to_vec(),
            attr_ints(node, "ends").unwrap_or(&[]).to_vec(),
            attr_ints(node, "axes").map(|a| a.to_vec()),
            None,
        )
    } else {
        let get = |i: usize| -> Result<Option<Vec<i64>>> {
            match consts.get(i) {
                Some(Some(c)) => Ok(Some(c.to_i64())),
                Some(None) if i < 3 => Err(err("starts/ends must be constant")),
                Some(None) => Err(err("axes/steps must be constant")),
                None => Ok(None),
            }
        };
        (
            get(1)?.unwrap_or_default(),
            get(2)?.unwrap_or_default(),
            get(3)?,
            get(4)?,
        )
    };
    let rank = shape.len();
    let axes: Vec<usize> = match axes {
        Some(a) => a
            .iter()
            .map(|&x| norm_axis(x, rank).ok_or_else(|| err("axis out of range")))
            .collect::<Result<_>>()?,
        None => (0..starts.len()).collect(),
    };
    if starts.len() != axes.len() || ends.len() != axes.len() {
        return Err(err("starts, ends and axes differ in length"));
    }
    let steps = steps.unwrap_or_else(|| vec![1; axes.len()]);
    let mut out: Vec<(usize, isize, usize)> = shape.iter().map(|&d| (0, 1, d)).collect();
    for (k, &ax) in axes.iter().enumerate() {
        out[ax] = slice_axis(shape[ax], starts[k], ends[k], steps[k])
            .ok_or_else(|| err("slice step is 0"))?;
    }
    Ok(out)
}

/// Flat indices selected by per-axis (start, step, count).
pub fn slice_index(shape: &[usize], params: &[(usize, isize, usize)]) -> (Vec<usize>, Vec<usize>) {
    let out_shape: Vec<usize> = params.iter().map(|p| p.2).collect();
    let st = strides(shape);
    let n: usize = out_shape.iter().product();
    let mut idx = Vec::with_capacity(n);
    let mut coord = vec![0usize; shape.len()];
    for _ in 0..n {
        let mut f = 0isize;
        for (d, &c) in coord.iter().enumerate() {
            let (s, step, _) = params[d];
            f += (s as isize + c as isize * step) * st[d] as isize;
        }
        idx.push(f as usize);
        for d in (0..shape.len()).rev() {
            coord[d] += 1;
            if coord[d] < out_shape[d] {
                break;
            }
            coord[d] = 0;
        }
    }
    (idx, out_shape)
}

/// Axes of Squeeze/Unsqueeze/ReduceMean: attribute (older opsets) or constant input 1.
pub fn axes_param(node: &NodeProto, consts: &[Option<&Const>]) -> Result<Option<Vec<i64>>> {
    if let Some(a) = attr_ints(node, "axes") {
        return Ok(Some(a.to_vec()));
    }
    match consts.get(1) {
        Some(Some(c)) => Ok(Some(c.to_i64())),
        Some(None) => Err(node_err(
            node.name(),
            node.op_type(),
            "axes must be constant",
        )),
        None => Ok(None),
    }
}

pub fn squeeze_shape(shape: &[usize], axes: Option<&[i64]>) -> Option<Vec<usize>> {
    match axes {
        None => Some(shape.iter().copied().filter(|&d| d != 1).collect()),
        Some(axes) => {
            let axes: Vec<usize> = axes
                .iter()
                .map(|&a| norm_axis(a, shape.len()))
                .collect::<Option<_>>()?;
            if axes.iter().any(|&a| shape[a] != 1) {
                return None;
            }
            Some(
                shape
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !axes.contains(i))
                    .map(|(_, &d)| d)
                    .collect(),
            )
        }
    }
}

pub fn unsqueeze_shape(shape: &[usize], axes: &[i64]) -> Option<Vec<usize>> {
    let r = shape.len() + axes.len();
    let mut axes: Vec<usize> = axes
        .iter()
        .map(|&a| norm_axis(a, r))
        .collect::<Option<_>>()?;
    axes.sort_unstable();
    let mut out = Vec::with_capacity(r);
    let mut it = shape.iter();
    for i in 0..r {
        if axes.contains(&i) {
            out.push(1);
        } else {
            out.push(*it.next()?);
        }
    }
    Some(out)
}

fn binary(node: &NodeProto, a: &Const, b: &Const) -> Result<Const> {
    let op = node.op_type();
    let shape = broadcast_shapes(&a.shape, &b.shape).ok_or_else(|| {
        node_err(
            node.name(),
            op,
            format!("shapes {:?} and {:?} do not broadcast", a.shape, b.shape),
        )
    })?;
    let ia = broadcast_index(&shape, &a.shape);
    let ib = broadcast_index(&shape, &b.shape);
    if a.is_float() || b.is_float() {
        let (va, vb) = (a.to_f32(), b.to_f32());
        let f = |x: f32, y: f32| match op {
            "Add" => x + y,
            "Sub" => x - y,
            "Mul" => x * y,
            "Div" => x / y,
            "Min" => x.min(y),
            "Max" => x.max(y),
            _ => (x == y) as i64 as f32,
        };
        let data: Vec<f32> = ia.iter().zip(&ib).map(|(&i, &j)| f(va[i], vb[j])).collect();
        if op == "Equal" {
            return Ok(Const::i64(shape, data.iter().map(|&x| x as i64).collect()));
        }
        Ok(Const::f32(shape, data))
    } else {
        let (va, vb) = (a.to_i64(), b.to_i64());
        let mut data = Vec::with_capacity(ia.len());
        for (&i, &j) in ia.iter().zip(&ib) {
            let (x, y) = (va[i], vb[j]);
            data.push(match op {
                "Add" => x.wrapping_add(y),
                "Sub" => x.wrapping_sub(y),
                "Mul" => x.wrapping_mul(y),
                "Div" if y == 0 => {
                    return Err(node_err(node.name(), op, "integer division by zero"))
                }
                "Div" => x.wrapping_div(y), // truncates, as ONNX Runtime does
                "Min" => x.min(y),
                "Max" => x.max(y),
                _ => (x == y) as i64,
            });
        }
        Ok(Const::i64(shape, data))
    }
}

/// Evaluates a node whose (present) inputs are all constant.
pub fn eval(node: &NodeProto, inputs: &[Option<&Const>]) -> Result<Vec<Const>> {
    let op = node.op_type();
    let err = |r: String| node_err(node.name(), op, r);
    let input = |i: usize| -> Result<&Const> {
        nth(inputs, i).ok_or_else(|| err(format!("missing input {i}")))
    };
    let out = match op {
        "Constant" => {
            if let Some(t) = attr_tensor(node, "value") {
                Const::from_proto(t)?
            } else if let Some(v) = afp_onnx::attr_float(node, "value_float") {
                Const::f32(vec![], vec![v])
            } else if let Some(v) = afp_onnx::attr_floats(node, "value_floats") {
                Const::f32(vec![v.len()], v.to_vec())
            } else if let Some(v) = attr_int(node, "value_int") {
                Const::i64(vec![], vec![v])
            } else if let Some(v) = attr_ints(node, "value_ints") {
                Const::i64(vec![v.len()], v.to_vec())
            } else {
                return Err(err("Constant without a supported value attribute".into()));
            }
        }
        "Identity" | "Dropout" => input(0)?.clone(),
        "Shape" => {
            let s = &input(0)?.shape;
            let r = s.len() as i64;
            let start = attr_int(node, "start").unwrap_or(0);
            let end = attr_int(node, "end").unwrap_or(r);
            let n = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let dims: Vec<i64> = s[n(start)..n(end).max(n(start))]
                .iter()
                .map(|&d| d as i64)
                .collect();
            Const::i64(vec![dims.len()], dims)
        }
        "Size" => Const::i64(vec![], vec![input(0)?.len() as i64]),
        "Gather" => {
            let (data, ind) = (input(0)?, input(1)?);
            let axis = norm_axis(attr_int(node, "axis").unwrap_or(0), data.shape.len())
                .ok_or_else(|| err("axis out of range".into()))?;
            let dim = data.shape[axis] as i64;
            let ids: Vec<usize> = ind
                .to_i64()
                .iter()
                .map(|&i| {
                    let j = if i < 0 { i + dim } else { i };
                    (0..dim).contains(&j).then_some(j as usize)
                })
                .collect::<Option<_>>()
                .ok_or_else(|| err("index out of range".into()))?;
            let outer: usize = data.shape[..axis].iter().product();
            let inner: usize = data.shape[axis + 1..].iter().product();
            let mut idx = Vec::new();
            for o in 0..outer {
                for &i in &ids {
                    for k in 0..inner {
                        idx.push((o * data.shape[axis] + i) * inner + k);
                    }
                }
            }
            let mut shape = data.shape[..axis].to_vec();
            shape.extend(&ind.shape);
            shape.extend(&data.shape[axis + 1..]);
            gather_const(data, &idx, shape)
        }
        "Concat" => {
            let parts: Vec<&Const> = inputs.iter().flatten().copied().collect();
            let first = parts.first().ok_or_else(|| err("no inputs".into()))?;
            let axis = norm_axis(attr_int(node, "axis").unwrap_or(0), first.shape.len())
                .ok_or_else(|| err("axis out of range".into()))?;
            let outer: usize = first.shape[..axis].iter().product();
            let any_float = parts.iter().any(|p| p.is_float());
            let mut shape = first.shape.clone();
            shape[axis] = parts.iter().map(|p| p.shape[axis]).sum();
            let mut f = Vec::new();
            let mut n = Vec::new();
            for o in 0..outer {
                for p in &parts {
                    if p.shape.len() != first.shape.len() {
                        return Err(err("inputs differ in rank".into()));
                    }
                    let chunk: usize = p.shape[axis..].iter().product();
                    if any_float {
                        f.extend_from_slice(&p.to_f32()[o * chunk..(o + 1) * chunk]);
                    } else {
                        n.extend_from_slice(&p.to_i64()[o * chunk..(o + 1) * chunk]);
                    }
                }
            }
            if any_float {
                Const::f32(shape, f)
            } else {
                Const::i64(shape, n)
            }
        }
        "Cast" => {
            let c = input(0)?;
            let to = attr_int(node, "to").unwrap_or(1);
            // FLOAT, DOUBLE, FLOAT16, BFLOAT16 -> float; everything else integer.
            if matches!(to, 1 | 10 | 11 | 16) {
                Const::f32(c.shape.clone(), c.to_f32())
            } else if to == 9 {
                Const::i64(
                    c.shape.clone(),
                    c.to_f32().iter().map(|&x| (x != 0.0) as i64).collect(),
                )
            } else {
                Const::i64(c.shape.clone(), c.to_i64())
            }
        }
        "ConstantOfShape" => {
            let dims = input(0)?.to_i64();
            if dims.iter().any(|&d| d < 0) {
                return Err(err("negative dimension".into()));
            }
            let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
            let n = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .filter(|&n| n <= 1 << 28)
                .ok_or_else(|| err("shape too large".into()))?;
            match attr_tensor(node, "value")
                .map(Const::from_proto)
                .transpose()?
            {
                Some(Const {
                    data: ConstData::F32(v),
                    ..
                }) => Const::f32(shape, vec![v.first().copied().unwrap_or(0.0); n]),
                Some(Const {
                    data: ConstData::I64(v),
                    ..
                }) => Const::i64(shape, vec![v.first().copied().unwrap_or(0); n]),
                None => Const::f32(shape, vec![0.0; n]),
            }
        }
        "Slice" => {
            let c = input(0)?;
            let params = slice_params(node, &c.shape, inputs)?;
            let (idx, shape) = slice_index(&c.shape, &params);
            gather_const(c, &idx, shape)
        }
        "Reshape" => {
            let c = input(0)?;
            let req = input(1)?.to_i64();
            let shape = reshape_shape(
                &c.shape,
                &req,
                attr_int(node, "allowzero").unwrap_or(0) != 0,
            )
            .ok_or_else(|| err(format!("cannot reshape {:?} to {req:?}", c.shape)))?;
            Const {
                shape,
                data: c.data.clone(),
            }
        }
        "Flatten" => {
            let c = input(0)?;
            let axis = flatten_axis(attr_int(node, "axis").unwrap_or(1), c.shape.len())
                .ok_or_else(|| err("axis out of range".into()))?;
            let a: usize = c.shape[..axis].iter().product();
            let b: usize = c.shape[axis..].iter().product();
            Const {
                shape: vec![a, b],
                data: c.data.clone(),
            }
        }
        "Transpose" => {
            let c = input(0)?;
            let perm = perm_param(node, c.shape.len()).ok_or_else(|| err("bad perm".into()))?;
            let (idx, shape) = transpose_index(&c.shape, &perm);
            gather_const(c, &idx, shape)
        }
        "Unsqueeze" => {
            let c = input(0)?;
            let axes = axes_param(node, inputs)?.ok_or_else(|| err("no axes".into()))?;
            let shape = unsqueeze_shape(&c.shape, &axes).ok_or_else(|| err("bad axes".into()))?;
            Const {
                shape,
                data: c.data.clone(),
            }
        }
        "Squeeze" => {
            let c = input(0)?;
            let axes = axes_param(node, inputs)?;
            let shape =
                squeeze_shape(&c.shape, axes.as_deref()).ok_or_else(|| err("bad axes".into()))?;
            Const {
                shape,
                data: c.data.clone(),
            }
        }
        "Add" | "Sub" | "Mul" | "Div" | "Equal" | "Min" | "Max" => {
            let mut acc = input(0)?.clone();
            for i in 1..inputs.len() {
                acc = binary(node, &acc, input(i)?)?;
            }
            acc
        }
        "Range" => {
            let (s, l, d) = (input(0)?, input(1)?, input(2)?);
            if s.is_float() {
                let (s, l, d) = (s.to_f32()[0], l.to_f32()[0], d.to_f32()[0]);
                let n = (((l - s) / d).ceil().max(0.0)) as usize;
                Const::f32(vec![n], (0..n).map(|i| s + i as f32 * d).collect())
            } else {
                let (s, l, d) = (s.to_i64()[0], l.to_i64()[0], d.to_i64()[0]);
                if d == 0 {
                    return Err(err("Range delta is 0".into()));
                }
                let n = ((l - s) as f64 / d as f64).ceil().max(0.0) as usize;
                Const::i64(vec![n], (0..n as i64).map(|i| s + i * d).collect())
            }
        }
        "Expand" => {
            let c = input(0)?;
            let req: Vec<usize> = input(1)?
                .to_i64()
                .iter()
                .map(|&d| d.max(0) as usize)
                .collect();
            let shape =
                broadcast_shapes(&c.shape, &req).ok_or_else(|| err("cannot expand".into()))?;
            let idx = broadcast_index(&shape, &c.shape);
            gather_const(c, &idx, shape)
        }
        "Where" => {
            let (cond, a, b) = (input(0)?, input(1)?, input(2)?);
            let shape = broadcast_shapes(&cond.shape, &a.shape)
                .and_then(|s| broadcast_shapes(&s, &b.shape))
                .ok_or_else(|| err("shapes do not broadcast".into()))?;
            let (ic, ia, ib) = (
                broadcast_index(&shape, &cond.shape),
                broadcast_index(&shape, &a.shape),
                broadcast_index(&shape, &b.shape),
            );
            let c = cond.to_i64();
            if a.is_float() || b.is_float() {
                let (va, vb) = (a.to_f32(), b.to_f32());
                Const::f32(
                    shape,
                    (0..ic.len())
                        .map(|k| if c[ic[k]] != 0 { va[ia[k]] } else { vb[ib[k]] })
                        .collect(),
                )
            } else {
                let (va, vb) = (a.to_i64(), b.to_i64());
                Const::i64(
                    shape,
                    (0..ic.len())
                        .map(|k| if c[ic[k]] != 0 { va[ia[k]] } else { vb[ib[k]] })
                        .collect(),
                )
            }
        }
        "Floor" | "Ceil" | "Sqrt" | "Neg" | "Relu" => {
            let c = input(0)?;
            match &c.data {
                ConstData::F32(v) => {
                    let f = |x: f32| match op {
                        "Floor" => x.floor(),
                        "Ceil" => x.ceil(),
                        "Sqrt" => x.sqrt(),
                        "Neg" => -x,
                        _ => x.max(0.0),
                    };
                    Const::f32(c.shape.clone(), v.iter().map(|&x| f(x)).collect())
                }
                ConstData::I64(v) => {
                    let f = |x: i64| match op {
                        "Neg" => -x,
                        "Relu" => x.max(0),
                        "Sqrt" => (x as f64).sqrt() as i64,
                        _ => x,
                    };
                    Const::i64(c.shape.clone(), v.iter().map(|&x| f(x)).collect())
                }
            }
        }
        _ => return Err(err("cannot be evaluated at load time".into())),
    };
    Ok(vec![out])
}

/// Transpose permutation: attribute or reversed axes.
pub fn perm_param(node: &NodeProto, rank: usize) -> Option<Vec<usize>> {
    match attr_ints(node, "perm") {
        Some(p) => {
            let p: Vec<usize> = p
                .iter()
                .map(|&a| norm_axis(a, rank))
                .collect::<Option<_>>()?;
            let mut seen = vec![false; rank];
            for &a in &p {
                if std::mem::replace(&mut seen[a], true) {
                    return None;
                }
            }
            (p.len() == rank).then_some(p)
        }
        None => Some((0..rank).rev().collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_and_reshape() {
        assert_eq!(broadcast_shapes(&[2, 1, 3], &[4, 1]), Some(vec![2, 4, 3]));
        assert_eq!(broadcast_shapes(&[2, 3], &[4]), None);
        assert_eq!(broadcast_index(&[2, 3], &[3]), vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(broadcast_index(&[2, 3], &[2, 1]), vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(
            reshape_shape(&[2, 3, 4], &[0, -1], false),
            Some(vec![2, 12])
        );
        assert_eq!(reshape_shape(&[2, 3, 4], &[5, -1], false), None);
        assert_eq!(slice_axis(10, -3, i64::MAX, 1), Some((7, 1, 3)));
        assert_eq!(slice_axis(10, -1, i64::MIN, -1), Some((9, -1, 10)));
        assert_eq!(slice_axis(10, 0, 10, 3), Some((0, 3, 4)));
        let (idx, shape) = transpose_index(&[2, 3], &[1, 0]);
        assert_eq!((idx, shape), (vec![0, 3, 1, 4, 2, 5], vec![3, 2]));
    }
}
