//! The graph IR: values with static shapes (for one batch size), constants, and runtime nodes
//! in topological order. Produced from ONNX by [`crate::import`], rewritten by
//! [`crate::passes`], executed by [`crate::exec`].

use crate::tensor::Const;
pub use afp_kernels::{Activation, Conv2d, Pool2d};

pub type ValueId = usize;

#[derive(Debug, Clone)]
pub struct Value {
    pub name: String,
    pub shape: Vec<usize>,
    /// Set for initializers and folded values; these are never computed at run time.
    pub konst: Option<Const>,
}

impl Value {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    #[inline]
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinOp::Add => a + b,
            BinOp::Sub => a - b,
            BinOp::Mul => a * b,
            BinOp::Div => a / b,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadMode {
    Constant,
    Reflect,
    Edge,
}

/// A runtime operation. Inputs are listed in [`Node::inputs`] in ONNX order.
#[derive(Debug, Clone)]
pub enum Op {
    /// Inputs: x, weight `[c_out, c_in/group, kh, kw]`, optional bias.
    Conv {
        conv: Conv2d,
        act: Activation,
    },
    /// A Conv, then an Add of a tensor shaped as its output, then `act`, in one kernel
    /// ([`crate::passes::fuse_residual_add`], inference only). Inputs: x, the residual, weight,
    /// optional bias.
    ConvAdd {
        conv: Conv2d,
        act: Activation,
    },
    /// Inputs: a, b, optional c. ONNX Gemm.
    Gemm {
        trans_a: bool,
        trans_b: bool,
        alpha: f32,
        beta: f32,
        act: Activation,
    },
    /// Inputs: a, b. Batched with broadcasting of leading dimensions.
    MatMul {
        act: Activation,
    },
    /// Inputs: a, b, with multidirectional broadcasting.
    Binary {
        op: BinOp,
        act: Activation,
    },
    /// Inputs: any number, broadcasting; their sum.
    Sum {
        act: Activation,
    },
    Unary(Activation),
    /// Inference BatchNormalization not folded into a producer. Inputs: x, scale, shift
    /// (per channel on axis 1, precomputed as `gamma/sqrt(var+eps)` and `beta - mean*scale`).
    ChannelAffine {
        act: Activation,
    },
    MaxPool(Pool2d),
    AveragePool {
        pool: Pool2d,
        count_include_pad: bool,
    },
    GlobalAveragePool,
    ReduceMean {
        axes: Vec<usize>,
        keepdims: bool,
    },
    /// `pads`: begin of every axis, then end of every axis.
    Pad {
        pads: Vec<usize>,
        mode: PadMode,
        value: f32,
    },
    Concat {
        axis: usize,
    },
    /// Same data, new shape: Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout.
    Copy,
    Transpose {
        perm: Vec<usize>,
    },
    /// Softmax over the flattened axes from `axis` on (`coerce_2d`, opset < 13) or over `axis` alone.
    Softmax {
        axis: usize,
        coerce_2d: bool,
    },
    /// Per axis: start, step and output length (already normalized and clamped).
    Slice {
        starts: Vec<usize>,
        steps: Vec<isize>,
    },
    /// Rounds every value to an AFP grid: simulated quantization of a layer's input.
    Quantize {
        grid: afp_format::Grid,
    },
    /// A convolution on AFP integers (packed weights, input rounded to its activation
    /// grid inside the kernel, activation fused). Inputs: x only.
    QConv(std::sync::Arc<afp_kernels::QConv>),
    /// A [`Op::QConv`] (without activation of its own), then an Add, then `act`, in one
    /// kernel (inference only). Inputs: x, the residual.
    QConvAdd {
        q: std::sync::Arc<afp_kernels::QConv>,
        act: Activation,
    },
    /// A Gemm (`x [rows, k]` times packed weights `[m, k]` transposed) on AFP integers.
    /// Inputs: x only; leading dimensions of x are rows.
    QGemm(std::sync::Arc<afp_kernels::QGemm>),
    /// A convolution whose weights are codes decoded through a table (the packed engine's
    /// lookup path; f32 multiply-add). Inputs: x only (its input rounding, if any, is a
    /// [`Op::Quantize`] before it).
    LookupConv(std::sync::Arc<afp_kernels::LookupConv>),
    /// A Gemm on coded weights (`x [rows, k]` times `[m, k]` transposed). Inputs: x only.
    LookupGemm(std::sync::Arc<afp_kernels::LookupGemm>),
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv { .. } => "Conv",
            Op::ConvAdd { .. } => "Conv+Add",
            Op::Gemm { .. } => "Gemm",
            Op::MatMul { .. } => "MatMul",
            Op::Binary { op, .. } => match op {
                BinOp::Add => "Add",
                BinOp::Sub => "Sub",
                BinOp::Mul => "Mul",
                BinOp::Div => "Div",
            },
            Op::Sum { .. } => "Sum",
            Op::Unary(_) => "Activation",
            Op::ChannelAffine { .. } => "BatchNormalization",
            Op::MaxPool(_) => "MaxPool",
            Op::AveragePool { .. } => "AveragePool",
            Op::GlobalAveragePool => "GlobalAveragePool",
            Op::ReduceMean { .. } => "ReduceMean",
            Op::Pad { .. } => "Pad",
            Op::Concat { .. } => "Concat",
            Op::Copy => "Reshape",
            Op::Transpose { .. } => "Transpose",
            Op::Softmax { .. } => "Softmax",
            Op::Slice { .. } => "Slice",
            Op::Quantize { .. } => "Quantize",
            Op::QConv(_) => "QConv",
            Op::QConvAdd { .. } => "QConv+Add",
            Op::QGemm(_) => "QGemm",
            Op::LookupConv(_) => "LookupConv",
            Op::LookupGemm(_) => "LookupGemm",
        }
    }

    /// Conv, Gemm and MatMul: the ops that multiply-accumulate ([`Graph::node_macs`]).
    pub fn is_mac(&self) -> bool {
        matches!(
            self,
            Op::Conv { .. }
                | Op::ConvAdd { .. }
                | Op::Gemm { .. }
                | Op::MatMul { .. }
                | Op::QConv(_)
                | Op::QConvAdd { .. }
                | Op::QGemm(_)
                | Op::LookupConv(_)
                | Op::LookupGemm(_)
        )
    }

    /// The activation fused into this op, if it has one.
    pub fn act(&self) -> Option<Activation> {
        match self {
            Op::Conv { act, .. }
            | Op::ConvAdd { act, .. }
            | Op::QConvAdd { act, .. }
            | Op::Gemm { act, .. }
            | Op::MatMul { act }
            | Op::Binary { act, .. }
            | Op::Sum { act }
            | Op::ChannelAffine { act } => Some(*act),
            Op::QConv(q) => Some(q.act()),
            Op::LookupConv(q) => Some(q.act()),
            Op::LookupGemm(q) => Some(q.act()),
            _ => None,
        }
    }

    /// The fused activation of ops that have one.
    pub fn act_mut(&mut self) -> Option<&mut Activation> {
        match self {
            Op::Conv { act, .. }
            | Op::ConvAdd { act, .. }
            | Op::QConvAdd { act, .. }
            | Op::Gemm { act, .. }
            | Op::MatMul { act }
            | Op::Binary { act, .. }
            | Op::Sum { act }
            | Op::ChannelAffine { act } => Some(act),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
}

/// A graph lowered for one batch size: every value has a static shape, every node is a
/// runtime op (shape computations were folded away).
#[derive(Debug, Clone)]
pub struct Graph {
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    pub batch: usize,
}

impl Graph {
    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id]
    }

    /// How many node inputs and graph outputs read each value.
    pub fn use_counts(&self) -> Vec<usize> {
        let mut uses = vec![0usize; self.values.len()];
        for n in &self.nodes {
            for &i in &n.inputs {
                uses[i] += 1;
            }
        }
        for &o in &self.outputs {
            uses[o] += 1;
        }
        uses
    }

    /// The node producing each value, if any.
    pub fn producers(&self) -> Vec<Option<usize>> {
        let mut p = vec![None; self.values.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            p[n.output] = Some(i);
        }
        p
    }

    /// f32 data of a constant value.
    pub fn const_f32(&self, id: ValueId) -> Option<&[f32]> {
        self.values[id].konst.as_ref().and_then(|c| c.as_f32())
    }

    /// Multiply-accumulates of one run (all images of the batch) of a node.
    pub fn node_macs(&self, node: &Node) -> u64 {
        let out = self.values[node.output].numel() as u64;
        match &node.op {
            Op::Conv { conv, .. } | Op::ConvAdd { conv, .. } => out * conv.depth() as u64,
            Op::Gemm { trans_a, .. } => {
                let a = &self.values[node.inputs[0]].shape;
                let k = if *trans_a { a[0] } else { a[1] };
                out * k as u64
            }
            Op::MatMul { .. } => {
                let a = &self.values[node.inputs[0]].shape;
                out * *a.last().unwrap_or(&1) as u64
            }
            Op::QConv(q) | Op::QConvAdd { q, .. } => out * q.conv.depth() as u64,
            Op::LookupConv(q) => out * q.conv().depth() as u64,
            Op::QGemm(q) => out * q.depth() as u64,
            Op::LookupGemm(q) => out * q.depth() as u64,
            _ => 0,
        }
    }
}
