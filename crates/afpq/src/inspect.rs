use crate::common::{self, OutputArgs};
use afp_engine::ir::Op;
use anyhow::Result;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// ONNX model, or a quantized `.afp` file.
    model: PathBuf,
    #[command(flatten)]
    out: OutputArgs,
}

fn stats(w: &[f32]) -> serde_json::Value {
    let n = w.len().max(1) as f64;
    let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
    let mut sum = 0f64;
    for &v in w {
        min = min.min(v);
        max = max.max(v);
        sum += v as f64;
    }
    let mean = sum / n;
    let var = w.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    json!({"min": min, "max": max, "absmax": min.abs().max(max.abs()), "mean": mean, "std": var.sqrt()})
}

pub fn run(a: &Args) -> Result<()> {
    if a.model.extension().is_some_and(|e| e == "afp") {
        return inspect_afp(a);
    }
    let model = common::load_model(&a.model)?;
    let proto_graph = model.proto.graph.as_ref().expect("checked at load");
    let mut op_counts: BTreeMap<String, usize> = BTreeMap::new();
    for n in &proto_graph.node {
        *op_counts.entry(n.op_type().to_string()).or_default() += 1;
    }
    let params: u64 = proto_graph
        .initializer
        .iter()
        .filter(|t| matches!(afp_onnx::data_type(t), Ok(afp_onnx::DataType::Float)))
        .map(|t| afp_onnx::element_count(t).unwrap_or(0) as u64)
        .sum();
    let g = model.lower(1)?;
    let mut layers = Vec::new();
    let mut total_macs = 0u64;
    for n in &g.nodes {
        if !n.op.is_mac() {
            continue;
        }
        let macs = g.node_macs(n);
        total_macs += macs;
        let w = n.inputs.get(1).copied();
        let wdata = w.and_then(|w| g.const_f32(w));
        let bias = n.inputs.get(2).map(|&b| g.values[b].numel()).unwrap_or(0);
        let mut l = json!({
            "name": n.name,
            "op": n.op.name(),
            "input": g.values[n.inputs[0]].shape,
            "output": g.values[n.output].shape,
            "macs": macs,
        });
        if let (Some(w), Some(data)) = (w, wdata) {
            l["weight_shape"] = json!(g.values[w].shape);
            l["params"] = json!(data.len() + bias);
            l["weight_stats"] = stats(data);
        }
        if let Op::Conv { conv, act } = &n.op {
            l["kernel"] = json!([conv.kh, conv.kw]);
            l["stride"] = json!(conv.stride);
            l["group"] = json!(conv.group);
            l["activation"] = json!(format!("{act:?}"));
        }
        layers.push(l);
    }
    let io = |names: Vec<String>| -> Vec<serde_json::Value> {
        names
            .iter()
            .map(|name| {
                let shape = model.input_shape(name, 1).ok();
                json!({"name": name, "shape_at_batch_1": shape})
            })
            .collect()
    };
    let outputs: Vec<serde_json::Value> = g
        .outputs
        .iter()
        .map(|&o| json!({"name": g.values[o].name, "shape_at_batch_1": g.values[o].shape}))
        .collect();
    let out = json!({
        "model": a.model.display().to_string(),
        "opset": model.opset,
        "inputs": io(model.input_names()),
        "outputs": outputs,
        "op_counts": op_counts,
        "nodes": proto_graph.node.len(),
        "runtime_nodes_after_passes": g.nodes.len(),
        "params": params,
        "macs": total_macs,
        "layers": layers,
    });
    if a.out.json {
        println!("{out}");
        return Ok(());
    }
    println!("{} (opset {})", a.model.display(), model.opset);
    for i in out["inputs"].as_array().into_iter().flatten() {
        println!("input  {} {}", i["name"], i["shape_at_batch_1"]);
    }
    for o in &outputs {
        println!("output {} {}", o["name"], o["shape_at_batch_1"]);
    }
    let ops: Vec<String> = op_counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("{} nodes: {}", proto_graph.node.len(), ops.join(", "));
    println!(
        "{} runtime nodes after constant folding, BatchNorm folding and fusion",
        g.nodes.len()
    );
    println!(
        "\n{:<40} {:<6} {:>16} {:>16} {:>10} {:>12} {:>10} {:>10} {:>10}",
        "layer", "op", "input", "output", "params", "MACs", "min", "max", "std"
    );
    for l in &layers {
        let s = &l["weight_stats"];
        let shape = |v: &serde_json::Value| {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join("x")
                })
                .unwrap_or_default()
        };
        let mut name = l["name"].as_str().unwrap_or("").to_string();
        if name.len() > 40 {
            name = format!("...{}", &name[name.len() - 37..]);
        }
        println!(
            "{:<40} {:<6} {:>16} {:>16} {:>10} {:>12} {:>10.4} {:>10.4} {:>10.4}",
            name,
            l["op"].as_str().unwrap_or(""),
            shape(&l["input"]),
            shape(&l["output"]),
            l["params"].as_u64().unwrap_or(0),
            l["macs"].as_u64().unwrap_or(0),
            s["min"].as_f64().unwrap_or(f64::NAN),
            s["max"].as_f64().unwrap_or(f64::NAN),
            s["std"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!("\ntotal: {params} parameters (float initializers), {total_macs} MACs per image (Conv, Gemm, MatMul)");
    Ok(())
}

/// The texts of a plan layer's offsets (`-5..-3`, `-5..-3 x s` with real scales on top, or
/// `scales` for INT), weight SQNR and
/// input format (`uE2M6@1`; `None` when the input is not quantized), as the tables show them.
pub struct LayerCells {
    pub offsets: String,
    pub sqnr: String,
    pub input: Option<String>,
}

impl LayerCells {
    pub fn of(l: &afp_quant::plan::LayerPlan) -> LayerCells {
        LayerCells {
            offsets: {
                let real = if l.weight.scales.is_empty() {
                    ""
                } else {
                    " x s"
                };
                match (l.weight.offsets.iter().min(), l.weight.offsets.iter().max()) {
                    (Some(lo), Some(hi)) if lo == hi => format!("{lo}{real}"),
                    (Some(lo), Some(hi)) => format!("{lo}..{hi}{real}"),
                    _ => "scales".to_string(),
                }
            },
            sqnr: l
                .weight_sqnr_db
                .map(|d| format!("{d:.1}"))
                .unwrap_or("exact".into()),
            input: l
                .act
                .as_ref()
                .map(|x| format!("{}@{}", x.format.label(), x.offset)),
        }
    }
}

/// How many times smaller the `.afp` file is than the FP32 model file it was made from.
pub fn compression(plan: &afp_quant::Plan, sizes: &afp_quant::afpfile::FileSizes) -> f64 {
    plan.model_bytes as f64 / sizes.file_bytes.max(1) as f64
}

/// A `.afp` file: its size against the FP32 model, where the bytes go, and the per-layer plan.
fn inspect_afp(a: &Args) -> Result<()> {
    let f = crate::engine_run::read_afp(&a.model)?;
    let plan = &f.quantized.plan;
    let s = f.sizes;
    let fp32_bytes = plan.model_bytes;
    let compression = compression(plan, &s);
    let layers: Vec<serde_json::Value> = plan
        .layers
        .iter()
        .map(|l| {
            json!({
                "node": l.node, "op": l.op, "weight_shape": l.weight_shape, "params": l.params,
                "format": l.weight.format.label(), "bits": l.weight.format.bits,
                "granularity": l.weight.granularity,
                "offset_min": l.weight.offsets.iter().min(), "offset_max": l.weight.offsets.iter().max(),
                "real_scales": !l.weight.offsets.is_empty() && !l.weight.scales.is_empty(),
                "weight_sqnr_db": l.weight_sqnr_db,
                "act_format": l.act.as_ref().map(|x| x.format.label()),
                "act_offset": l.act.as_ref().map(|x| x.offset),
                "bias_corrected": l.bias_correction.is_some(),
            })
        })
        .collect();
    if a.out.json {
        println!(
            "{}",
            json!({
                "file": a.model.display().to_string(), "file_bytes": s.file_bytes,
                "fp32_model": plan.model, "fp32_bytes": fp32_bytes, "compression": compression,
                "packed_weight_bytes": s.packed_weight_bytes, "quantized_side_bytes": s.quantized_side_bytes,
                "unquantized_bytes": s.unquantized_bytes, "overhead": s.overhead(),
                "avg_weight_bits": plan.totals.avg_weight_bits, "avg_act_bits": plan.totals.avg_act_bits,
                "params": plan.totals.params, "options": plan.options, "has_card": f.card.is_some(),
                "layers": layers,
            })
        );
        return Ok(());
    }
    println!("{}: afpq model file", a.model.display());
    println!(
        "  {} bytes, {compression:.2}x smaller than the FP32 model ({fp32_bytes} bytes, {})",
        s.file_bytes, plan.model
    );
    println!(
        "  packed weights {} bytes + offsets/scales/bias corrections {} + other tensors {}; header, graph and plan {:.2}% on top",
        s.packed_weight_bytes,
        s.quantized_side_bytes,
        s.unquantized_bytes,
        100.0 * s.overhead()
    );
    println!(
        "  {} layers, {} parameters, {:.3} weight bits on average{}",
        plan.totals.layers,
        plan.totals.params,
        plan.totals.avg_weight_bits,
        plan.totals
            .avg_act_bits
            .map(|b| format!(", {b:.3} activation bits"))
            .unwrap_or_default()
    );
    println!(
        "  {:<48} {:>9} {:>8} {:>12} {:>9} {:>9}",
        "layer", "params", "format", "offsets", "SQNR dB", "input"
    );
    for l in &plan.layers {
        let c = LayerCells::of(l);
        println!(
            "  {:<48} {:>9} {:>8} {:>12} {:>9} {:>9}",
            common::short_name(&l.node, 48),
            l.params,
            l.weight.format.label(),
            c.offsets,
            c.sqnr,
            c.input.unwrap_or("fp32".into())
        );
    }
    Ok(())
}
