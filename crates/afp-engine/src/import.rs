//! From an ONNX model to the graph IR for one batch size: shape inference and constant folding
//! in one topological walk; every remaining node becomes a runtime [`Op`].

use crate::error::{node_err, EngineError, Result};
use crate::fold::{self, norm_axis};
use crate::ir::{Activation, BinOp, Conv2d, Graph, Node, Op, PadMode, Pool2d, Value, ValueId};
use crate::tensor::Const;
use afp_onnx::{attr_float, attr_int, attr_ints, attr_string, ModelProto, NodeProto};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Operators that run at run time.
pub const RUNTIME_OPS: &[&str] = &[
    "Conv",
    "Gemm",
    "MatMul",
    "Add",
    "Sum",
    "Sub",
    "Mul",
    "Div",
    "Relu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "BatchNormalization",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "ReduceMean",
    "Pad",
    "Concat",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Softmax",
    "Identity",
    "Dropout",
    "Slice",
];

/// A loaded ONNX model, checked for supported operators; lower it with [`Model::lower`].
#[derive(Debug, Clone)]
pub struct Model {
    pub proto: ModelProto,
    pub path: Option<PathBuf>,
    /// Default-domain opset.
    pub opset: i64,
    /// Initializers whose data the caller replaces after lowering (a `.afp` file's quantized
    /// weights): lowered as zeros from their dims alone, without reading any data. The zeros
    /// are allocated zeroed and never written, so they take no resident memory.
    pub placeholders: std::collections::HashSet<String>,
}

impl Model {
    pub fn load(path: &Path) -> Result<Model> {
        let proto = afp_onnx::read_model(path)?;
        let mut m = Model::from_proto(proto)?;
        m.path = Some(path.to_path_buf());
        Ok(m)
    }

