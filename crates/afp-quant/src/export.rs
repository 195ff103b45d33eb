//! Exporting a `.afp` model to a standard ONNX model that any runtime loads.
//!
//! * [`Mode::Fake`]: the quantized weights decoded to f32 initializers (bias corrections added
//!   to the biases). Weights only: a plan that quantizes activations is refused unless
//!   `weights_only` is set (then the activations stay f32).
//! * [`Mode::Qdq`]: each quantized weight becomes a typed initializer and a
//!   `DequantizeLinear` (per output channel or per tensor), each quantized layer input a
//!   `QuantizeLinear`/`DequantizeLinear` pair, wherever the format is an ONNX type:
//!   - AFP(4,3) (subnormal) at offset `t` is FLOAT8E4M3FN with scale `2^(t+6)` (opset 19), as
//!     long as no code is E4M3FN's NaN pattern (AFP's 480);
//!   - AFP(5,2) at `t` is FLOAT8E5M2 with scale `2^(t+14)` (opset 19), unless a code has the
//!     all-ones exponent (Inf/NaN in E5M2);
//!   - AFP(2,1) at `t` is FLOAT4E2M1 with scale `2^t` (opset 23) when `float4` is set;
//!     otherwise, as every AFP format whose integer view (`v = n * 2^(t-M)`) fits, an integer
//!     type with scale `2^(t-M)`: INT4/UINT4 (opset 21) when `|n| <= 7` (`<= 15`), else
//!     INT8/UINT8 (opset 13), else INT16/UINT16 (opset 21). E = 0 grids are integers this way.
//!   - the `int` family: INT4 (<= 4 bits, opset 21) or INT8 with its real per-group scales.
//!
//!   Activations: uniform grids (E <= 1, subnormal) whose integer range is a container's
//!   (uint4/uint8/uint16, or int4/int8/int16 whose extra negative level -2^(k-1) the AFP
//!   grid lacks), and AFP(4,3)/AFP(5,2) as FP8 (QuantizeLinear saturates at the standard
//!   type's max, 448 or 57344 times the scale, below AFP's top binade).
//!   A layer whose format has no ONNX type is an error naming it, unless `allow_fake`: then
//!   its weights are decoded to f32 (and its input left f32).
//!
//! Plans made with BatchNorm folded into the weights (`fold_bn` true) are exported when the
//! quantized weights are the ONNX graph's own (layers without BatchNorm after them); a layer
//! whose folded weights have no ONNX initializer is refused with a message to quantize again
//! with `--fold-bn false`.

use crate::afpfile::AfpFile;
use crate::plan::{FormatName, LayerPlan, NumFormat};
use crate::weights::{decode_codes, WeightView};
use afp_format::{Format, ZeroMode};
use afp_onnx::{
    AttributeProto, AttributeType, DataType, GraphProto, ModelProto, NodeProto, TensorProto,
};
use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Fake,
    Qdq,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "fake" => Ok(Mode::Fake),
            "qdq" => Ok(Mode::Qdq),
            _ => Err(format!("unknown export mode {s:?}: fake or qdq")),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ExportOptions {
    pub mode: Mode,
    /// qdq: decode layers whose format has no ONNX type to f32 instead of failing.
    pub allow_fake: bool,
    /// Leave activations in f32 even when the plan quantizes them.
    pub weights_only: bool,
    /// qdq: FP4 E2M1 weights as FLOAT4E2M1 (opset 23) rather than INT8.
    pub float4: bool,
}

/// How one plan layer was exported.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LayerExport {
    pub node: String,
    /// The plan's weight format (`E3M2`, `INT8`).
    pub format: String,
    /// `FLOAT` (decoded) or the ONNX type of the DequantizeLinear input.
    pub weight_type: String,
    /// ONNX type of the input's QuantizeLinear; `None` when the input stays f32.
    pub act_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ExportReport {
    pub opset: i64,
    pub ir_version: i64,
    pub layers: Vec<LayerExport>,
    /// What is not exported as the plan says (decoded weights or f32 inputs of qdq exports,
    /// dropped activation quantization), one line each.
    pub notes: Vec<String>,
}

