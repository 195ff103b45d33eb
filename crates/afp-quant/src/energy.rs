//! Energy per inference of a quantized model, against FP32 and INT8 dynamic quantization,
//! from the lowered graph's MAC counts and each layer's formats. A first-order model over a
//! table of per-operation energies ([`EnergyTable`], Horowitz, ISSCC 2014, 45 nm, by default);
//! `docs/ENERGY.md` states every assumption. In short, per image and per layer with `N`
//! multiply-accumulates, `P` weights, `I` input and `O` output elements and `K = N / O`:
//!
//! - **FP32**: `N` fp32 mults and adds; `P` weights and `I` inputs (written once, read once)
//!   through DRAM at 32 bits; both operands of every MAC read from SRAM at 32 bits.
//! - **INT8 dynamic**: `N` int8 mults and int32 adds; run-time quantization of each input
//!   (max |x| compare, scale multiply, rounding conversion: 1 fp32 mult + 2 fp32 adds) and
//!   de-quantization of each output (conversion and scale: 1 fp32 mult + 1 fp32 add); weights
//!   at 8 bits; inputs stay FP32 in DRAM, written once and read twice (range pass, quantize
//!   pass); MAC operands read from SRAM at 8 bits.
//! - **AFP (the plan)**: per MAC a `(Mw+1) x (Ma+1)`-bit mantissa multiplier, an exponent
//!   adder, a shifter and a fixed-point accumulator wide enough for an exact sum
//!   ([`afp_mac`]); each input is encoded to its AFP format once (a shift and a rounding
//!   add), with no de-quantization (the scale is a power of two); weights and activations
//!   move at their bit-widths. A layer without activation quantization computes in FP32 on
//!   FP32 inputs; INT weights (real scales), and AFP weights with `--scale real`, add a
//!   de-quantization per output.
//!
//! Multiply-accumulate nodes that are not in the plan count as FP32 in every scheme; other
//! ops (pooling, residual adds, activations, bias adds) are not counted.

use crate::plan::{FormatName, LayerPlan, NumFormat};
use afp_engine::ir::{Graph, Node};
use afp_format::Format;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnergyError {
    #[error("energy table: {0}")]
    Table(String),
    #[error("the plan's layer {0:?} is not in the model (was the plan made for another model?)")]
    MissingLayer(String),
    #[error("layer {node:?}: {msg}")]
    Layer { node: String, msg: String },
    #[error("the model has no Conv, Gemm or MatMul: nothing to estimate")]
    NoMacs,
}

/// Energy of one operation, in picojoules. Defaults: Horowitz, "Computing's energy problem
/// (and what we can do about it)", ISSCC 2014, 45 nm. Any subset can be overridden from JSON.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnergyTable {
    pub int8_add: f64,
    pub int8_mult: f64,
    pub int32_add: f64,
    pub int32_mult: f64,
    /// Not used by the three schemes; kept so that the table is Horowitz's.
    pub fp16_add: f64,
    pub fp16_mult: f64,
    pub fp32_add: f64,
    pub fp32_mult: f64,
    /// A 32-bit read from an 8 KB SRAM (narrower reads scale by bits).
    pub sram_read_32b: f64,
    /// A 32-bit read from DRAM (narrower reads scale by bits; a write costs as much).
    pub dram_read_32b: f64,
}

impl Default for EnergyTable {
    fn default() -> EnergyTable {
        EnergyTable {
            int8_add: 0.03,
            int8_mult: 0.2,
            int32_add: 0.1,
            int32_mult: 3.1,
            fp16_add: 0.4,
            fp16_mult: 1.1,
            fp32_add: 0.9,
            fp32_mult: 3.7,
            sram_read_32b: 5.0,
            dram_read_32b: 640.0,
        }
    }
}

/// Piecewise-linear through `(0, 0)`, `(x8, e8)` and `(x32, e32)`, proportional beyond `x32`.
fn scaled(x: f64, x8: f64, e8: f64, x32: f64, e32: f64) -> f64 {
    if x <= 0.0 {
        0.0
    } else if x <= x8 {
        e8 * x / x8
    } else if x <= x32 {
        e8 + (x - x8) * (e32 - e8) / (x32 - x8)
    } else {
        e32 * x / x32
    }
}

