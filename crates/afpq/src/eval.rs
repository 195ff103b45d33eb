use crate::common::{self, DataArgs, OutputArgs, RunArgs};
use crate::engine_run::Classifier;
use anyhow::Result;
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// ONNX model (default: the card's model).
    model: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    out: OutputArgs,
    /// How a .afp model is computed: packed kernels (integer, or table lookup), or simulated
    /// (f32 kernels on decoded weights, inputs rounded to their grids); auto: packed where
    /// possible.
    #[arg(long, value_enum, default_value = "simulated")]
    engine: crate::engine_run::Engine,
}

pub fn run(a: &Args) -> Result<()> {
    let src = a.data.source()?;
    let ds = a.data.dataset(&src)?;
    let path = common::model_path(a.model.as_deref(), src.card.as_ref())?;
    let threads = a.run.threads.get();
    let (batch, quiet) = (a.run.batch(), a.out.no_progress());
    let mut clf = crate::engine_run::open(&path, threads, a.engine)?;
    clf.quiet = quiet;
    clf.check_input(src.preprocess.chw())?;
    let indices = ds.first_indices(a.run.limit);
    let ev = clf.evaluate(&ds, &indices, &src, batch, "eval", quiet)?;
    // A quantized model is compared with its FP32 original on the same images.
    // The .afp file holds codes, not the FP32 weights: the original model is read from the
    // path recorded when it was quantized.
    let fp32 = match &clf.plan {
        Some(q) => {
            let orig = std::path::Path::new(&q.plan.model);
            if orig.is_file() {
                let mut base = Classifier::new(common::load_model(orig)?, threads)?;
                Some(base.evaluate(&ds, &indices, &src, batch, "eval fp32", quiet)?)
            } else {
                a.out.note(&format!(
                    "the FP32 model {} is not there; no comparison with it",
                    orig.display()
                ));
                None
            }
        }
        None => None,
    };
    let n = ev.images();
    let top1 = 100.0 * ev.accuracy.top1_rate();
    let top5 = 100.0 * ev.accuracy.top5_rate();
    let reference = src.card.as_ref().and_then(|c| c.reference.as_ref());
    // Image-by-image comparison with the reference top-5 (when the card has one and the
    // whole dataset, in order, is evaluated from its start).
    let ref_top5 = src
        .card
        .as_ref()
        .and_then(|c| c.reference_top5_path())
        .filter(|p| p.is_file() && a.data.data.is_none() && clf.plan.is_none());
    let agreement = match ref_top5 {
        Some(p) => {
            let rows = afp_eval::dataset::read_reference_top5(&p)?;
            let same = ev
                .top5
                .iter()
                .zip(&rows)
                .filter(|(t, r)| t.first() == r.top5.first())
                .count();
            Some(100.0 * same as f64 / n.max(1) as f64)
        }
        None => None,
    };
    let ips = n as f64 / ev.infer_seconds.max(1e-9);
    if a.out.json {
        let mut o = json!({
            "model": path.display().to_string(),
            "engine": clf.engine_used(),
            "images": n,
            "top1": top1,
            "top5": top5,
            "top1_correct": ev.accuracy.top1,
            "top5_correct": ev.accuracy.top5,
            "images_per_s": ips,
            "total_images_per_s": n as f64 / ev.total_seconds.max(1e-9),
            "batch": batch,
            "threads": clf.threads,
        });
        if let Some(r) = reference {
            o["reference_top1"] = json!(100.0 * r.top1);
            o["reference_top5"] = json!(100.0 * r.top5);
        }
        if let Some(ag) = agreement {
            o["reference_top1_agreement"] = json!(ag);
        }
        if let (Some(f), Some(q)) = (&fp32, &clf.plan) {
            let p = &q.plan;
            let f1 = 100.0 * f.accuracy.top1_rate();
            o["fp32_top1"] = json!(f1);
            o["fp32_top5"] = json!(100.0 * f.accuracy.top5_rate());
            o["drop"] = json!(f1 - top1);
            o["agreement"] = json!(agreement_pct(&ev, f));
            o["avg_weight_bits"] = json!(p.totals.avg_weight_bits);
            o["avg_act_bits"] = json!(p.totals.avg_act_bits);
        }
        println!("{o}");
    } else {
        println!(
            "{}: {n} images ({} engine)",
            path.display(),
            clf.engine_used()
        );
        println!(
            "top-1 {top1:.2}% ({}/{n})   top-5 {top5:.2}% ({}/{n})",
            ev.accuracy.top1, ev.accuracy.top5
        );
        if let Some(r) = reference {
            println!(
                "card reference ({} images): top-1 {:.2}%   top-5 {:.2}%",
                r.images,
                100.0 * r.top1,
                100.0 * r.top5
            );
        }
        if let Some(ag) = agreement {
            println!("top-1 prediction equal to the reference runtime's on {ag:.2}% of images");
        }
        if let (Some(f), Some(q)) = (&fp32, &clf.plan) {
            let p = &q.plan;
            let f1 = 100.0 * f.accuracy.top1_rate();
            println!(
                "FP32 top-1 {f1:.2}%: drop {:.2} points; top-1 equal to FP32 on {:.2}% of images ({:.3} weight bits{})",
                f1 - top1,
                agreement_pct(&ev, f),
                p.totals.avg_weight_bits,
                p.totals.avg_act_bits.map(|b| format!(", {b:.3} activation bits")).unwrap_or_default()
            );
        }
        println!(
            "{ips:.1} images/s inference ({:.1} images/s with image loading), batch {}, {} threads",
            n as f64 / ev.total_seconds.max(1e-9),
            batch,
            clf.threads
        );
    }
    Ok(())
}

/// Share (percent) of images whose top-1 class is the same in both evaluations.
pub fn agreement_pct(a: &afp_eval::Evaluation, b: &afp_eval::Evaluation) -> f64 {
    let same = a
        .top5
        .iter()
        .zip(&b.top5)
        .filter(|(x, y)| x.first() == y.first())
        .count();
    100.0 * same as f64 / a.top5.len().max(1) as f64
}
