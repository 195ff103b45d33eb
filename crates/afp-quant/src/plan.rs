//! The quantization plan: what `afpq quantize` decides and `afpq eval` applies. Serialized
//! as JSON (the `.afp` container of a later issue will embed it).

use afp_format::{Format, Grid, ZeroMode};
use serde::{Deserialize, Serialize};

pub const PLAN_VERSION: u32 = 1;

/// A number format in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumFormat {
    /// `E3M2`, `uE2M3`: AFP formats (power-of-two offsets); `INT4`: symmetric integer with real
    /// scales (the `int` baseline).
    pub name: FormatName,
    pub bits: u32,
    #[serde(default)]
    pub no_subnormal: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FormatName {
    Afp { signed: bool, e: u32, m: u32 },
    Int { bits: u32 },
}

impl NumFormat {
    pub fn afp(f: Format) -> NumFormat {
        NumFormat {
            name: FormatName::Afp {
                signed: f.is_signed(),
                e: f.exp_bits(),
                m: f.man_bits(),
            },
            bits: f.bits(),
            no_subnormal: f.zero_mode() == ZeroMode::NoSubnormal,
        }
    }
    pub fn int(bits: u32) -> NumFormat {
        NumFormat {
            name: FormatName::Int { bits },
            bits,
            no_subnormal: false,
        }
    }
    /// The AFP format, for AFP entries.
    pub fn format(&self) -> Option<Format> {
        match self.name {
            FormatName::Afp { signed, e, m } => {
                let zm = if self.no_subnormal {
                    ZeroMode::NoSubnormal
                } else {
                    ZeroMode::Subnormal
                };
                Format::new(signed, e, m, zm).ok()
            }
            FormatName::Int { .. } => None,
        }
    }
    /// Largest `|n|` of the integer view (DESIGN.md §1): AFP formats `n * 2^(t-M)`, INT
    /// formats `n * scale` with `|n| <= 2^(bits-1) - 1`. `None` for an invalid AFP format.
    pub fn int_bound(&self) -> Option<f64> {
        match self.name {
            FormatName::Afp { .. } => self.format().map(|f| f.int_bound()),
            FormatName::Int { bits } => Some(((1u64 << (bits.clamp(1, 63) - 1)) - 1) as f64),
        }
    }
    pub fn label(&self) -> String {
        match self.name {
            FormatName::Afp { .. } => self.format().map(|f| f.name()).unwrap_or_default(),
            FormatName::Int { bits } => format!("INT{bits}"),
        }
    }
}

/// How one layer's weights are quantized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightPlan {
    pub format: NumFormat,
    /// `tensor` or `channel` (output channels).
    pub granularity: String,
    /// AFP: one power-of-two offset per group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offsets: Vec<i32>,
    /// INT: one real scale per group (value = scale * integer). AFP with `--scale real`: one
    /// real factor per group on top of the offset (value = scale * level); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scales: Vec<f32>,
}

/// How one layer's input is quantized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActPlan {
    pub format: NumFormat,
    pub offset: i32,
    /// Smallest and largest value seen in calibration.
    pub calib_min: f32,
    pub calib_max: f32,
    /// Signal-to-quantization-noise ratio on the calibration sample; `None` when the sample is
    /// represented exactly (e.g. 8-bit integer pixels).
    pub sqnr_db: Option<f64>,
}

impl ActPlan {
    pub fn grid(&self) -> Option<Grid> {
        self.format
            .format()
            .and_then(|f| Grid::new(f, self.offset).ok())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerPlan {
    /// Node name in the lowered graph (after BatchNorm folding).
    pub node: String,
    pub op: String,
    pub weight_shape: Vec<usize>,
    pub params: usize,
    /// Input elements per image (for activation bit averages).
    pub act_elements: usize,
    pub weight: WeightPlan,
    pub act: Option<ActPlan>,
    /// Objective value of the chosen weight configuration (divergence or relative error).
    pub objective: f64,
    /// `None` when the weights are represented exactly.
    pub weight_sqnr_db: Option<f64>,
    /// Weight configurations the search evaluated, and the size of its space.
    #[serde(default)]
    pub search_evaluations: usize,
    #[serde(default)]
    pub search_space: usize,
    /// Added to the layer's bias to cancel the mean output shift (`--bias-correct`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias_correction: Option<Vec<f32>>,
    /// Sensitivity allocation: KL added per unit of relative output error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<f64>,
    /// Sensitivity allocation: relative output error `tr(DHDᵀ)/tr(WHWᵀ)` of the chosen weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_error: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub layers: usize,
    pub params: usize,
    pub avg_weight_bits: f64,
    pub avg_act_bits: Option<f64>,
    /// Packed weight bits of the quantized layers, in bytes, plus offsets/scales.
    pub quantized_weight_bytes: usize,
    pub fp32_weight_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub afpq_plan_version: u32,
    /// The ONNX model the plan applies to (path as given) and its size in bytes.
    pub model: String,
    pub model_bytes: u64,
    /// The options it was made with (as the command line gave them).
    pub options: serde_json::Value,
    /// Image files (relative to the dataset folder) used for calibration.
    pub calibration: Vec<String>,
    pub layers: Vec<LayerPlan>,
    pub totals: Totals,
}

/// A plan with the codes of every layer's weights: what a `.afp` file holds.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedModel {
    pub plan: Plan,
    /// Per plan layer, one code per weight in `[channels, reduction]` layout.
    pub codes: Vec<Vec<u8>>,
}

impl Plan {
    /// Whether the plan's layers are nodes of the graph lowered with BatchNorm folding
    /// (`--fold-bn`; plans that do not say were folded): the graph to apply it to must be lowered the same way.
    pub fn fold_bn(&self) -> bool {
        self.options["fold_bn"].as_bool() != Some(false)
    }
}