impl EnergyTable {
    /// The defaults with the entries of a JSON object replaced (unknown keys are an error).
    pub fn from_json(text: &str) -> Result<EnergyTable, EnergyError> {
        let t: EnergyTable =
            serde_json::from_str(text).map_err(|e| EnergyError::Table(e.to_string()))?;
        t.validate()?;
        Ok(t)
    }

    pub fn validate(&self) -> Result<(), EnergyError> {
        let v = serde_json::to_value(self).map_err(|e| EnergyError::Table(e.to_string()))?;
        for (k, x) in v.as_object().into_iter().flatten() {
            match x.as_f64() {
                Some(x) if x >= 0.0 => {}
                _ => {
                    return Err(EnergyError::Table(format!(
                        "{k} must be a finite number of picojoules >= 0"
                    )))
                }
            }
        }
        Ok(())
    }

    /// An integer adder of `bits` bits: through int8 add at 8 bits and int32 add at 32 bits,
    /// linear in between, proportional to the width below 8 and above 32 bits.
    pub fn adder(&self, bits: u32) -> f64 {
        scaled(bits as f64, 8.0, self.int8_add, 32.0, self.int32_add)
    }

    /// An `a x b`-bit integer multiplier: by its partial-product area `a * b`, through int8
    /// mult at 64 and int32 mult at 1024, the same way as [`EnergyTable::adder`].
    pub fn multiplier(&self, a: u32, b: u32) -> f64 {
        scaled(
            (a * b) as f64,
            64.0,
            self.int8_mult,
            1024.0,
            self.int32_mult,
        )
    }

    fn fp32_mac(&self) -> f64 {
        self.fp32_mult + self.fp32_add
    }
    fn dram(&self, bits: u32) -> f64 {
        self.dram_read_32b * bits as f64 / 32.0
    }
    fn sram(&self, bits: u32) -> f64 {
        self.sram_read_32b * bits as f64 / 32.0
    }
}

/// The widths that set an AFP operand's hardware cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Operand {
    exp: u32,
    /// Significand bits: the mantissa plus the hidden bit (none when `E = 0`).
    sig: u32,
    /// Magnitude bits of the integer view `n` (DESIGN.md §1): the significand shifted by the
    /// largest exponent.
    int: u32,
}

impl Operand {
    fn of(f: Format) -> Operand {
        let bound = f.int_bound();
        let int = if bound < 1.0 {
            0
        } else {
            bound.log2().floor() as u32 + 1
        };
        let sig = f.man_bits() + u32::from(f.exp_bits() > 0);
        Operand {
            exp: f.exp_bits(),
            sig,
            int,
        }
    }
    fn shift(&self) -> u32 {
        self.int - self.sig
    }
}

/// The datapath of one AFP multiply-accumulate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AfpMac {
    /// Widths of the significand multiplier (weight, activation).
    pub multiplier_bits: [u32; 2],
    /// Adds the two exponent fields; 0 when either format has no exponent.
    pub exponent_adder_bits: u32,
    /// Aligns the product by the exponent sum (counted as an adder of its output width); 0
    /// when neither format has a shift.
    pub shifter_bits: u32,
    /// Exact sum of `K` products: both integer views, `ceil(log2 K)` carry bits and a sign.
    pub accumulator_bits: u32,
    pub pj: f64,
}

fn ceil_log2(k: u64) -> u32 {
    u64::BITS - k.saturating_sub(1).leading_zeros()
}

