use crate::common::{self, DataArgs, OutputArgs, ThreadsArg};
use anyhow::{Context, Result};
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// ONNX model, or quantized model (.afp).
    model: PathBuf,
    /// Image files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    threads: ThreadsArg,
    #[command(flatten)]
    out: OutputArgs,
    /// Also write the preprocessed images (N x C x H x W, f32) to this .npy file, so another
    /// runtime can be given exactly the same input.
    #[arg(long)]
    save_input: Option<PathBuf>,
    /// How a .afp model is computed: packed kernels (integer, or table lookup where the
    /// integers fit no container) where every layer has one (auto), packed only, or simulated
    /// (f32 kernels on decoded weights).
    #[arg(long, value_enum, default_value = "auto")]
    engine: crate::engine_run::Engine,
}

/// Class names from the card's dataset (classes.txt / synsets.txt), if there are any.
fn class_names(src: &common::DataSource, a: &DataArgs) -> Option<Vec<String>> {
    let ds = a.dataset(src).ok()?;
    ds.class_names.clone()
}

pub fn run(a: &Args) -> Result<()> {
    let src = a.data.source()?;
    let threads = a.threads.get();
    let mut clf = crate::engine_run::open(&a.model, threads, a.engine)?;
    clf.quiet = a.out.json;
    clf.check_input(src.preprocess.chw())?;
    let per = src.preprocess.image_len();
    let mut x = vec![0f32; per * a.images.len()];
    for (img, chunk) in a.images.iter().zip(x.chunks_mut(per)) {
        src.preprocess
            .load_into(img, chunk)
            .with_context(|| format!("reading image {}", img.display()))?;
    }
    if let Some(p) = &a.save_input {
        let [c, h, w] = src.preprocess.chw();
        let bytes = afp_eval::npy::encode_npy(&[a.images.len(), c, h, w], &x)
            .map_err(anyhow::Error::msg)?;
        afp_onnx::write_atomic(p, &bytes).with_context(|| format!("writing {}", p.display()))?;
    }
    let scores = clf.infer(&x, a.images.len())?;
    let classes = scores.len() / a.images.len();
    let names = class_names(&src, &a.data);
    let softmax_out = src
        .card
        .as_ref()
        .map(|c| c.output == Some(afp_eval::OutputKind::Softmax))
        .unwrap_or(false);
    let mut all = Vec::new();
    for (img, row) in a.images.iter().zip(scores.chunks(classes)) {
        // Probabilities: the output itself for softmax models, else a softmax of the logits.
        let probs: Vec<f32> = if softmax_out {
            row.to_vec()
        } else {
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let e: Vec<f32> = row.iter().map(|&v| (v - m).exp()).collect();
            let s: f32 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        };
        let top = afp_eval::top_k(row, 5);
        let entries: Vec<serde_json::Value> = top
            .iter()
            .map(|&c| {
                let label = afp_eval::pred_to_label(c, src.label_offset);
                let name = label.and_then(|l| names.as_ref().and_then(|n| n.get(l)).cloned());
                json!({"class": c, "name": name, "score": row[c], "probability": probs[c]})
            })
            .collect();
        if !a.out.json {
            println!("{}", img.display());
            for e in &entries {
                println!(
                    "  {:>5}  {:>6.2}%  {}",
                    e["class"],
                    100.0 * e["probability"].as_f64().unwrap_or(0.0),
                    e["name"].as_str().unwrap_or("")
                );
            }
        }
        all.push(json!({"image": img.display().to_string(), "top5": entries}));
    }
    if a.out.json {
        println!("{}", serde_json::Value::Array(all));
    }
    Ok(())
}