/// An ONNX element type for quantized values, with the opset its DequantizeLinear needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QType {
    Int4,
    Uint4,
    Int8,
    Uint8,
    Int16,
    Uint16,
    F8E4M3,
    F8E5M2,
    F4E2M1,
}

impl QType {
    fn data_type(self) -> DataType {
        match self {
            QType::Int4 => DataType::Int4,
            QType::Uint4 => DataType::Uint4,
            QType::Int8 => DataType::Int8,
            QType::Uint8 => DataType::Uint8,
            QType::Int16 => DataType::Int16,
            QType::Uint16 => DataType::Uint16,
            QType::F8E4M3 => DataType::Float8e4m3fn,
            QType::F8E5M2 => DataType::Float8e5m2,
            QType::F4E2M1 => DataType::Float4e2m1,
        }
    }
    fn opset(self) -> i64 {
        match self {
            QType::Int8 | QType::Uint8 => 13,
            QType::F8E4M3 | QType::F8E5M2 => 19,
            QType::Int4 | QType::Uint4 | QType::Int16 | QType::Uint16 => 21,
            QType::F4E2M1 => 23,
        }
    }
    fn bits(self) -> u32 {
        match self {
            QType::Int4 | QType::Uint4 | QType::F4E2M1 => 4,
            QType::Int16 | QType::Uint16 => 16,
            _ => 8,
        }
    }
    fn name(self) -> &'static str {
        self.data_type().as_str_name()
    }
    /// Integer range of an integer type.
    fn int_range(self) -> Option<(i64, i64)> {
        Some(match self {
            QType::Int4 => (-8, 7),
            QType::Uint4 => (0, 15),
            QType::Int8 => (-128, 127),
            QType::Uint8 => (0, 255),
            QType::Int16 => (-32768, 32767),
            QType::Uint16 => (0, 65535),
            _ => return None,
        })
    }
    /// The narrowest integer type holding `lo..=hi`.
    fn int_for(signed: bool, bound: i64) -> Option<QType> {
        let types: [QType; 3] = if signed {
            [QType::Int4, QType::Int8, QType::Int16]
        } else {
            [QType::Uint4, QType::Uint8, QType::Uint16]
        };
        types.into_iter().find(|t| {
            let (lo, hi) = t.int_range().expect("integer types");
            bound <= hi && (!signed || -bound >= lo)
        })
    }
}

/// The exact standard float type of an AFP format, with the exponent `k` such that the
/// standard value times `2^(t+k)` is the AFP value at offset `t`.
fn standard_float(f: Format, float4: bool) -> Option<(QType, i32)> {
    if !f.is_signed() || f.zero_mode() != ZeroMode::Subnormal {
        return None;
    }
    match (f.exp_bits(), f.man_bits()) {
        (4, 3) => Some((QType::F8E4M3, 6)),
        (5, 2) => Some((QType::F8E5M2, 14)),
        (2, 1) if float4 => Some((QType::F4E2M1, 0)),
        _ => None,
    }
}

/// Codes a standard float type lacks: E4M3FN's NaN pattern, E5M2's Inf/NaN exponent.
fn standard_code_ok(q: QType, code: u8) -> bool {
    match q {
        QType::F8E4M3 => code & 0x7f != 0x7f,
        QType::F8E5M2 => code & 0x7c != 0x7c,
        _ => true,
    }
}

/// A weight tensor in an ONNX type: element values (codes or integers) and per-group scales.
struct Typed {
    qtype: QType,
    /// One per weight, `[channels, reduction]` layout: the type's bits in the low bits.
    elements: Vec<u16>,
    scales: Vec<f32>,
}

fn pow2(e: i32) -> f32 {
    2f64.powi(e) as f32
}

/// Per-group scales of AFP weights for an element unit `2^(t + k)`: times the real scales
/// (`--scale real`) when the plan has them.
fn afp_scales(lp: &LayerPlan, k: i32) -> Vec<f32> {
    lp.weight
        .offsets
        .iter()
        .enumerate()
        .map(|(g, &t)| pow2(t + k) * lp.weight.scales.get(g).copied().unwrap_or(1.0))
        .collect()
}