/// The energy of one multiply-accumulate of weight format `w` and activation format `a`
/// summed over `reduction` products.
pub fn afp_mac(t: &EnergyTable, w: Format, a: Format, reduction: u64) -> AfpMac {
    let (w, a) = (Operand::of(w), Operand::of(a));
    let exponent_adder_bits = if w.exp > 0 && a.exp > 0 {
        w.exp.max(a.exp) + 1
    } else {
        0
    };
    let shifter_bits = if w.shift() + a.shift() > 0 {
        w.int + a.int
    } else {
        0
    };
    let accumulator_bits = w.int + a.int + ceil_log2(reduction) + 1;
    AfpMac {
        multiplier_bits: [w.sig, a.sig],
        exponent_adder_bits,
        shifter_bits,
        accumulator_bits,
        pj: t.multiplier(w.sig, a.sig)
            + t.adder(exponent_adder_bits)
            + t.adder(shifter_bits)
            + t.adder(accumulator_bits),
    }
}

/// Energy of one layer or model in one scheme, in picojoules, by where it goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[serde(into = "BreakdownJson")]
pub struct Breakdown {
    /// Multiply-accumulates.
    pub mac_pj: f64,
    /// Quantize, de-quantize and encode work outside the MACs.
    pub convert_pj: f64,
    pub weight_dram_pj: f64,
    pub weight_sram_pj: f64,
    pub act_dram_pj: f64,
    pub act_sram_pj: f64,
}

impl Breakdown {
    pub fn compute_pj(&self) -> f64 {
        self.mac_pj + self.convert_pj
    }
    pub fn weight_pj(&self) -> f64 {
        self.weight_dram_pj + self.weight_sram_pj
    }
    pub fn act_pj(&self) -> f64 {
        self.act_dram_pj + self.act_sram_pj
    }
    pub fn total_pj(&self) -> f64 {
        self.compute_pj() + self.weight_pj() + self.act_pj()
    }
    fn add(&mut self, o: &Breakdown) {
        self.mac_pj += o.mac_pj;
        self.convert_pj += o.convert_pj;
        self.weight_dram_pj += o.weight_dram_pj;
        self.weight_sram_pj += o.weight_sram_pj;
        self.act_dram_pj += o.act_dram_pj;
        self.act_sram_pj += o.act_sram_pj;
    }
}

#[derive(Serialize)]
struct BreakdownJson {
    total_pj: f64,
    compute_pj: f64,
    weight_pj: f64,
    act_pj: f64,
    mac_pj: f64,
    convert_pj: f64,
    weight_dram_pj: f64,
    weight_sram_pj: f64,
    act_dram_pj: f64,
    act_sram_pj: f64,
}

impl From<Breakdown> for BreakdownJson {
    fn from(b: Breakdown) -> BreakdownJson {
        BreakdownJson {
            total_pj: b.total_pj(),
            compute_pj: b.compute_pj(),
            weight_pj: b.weight_pj(),
            act_pj: b.act_pj(),
            mac_pj: b.mac_pj,
            convert_pj: b.convert_pj,
            weight_dram_pj: b.weight_dram_pj,
            weight_sram_pj: b.weight_sram_pj,
            act_dram_pj: b.act_dram_pj,
            act_sram_pj: b.act_sram_pj,
        }
    }
}

/// Per image sizes of a multiply-accumulate node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LayerDims {
    pub macs: u64,
    /// Elements of the constant weight (0 when the second operand is computed).
    pub params: u64,
    /// Elements of the computed operands.
    pub input_elements: u64,
    pub output_elements: u64,
    /// Products summed per output element.
    pub reduction: u64,
}

impl LayerDims {
    pub fn of(g: &Graph, n: &Node) -> LayerDims {
        let batch = g.batch.max(1) as u64;
        let numel = |v: usize| g.values[v].numel() as u64;
        let weight = n
            .inputs
            .get(1)
            .copied()
            .filter(|&w| g.const_f32(w).is_some());
        let input_elements = n.inputs[0..n.inputs.len().min(2)]
            .iter()
            .filter(|&&v| Some(v) != weight)
            .map(|&v| numel(v))
            .sum::<u64>();
        let (macs, out) = (g.node_macs(n), numel(n.output));
        LayerDims {
            macs: macs / batch,
            params: weight.map_or(0, numel),
            input_elements: input_elements / batch,
            output_elements: out / batch,
            reduction: macs.checked_div(out).unwrap_or(0),
        }
    }
}

