//! `afpq demo`: the whole tool on the bundled ResNet-8 (CIFAR-10) and its 500 images, in
//! well under a minute: quantize (5-bit AFP weights, 8-bit AFP layer inputs in formats the
//! integer kernels run, GPTQ rounding, bias correction), evaluate FP32 and AFP, a short speed measurement, energy per image, an
//! accuracy-against-size sweep, and the HTML report. One table on stdout.

use crate::common::{self, DataArgs, OutputArgs, ThreadsArg};
use crate::engine_run::{self, Classifier};
use crate::{bench, energy, quantize, report, sweep};
use afp_quant::energy::EnergyTable;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The quantization the demo runs (the options of `afpq quantize`).
pub const OPTIONS: [&str; 9] = [
    "--bits",
    "5",
    "--acts",
    "8",
    "--int8-kernels",
    "--bias-correct",
    "--rounding",
    "gptq",
    "--calib=32",
];

const CARD: &str = "models/resnet8_cifar10.json";

#[derive(clap::Args)]
pub struct Args {
    /// Folder for the quantized model (resnet8.afp), the sweep and the report (index.html).
    #[arg(short, long, default_value = "afpq-demo")]
    output: PathBuf,
    /// The bundled assets folder (default: ./assets, else the one of the source tree).
    #[arg(long)]
    assets: Option<PathBuf>,
    /// Use the first N bundled images only (default: all 500).
    #[arg(long)]
    limit: Option<usize>,
    /// Skip the accuracy-against-size sweep (AFP and INT at 3 to 8 bits, FP8).
    #[arg(long)]
    no_sweep: bool,
    /// Seconds of each speed measurement (FP32, then AFP), after warm-up.
    #[arg(long, default_value_t = 1.0)]
    bench_seconds: f64,
    #[command(flatten)]
    threads: ThreadsArg,
    #[command(flatten)]
    out: OutputArgs,
}

/// The assets folder: given, ./assets, or the source tree's.
fn assets(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(a) = given {
        if !a.join(CARD).is_file() {
            bail!("{} has no {CARD}", a.display());
        }
        return Ok(a.to_path_buf());
    }
    let here = PathBuf::from("assets");
    if here.join(CARD).is_file() {
        return Ok(here);
    }
    let tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets");
    if tree.join(CARD).is_file() {
        return Ok(tree);
    }
    bail!(
        "the bundled assets (assets/{CARD}) are not in this folder nor in {}: run from the \
         source tree, or give --assets DIR",
        tree.display()
    )
}