    /// Checks the operators before any work: every unsupported op type is listed with its nodes.
    pub fn from_proto(proto: ModelProto) -> Result<Model> {
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| EngineError::Graph("the model has no graph".into()))?;
        let opset = proto
            .opset_import
            .iter()
            .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
            .map(|o| o.version())
            .unwrap_or(13);
        let mut bad: Vec<(String, Vec<String>)> = Vec::new();
        for (i, n) in graph.node.iter().enumerate() {
            let known = (n.domain().is_empty() || n.domain() == "ai.onnx")
                && (RUNTIME_OPS.contains(&n.op_type()) || fold::FOLDABLE.contains(&n.op_type()));
            if !known {
                let op = if n.domain().is_empty() {
                    n.op_type().to_string()
                } else {
                    format!("{}::{}", n.domain(), n.op_type())
                };
                let name = if n.name().is_empty() {
                    format!("#{i}")
                } else {
                    n.name().to_string()
                };
                match bad.iter_mut().find(|(o, _)| *o == op) {
                    Some((_, names)) => names.push(name),
                    None => bad.push((op, vec![name])),
                }
            }
        }
        if !bad.is_empty() {
            return Err(EngineError::Unsupported(bad));
        }
        Ok(Model {
            proto,
            path: None,
            opset,
            placeholders: Default::default(),
        })
    }

    fn graph(&self) -> &afp_onnx::GraphProto {
        self.proto.graph.as_ref().expect("checked in from_proto")
    }

    /// Names of the graph inputs that are not initializers.
    pub fn input_names(&self) -> Vec<String> {
        let g = self.graph();
        g.input
            .iter()
            .filter(|i| !g.initializer.iter().any(|t| t.name() == i.name()))
            .map(|i| i.name().to_string())
            .collect()
    }

    pub fn output_names(&self) -> Vec<String> {
        self.graph()
            .output
            .iter()
            .map(|o| o.name().to_string())
            .collect()
    }

    /// Input shape with the batch (first, symbolic or not) dimension set to `batch`.
    pub fn input_shape(&self, name: &str, batch: usize) -> Result<Vec<usize>> {
        let g = self.graph();
        let vi = g
            .input
            .iter()
            .find(|i| i.name() == name)
            .ok_or_else(|| EngineError::Graph(format!("no input {name:?}")))?;
        let err = |r: &str| EngineError::Input {
            name: name.into(),
            reason: r.into(),
        };
        let shape = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(afp_onnx::onnx::type_proto::Value::TensorType(t)) => {
                t.shape.as_ref().ok_or_else(|| err("input has no shape"))?
            }
            _ => return Err(err("input is not a tensor")),
        };
        use afp_onnx::onnx::tensor_shape_proto::dimension::Value as D;
        shape
            .dim
            .iter()
            .enumerate()
            .map(|(i, d)| match (&d.value, i) {
                (Some(D::DimValue(v)), 0) if *v <= 0 => Ok(batch),
                (Some(D::DimValue(v)), 0) if *v as usize != batch && *v != 1 => Err(err(&format!(
                    "the model has a fixed batch size {v}, not {batch}"
                ))),
                (_, 0) => Ok(batch),
                (Some(D::DimValue(v)), _) if *v > 0 => Ok(*v as usize),
                _ => Err(err(&format!("dimension {i} is not fixed"))),
            })
            .collect()
    }

    /// Shape inference and constant folding for `batch` images, then the standard passes
    /// (Pad and BatchNorm folding, activation fusion, dead-node removal).
    pub fn lower(&self, batch: usize) -> Result<Graph> {
        self.lower_with(batch, crate::passes::PassOptions::default())
    }

    /// [`Model::lower`] with a choice of passes.
    pub fn lower_with(&self, batch: usize, o: crate::passes::PassOptions) -> Result<Graph> {
        let mut g = self.lower_raw(batch)?;
        crate::passes::optimize_with(&mut g, o)?;
        Ok(g)
    }

    /// Lowering without the optimization passes (one runtime node per remaining ONNX node).
    pub fn lower_raw(&self, batch: usize) -> Result<Graph> {
        if batch == 0 {
            return Err(EngineError::Graph("batch size must be at least 1".into()));
        }
        let g = self.graph();
        let mut b = Builder {
            values: Vec::new(),
            ids: HashMap::new(),
            nodes: Vec::new(),
            opset: self.opset,
        };
        for t in &g.initializer {
            let c = if self.placeholders.contains(t.name()) {
                let shape = afp_onnx::tensor_dims(t)?;
                let n = shape.iter().product();
                Const::f32(shape, vec![0f32; n])
            } else {
                Const::from_proto(t)?
            };
            b.add_value(t.name(), c.shape.clone(), Some(c));
        }
        let mut inputs = Vec::new();
        for name in self.input_names() {
            let shape = self.input_shape(&name, batch)?;
            inputs.push(b.add_value(&name, shape, None));
        }
        for node in topo_order(&g.node, &b.ids)? {
            b.lower_node(node)?;
        }
        let mut outputs = Vec::new();
        for o in &g.output {
            let id = *b.ids.get(o.name()).ok_or_else(|| {
                EngineError::Graph(format!("output {:?} is never computed", o.name()))
            })?;
            if b.values[id].konst.is_some() {
                // A constant output still needs a node to be produced at run time.
                let out = b.add_value(
                    &format!("{}:out", o.name()),
                    b.values[id].shape.clone(),
                    None,
                );
                b.nodes.push(Node {
                    name: o.name().to_string(),
                    op: Op::Copy,
                    inputs: vec![id],
                    output: out,
                });
                outputs.push(out);
            } else {
                outputs.push(id);
            }
        }
        Ok(Graph {
            values: b.values,
            nodes: b.nodes,
            inputs,
            outputs,
            batch,
        })
    }
}