/// Everything in FP32.
pub fn fp32(t: &EnergyTable, d: &LayerDims) -> Breakdown {
    let (n, p, i) = (d.macs as f64, d.params as f64, d.input_elements as f64);
    Breakdown {
        mac_pj: n * t.fp32_mac(),
        convert_pj: 0.0,
        weight_dram_pj: p * t.dram(32),
        weight_sram_pj: n * t.sram(32),
        act_dram_pj: 2.0 * i * t.dram(32),
        act_sram_pj: n * t.sram(32),
    }
}

/// INT8 weights, activations quantized at run time from FP32 tensors, outputs de-quantized.
pub fn int8_dynamic(t: &EnergyTable, d: &LayerDims) -> Breakdown {
    let (n, p, i, o) = (
        d.macs as f64,
        d.params as f64,
        d.input_elements as f64,
        d.output_elements as f64,
    );
    Breakdown {
        mac_pj: n * (t.int8_mult + t.int32_add),
        convert_pj: i * (t.fp32_mult + 2.0 * t.fp32_add) + o * (t.fp32_mult + t.fp32_add),
        weight_dram_pj: p * t.dram(8),
        weight_sram_pj: n * t.sram(8),
        act_dram_pj: 3.0 * i * t.dram(32),
        act_sram_pj: n * t.sram(8),
    }
}

fn format_of(node: &str, f: &NumFormat) -> Result<Format, EnergyError> {
    let r = match f.name {
        FormatName::Afp { .. } => f.format().ok_or_else(|| "invalid AFP format".to_string()),
        FormatName::Int { bits } => Format::int(bits).map_err(|e| e.to_string()),
    };
    r.map_err(|msg| EnergyError::Layer {
        node: node.to_string(),
        msg: format!("format {}: {msg}", f.label()),
    })
}

/// The plan's formats for one layer, and the AFP MAC when both operands are quantized.
pub fn afp(
    t: &EnergyTable,
    d: &LayerDims,
    lp: &LayerPlan,
) -> Result<(Breakdown, Option<AfpMac>), EnergyError> {
    let (n, p, i, o) = (
        d.macs as f64,
        d.params as f64,
        d.input_elements as f64,
        d.output_elements as f64,
    );
    let w = format_of(&lp.node, &lp.weight.format)?;
    let wbits = lp.weight.format.bits;
    let weight_dram_pj = p * t.dram(wbits);
    let weight_sram_pj = n * t.sram(wbits);
    let Some(act) = &lp.act else {
        // Weight-only quantization: the weights are decoded at the multiplier, which computes
        // in FP32 on FP32 inputs.
        return Ok((
            Breakdown {
                mac_pj: n * t.fp32_mac(),
                convert_pj: 0.0,
                weight_dram_pj,
                weight_sram_pj,
                act_dram_pj: 2.0 * i * t.dram(32),
                act_sram_pj: n * t.sram(32),
            },
            None,
        ));
    };
    let a = format_of(&lp.node, &act.format)?;
    let mac = afp_mac(t, w, a, d.reduction);
    let ao = Operand::of(a);
    // Encoding an input to its format: a shift to the integer view and a rounding add.
    let encode = t.adder(ao.int) + t.adder(ao.sig);
    // Real scales (INT weights, AFP with `--scale real`): each output is de-quantized like an
    // INT8 dynamic one; power-of-two offsets need no multiply.
    let dequantize = match lp.weight.format.name {
        FormatName::Int { .. } => t.fp32_mult + t.fp32_add,
        FormatName::Afp { .. } if !lp.weight.scales.is_empty() => t.fp32_mult + t.fp32_add,
        FormatName::Afp { .. } => 0.0,
    };
    let abits = act.format.bits;
    Ok((
        Breakdown {
            mac_pj: n * mac.pj,
            convert_pj: i * encode + o * dequantize,
            weight_dram_pj,
            weight_sram_pj,
            act_dram_pj: 2.0 * i * t.dram(abits),
            act_sram_pj: n * t.sram(abits),
        },
        Some(mac),
    ))
}