/// The weights of a layer in an ONNX type, or why there is none.
fn typed_weights(lp: &LayerPlan, codes: &[u8], float4: bool) -> Result<Typed, String> {
    let nf: NumFormat = lp.weight.format;
    match nf.name {
        FormatName::Int { bits } => {
            let qtype = if bits <= 4 { QType::Int4 } else { QType::Int8 };
            let shift = 32 - bits;
            let mask = if qtype == QType::Int4 { 0xf } else { 0xff };
            let elements = codes
                .iter()
                .map(|&c| ((((c as i32) << shift) >> shift) as u16) & mask)
                .collect();
            Ok(Typed {
                qtype,
                elements,
                scales: lp.weight.scales.clone(),
            })
        }
        FormatName::Afp { .. } => {
            let f = nf.format().ok_or("invalid AFP format")?;
            if let Some((qtype, k)) = standard_float(f, float4) {
                if codes.iter().all(|&c| standard_code_ok(qtype, c)) {
                    return Ok(Typed {
                        qtype,
                        elements: codes.iter().map(|&c| c as u16).collect(),
                        scales: afp_scales(lp, k),
                    });
                }
            }
            let bound = f.int_bound();
            let qtype = (bound <= i64::MAX as f64)
                .then(|| QType::int_for(f.is_signed(), bound as i64))
                .flatten()
                .ok_or_else(|| {
                    format!(
                        "{} has no ONNX type (its integers reach {bound}, beyond 16 bits{})",
                        f.name(),
                        if standard_float(f, true).is_some() {
                            ", and it uses a code the standard float type lacks"
                        } else {
                            ""
                        }
                    )
                })?;
            let mask = (1u32 << qtype.bits()) - 1;
            let elements = codes
                .iter()
                .map(|&c| {
                    let n = f.integer(c).expect("bounded above");
                    (n as i32 as u32 & mask) as u16
                })
                .collect();
            let m = f.man_bits() as i32;
            Ok(Typed {
                qtype,
                elements,
                scales: afp_scales(lp, -m),
            })
        }
    }
}

/// The QuantizeLinear type and scale of a layer input's grid, when the standard op rounds
/// to it (see the module documentation for the one-level differences).
fn typed_activation(nf: NumFormat, offset: i32) -> Result<(QType, f32), String> {
    let f = nf
        .format()
        .ok_or("activations in the int family need an AFP grid")?;
    if let Some((q, k)) = standard_float(f, false) {
        return Ok((q, pow2(offset + k)));
    }
    if f.zero_mode() == ZeroMode::Subnormal && f.exp_bits() <= 1 {
        let bound = f.int_bound() as i64;
        if let Some(q) = QType::int_for(f.is_signed(), bound) {
            let (_, hi) = q.int_range().expect("integer type");
            if hi == bound {
                return Ok((q, pow2(offset - f.man_bits() as i32)));
            }
        }
    }
    Err(format!(
        "{} activations: no ONNX type rounds to this grid (uniform grids need the full range of a 4-, 8- or 16-bit integer)",
        f.name()
    ))
}

/// Raw bytes of `elements` of `bits` bits each (4-bit: two per byte, the first in the low
/// nibble, as ONNX packs INT4/UINT4/FLOAT4E2M1).
fn raw_elements(elements: &[u16], bits: u32) -> Vec<u8> {
    match bits {
        4 => elements
            .chunks(2)
            .map(|p| (p[0] & 0xf) as u8 | (p.get(1).map_or(0, |&h| (h & 0xf) as u8) << 4))
            .collect(),
        8 => elements.iter().map(|&e| e as u8).collect(),
        _ => elements.iter().flat_map(|e| e.to_le_bytes()).collect(),
    }
}