/// Nodes in an order where every input is produced before it is read (ONNX requires sorted
/// graphs, but some exporters don't comply).
fn topo_order<'a>(
    nodes: &'a [NodeProto],
    known: &HashMap<String, ValueId>,
) -> Result<Vec<&'a NodeProto>> {
    let mut have: std::collections::HashSet<&str> = known.keys().map(|s| s.as_str()).collect();
    let mut done = vec![false; nodes.len()];
    let mut order = Vec::with_capacity(nodes.len());
    loop {
        let mut progress = false;
        for (i, n) in nodes.iter().enumerate() {
            if done[i]
                || !n
                    .input
                    .iter()
                    .all(|x| x.is_empty() || have.contains(x.as_str()))
            {
                continue;
            }
            done[i] = true;
            progress = true;
            order.push(n);
            for o in &n.output {
                have.insert(o);
            }
        }
        if order.len() == nodes.len() {
            return Ok(order);
        }
        if !progress {
            let i = done.iter().position(|d| !d).unwrap_or(0);
            let n = &nodes[i];
            let missing: Vec<&String> = n
                .input
                .iter()
                .filter(|x| !x.is_empty() && !have.contains(x.as_str()))
                .collect();
            return Err(node_err(
                n.name(),
                n.op_type(),
                format!("inputs {missing:?} are never produced (or form a cycle)"),
            ));
        }
    }
}

struct Builder {
    values: Vec<Value>,
    ids: HashMap<String, ValueId>,
    nodes: Vec<Node>,
    opset: i64,
}

fn pads4(
    node: &NodeProto,
    kernel: [usize; 2],
    stride: [usize; 2],
    dil: [usize; 2],
    hw: [usize; 2],
) -> Result<[usize; 4]> {
    let auto = attr_string(node, "auto_pad").unwrap_or("NOTSET");
    match auto {
        "NOTSET" | "" => {
            let p = attr_ints(node, "pads").unwrap_or(&[0, 0, 0, 0]);
            if p.len() != 4 || p.iter().any(|&x| x < 0) {
                return Err(node_err(
                    node.name(),
                    node.op_type(),
                    format!("pads {p:?} must be 4 non-negative values (2-D only)"),
                ));
            }
            Ok([p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize])
        }
        "VALID" => Ok([0; 4]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut out = [0usize; 4];
            for a in 0..2 {
                let o = hw[a].div_ceil(stride[a]);
                let total =
                    ((o - 1) * stride[a] + (kernel[a] - 1) * dil[a] + 1).saturating_sub(hw[a]);
                let small = total / 2;
                let (begin, end) = if auto == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
                out[a] = begin;
                out[a + 2] = end;
            }
            Ok(out)
        }
        other => Err(node_err(
            node.name(),
            node.op_type(),
            format!("auto_pad {other:?} is not supported"),
        )),
    }
}

fn pair(node: &NodeProto, name: &str, default: usize) -> Result<[usize; 2]> {
    match attr_ints(node, name) {
        None => Ok([default; 2]),
        Some([a, b]) if *a > 0 && *b > 0 => Ok([*a as usize, *b as usize]),
        Some(v) => Err(node_err(
            node.name(),
            node.op_type(),
            format!("{name} {v:?}: only 2-D with positive values is supported"),
        )),
    }
}

impl Builder {
    fn add_value(&mut self, name: &str, shape: Vec<usize>, konst: Option<Const>) -> ValueId {
        let id = self.values.len();
        self.values.push(Value {
            name: name.to_string(),
            shape,
            konst,
        });
        self.ids.insert(name.to_string(), id);
        id
    }