/// One multiply-accumulate node in the three schemes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerEnergy {
    pub node: String,
    pub op: String,
    /// In the plan; a node outside it counts as FP32 in every scheme.
    pub planned: bool,
    #[serde(flatten)]
    pub dims: LayerDims,
    pub weight_format: Option<String>,
    pub act_format: Option<String>,
    /// The AFP datapath, when weights and input are both quantized.
    pub afp_mac: Option<AfpMac>,
    pub fp32: Breakdown,
    pub int8_dynamic: Breakdown,
    pub afp: Breakdown,
}

/// Energy per inference (one image) of a model in the three schemes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnergyReport {
    pub table: EnergyTable,
    pub macs: u64,
    pub fp32: Breakdown,
    pub int8_dynamic: Breakdown,
    pub afp: Breakdown,
    pub layers: Vec<LayerEnergy>,
}

/// Ratios of total (and compute-only) energies.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ratios {
    pub fp32_over_afp: f64,
    pub int8_dynamic_over_afp: f64,
    pub fp32_over_int8_dynamic: f64,
    pub compute_fp32_over_afp: f64,
    pub compute_int8_dynamic_over_afp: f64,
}

impl EnergyReport {
    pub fn ratios(&self) -> Ratios {
        let (f, i, a) = (&self.fp32, &self.int8_dynamic, &self.afp);
        Ratios {
            fp32_over_afp: f.total_pj() / a.total_pj(),
            int8_dynamic_over_afp: i.total_pj() / a.total_pj(),
            fp32_over_int8_dynamic: f.total_pj() / i.total_pj(),
            compute_fp32_over_afp: f.compute_pj() / a.compute_pj(),
            compute_int8_dynamic_over_afp: i.compute_pj() / a.compute_pj(),
        }
    }
}