/// `[rows, cols]` row-major to `[cols, rows]`.
fn transpose<T: Copy + Default>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut t = vec![T::default(); v.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = v[r * cols + c];
        }
    }
    t
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn node(op: &str, name: String, inputs: Vec<String>, output: String) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name),
        input: inputs,
        output: vec![output],
        ..Default::default()
    }
}

fn typed_tensor(name: String, qtype: QType, dims: Vec<i64>, elements: &[u16]) -> TensorProto {
    TensorProto {
        name: Some(name),
        dims,
        data_type: Some(qtype.data_type() as i32),
        raw_data: Some(raw_elements(elements, qtype.bits())),
        ..Default::default()
    }
}

/// Names in a graph, and new unique ones.
struct Names(BTreeSet<String>);

impl Names {
    fn of(g: &GraphProto) -> Names {
        let mut s = BTreeSet::new();
        for n in &g.node {
            s.extend(n.input.iter().cloned());
            s.extend(n.output.iter().cloned());
            s.insert(n.name().to_string());
        }
        s.extend(g.initializer.iter().map(|t| t.name().to_string()));
        s.extend(g.input.iter().map(|v| v.name().to_string()));
        s.extend(g.output.iter().map(|v| v.name().to_string()));
        Names(s)
    }
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut i = 1;
        while self.0.contains(&name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.0.insert(name.clone());
        name
    }
}

/// Operators whose inputs or attributes changed incompatibly at an opset version: a model
/// holding one is not moved across that version.
const OPSET_BREAKS: &[(&str, i64)] = &[
    ("Clip", 11),
    ("Pad", 11),
    ("Resize", 11),
    ("TopK", 10),
    ("Slice", 10),
    ("Upsample", 10),
    ("Dropout", 12),
    ("Squeeze", 13),
    ("Unsqueeze", 13),
    ("Split", 13),
    ("ReduceSum", 13),
    ("Softmax", 13),
    ("LogSoftmax", 13),
    ("Hardmax", 13),
    ("Split", 18),
    ("ReduceMean", 18),
    ("ReduceMax", 18),
    ("ReduceMin", 18),
    ("ReduceProd", 18),
    ("ReduceL1", 18),
    ("ReduceL2", 18),
    ("ReduceLogSum", 18),
    ("ReduceLogSumExp", 18),
    ("ReduceSumSquare", 18),
    ("GroupNormalization", 21),
];

/// Raises the default-domain opset to `need` (and the IR version to what it needs), or says
/// which operators prevent it.
fn raise_opset(m: &mut ModelProto, need: i64) -> Result<i64, String> {
    let default =
        |o: &afp_onnx::OperatorSetIdProto| o.domain().is_empty() || o.domain() == "ai.onnx";
    let have = m
        .opset_import
        .iter()
        .find(|o| default(o))
        .map(|o| o.version())
        .unwrap_or(1);
    if have >= need {
        return Ok(have);
    }
    let g = m.graph.as_ref().ok_or("the model has no graph")?;
    let blocking: BTreeSet<&str> = g
        .node
        .iter()
        .filter(|n| n.domain().is_empty() || n.domain() == "ai.onnx")
        .filter_map(|n| {
            OPSET_BREAKS
                .iter()
                .find(|(op, v)| *op == n.op_type() && *v > have && *v <= need)
                .map(|(op, _)| *op)
        })
        .collect();
    if !blocking.is_empty() {
        return Err(format!(
            "the export needs opset {need} but the model is at opset {have}, and {blocking:?} changed meaning in between; convert the model to opset {need} first (onnx.version_converter) and quantize it again"
        ));
    }
    match m.opset_import.iter_mut().find(|o| default(o)) {
        Some(o) => o.version = Some(need),
        None => m.opset_import.push(afp_onnx::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(need),
        }),
    }
    let ir = match need {
        ..=14 => 7,
        15..=20 => 9,
        21..=22 => 10,
        _ => 11,
    };
    if m.ir_version() < ir {
        m.ir_version = Some(ir);
    }
    Ok(need)
}