    fn lower_node(&mut self, node: &NodeProto) -> Result<()> {
        let op = node.op_type();
        let ids: Vec<Option<ValueId>> = node
            .input
            .iter()
            .map(|n| {
                if n.is_empty() {
                    None
                } else {
                    self.ids.get(n).copied()
                }
            })
            .collect();
        let consts: Vec<Option<&Const>> = ids
            .iter()
            .map(|i| i.and_then(|i| self.values[i].konst.as_ref()))
            .collect();
        let present = ids.iter().flatten().count();
        let all_const = ids
            .iter()
            .all(|i| i.is_none_or(|i| self.values[i].konst.is_some()));
        let folded = if op == "Shape" {
            let id = ids
                .first()
                .copied()
                .flatten()
                .ok_or_else(|| node_err(node.name(), op, "no input"))?;
            let shape = self.values[id].shape.clone();
            let tmp = Const::i64(shape.clone(), vec![0; shape.iter().product()]);
            Some(fold::eval(node, &[Some(&tmp)])?)
        } else if all_const && fold::FOLDABLE.contains(&op) && (present > 0 || op == "Constant") {
            Some(fold::eval(node, &consts)?)
        } else {
            None
        };
        if let Some(outs) = folded {
            for (name, c) in node.output.iter().zip(outs) {
                self.add_value(name, c.shape.clone(), Some(c));
            }
            return Ok(());
        }
        if !RUNTIME_OPS.contains(&op) {
            return Err(node_err(
                node.name(),
                op,
                "its inputs are not constant, and it only runs at load time",
            ));
        }
        let x = ids
            .first()
            .copied()
            .flatten()
            .ok_or_else(|| node_err(node.name(), op, "first input missing"))?;
        // Runtime ops read only small constants (pads, bounds, shapes, BatchNorm statistics);
        // owned copies let lowering add values while reading them.
        let small: Vec<Option<Const>> = consts
            .iter()
            .map(|c| c.filter(|c| c.len() <= 1 << 16).cloned())
            .collect();
        let small: Vec<Option<&Const>> = small.iter().map(|c| c.as_ref()).collect();
        let (rt_op, inputs, shape) = self.lower_runtime(node, &ids, &small, x)?;
        // Extra outputs (Dropout's mask, BatchNorm's training outputs) are not produced.
        let out_name = node
            .output
            .first()
            .ok_or_else(|| node_err(node.name(), op, "no output"))?;
        let output = self.add_value(out_name, shape, None);
        self.nodes.push(Node {
            name: if node.name().is_empty() {
                out_name.clone()
            } else {
                node.name().to_string()
            },
            op: rt_op,
            inputs,
            output,
        });
        Ok(())
    }

