use crate::common;
use afp_engine::ir::Op;
use anyhow::Result;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// ONNX model.
    model: PathBuf,
    #[arg(long)]
    json: bool,
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
    if a.json {
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
