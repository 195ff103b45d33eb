use crate::common::{self, DataArgs, OutputArgs, RunArgs};
use crate::engine_run::Classifier;
use crate::quantize::{make_plan, write_atomic, QuantArgs, WidthArgs};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// ONNX model (default: the card's model).
    model: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Bit-widths to try (fixed formats such as fp8-e4m3 have their own width and run once).
    #[arg(long, value_delimiter = ',', default_value = "3,4,5,6,8")]
    bits: Vec<u32>,
    /// Format families: afp, int, fp8-e4m3, fp8-e5m2, fp6-e3m2, fp6-e2m3, fp4-e2m1.
    #[arg(long, value_delimiter = ',', default_value = "afp,int,fp8-e4m3")]
    formats: Vec<String>,
    /// Folder for sweep.csv and sweep.json.
    #[arg(short, long, default_value = "sweep")]
    output: PathBuf,
    #[command(flatten)]
    run: RunArgs,
    /// Other quantization options, as for `afpq quantize` (--bits and --format are swept).
    #[command(flatten)]
    q: QuantArgs,
    #[command(flatten)]
    out: OutputArgs,
}

pub fn run(a: &Args) -> Result<()> {
    let src = a.data.source()?;
    let ds = a.data.dataset(&src)?;
    let path = common::model_path(a.model.as_deref(), src.card.as_ref())?;
    let threads = a.run.threads.get();
    let batch = a.run.batch();
    if a.bits.iter().any(|b| !(2..=8).contains(b)) {
        bail!("--bits values must be 2..8");
    }
    let indices = ds.first_indices(a.run.limit);
    let quiet = a.out.no_progress();
    let mut base = Classifier::new(common::load_model(&path)?, threads)?;
    base.check_input(src.preprocess.chw())?;
    let fp32 = base.evaluate(&ds, &indices, &src, batch, "eval fp32", quiet)?;
    let rows = sweep(
        &Sweep {
            model: &base.model,
            path: &path,
            data: &a.data,
            src: &src,
            ds: &ds,
            indices: &indices,
            fp32: &fp32,
            q: &a.q,
            threads,
            batch,
            quiet,
        },
        &a.bits,
        &a.formats,
    )?;
    let out = write_files(&a.output, &path, indices.len(), &a.q, &a.formats, rows)?;
    let rows = out["rows"].as_array().map(|r| r.as_slice()).unwrap_or(&[]);
    if a.out.json {
        println!("{out}");
    } else {
        println!("{} on {} images", path.display(), indices.len());
        println!(
            "{:<10} {:>6} {:>8} {:>8} {:>7} {:>10} {:>12}",
            "format", "bits", "top-1", "top-5", "drop", "agreement", "weight bytes"
        );
        for r in rows {
            println!(
                "{:<10} {:>6.2} {:>8.2} {:>8.2} {:>7.2} {:>9.2}% {:>12}",
                r["format"].as_str().unwrap_or(""),
                r["avg_weight_bits"].as_f64().unwrap_or(0.0),
                r["top1"].as_f64().unwrap_or(0.0),
                r["top5"].as_f64().unwrap_or(0.0),
                r["drop"].as_f64().unwrap_or(0.0),
                r["agreement"].as_f64().unwrap_or(0.0),
                r["weight_bytes"]
            );
        }
        println!(
            "wrote {} and {}",
            a.output.join("sweep.csv").display(),
            a.output.join("sweep.json").display()
        );
    }
    Ok(())
}

/// What a sweep runs on: the FP32 model, its images and its evaluation, the options.
pub struct Sweep<'a> {
    pub model: &'a afp_engine::Model,
    pub path: &'a Path,
    pub data: &'a DataArgs,
    pub src: &'a common::DataSource,
    pub ds: &'a afp_eval::Dataset,
    pub indices: &'a [usize],
    pub fp32: &'a afp_eval::Evaluation,
    pub q: &'a QuantArgs,
    pub threads: usize,
    pub batch: usize,
    pub quiet: bool,
}