    fn lower_runtime(
        &mut self,
        node: &NodeProto,
        ids: &[Option<ValueId>],
        consts: &[Option<&Const>],
        x: ValueId,
    ) -> Result<(Op, Vec<ValueId>, Vec<usize>)> {
        let op = node.op_type();
        let err = |r: String| node_err(node.name(), op, r);
        let xs = self.values[x].shape.clone();
        let need_rank = |r: usize| -> Result<()> {
            if xs.len() == r {
                Ok(())
            } else {
                Err(err(format!("input has shape {xs:?}; rank {r} is required")))
            }
        };
        let present: Vec<ValueId> = ids.iter().flatten().copied().collect();
        Ok(match op {
            "Conv" => {
                need_rank(4)?;
                let w = fold::nth(ids, 1).ok_or_else(|| err("no weight".into()))?;
                let ws = self.values[w].shape.clone();
                if ws.len() != 4 {
                    return Err(err(format!(
                        "weight shape {ws:?}: only 2-D convolution is supported"
                    )));
                }
                let group = attr_int(node, "group").unwrap_or(1).max(1) as usize;
                if !xs[1].is_multiple_of(group)
                    || !ws[0].is_multiple_of(group)
                    || ws[1] * group != xs[1]
                {
                    return Err(err(format!(
                        "input {xs:?}, weight {ws:?} and group {group} do not match"
                    )));
                }
                let kernel = [ws[2], ws[3]];
                let stride = pair(node, "strides", 1)?;
                let dil = pair(node, "dilations", 1)?;
                let pads = pads4(node, kernel, stride, dil, [xs[2], xs[3]])?;
                let conv = Conv2d {
                    c_in: xs[1],
                    c_out: ws[0],
                    kh: ws[2],
                    kw: ws[3],
                    stride,
                    dilation: dil,
                    pads,
                    group,
                };
                let eh = xs[2] + pads[0] + pads[2];
                let ew = xs[3] + pads[1] + pads[3];
                if eh < (kernel[0] - 1) * dil[0] + 1 || ew < (kernel[1] - 1) * dil[1] + 1 {
                    return Err(err(format!(
                        "kernel {kernel:?} is larger than the padded input {xs:?}"
                    )));
                }
                if let Some(b) = fold::nth(ids, 2) {
                    if self.values[b].numel() != ws[0] {
                        return Err(err("bias length differs from output channels".into()));
                    }
                }
                let (oh, ow) = conv.out_hw(xs[2], xs[3]);
                (
                    Op::Conv {
                        conv,
                        act: Activation::None,
                    },
                    present,
                    vec![xs[0], ws[0], oh, ow],
                )
            }
            "Gemm" => {
                need_rank(2)?;
                let bid = fold::nth(ids, 1).ok_or_else(|| err("no B input".into()))?;
                let bs = self.values[bid].shape.clone();
                if bs.len() != 2 {
                    return Err(err(format!("B has shape {bs:?}, rank 2 is required")));
                }
                let trans_a = attr_int(node, "transA").unwrap_or(0) != 0;
                let trans_b = attr_int(node, "transB").unwrap_or(0) != 0;
                let (m, k) = if trans_a {
                    (xs[1], xs[0])
                } else {
                    (xs[0], xs[1])
                };
                let (k2, n) = if trans_b {
                    (bs[1], bs[0])
                } else {
                    (bs[0], bs[1])
                };
                if k != k2 {
                    return Err(err(format!("A {xs:?} and B {bs:?} do not multiply")));
                }
                if let Some(c) = fold::nth(ids, 2) {
                    let cs = &self.values[c].shape;
                    if fold::broadcast_shapes(&[m, n], cs).as_deref() != Some(&[m, n][..]) {
                        return Err(err(format!("C {cs:?} does not broadcast to [{m}, {n}]")));
                    }
                }
                let alpha = attr_float(node, "alpha").unwrap_or(1.0);
                let beta = attr_float(node, "beta").unwrap_or(1.0);
                (
                    Op::Gemm {
                        trans_a,
                        trans_b,
                        alpha,
                        beta,
                        act: Activation::None,
                    },
                    present,
                    vec![m, n],
                )
            }
            "MatMul" => {
                let bid = fold::nth(ids, 1).ok_or_else(|| err("no B input".into()))?;
                let bs = self.values[bid].shape.clone();
                if xs.len() < 2 || bs.len() < 2 || xs[xs.len() - 1] != bs[bs.len() - 2] {
                    return Err(err(format!("A {xs:?} and B {bs:?}: ranks >= 2 with matching inner dimensions are supported")));
                }
                let lead = fold::broadcast_shapes(&xs[..xs.len() - 2], &bs[..bs.len() - 2])
                    .ok_or_else(|| err("leading dimensions do not broadcast".into()))?;
                let b_lead = &bs[..bs.len() - 2];
                let b_ok =
                    b_lead.iter().all(|&d| d == 1) || b_lead == &lead[lead.len() - b_lead.len()..];
                if !b_ok || xs[..xs.len() - 2] != lead[..] {
                    return Err(err(
                        "only B broadcasting along leading dimensions is supported".into(),
                    ));
                }
                let mut shape = lead;
                shape.extend([xs[xs.len() - 2], bs[bs.len() - 1]]);
                (
                    Op::MatMul {
                        act: Activation::None,
                    },
                    present,
                    shape,
                )
            }
            "Add" | "Sub" | "Mul" | "Div" | "Sum" => {
                let mut shape = xs.clone();
                for &i in &present[1..] {
                    shape =
                        fold::broadcast_shapes(&shape, &self.values[i].shape).ok_or_else(|| {
                            err(format!(
                                "shapes {shape:?} and {:?} do not broadcast",
                                self.values[i].shape
                            ))
                        })?;
                }
                let o = match op {
                    "Add" => BinOp::Add,
                    "Sub" => BinOp::Sub,
                    "Mul" => BinOp::Mul,
                    "Div" => BinOp::Div,
                    _ => {
                        return Ok((
                            Op::Sum {
                                act: Activation::None,
                            },
                            present,
                            shape,
                        ))
                    }
                };
                if present.len() != 2 {
                    return Err(err("two inputs are required".into()));
                }
                (
                    Op::Binary {
                        op: o,
                        act: Activation::None,
                    },
                    present,
                    shape,
                )
            }
            "Relu" => (Op::Unary(Activation::Relu), vec![x], xs),
            "Sigmoid" => (Op::Unary(Activation::Sigmoid), vec![x], xs),
            "HardSwish" => (Op::Unary(Activation::HardSwish), vec![x], xs),
            "HardSigmoid" => {
                let alpha = attr_float(node, "alpha").unwrap_or(0.2);
                let beta = attr_float(node, "beta").unwrap_or(0.5);
                (
                    Op::Unary(Activation::HardSigmoid { alpha, beta }),
                    vec![x],
                    xs,
                )
            }
            "Clip" => {
                let bound = |i: usize, attr: &str, default: f32| -> Result<f32> {
                    if let Some(v) = attr_float(node, attr) {
                        return Ok(v);
                    }
                    match (fold::nth(ids, i), fold::nth(consts, i)) {
                        (None, _) => Ok(default),
                        (Some(_), Some(c)) if c.len() == 1 => Ok(c.to_f32()[0]),
                        _ => Err(err(format!("the {attr} bound must be a constant scalar"))),
                    }
                };
                let min = bound(1, "min", f32::NEG_INFINITY)?;
                let max = bound(2, "max", f32::INFINITY)?;
                let act = if min == 0.0 && max == f32::INFINITY {
                    Activation::Relu
                } else {
                    Activation::Clip { min, max }
                };
                (Op::Unary(act), vec![x], xs)
            }
            "BatchNormalization" => {
                if xs.len() < 2 {
                    return Err(err(format!("input shape {xs:?} has no channel axis")));
                }
                let c = xs[1];
                let p: Vec<Vec<f32>> = (1..5)
                    .map(|i| match fold::nth(consts, i) {
                        Some(k) if k.len() == c => Ok(k.to_f32()),
                        _ => Err(err(format!("input {i} must be a constant of {c} values"))),
                    })
                    .collect::<Result<_>>()?;
                let eps = attr_float(node, "epsilon").unwrap_or(1e-5);
                let scale: Vec<f32> = (0..c).map(|i| p[0][i] / (p[3][i] + eps).sqrt()).collect();
                let shift: Vec<f32> = (0..c).map(|i| p[1][i] - p[2][i] * scale[i]).collect();
                let s = self.add_value(
                    &format!("{}:bn_scale", node.name()),
                    vec![c],
                    Some(Const::f32(vec![c], scale)),
                );
                let t = self.add_value(
                    &format!("{}:bn_shift", node.name()),
                    vec![c],
                    Some(Const::f32(vec![c], shift)),
                );
                (
                    Op::ChannelAffine {
                        act: Activation::None,
                    },
                    vec![x, s, t],
                    xs,
                )
            }
            "MaxPool" | "AveragePool" => {
                need_rank(4)?;
                let k = pair(node, "kernel_shape", 0)?;
                let stride = pair(node, "strides", 1)?;
                let dil = pair(node, "dilations", 1)?;
                let pads = pads4(node, k, stride, dil, [xs[2], xs[3]])?;
                let ceil_mode = attr_int(node, "ceil_mode").unwrap_or(0) != 0;
                if node.output.len() > 1 && !node.output[1].is_empty() {
                    return Err(err("the Indices output of MaxPool is not supported".into()));
                }
                let pool = Pool2d {
                    kh: k[0],
                    kw: k[1],
                    stride,
                    dilation: dil,
                    pads,
                    ceil_mode,
                };
                if xs[2] + pads[0] + pads[2] < (k[0] - 1) * dil[0] + 1
                    || xs[3] + pads[1] + pads[3] < (k[1] - 1) * dil[1] + 1
                {
                    return Err(err(format!(
                        "kernel {k:?} is larger than the padded input {xs:?}"
                    )));
                }
                let (oh, ow) = pool.out_hw(xs[2], xs[3]);
                let shape = vec![xs[0], xs[1], oh, ow];
                if op == "MaxPool" {
                    (Op::MaxPool(pool), vec![x], shape)
                } else {
                    let count_include_pad = attr_int(node, "count_include_pad").unwrap_or(0) != 0;
                    (
                        Op::AveragePool {
                            pool,
                            count_include_pad,
                        },
                        vec![x],
                        shape,
                    )
                }
            }
            "GlobalAveragePool" => {
                if xs.len() < 3 {
                    return Err(err(format!("input shape {xs:?} has no spatial axes")));
                }
                let mut shape = xs.clone();
                shape[2..].iter_mut().for_each(|d| *d = 1);
                (Op::GlobalAveragePool, vec![x], shape)
            }
            "ReduceMean" => {
                let keepdims = attr_int(node, "keepdims").unwrap_or(1) != 0;
                let axes = fold::axes_param(node, consts)?;
                let noop = attr_int(node, "noop_with_empty_axes").unwrap_or(0) != 0;
                let mut axes: Vec<usize> = match axes {
                    Some(a) if !a.is_empty() => a
                        .iter()
                        .map(|&v| {
                            norm_axis(v, xs.len()).ok_or_else(|| err("axis out of range".into()))
                        })
                        .collect::<Result<_>>()?,
                    _ if noop => return Ok((Op::Copy, vec![x], xs)),
                    _ => (0..xs.len()).collect(),
                };
                axes.sort_unstable();
                axes.dedup();
                let shape: Vec<usize> = xs
                    .iter()
                    .enumerate()
                    .filter_map(|(i, &d)| {
                        if axes.contains(&i) {
                            keepdims.then_some(1)
                        } else {
                            Some(d)
                        }
                    })
                    .collect();
                (Op::ReduceMean { axes, keepdims }, vec![x], shape)
            }
            "Pad" => {
                let mode = match attr_string(node, "mode").unwrap_or("constant") {
                    "constant" => PadMode::Constant,
                    "reflect" => PadMode::Reflect,
                    "edge" => PadMode::Edge,
                    m => return Err(err(format!("pad mode {m:?} is not supported"))),
                };
                let r = xs.len();
                let (raw, value) = if self.opset < 11 {
                    (
                        attr_ints(node, "pads")
                            .map(|p| p.to_vec())
                            .ok_or_else(|| err("no pads".into()))?,
                        attr_float(node, "value").unwrap_or(0.0),
                    )
                } else {
                    let p = fold::nth(consts, 1)
                        .ok_or_else(|| err("pads must be constant".into()))?
                        .to_i64();
                    let v = match (fold::nth(ids, 2), fold::nth(consts, 2)) {
                        (None, _) => 0.0,
                        (Some(_), Some(c)) if c.len() == 1 => c.to_f32()[0],
                        _ => return Err(err("constant_value must be a constant scalar".into())),
                    };
                    (p, v)
                };
                let axes: Vec<usize> = match fold::nth(consts, 3) {
                    Some(a) => a
                        .to_i64()
                        .iter()
                        .map(|&v| norm_axis(v, r).ok_or_else(|| err("axis out of range".into())))
                        .collect::<Result<_>>()?,
                    None => (0..r).collect(),
                };
                if raw.len() != 2 * axes.len() {
                    return Err(err(format!("{} pads for {} axes", raw.len(), axes.len())));
                }
                if raw.iter().any(|&p| p < 0) {
                    return Err(err("negative pads (cropping) are not supported".into()));
                }
                let mut pads = vec![0usize; 2 * r];
                for (k, &a) in axes.iter().enumerate() {
                    pads[a] = raw[k] as usize;
                    pads[a + r] = raw[k + axes.len()] as usize;
                }
                if mode == PadMode::Reflect
                    && (0..r).any(|a| pads[a].max(pads[a + r]) >= xs[a].max(1))
                {
                    return Err(err(
                        "reflect padding must be smaller than the dimension".into()
                    ));
                }
                let shape: Vec<usize> = (0..r).map(|a| xs[a] + pads[a] + pads[a + r]).collect();
                (Op::Pad { pads, mode, value }, vec![x], shape)
            }
            "Concat" => {
                let axis = norm_axis(attr_int(node, "axis").unwrap_or(0), xs.len())
                    .ok_or_else(|| err("axis out of range".into()))?;
                let mut shape = xs.clone();
                shape[axis] = 0;
                for &i in &present {
                    let s = &self.values[i].shape;
                    if s.len() != xs.len() || (0..xs.len()).any(|d| d != axis && s[d] != xs[d]) {
                        return Err(err(format!(
                            "input shapes {xs:?} and {s:?} do not concatenate on axis {axis}"
                        )));
                    }
                    shape[axis] += s[axis];
                }
                (Op::Concat { axis }, present, shape)
            }
            "Reshape" => {
                let req = fold::nth(consts, 1)
                    .ok_or_else(|| err("the shape input must be constant".into()))?
                    .to_i64();
                let shape =
                    fold::reshape_shape(&xs, &req, attr_int(node, "allowzero").unwrap_or(0) != 0)
                        .ok_or_else(|| err(format!("cannot reshape {xs:?} to {req:?}")))?;
                (Op::Copy, vec![x], shape)
            }
            "Flatten" => {
                let axis = fold::flatten_axis(attr_int(node, "axis").unwrap_or(1), xs.len())
                    .ok_or_else(|| err("axis out of range".into()))?;
                (
                    Op::Copy,
                    vec![x],
                    vec![xs[..axis].iter().product(), xs[axis..].iter().product()],
                )
            }
            "Squeeze" => {
                let axes = fold::axes_param(node, consts)?;
                let shape = fold::squeeze_shape(&xs, axes.as_deref())
                    .ok_or_else(|| err(format!("cannot squeeze {xs:?}")))?;
                (Op::Copy, vec![x], shape)
            }
            "Unsqueeze" => {
                let axes = fold::axes_param(node, consts)?.ok_or_else(|| err("no axes".into()))?;
                let shape = fold::unsqueeze_shape(&xs, &axes)
                    .ok_or_else(|| err(format!("cannot unsqueeze {xs:?} at {axes:?}")))?;
                (Op::Copy, vec![x], shape)
            }
            "Identity" | "Dropout" => (Op::Copy, vec![x], xs),
            "Transpose" => {
                let perm =
                    fold::perm_param(node, xs.len()).ok_or_else(|| err("bad perm".into()))?;
                let shape = perm.iter().map(|&p| xs[p]).collect();
                (Op::Transpose { perm }, vec![x], shape)
            }
            "Softmax" => {
                let default = if self.opset < 13 { 1 } else { -1 };
                let axis = norm_axis(attr_int(node, "axis").unwrap_or(default), xs.len())
                    .ok_or_else(|| err("axis out of range".into()))?;
                (
                    Op::Softmax {
                        axis,
                        coerce_2d: self.opset < 13,
                    },
                    vec![x],
                    xs,
                )
            }
            "Slice" => {
                let params = fold::slice_params(node, &xs, consts)?;
                let shape = params.iter().map(|p| p.2).collect();
                let starts = params.iter().map(|p| p.0).collect();
                let steps = params.iter().map(|p| p.1).collect();
                (Op::Slice { starts, steps }, vec![x], shape)
            }
            _ => return Err(err("not supported at run time".into())),
        })
    }
}