/// The ONNX node of a plan layer (named as the lowered graph names it).
pub(crate) fn onnx_node(g: &GraphProto, name: &str) -> Option<usize> {
    g.node.iter().position(|n| {
        n.name() == name
            || (n.name().is_empty() && n.output.first().map(String::as_str) == Some(name))
    })
}

/// How many node inputs and graph outputs read each name.
pub(crate) fn use_counts(g: &GraphProto) -> HashMap<String, usize> {
    let mut uses: HashMap<String, usize> = HashMap::new();
    for n in &g.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            *uses.entry(i.clone()).or_default() += 1;
        }
    }
    for o in &g.output {
        *uses.entry(o.name().to_string()).or_default() += 1;
    }
    uses
}

/// Adds a bias correction to the bias of ONNX node `k` (a new bias initializer when the node
/// has none or shares it).
fn correct_bias(
    g: &mut GraphProto,
    k: usize,
    corr: &[f32],
    names: &mut Names,
    uses: &HashMap<String, usize>,
) -> Result<(), String> {
    let n = &g.node[k];
    match n.op_type() {
        "Conv" => {}
        "Gemm" if afp_onnx::attr_float(n, "beta").unwrap_or(1.0) == 1.0 => {}
        "Gemm" => return Err("a bias correction on a Gemm with beta != 1".into()),
        op => {
            return Err(format!(
                "a bias correction on {op}, which has no bias input"
            ))
        }
    }
    let bias = n.input.get(2).filter(|b| !b.is_empty()).cloned();
    let old: Vec<f32> = match &bias {
        Some(b) => {
            let t = g
                .initializer
                .iter()
                .find(|t| t.name() == b)
                .ok_or_else(|| format!("bias {b:?} is not an initializer"))?;
            let v = afp_onnx::tensor_f32(t).map_err(|e| format!("bias {b:?}: {e}"))?;
            if v.len() != corr.len() {
                return Err(format!(
                    "bias {b:?} has {} values for {} output channels",
                    v.len(),
                    corr.len()
                ));
            }
            v
        }
        None => vec![0.0; corr.len()],
    };
    let new: Vec<f32> = old.iter().zip(corr).map(|(a, c)| a + c).collect();
    match &bias {
        Some(b) if uses.get(b) == Some(&1) => {
            let t = g
                .initializer
                .iter_mut()
                .find(|t| t.name() == b)
                .expect("found above");
            let dims = t.dims.clone();
            *t = afp_onnx::try_f32_tensor(b, &dims, &new).map_err(|e| e.to_string())?;
        }
        _ => {
            let name = names.fresh(&format!("{}_bias_corrected", g.node[k].name()));
            g.initializer.push(
                afp_onnx::try_f32_tensor(&name, &[corr.len() as i64], &new)
                    .map_err(|e| e.to_string())?,
            );
            let inputs = &mut g.node[k].input;
            if inputs.len() > 2 {
                inputs[2] = name;
            } else {
                inputs.push(name);
            }
        }
    }
    Ok(())
}

