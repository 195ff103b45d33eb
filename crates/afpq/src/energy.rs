//! `afpq energy`: energy per inference of a plan against FP32 and INT8 dynamic quantization
//! (the model of `afp_quant::energy`, described in docs/ENERGY.md).

use crate::{common, engine_run};
use afp_quant::energy::{self, Breakdown, EnergyReport, EnergyTable};
use anyhow::{Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// A plan made by `afpq quantize` (.afp).
    plan: PathBuf,
    /// JSON object overriding entries of the per-operation energy table, in pJ, e.g.
    /// {"dram_read_32b": 200}. Keys: int8_add, int8_mult, int32_add, int32_mult, fp16_add,
    /// fp16_mult, fp32_add, fp32_mult, sram_read_32b, dram_read_32b.
    #[arg(long)]
    table: Option<PathBuf>,
    #[command(flatten)]
    out: common::OutputArgs,
}

fn read_table(path: &Path) -> Result<EnergyTable> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    EnergyTable::from_json(&text).with_context(|| format!("reading {}", path.display()))
}

/// `model` lowered for batch 1 as the layers of `plan` were (BatchNorm folded or not).
pub fn lower_for_plan(
    model: &afp_engine::Model,
    plan: &afp_quant::Plan,
) -> Result<afp_engine::ir::Graph> {
    let passes = afp_engine::passes::PassOptions {
        fold_batchnorm: plan.fold_bn(),
    };
    model
        .lower_with(1, passes)
        .context("preparing the model for batch 1")
}

/// The energy per image of `plan` (read from `plan_path`, named in errors) on `g`, its model
/// lowered by [`lower_for_plan`].
pub fn estimate_graph(
    plan: &afp_quant::Plan,
    g: &afp_engine::ir::Graph,
    plan_path: &Path,
    table: &EnergyTable,
) -> Result<EnergyReport> {
    energy::estimate(g, &plan.layers, table)
        .with_context(|| format!("estimating the energy of plan {}", plan_path.display()))
}

/// The energy per image of `plan` (read from `plan_path`, named in errors), on the graph of
/// its FP32 model.
pub fn estimate_plan(
    plan: &afp_quant::Plan,
    plan_path: &Path,
    table: &EnergyTable,
) -> Result<EnergyReport> {
    let model = common::load_model(Path::new(&plan.model))
        .with_context(|| format!("the model of plan {}", plan_path.display()))?;
    estimate_graph(plan, &lower_for_plan(&model, plan)?, plan_path, table)
}

pub fn run(a: &Args) -> Result<()> {
    let table = match &a.table {
        Some(p) => read_table(p)?,
        None => EnergyTable::default(),
    };
    let plan = engine_run::read_afp(&a.plan)?.quantized.plan;
    let r = estimate_plan(&plan, &a.plan, &table)?;
    let q = r.ratios();
    if a.out.json {
        let out = json!({
            "plan": a.plan.display().to_string(),
            "model": plan.model,
            "macs": r.macs,
            "afp_pj": r.afp.total_pj(),
            "fp32_pj": r.fp32.total_pj(),
            "int8_dynamic_pj": r.int8_dynamic.total_pj(),
            "ratios": q,
            "breakdown": {"fp32": r.fp32, "int8_dynamic": r.int8_dynamic, "afp": r.afp},
            "table": r.table,
            "layers": r.layers,
        });
        println!("{out}");
        return Ok(());
    }
    let planned = r.layers.iter().filter(|l| l.planned).count();
    let others = r.layers.len() - planned;
    println!(
        "{}: model {}, {:.2} M MACs per image in {} layers ({planned} in the plan{})",
        a.plan.display(),
        plan.model,
        r.macs as f64 / 1e6,
        r.layers.len(),
        if others > 0 {
            format!(", {others} counted as FP32 in every scheme")
        } else {
            String::new()
        }
    );
    println!(
        "per-operation energies: {}",
        match &a.table {
            Some(p) => format!("{} over Horowitz (ISSCC 2014, 45 nm)", p.display()),
            None => "Horowitz (ISSCC 2014, 45 nm)".into(),
        }
    );
    println!(
        "\nenergy per image, uJ   {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "compute", "(MACs)", "(convert)", "weights", "acts", "total", "vs AFP"
    );
    let afp_total = r.afp.total_pj();
    let row = |name: &str, b: &Breakdown| {
        let u = |pj: f64| pj / 1e6;
        println!(
            "{name:<22} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>9.2}x",
            u(b.compute_pj()),
            u(b.mac_pj),
            u(b.convert_pj),
            u(b.weight_pj()),
            u(b.act_pj()),
            u(b.total_pj()),
            b.total_pj() / afp_total
        );
    };
    row("FP32", &r.fp32);
    row("INT8 dynamic", &r.int8_dynamic);
    row("AFP (this plan)", &r.afp);
    println!(
        "\nAFP uses {:.1}x less energy than FP32 and {:.1}x less than INT8 dynamic quantization \
         (compute alone: {:.1}x and {:.1}x).",
        q.fp32_over_afp,
        q.int8_dynamic_over_afp,
        q.compute_fp32_over_afp,
        q.compute_int8_dynamic_over_afp
    );
    println!("weights and activations: DRAM and SRAM traffic by bits; per layer: --json.");
    Ok(())
}
