//! `afpq export`: a `.afp` model as a standard ONNX model (f32 weights, or QDQ).

use afp_quant::export::{ExportOptions, Mode};
use anyhow::{Context, Result};
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Quantized model (.afp).
    input: PathBuf,
    /// Output ONNX model.
    #[arg(short, long)]
    output: PathBuf,
    /// fake: decoded f32 weights (weights only); qdq: typed weights with DequantizeLinear, and
    /// QuantizeLinear/DequantizeLinear on quantized layer inputs.
    #[arg(long, default_value = "fake")]
    mode: String,
    /// qdq: decode the layers whose format has no ONNX type to f32 (and leave such inputs
    /// f32) instead of failing.
    #[arg(long)]
    allow_fake: bool,
    /// Leave layer inputs in f32 even when the plan quantizes them.
    #[arg(long)]
    weights_only: bool,
    /// qdq: FP4 E2M1 weights as FLOAT4E2M1 (opset 23; ONNX Runtime 1.32 has no CPU kernel
    /// for it) instead of INT8 with the same values.
    #[arg(long)]
    float4: bool,
    #[command(flatten)]
    out: crate::common::OutputArgs,
}

pub fn run(a: &Args) -> Result<()> {
    let mode: Mode = a.mode.parse().map_err(anyhow::Error::msg)?;
    let f = crate::engine_run::read_afp(&a.input)?;
    let o = ExportOptions {
        mode,
        allow_fake: a.allow_fake,
        weights_only: a.weights_only,
        float4: a.float4,
    };
    let (model, report) = afp_quant::export::export(&f, &o)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("exporting {}", a.input.display()))?;
    afp_onnx::write_model(&a.output, &model)
        .with_context(|| format!("writing {}", a.output.display()))?;
    for n in &report.notes {
        a.out.note(n);
    }
    if a.out.json {
        println!(
            "{}",
            json!({"output": a.output.display().to_string(), "mode": a.mode, "report": report})
        );
    } else {
        let mut types = std::collections::BTreeMap::<String, usize>::new();
        for l in &report.layers {
            *types
                .entry(format!("weights {}", l.weight_type))
                .or_default() += 1;
            if let Some(t) = &l.act_type {
                *types.entry(format!("inputs {t}")).or_default() += 1;
            }
        }
        let summary: Vec<String> = types.iter().map(|(k, v)| format!("{v} {k}")).collect();
        println!(
            "wrote {} ({} mode, opset {}, IR {}): {} layers: {}",
            a.output.display(),
            a.mode,
            report.opset,
            report.ir_version,
            report.layers.len(),
            summary.join(", ")
        );
    }
    Ok(())
}