/// Quantizes and evaluates the model for every family of `formats` and width of `bits`
/// (fixed-width families once): one row each, after the FP32 row.
pub fn sweep(s: &Sweep, bits: &[u32], formats: &[String]) -> Result<Vec<serde_json::Value>> {
    let fp32_top1 = 100.0 * s.fp32.accuracy.top1_rate();
    let fp32_bytes = std::fs::metadata(s.path).map(|m| m.len()).unwrap_or(0);
    let mut rows = vec![json!({
        "format": "fp32", "bits": 32, "top1": fp32_top1, "top5": 100.0 * s.fp32.accuracy.top5_rate(),
        "drop": 0.0, "agreement": 100.0, "avg_weight_bits": 32.0, "weight_bytes": fp32_bytes,
    })];
    for fam in formats {
        let fixed = fam.starts_with("fp");
        let widths: Vec<u32> = if fixed { vec![0] } else { bits.to_vec() };
        for &b in &widths {
            let w = WidthArgs {
                bits: if fixed { 8 } else { b },
                avg_bits: None,
                min_bits: 3,
                max_bits: 8,
                format: fam.clone(),
            };
            let (q, _) = make_plan(s.model, s.path, s.data, &w, s.q, s.threads, s.quiet)?;
            let mut clf = Classifier::new(s.model.clone(), s.threads)?;
            let plan = q.plan.clone();
            clf.plan = Some(q);
            let what = &format!("eval {fam} {}", plan.totals.avg_weight_bits);
            let ev = clf.evaluate(s.ds, s.indices, s.src, s.batch, what, s.quiet)?;
            let top1 = 100.0 * ev.accuracy.top1_rate();
            let row = json!({
                "format": fam, "bits": plan.totals.avg_weight_bits.round() as u32, "top1": top1, "top5": 100.0 * ev.accuracy.top5_rate(),
                "drop": fp32_top1 - top1, "agreement": crate::eval::agreement_pct(&ev, s.fp32),
                "avg_weight_bits": plan.totals.avg_weight_bits, "avg_act_bits": plan.totals.avg_act_bits,
                "weight_bytes": plan.totals.quantized_weight_bytes,
            });
            if !s.quiet {
                eprintln!(
                    "{fam:>9} {:>5.2} bits: top-1 {top1:.2}",
                    plan.totals.avg_weight_bits
                );
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Writes `dir/sweep.csv` and `dir/sweep.json` (atomically); returns the JSON.
pub fn write_files(
    dir: &Path,
    model: &Path,
    images: usize,
    q: &QuantArgs,
    formats: &[String],
    rows: Vec<serde_json::Value>,
) -> Result<serde_json::Value> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut csv = String::from(
        "format,bits,avg_weight_bits,avg_act_bits,top1,top5,drop,agreement,weight_bytes\n",
    );
    for r in &rows {
        csv += &format!(
            "{},{},{:.3},{},{:.2},{:.2},{:.2},{:.2},{}\n",
            r["format"].as_str().unwrap_or(""),
            r["bits"],
            r["avg_weight_bits"].as_f64().unwrap_or(0.0),
            r["avg_act_bits"]
                .as_f64()
                .map(|v| format!("{v:.3}"))
                .unwrap_or_default(),
            r["top1"].as_f64().unwrap_or(0.0),
            r["top5"].as_f64().unwrap_or(0.0),
            r["drop"].as_f64().unwrap_or(0.0),
            r["agreement"].as_f64().unwrap_or(0.0),
            r["weight_bytes"]
        );
    }
    let out = json!({"model": model.display().to_string(), "images": images, "options": q.describe(&WidthArgs { bits: 0, avg_bits: None, min_bits: 3, max_bits: 8, format: formats.join(",") }), "rows": rows});
    write_atomic(&dir.join("sweep.csv"), &csv)?;
    write_atomic(
        &dir.join("sweep.json"),
        &serde_json::to_string_pretty(&out)?,
    )?;
    Ok(out)
}