/// Exports a `.afp` model as a standard ONNX model (see the module documentation).
pub fn export(f: &AfpFile, o: &ExportOptions) -> Result<(ModelProto, ExportReport), String> {
    let q = &f.quantized;
    let plan = &q.plan;
    if q.codes.len() != plan.layers.len() {
        return Err(format!(
            "{} code tensors for {} layers",
            q.codes.len(),
            plan.layers.len()
        ));
    }
    let quantized_acts: Vec<&str> = plan
        .layers
        .iter()
        .filter(|l| l.act.is_some())
        .map(|l| l.node.as_str())
        .collect();
    if o.mode == Mode::Fake && !quantized_acts.is_empty() && !o.weights_only {
        return Err(format!(
            "the plan quantizes the inputs of {} layers, which fake mode (f32 weights) cannot express; export with --mode qdq, or add --weights-only to leave activations in f32",
            quantized_acts.len()
        ));
    }
    let fold_bn = plan.options["fold_bn"].as_bool() != Some(false);
    let engine_model = afp_engine::Model::from_proto(f.model.clone()).map_err(|e| e.to_string())?;
    let lowered = engine_model
        .lower_with(
            1,
            afp_engine::passes::PassOptions {
                fold_batchnorm: fold_bn,
            },
        )
        .map_err(|e| e.to_string())?;
    let mut model = f.model.clone();
    let mut g = model.graph.take().ok_or("the model has no graph")?;
    let uses = use_counts(&g);
    let mut names = Names::of(&g);
    let mut report = ExportReport {
        opset: 0,
        ir_version: 0,
        layers: Vec::new(),
        notes: Vec::new(),
    };
    let mut refused: Vec<String> = Vec::new();
    let mut need_opset = 0i64;
    // DequantizeLinear nodes of weights (inputs are initializers: they go first), and
    // Quantize/Dequantize pairs to insert before a node (by name, as indices move).
    let mut weight_nodes: Vec<NodeProto> = Vec::new();
    let mut act_nodes: Vec<[NodeProto; 2]> = Vec::new();
    for (lp, codes) in plan.layers.iter().zip(&q.codes) {
        let what = |e: String| format!("layer {:?}: {e}", lp.node);
        let ln = lowered
            .nodes
            .iter()
            .find(|n| n.name == lp.node)
            .ok_or_else(|| {
                what("not in the model (was the file made for another model?)".into())
            })?;
        let view = WeightView::of(&lowered, ln).ok_or_else(|| what("no constant weight".into()))?;
        if view.shape != lp.weight_shape {
            return Err(what(format!(
                "weight shape {:?} in the model, {:?} in the plan",
                view.shape, lp.weight_shape
            )));
        }
        let wname = lowered.values[ln.inputs[1]].name.clone();
        let k = onnx_node(&g, &lp.node).ok_or_else(|| what("no ONNX node of this name".into()))?;
        let init = g.initializer.iter().position(|t| t.name() == wname);
        let Some(init) = init.filter(|_| g.node[k].input.get(1) == Some(&wname)) else {
            return Err(what(if fold_bn {
                format!("its weights {wname:?} were quantized after folding BatchNorm into them (the plan was made with --fold-bn true), and the ONNX graph has no tensor for them; quantize again with --fold-bn false to export")
            } else {
                format!("its weight {wname:?} is not an initializer of the ONNX node")
            }));
        };
        if uses.get(&wname) != Some(&1) {
            return Err(what(format!(
                "its weight {wname:?} is read by other nodes too; exporting it would change them"
            )));
        }
        let dims = g.initializer[init].dims.clone();
        let decoded =
            decode_codes(&lp.weight, codes, view.channels, view.reduction).map_err(what)?;
        if let Some(corr) = &lp.bias_correction {
            correct_bias(&mut g, k, corr, &mut names, &uses).map_err(what)?;
        }
        let mut entry = LayerExport {
            node: lp.node.clone(),
            format: lp.weight.format.label(),
            weight_type: "FLOAT".into(),
            act_type: None,
        };
        let typed = match o.mode {
            Mode::Fake => None,
            Mode::Qdq => match typed_weights(lp, codes, o.float4) {
                Ok(t) => Some(t),
                Err(e) if o.allow_fake => {
                    report
                        .notes
                        .push(format!("layer {:?}: weights decoded to f32: {e}", lp.node));
                    None
                }
                Err(e) => {
                    refused.push(format!("layer {:?} weights: {e}", lp.node));
                    None
                }
            },
        };
        match typed {
            None => {
                g.initializer[init] =
                    afp_onnx::try_f32_tensor(&wname, &dims, &view.to_graph_layout(&decoded))
                        .map_err(|e| what(e.to_string()))?;
            }
            Some(t) => {
                let elements = if view.transposed {
                    transpose(&t.elements, view.channels, view.reduction)
                } else {
                    t.elements
                };
                let qname = names.fresh(&format!("{wname}_quantized"));
                let sname = names.fresh(&format!("{wname}_scale"));
                g.initializer[init] = typed_tensor(qname.clone(), t.qtype, dims, &elements);
                let per_channel = lp.weight.granularity == "channel";
                let sdims = if per_channel {
                    vec![t.scales.len() as i64]
                } else {
                    vec![]
                };
                g.initializer.push(
                    afp_onnx::try_f32_tensor(&sname, &sdims, &t.scales)
                        .map_err(|e| what(e.to_string()))?,
                );
                let mut dq = node(
                    "DequantizeLinear",
                    names.fresh(&format!("{wname}_dequantize")),
                    vec![qname, sname],
                    wname.clone(),
                );
                if per_channel {
                    dq.attribute
                        .push(attr_int("axis", i64::from(view.transposed)));
                }
                weight_nodes.push(dq);
                // An initializer listed as a graph input (IR < 4) is now computed.
                g.input.retain(|i| i.name() != wname);
                need_opset = need_opset.max(t.qtype.opset());
                entry.weight_type = t.qtype.name().into();
            }
        }
        if let Some(a) = &lp.act {
            if o.weights_only {
                report.notes.push(format!(
                    "layer {:?}: input left in f32 (--weights-only; the plan has {})",
                    lp.node,
                    a.format.label()
                ));
            } else {
                match typed_activation(a.format, a.offset) {
                    Ok((qtype, scale)) => {
                        let x = g.node[k].input[0].clone();
                        let base = format!("{}_input", lp.node);
                        let sname = names.fresh(&format!("{base}_scale"));
                        let zname = names.fresh(&format!("{base}_zero_point"));
                        let qname = names.fresh(&format!("{base}_quantized"));
                        let dqname = names.fresh(&format!("{base}_dequantized"));
                        g.initializer.push(
                            afp_onnx::try_f32_tensor(&sname, &[], &[scale])
                                .map_err(|e| what(e.to_string()))?,
                        );
                        g.initializer
                            .push(typed_tensor(zname.clone(), qtype, vec![], &[0]));
                        let qn = node(
                            "QuantizeLinear",
                            names.fresh(&format!("{base}_quantize")),
                            vec![x, sname.clone(), zname.clone()],
                            qname.clone(),
                        );
                        let dqn = node(
                            "DequantizeLinear",
                            names.fresh(&format!("{base}_dequantize")),
                            vec![qname, sname, zname],
                            dqname.clone(),
                        );
                        g.node[k].input[0] = dqname;
                        act_nodes.push([qn, dqn]);
                        need_opset = need_opset.max(qtype.opset());
                        entry.act_type = Some(qtype.name().into());
                    }
                    Err(e) if o.allow_fake => report
                        .notes
                        .push(format!("layer {:?}: input left in f32: {e}", lp.node)),
                    Err(e) => refused.push(format!("layer {:?} input: {e}", lp.node)),
                }
            }
        }
        report.layers.push(entry);
    }
    if !refused.is_empty() {
        return Err(format!(
            "{} formats have no ONNX type (add --allow-fake to decode those layers to f32):\n  {}",
            refused.len(),
            refused.join("\n  ")
        ));
    }
    for pair in act_nodes {
        // The consumer reads the pair's output (a fresh name, so only it does).
        let out = &pair[1].output[0];
        let k = g
            .node
            .iter()
            .position(|n| n.input.first() == Some(out))
            .ok_or_else(|| format!("internal error: no node reads {out:?}"))?;
        g.node.splice(k..k, pair);
    }
    g.node.splice(0..0, weight_nodes);
    model.graph = Some(g);
    report.opset = if need_opset > 0 {
        raise_opset(&mut model, need_opset)?
    } else {
        model
            .opset_import
            .iter()
            .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
            .map(|o| o.version())
            .unwrap_or(0)
    };
    report.ir_version = model.ir_version();
    Ok((model, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nibbles_pack_low_first() {
        assert_eq!(raw_elements(&[1, 2, 3], 4), vec![0x21, 0x03]);
        assert_eq!(raw_elements(&[0x1ff], 16), vec![0xff, 0x01]);
    }

    #[test]
    fn standard_floats_are_afp_instances() {
        // FP8 E4M3FN value times 2^(t+6) is AFP(4,3) at t, on every code but NaN.
        let f = Format::signed(4, 3).unwrap();
        let (q, k) = standard_float(f, false).unwrap();
        assert_eq!((q, k), (QType::F8E4M3, 6));
        let grid = afp_format::Grid::new(f, -6).unwrap();
        // 0x7e is E4M3FN's largest finite value, 448; 0x08 its smallest normal, 2^-6.
        assert_eq!(grid.decode(0x7e), 448.0);
        assert_eq!(grid.decode(0x08), 2f32.powi(-6));
        assert_eq!(grid.decode(0x01), 2f32.powi(-9));
        assert!(!standard_code_ok(q, 0x7f) && !standard_code_ok(q, 0xff));
        let f = Format::signed(5, 2).unwrap();
        let grid = afp_format::Grid::new(f, -14).unwrap();
        assert_eq!(grid.decode(0x7b), 57344.0);
        assert_eq!(grid.decode(0x01), 2f32.powi(-16));
        assert!(!standard_code_ok(QType::F8E5M2, 0x7c));
        let f = Format::signed(2, 1).unwrap();
        assert_eq!(afp_format::Grid::new(f, 0).unwrap().decode(0x7), 6.0);
        assert_eq!(standard_float(f, false), None);
        assert_eq!(standard_float(f, true), Some((QType::F4E2M1, 0)));
    }

    #[test]
    fn integer_grids_pick_the_narrowest_type() {
        assert_eq!(QType::int_for(true, 7), Some(QType::Int4));
        assert_eq!(QType::int_for(true, 12), Some(QType::Int8));
        assert_eq!(QType::int_for(false, 255), Some(QType::Uint8));
        assert_eq!(QType::int_for(true, 448), Some(QType::Int16));
        assert_eq!(QType::int_for(true, 1 << 20), None);
        // uE0M8 (uint8 grid) and uE1M7 are exactly QuantizeLinear to uint8; uE2M6 is not.
        for (e, m, ok) in [(0, 8, true), (1, 7, true), (2, 6, false), (0, 7, false)] {
            let nf = NumFormat::afp(Format::unsigned(e, m).unwrap());
            let r = typed_activation(nf, 0);
            assert_eq!(r.is_ok(), ok, "uE{e}M{m}: {r:?}");
            if ok {
                assert_eq!(r.unwrap(), (QType::Uint8, 2f32.powi(-(m as i32))));
            }
        }
    }

    #[test]
    fn folded_batchnorm_weights_are_refused_with_what_to_do() {
        // A Conv + BatchNorm network quantized after folding BatchNorm (the plan has no
        // `fold_bn: false`): its first layer's weights exist only folded.
        let (model, q) = crate::afpfile::tests::quantized(5, crate::Family::Afp);
        let (bytes, _) = crate::afpfile::to_bytes(&model, &q, None).unwrap();
        let f = crate::afpfile::from_bytes(&bytes).unwrap();
        for mode in [Mode::Fake, Mode::Qdq] {
            let o = ExportOptions {
                mode,
                allow_fake: true,
                weights_only: false,
                float4: false,
            };
            let err = export(&f, &o).unwrap_err();
            assert!(err.contains("--fold-bn false"), "{err}");
        }
    }

    #[test]
    fn opsets_rise_only_over_unchanged_operators() {
        let model = |op: &str| ModelProto {
            ir_version: Some(6),
            opset_import: vec![afp_onnx::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(11),
            }],
            graph: Some(GraphProto {
                node: vec![node(op, "n".into(), vec!["x".into()], "y".into())],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut m = model("Relu");
        assert_eq!(raise_opset(&mut m, 19), Ok(19));
        assert_eq!((m.opset_import[0].version(), m.ir_version()), (19, 9));
        let mut m = model("Softmax");
        let err = raise_opset(&mut m, 13).unwrap_err();
        assert!(err.contains("Softmax"), "{err}");
        assert_eq!(m.opset_import[0].version(), 11);
        // Already high enough: unchanged.
        let mut m = model("Softmax");
        assert_eq!(raise_opset(&mut m, 10), Ok(11));
    }
}