/// The energy of every multiply-accumulate node of `g` (lowered as the plan's layers were:
/// see [`crate::Plan::fold_bn`]) with the plan's `layers`.
pub fn estimate(
    g: &Graph,
    layers: &[LayerPlan],
    t: &EnergyTable,
) -> Result<EnergyReport, EnergyError> {
    t.validate()?;
    for lp in layers {
        if !g.nodes.iter().any(|n| n.name == lp.node && n.op.is_mac()) {
            return Err(EnergyError::MissingLayer(lp.node.clone()));
        }
    }
    let mut r = EnergyReport {
        table: *t,
        macs: 0,
        fp32: Breakdown::default(),
        int8_dynamic: Breakdown::default(),
        afp: Breakdown::default(),
        layers: Vec::new(),
    };
    for n in g.nodes.iter().filter(|n| n.op.is_mac()) {
        let d = LayerDims::of(g, n);
        let lp = layers.iter().find(|l| l.node == n.name);
        if let Some(lp) = lp {
            let shape = n.inputs.get(1).map(|&w| &g.values[w].shape);
            if d.params == 0 || shape != Some(&lp.weight_shape) {
                return Err(EnergyError::Layer {
                    node: lp.node.clone(),
                    msg: format!(
                        "weight shape {:?} in the plan, {:?} in the model",
                        lp.weight_shape, shape
                    ),
                });
            }
        }
        let f = fp32(t, &d);
        let (int8, (afp_b, mac)) = match lp {
            Some(lp) => (int8_dynamic(t, &d), afp(t, &d, lp)?),
            None => (f, (f, None)),
        };
        r.macs += d.macs;
        r.fp32.add(&f);
        r.int8_dynamic.add(&int8);
        r.afp.add(&afp_b);
        r.layers.push(LayerEnergy {
            node: n.name.clone(),
            op: n.op.name().to_string(),
            planned: lp.is_some(),
            dims: d,
            weight_format: lp.map(|l| l.weight.format.label()),
            act_format: lp.and_then(|l| l.act.as_ref()).map(|a| a.format.label()),
            afp_mac: mac,
            fp32: f,
            int8_dynamic: int8,
            afp: afp_b,
        });
    }
    if r.macs == 0 {
        return Err(EnergyError::NoMacs);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{ActPlan, WeightPlan};
    use afp_engine::ir::{Activation, Conv2d, Op, Value};
    use afp_engine::Const;

    fn value(name: &str, shape: Vec<usize>, konst: bool) -> Value {
        let n = shape.iter().product();
        Value {
            name: name.into(),
            konst: konst.then(|| Const::f32(shape.clone(), vec![0.5; n])),
            shape,
        }
    }

    /// x [1,2,4,4] -> 3x3 Conv "conv" (3 outputs, pad 1) -> [1,3,4,4] -> flatten [1,48] ->
    /// Gemm "fc" (10 outputs, transB) -> [1,10].
    /// conv: 48 outputs x 18 products = 864 MACs, 54 weights, 32 inputs.
    /// fc: 10 x 48 = 480 MACs, 480 weights, 48 inputs.
    fn graph() -> Graph {
        let conv = Conv2d {
            c_in: 2,
            c_out: 3,
            kh: 3,
            kw: 3,
            stride: [1, 1],
            dilation: [1, 1],
            pads: [1, 1, 1, 1],
            group: 1,
        };
        let node = |name: &str, op, inputs: Vec<usize>, output| Node {
            name: name.into(),
            op,
            inputs,
            output,
        };
        Graph {
            values: vec![
                value("x", vec![1, 2, 4, 4], false),
                value("w", vec![3, 2, 3, 3], true),
                value("b", vec![3], true),
                value("y", vec![1, 3, 4, 4], false),
                value("flat", vec![1, 48], false),
                value("fc_w", vec![10, 48], true),
                value("out", vec![1, 10], false),
            ],
            nodes: vec![
                node(
                    "conv",
                    Op::Conv {
                        conv,
                        act: Activation::Relu,
                    },
                    vec![0, 1, 2],
                    3,
                ),
                node("flatten", Op::Copy, vec![3], 4),
                node(
                    "fc",
                    Op::Gemm {
                        trans_a: false,
                        trans_b: true,
                        alpha: 1.0,
                        beta: 1.0,
                        act: Activation::None,
                    },
                    vec![4, 5],
                    6,
                ),
            ],
            inputs: vec![0],
            outputs: vec![6],
            batch: 1,
        }
    }

    fn conv_plan(weight: NumFormat, act: Option<Format>) -> LayerPlan {
        LayerPlan {
            node: "conv".into(),
            op: "Conv".into(),
            weight_shape: vec![3, 2, 3, 3],
            params: 54,
            act_elements: 32,
            weight: WeightPlan {
                format: weight,
                granularity: "tensor".into(),
                offsets: vec![0],
                scales: vec![],
            },
            act: act.map(|f| ActPlan {
                format: NumFormat::afp(f),
                offset: 0,
                calib_min: 0.0,
                calib_max: 1.0,
                sqnr_db: None,
            }),
            objective: 0.0,
            weight_sqnr_db: None,
            search_evaluations: 0,
            search_space: 0,
            bias_correction: None,
            sensitivity: None,
            output_error: None,
        }
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{a} != {b}");
    }

    fn check(b: &Breakdown, want: [f64; 6]) {
        let got = [
            b.mac_pj,
            b.convert_pj,
            b.weight_dram_pj,
            b.weight_sram_pj,
            b.act_dram_pj,
            b.act_sram_pj,
        ];
        for (g, w) in got.iter().zip(want) {
            close(*g, w);
        }
        close(b.total_pj(), want.iter().sum());
    }

    #[test]
    fn widths_scale_through_the_table_points() {
        let t = EnergyTable::default();
        close(t.adder(0), 0.0);
        close(t.adder(4), 0.015); // 0.03 * 4/8
        close(t.adder(8), 0.03);
        close(t.adder(20), 0.065); // 0.03 + 12 * 0.07/24
        close(t.adder(32), 0.1);
        close(t.adder(64), 0.2); // 0.1 * 64/32
        close(t.multiplier(8, 8), 0.2);
        close(t.multiplier(4, 4), 0.05); // 0.2 * 16/64
        close(t.multiplier(32, 32), 3.1);
    }

    #[test]
    fn afp_mac_datapath_by_hand() {
        let t = EnergyTable::default();
        // Weights E2M2 (signed): significand 3 bits, integer view |n| <= 7 * 2^2 = 28 (5 bits).
        // Inputs uE3M5: significand 6 bits, n <= 63 * 2^6 = 4032 (12 bits). K = 18.
        let m = afp_mac(
            &t,
            Format::signed(2, 2).unwrap(),
            Format::unsigned(3, 5).unwrap(),
            18,
        );
        assert_eq!(m.multiplier_bits, [3, 6]);
        assert_eq!(m.exponent_adder_bits, 4); // max(2, 3) + 1
        assert_eq!(m.shifter_bits, 17); // 5 + 12
        assert_eq!(m.accumulator_bits, 23); // 5 + 12 + ceil(log2 18) = 5, + sign
                                            // 0.2*18/64 + 0.03*4/8 + (0.03 + 9*0.07/24) + (0.03 + 15*0.07/24)
                                            // = 0.05625 + 0.015 + 0.05625 + 0.07375
        close(m.pj, 0.20125);
        // No exponents: no exponent adder, no shifter. INT4 (3 magnitude bits) x uE0M8.
        let m = afp_mac(
            &t,
            Format::int(4).unwrap(),
            Format::unsigned(0, 8).unwrap(),
            18,
        );
        assert_eq!(
            (m.exponent_adder_bits, m.shifter_bits, m.accumulator_bits),
            (0, 0, 17)
        );
        close(m.pj, 0.075 + 0.05625); // 0.2*24/64 + (0.03 + 9*0.07/24)
    }

    #[test]
    fn small_model_by_hand() {
        let t = EnergyTable::default();
        let plan = [conv_plan(
            NumFormat::afp(Format::signed(2, 2).unwrap()),
            Some(Format::unsigned(3, 5).unwrap()),
        )];
        let r = estimate(&graph(), &plan, &t).unwrap();
        assert_eq!(r.macs, 864 + 480);
        assert_eq!(r.layers.len(), 2);
        let (conv, fc) = (&r.layers[0], &r.layers[1]);
        assert!(conv.planned && !fc.planned);
        assert_eq!(
            (conv.dims.macs, conv.dims.params, conv.dims.input_elements),
            (864, 54, 32)
        );
        assert_eq!((conv.dims.output_elements, conv.dims.reduction), (48, 18));
        // FP32: 864 * (3.7 + 0.9); 54 * 640; 864 * 5; 2 * 32 * 640 (write, read); 864 * 5.
        check(&conv.fp32, [3974.4, 0.0, 34560.0, 4320.0, 40960.0, 4320.0]);
        // INT8 dynamic: 864 * (0.2 + 0.1); quantize 32 * (3.7 + 2 * 0.9) = 176 and
        // de-quantize 48 * (3.7 + 0.9) = 220.8; 54 * 640/4; 864 * 5/4;
        // 3 * 32 * 640 (FP32 written, read twice); 864 * 5/4.
        check(
            &conv.int8_dynamic,
            [259.2, 396.8, 8640.0, 1080.0, 61440.0, 1080.0],
        );
        // AFP: 864 * 0.20125; encode 32 * (adder(12) + adder(6))
        // = 32 * ((0.03 + 4 * 0.07/24) + 0.03 * 6/8) = 1.68 + 32 * 7/600;
        // 54 * 640 * 5/32; 864 * 5 * 5/32; 2 * 32 * 640 * 8/32; 864 * 5 * 8/32.
        let encode = 1.68 + 32.0 * 7.0 / 600.0;
        check(&conv.afp, [173.88, encode, 5400.0, 675.0, 10240.0, 1080.0]);
        // The Gemm outside the plan is FP32 in every scheme:
        // 480 * 4.6; 480 * 640; 480 * 5; 2 * 48 * 640; 480 * 5 = 375648 pJ.
        let fc_fp32 = [2208.0, 0.0, 307200.0, 2400.0, 61440.0, 2400.0];
        for b in [&fc.fp32, &fc.int8_dynamic, &fc.afp] {
            check(b, fc_fp32);
        }
        close(r.fp32.total_pj(), 88134.4 + 375648.0);
        close(r.int8_dynamic.total_pj(), 72896.0 + 375648.0);
        close(r.afp.total_pj(), 17568.88 + encode + 375648.0);
        close(r.afp.compute_pj(), 173.88 + encode + 2208.0);
        let q = r.ratios();
        close(q.fp32_over_afp, 463782.4 / (393216.88 + encode));
        close(q.int8_dynamic_over_afp, 448544.0 / (393216.88 + encode));
    }

    #[test]
    fn weight_only_and_int_layers() {
        let t = EnergyTable::default();
        // INT4 weights, FP32 inputs: FP32 compute, weights at 4 bits.
        let plan = [conv_plan(NumFormat::int(4), None)];
        let r = estimate(&graph(), &plan, &t).unwrap();
        // 864 * 4.6; 54 * 640 * 4/32; 864 * 5 * 4/32; 2 * 32 * 640; 864 * 5.
        check(
            &r.layers[0].afp,
            [3974.4, 0.0, 4320.0, 540.0, 40960.0, 4320.0],
        );
        assert!(r.layers[0].afp_mac.is_none());
        // INT4 weights (real scales), uE0M8 inputs: 864 * 0.13125; encode 32 * (0.03 + 0.03)
        // and de-quantize 48 * 4.6; 4-bit weights; 8-bit inputs.
        let plan = [conv_plan(
            NumFormat::int(4),
            Some(Format::unsigned(0, 8).unwrap()),
        )];
        let r = estimate(&graph(), &plan, &t).unwrap();
        check(
            &r.layers[0].afp,
            [113.4, 1.92 + 220.8, 4320.0, 540.0, 10240.0, 1080.0],
        );
        // AFP weights with a real scale on the offset (`--scale real`): the same
        // de-quantization per output (48 * 4.6) on top of the plain AFP layer's conversions.
        let afp = |scales: Vec<f32>| {
            let mut lp = conv_plan(
                NumFormat::afp(Format::signed(2, 2).unwrap()),
                Some(Format::unsigned(0, 8).unwrap()),
            );
            lp.weight.scales = scales;
            estimate(&graph(), &[lp], &t).unwrap().layers[0]
                .afp
                .convert_pj
        };
        assert!((afp(vec![0.8]) - afp(vec![]) - 220.8).abs() < 1e-9);
    }

    #[test]
    fn table_overrides_and_errors() {
        let t = EnergyTable::from_json(r#"{"dram_read_32b": 100, "int8_mult": 0.25}"#).unwrap();
        assert_eq!(t.dram_read_32b, 100.0);
        assert_eq!(t.int8_mult, 0.25);
        assert_eq!(t.fp32_mult, 3.7);
        let e = EnergyTable::from_json(r#"{"dram_read": 100}"#).unwrap_err();
        assert!(e.to_string().contains("dram_read"), "{e}");
        let e = EnergyTable::from_json(r#"{"fp32_add": -1}"#).unwrap_err();
        assert!(e.to_string().contains("fp32_add"), "{e}");
        // A cheaper DRAM changes only the DRAM terms: 54 weights * 100 at FP32.
        let plan = [conv_plan(NumFormat::int(4), None)];
        let r = estimate(&graph(), &plan, &t).unwrap();
        close(r.layers[0].fp32.weight_dram_pj, 5400.0);
        let mut bad = plan[0].clone();
        bad.node = "nope".into();
        assert_eq!(
            estimate(&graph(), &[bad], &t).unwrap_err(),
            EnergyError::MissingLayer("nope".into())
        );
        let mut bad = plan[0].clone();
        bad.weight_shape = vec![3, 2, 1, 1];
        assert!(matches!(
            estimate(&graph(), &[bad], &t),
            Err(EnergyError::Layer { .. })
        ));
    }
}