pub fn run(a: &Args) -> Result<()> {
    let start = Instant::now();
    let quiet = a.out.no_progress();
    let threads = a.threads.get();
    let assets = assets(a.assets.as_deref())?;
    let data = DataArgs {
        card: Some(assets.join(CARD)),
        data: None,
        labels: None,
        preprocess: None,
        crop: None,
    };
    let src = data.source()?;
    let ds = data.dataset(&src)?;
    let indices = ds.first_indices(a.limit);
    if indices.is_empty() {
        bail!("--limit must be at least 1");
    }
    let model_path = common::model_path(None, src.card.as_ref())?;
    let model = common::load_model(&model_path)?;
    let (w, q) = quantize::options_from(&OPTIONS)?;
    let batch = 8;

    // Quantize and write the .afp file.
    let (qm, _) = quantize::make_plan(&model, &model_path, &data, &w, &q, threads, quiet)?;
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("creating {}", a.output.display()))?;
    let afp_path = a.output.join("resnet8.afp");
    quantize::write_afp(&afp_path, &model, &qm, data.card.as_deref())?;

    // Accuracy: FP32, and the model read back from its file.
    let mut fp32 = Classifier::new(model.clone(), threads)?;
    fp32.check_input(src.preprocess.chw())?;
    let ev32 = fp32.evaluate(&ds, &indices, &src, batch, "eval fp32", quiet)?;
    let mut afp = engine_run::open(&afp_path, threads, engine_run::Engine::Auto)?;
    afp.quiet = quiet;
    let ev = afp.evaluate(&ds, &indices, &src, batch, "eval afp", quiet)?;
    let (top1_32, top1) = (
        100.0 * ev32.accuracy.top1_rate(),
        100.0 * ev.accuracy.top1_rate(),
    );

    // Speed: the same input through both, after warm-up.
    let pb = common::progress(2, "speed", quiet);
    let x = bench::input(batch * src.preprocess.image_len());
    let t32 = bench::measure(fp32.session(batch)?, &x, batch, 2, a.bench_seconds)?;
    pb.inc(1);
    let tafp = bench::measure(afp.session(batch)?, &x, batch, 2, a.bench_seconds)?;
    pb.finish_and_clear();

    let f = engine_run::read_afp(&afp_path)?;
    let plan = &f.quantized.plan;
    let er = energy::estimate_plan(plan, &afp_path, &EnergyTable::default())?;

    // Accuracy against size, for the report.
    let sweep_json = if a.no_sweep {
        None
    } else {
        let formats: Vec<String> = ["afp", "int", "fp8-e4m3"].map(String::from).to_vec();
        let sp = common::spinner("sweep: AFP and INT at 3..8 bits, FP8", quiet);
        // Accuracy against size over every format: not limited to the integer kernels' formats
        // (no 8-bit weight format fits them).
        let mut q_sweep = q.clone();
        q_sweep.int8_kernels = false;
        let rows = sweep::sweep(
            &sweep::Sweep {
                model: &model,
                path: &model_path,
                data: &data,
                src: &src,
                ds: &ds,
                indices: &indices,
                fp32: &ev32,
                q: &q_sweep,
                threads,
                batch,
                quiet: true,
            },
            &[3, 4, 5, 6, 8],
            &formats,
        )?;
        sp.finish_and_clear();
        let dir = a.output.join("sweep");
        let v = sweep::write_files(&dir, &model_path, indices.len(), &q, &formats, rows)?;
        Some((dir.join("sweep.json"), v))
    };

    let extras = report::Extras {
        accuracy: Some(report::Accuracy {
            images: indices.len(),
            top1,
            fp32_top1: Some(top1_32),
            source: "afpq demo".into(),
        }),
        speed: Some(report::Speed {
            fp32_images_per_s: t32.images_per_s,
            afp_images_per_s: tafp.images_per_s,
            afp_engine: afp.engine_used(),
            batch: t32.batch,
            threads,
        }),
        sweep: sweep_json,
    };
    let written = report::write(&afp_path, &f, &extras, &a.output)?;
    let seconds = start.elapsed().as_secs_f64();

    let uj = |pj: f64| pj / 1e6;
    let (fp32_bytes, afp_bytes) = (plan.model_bytes, f.sizes.file_bytes);
    if a.out.json {
        let o = json!({
            "model": model_path.display().to_string(),
            "images": indices.len(),
            "quantize_options": OPTIONS.join(" "),
            "avg_weight_bits": plan.totals.avg_weight_bits,
            "avg_act_bits": plan.totals.avg_act_bits,
            "fp32_top1": top1_32,
            "afp_top1": top1,
            "drop": top1_32 - top1,
            "agreement": crate::eval::agreement_pct(&ev, &ev32),
            "fp32_bytes": fp32_bytes,
            "afp_bytes": afp_bytes,
            "compression": crate::inspect::compression(plan, &f.sizes),
            "fp32_uj": uj(er.fp32.total_pj()),
            "int8_dynamic_uj": uj(er.int8_dynamic.total_pj()),
            "afp_uj": uj(er.afp.total_pj()),
            "fp32_images_per_s": t32.images_per_s,
            "afp_images_per_s": tafp.images_per_s,
            "batch": batch,
            "threads": threads,
            "afp_file": afp_path.display().to_string(),
            "report": written.report,
            "sweep": extras.sweep.as_ref().map(|s| s.0.display().to_string()),
            "seconds": seconds,
        });
        println!("{o}");
        return Ok(());
    }
    let n = indices.len();
    println!(
        "ResNet-8 (CIFAR-10), {:.0}-bit AFP weights and {}-bit AFP layer inputs (GPTQ rounding, \
         bias correction), {n} bundled images",
        plan.totals.avg_weight_bits,
        plan.totals
            .avg_act_bits
            .map(|b| format!("{b:.0}"))
            .unwrap_or("32".into())
    );
    println!();
    println!(
        "{:<26} {:>12} {:>14} {:>12}",
        "", "FP32", "INT8 dynamic", "AFP"
    );
    println!(
        "{:<26} {:>11.2}% {:>14} {:>11.2}%   drop {:.2} points",
        "top-1 accuracy",
        top1_32,
        "-",
        top1,
        top1_32 - top1
    );
    println!(
        "{:<26} {:>12} {:>14} {:>12}   {:.2}x smaller",
        "size (bytes)",
        fp32_bytes,
        "-",
        afp_bytes,
        crate::inspect::compression(plan, &f.sizes)
    );
    println!(
        "{:<26} {:>12.2} {:>14.2} {:>12.2}   {:.1}x less than FP32",
        "energy per image (uJ)",
        uj(er.fp32.total_pj()),
        uj(er.int8_dynamic.total_pj()),
        uj(er.afp.total_pj()),
        er.fp32.total_pj() / er.afp.total_pj()
    );
    println!(
        "{:<26} {:>12.0} {:>14} {:>12.0}   batch {batch}, {threads} threads",
        "speed (images/s)", t32.images_per_s, "-", tafp.images_per_s
    );
    println!();
    println!(
        "AFP runs on the {} engine{}; energy from the 45 nm model of docs/ENERGY.md.",
        afp.engine_used(),
        if afp.engine_used() == "packed" {
            " (integer kernels on the packed codes)"
        } else {
            " (weights decoded to f32, inputs rounded)"
        }
    );
    println!(
        "wrote {} and {}{} in {seconds:.1} s",
        afp_path.display(),
        written.report,
        extras
            .sweep
            .as_ref()
            .map(|s| format!(" (with {})", s.0.display()))
            .unwrap_or_default()
    );
    Ok(())
}
