//! `afpq report`: one self-contained HTML page about a `.afp` model: its size and accuracy,
//! the bits of every layer, weight histograms under the chosen levels, accuracy against size
//! (from a sweep), the energy per image, and a per-layer table. Plots are inline SVG drawn
//! with `plotters` (SVG backend only: text is SVG text, set in the browser's fonts).

use crate::common::{short_name, OutputArgs};
use crate::{energy, engine_run, inspect};
use afp_format::Grid;
use afp_quant::afpfile::AfpFile;
use afp_quant::energy::{EnergyReport, EnergyTable};
use afp_quant::plan::{FormatName, LayerPlan};
use afp_quant::weights::{decode_codes, WeightView};
use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// A model made by `afpq quantize` (.afp).
    plan: PathBuf,
    /// Folder for index.html (created if missing).
    #[arg(short, long)]
    output: PathBuf,
    /// The sweep.json of `afpq sweep` (accuracy against size for AFP, INT and FP8).
    #[arg(long)]
    sweep: Option<PathBuf>,
    /// The output of `afpq eval OUT.afp --json` (top-1 of the model and of its FP32 original).
    #[arg(long)]
    eval: Option<PathBuf>,
    #[command(flatten)]
    out: OutputArgs,
}

/// Top-1 accuracy of the quantized model (and of FP32) on some images.
#[derive(Debug, Clone)]
pub struct Accuracy {
    pub images: usize,
    pub top1: f64,
    pub fp32_top1: Option<f64>,
    /// Where the numbers come from (shown on the page).
    pub source: String,
}

/// Images per second of the FP32 engine and of the quantized model.
#[derive(Debug, Clone)]
pub struct Speed {
    pub fp32_images_per_s: f64,
    pub afp_images_per_s: f64,
    /// The engine the quantized model ran on (`packed` or `simulated`).
    pub afp_engine: &'static str,
    pub batch: usize,
    pub threads: usize,
}

/// What the page is made from, beyond the `.afp` file.
#[derive(Default)]
pub struct Extras {
    pub accuracy: Option<Accuracy>,
    pub speed: Option<Speed>,
    /// A sweep.json (path, contents).
    pub sweep: Option<(PathBuf, serde_json::Value)>,
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Written {
    pub report: String,
    pub bytes: usize,
    /// `fp32` (the ONNX model the plan names) or `decoded` (the .afp codes).
    pub weights: String,
    /// Plan layer numbers (as in the table) of the histograms.
    pub histogram_layers: Vec<usize>,
    pub sections: Vec<&'static str>,
}

const SECTIONS: [&str; 6] = [
    "summary",
    "bits",
    "histograms",
    "accuracy",
    "energy",
    "layers",
];

// Colours (Tableau 10), readable on white.
const BLUE: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const ORANGE: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const GREEN: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const RED: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const PURPLE: RGBColor = RGBColor(0x94, 0x67, 0xbd);
const GREY: RGBColor = RGBColor(0x7f, 0x7f, 0x7f);
const FONT: &str = "sans-serif";
// Plotters writes SVG font sizes as 1/1.24 of these: 18 is 14.5 px in the browser.
const LABEL: f64 = 18.0;
const DESC: f64 = 19.0;
const SMALL: f64 = 17.0;

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// The accuracy in the output of `afpq eval OUT.afp --json`.
fn read_eval(path: &Path) -> Result<Accuracy> {
    let v = read_json(path)?;
    let top1 = v["top1"].as_f64().filter(|t| (0.0..=100.0).contains(t));
    let images = v["images"].as_u64();
    match (top1, images) {
        (Some(top1), Some(images)) => Ok(Accuracy {
            images: images as usize,
            top1,
            fp32_top1: v["fp32_top1"].as_f64(),
            source: format!("afpq eval ({})", path.display()),
        }),
        _ => bail!(
            "{}: no \"top1\" (0..100) and \"images\": give the output of `afpq eval OUT.afp --json`",
            path.display()
        ),
    }
}

/// A sweep.json of `afpq sweep`, checked for the fields the plot uses.
fn read_sweep(path: &Path) -> Result<serde_json::Value> {
    let v = read_json(path)?;
    let rows = v["rows"].as_array().ok_or_else(|| {
        anyhow!(
            "{}: no \"rows\" array: give the sweep.json of `afpq sweep`",
            path.display()
        )
    })?;
    for (i, r) in rows.iter().enumerate() {
        if r["format"].as_str().is_none()
            || r["top1"].as_f64().is_none()
            || r["weight_bytes"].as_f64().is_none()
            || r["avg_weight_bits"].as_f64().is_none()
        {
            bail!(
                "{}: row {i} lacks format, top1, weight_bytes or avg_weight_bits",
                path.display()
            );
        }
    }
    Ok(v)
}

pub fn run(a: &Args) -> Result<()> {
    let extras = Extras {
        accuracy: a.eval.as_deref().map(read_eval).transpose()?,
        speed: None,
        sweep: match &a.sweep {
            Some(p) => Some((p.clone(), read_sweep(p)?)),
            None => None,
        },
    };
    let f = engine_run::read_afp(&a.plan)?;
    let w = write(&a.plan, &f, &extras, &a.output)?;
    if a.out.json {
        println!("{}", serde_json::to_string(&w)?);
    } else {
        println!(
            "wrote {} ({} bytes): weight histograms of layers {} from the {} weights{}",
            w.report,
            w.bytes,
            w.histogram_layers
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if w.weights == "fp32" {
                "original FP32"
            } else {
                "decoded"
            },
            if extras.sweep.is_none() {
                "; no accuracy-against-size plot (give --sweep sweep/sweep.json of `afpq sweep`)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Builds the page for `f` (read from `path`) and writes `dir/index.html` atomically.
pub fn write(path: &Path, f: &AfpFile, extras: &Extras, dir: &Path) -> Result<Written> {
    let (html, mut w) = build(path, f, extras)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join("index.html");
    afp_onnx::write_atomic(&out, html.as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    w.report = out.display().to_string();
    Ok(w)
}

/// Weights of one plan layer (`[channels, reduction]`), original or decoded.
struct LayerWeights {
    values: Vec<f32>,
    channels: usize,
}

/// The page, and what it holds (`report` left empty).
pub fn build(path: &Path, f: &AfpFile, extras: &Extras) -> Result<(String, Written)> {
    let plan = &f.quantized.plan;
    if plan.layers.is_empty() {
        bail!("{}: the plan has no layers", path.display());
    }
    // The FP32 model the plan names, if it is readable; else the model in the .afp file
    // (quantized weights as zeros there: their histograms come from the decoded codes).
    let fp32 = crate::common::load_model(Path::new(&plan.model));
    let (model, weights) = match fp32 {
        Ok(m) => (m, "fp32"),
        Err(_) => (
            afp_engine::Model::from_proto(f.model.clone())
                .with_context(|| format!("the model in {}", path.display()))?,
            "decoded",
        ),
    };
    let g = energy::lower_for_plan(&model, plan)?;
    let layer_weights = |i: usize| -> Result<LayerWeights> {
        let lp = &plan.layers[i];
        let view = g
            .nodes
            .iter()
            .find(|n| n.name == lp.node)
            .and_then(|n| WeightView::of(&g, n))
            .ok_or_else(|| {
                anyhow!(
                    "{}: layer {:?} is not in the model",
                    path.display(),
                    lp.node
                )
            })?;
        let values = if weights == "fp32" {
            view.data
        } else {
            decode_codes(
                &lp.weight,
                &f.quantized.codes[i],
                view.channels,
                view.reduction,
            )
            .map_err(|e| anyhow!("{}: layer {:?}: {e}", path.display(), lp.node))?
        };
        Ok(LayerWeights {
            values,
            channels: view.channels,
        })
    };
    let er = energy::estimate_graph(plan, &g, path, &EnergyTable::default())?;

    let n = plan.layers.len();
    let largest = (0..n)
        .max_by_key(|&i| (plan.layers[i].params, n - i))
        .unwrap_or(0);
    let mut picks = vec![0, n / 2, largest, n - 1];
    picks.sort_unstable();
    picks.dedup();

    let name = Path::new(&plan.model)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| plan.model.clone());
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>afpq report: {}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n\
         <h1>afpq report: {}</h1>\n",
        esc(&name),
        esc(&name)
    );
    summary(&mut h, path, f, extras);

    h += "<h2 id=\"bits\">Weight bits per layer</h2>\n<p>Bits per weight of each quantized \
          layer, in the order of the network: sign, exponent (E) and mantissa (M) bits of \
          AFP formats, integer bits of INT formats. Layer numbers are those of the table \
          at the end.</p>\n<figure>";
    h += &bits_plot(&plan.layers)?;
    h += "</figure>\n";

    let _ = write!(
        h,
        "<h2 id=\"histograms\">Weight histograms and levels</h2>\n<p>Histograms of the {} \
         weights of {} layers (the first, a middle one, the largest and the last), with the \
         representable values of the chosen format drawn over them (red lines) for the \
         offset most of the layer's channels use.</p>\n<div class=\"grid\">\n",
        if weights == "fp32" {
            format!("original FP32 (from {})", esc(&plan.model))
        } else {
            format!(
                "decoded (the FP32 model {} is not readable)",
                esc(&plan.model)
            )
        },
        picks.len()
    );
    let mut histogram_layers = Vec::new();
    for &i in &picks {
        let lw = layer_weights(i)?;
        h += "<figure>";
        h += &histogram_plot(i, &plan.layers[i], &lw)?;
        h += "</figure>\n";
        histogram_layers.push(i);
    }
    h += "</div>\n";

    h += "<h2 id=\"accuracy\">Accuracy against size</h2>\n";
    match &extras.sweep {
        Some((p, v)) => {
            let _ = write!(
                h,
                "<p>Top-1 accuracy against the size of the quantized weights, for each format \
                 family and width, from <code>{}</code> ({} images of {}). The black line \
                 is the FP32 model.</p>\n<figure>",
                esc(&p.display().to_string()),
                v["images"],
                esc(v["model"].as_str().unwrap_or("?"))
            );
            h += &sweep_plot(v)?;
            h += "</figure>\n";
        }
        None => {
            h += "<p class=\"note\">No sweep given. Make one with <code>afpq sweep MODEL.onnx \
                  --card CARD.json --bits 3,4,5,6,8 --formats afp,int,fp8-e4m3 -o sweep</code> \
                  and pass <code>--sweep sweep/sweep.json</code> to <code>afpq report</code>.</p>\n";
        }
    }

    h += "<h2 id=\"energy\">Energy per image</h2>\n<p>Energy of one inference, from MAC \
          counts, formats and per-operation energies (Horowitz, ISSCC 2014, 45 nm; \
          docs/ENERGY.md): compute (multiply-accumulates and conversions), weight traffic \
          and activation traffic (DRAM and SRAM), for FP32, INT8 dynamic quantization and \
          the AFP formats of this model.</p>\n<figure>";
    h += &energy_plot(&er)?;
    h += "</figure>\n";
    energy_table(&mut h, &er);

    h += "<h2 id=\"layers\">Layers</h2>\n";
    layer_table(&mut h, &plan.layers, &er);
    let _ = write!(
        h,
        "<footer>Made by afpq {} from <code>{}</code>.</footer>\n</body>\n</html>\n",
        env!("CARGO_PKG_VERSION"),
        esc(&path.display().to_string())
    );
    let bytes = h.len();
    Ok((
        h,
        Written {
            report: String::new(),
            bytes,
            weights: weights.to_string(),
            histogram_layers,
            sections: SECTIONS.to_vec(),
        },
    ))
}

const STYLE: &str = "body { font-family: sans-serif; max-width: 1200px; margin: 1.5em auto; \
padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.7em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { padding: 3px 9px; border-bottom: 1px solid #e3e3e3; text-align: right; }
th { background: #f3f3f3; } .l { text-align: left; }
table.summary td, table.summary th { text-align: left; }
figure { margin: 0.8em 0; } svg { max-width: 100%; height: auto; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 0.5em; }
.note { color: #555; } .wide { overflow-x: auto; } table.layers { font-size: 0.85em; } code { background: #f3f3f3; padding: 0 3px; }
footer { margin-top: 2em; color: #777; font-size: 0.85em; }
";

/// HTML-escapes text.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn summary(h: &mut String, path: &Path, f: &AfpFile, extras: &Extras) {
    let plan = &f.quantized.plan;
    let t = &plan.totals;
    let s = &f.sizes;
    let o = &plan.options;
    let mut rows: Vec<(String, String)> = vec![
        ("model".into(), format!("<code>{}</code>", esc(&plan.model))),
        (
            "file".into(),
            format!(
                "<code>{}</code>: {} bytes ({} of packed weights, {} of other tensors)",
                esc(&path.display().to_string()),
                s.file_bytes,
                s.packed_weight_bytes,
                s.unquantized_bytes
            ),
        ),
        (
            "compression".into(),
            format!(
                "{:.2}x smaller than the FP32 model ({} bytes)",
                inspect::compression(plan, s),
                plan.model_bytes
            ),
        ),
        (
            "weights".into(),
            format!(
                "{} layers, {} parameters, {:.3} bits on average (format family {}, {} \
                 rounding{})",
                t.layers,
                t.params,
                t.avg_weight_bits,
                esc(o["format"].as_str().unwrap_or("afp")),
                esc(o["rounding"].as_str().unwrap_or("nearest")),
                if o["bias_correct"] == true {
                    ", bias correction"
                } else {
                    ""
                }
            ),
        ),
        (
            "layer inputs".into(),
            match t.avg_act_bits {
                Some(b) => format!("{b:.3} bits on average"),
                None => "FP32 (not quantized)".into(),
            },
        ),
    ];
    rows.push((
        "top-1 accuracy".into(),
        match &extras.accuracy {
            Some(a) => format!(
                "{:.2}% on {} images{} ({})",
                a.top1,
                a.images,
                a.fp32_top1
                    .map(|f| format!("; FP32 {f:.2}%, drop {:.2} points", f - a.top1))
                    .unwrap_or_default(),
                esc(&a.source)
            ),
            None => "not measured here: pass <code>--eval EVAL.json</code>, the output of \
                     <code>afpq eval OUT.afp --card CARD.json --json</code>"
                .into(),
        },
    ));
    if let Some(sp) = &extras.speed {
        rows.push((
            "speed".into(),
            format!(
                "FP32 {:.0} images/s, AFP ({} engine) {:.0} images/s; batch {}, {} threads",
                sp.fp32_images_per_s, sp.afp_engine, sp.afp_images_per_s, sp.batch, sp.threads
            ),
        ));
    }
    *h += "<table class=\"summary\" id=\"summary\">\n";
    for (k, v) in rows {
        let _ = writeln!(h, "<tr><th>{k}</th><td>{v}</td></tr>");
    }
    *h += "</table>\n";
}

/// An SVG document of `w` x `h` pixels drawn by `draw`.
fn svg(
    w: u32,
    h: u32,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<()>,
) -> Result<String> {
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    Ok(s)
}

/// The legend box of a chart's labelled series.
fn legend<'a, CT: plotters::coord::CoordTranslate>(
    c: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    position: SeriesLabelPosition,
) -> Result<()> {
    c.configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font((FONT, LABEL))
        .draw()
        .map_err(plot_err)
}

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing a plot: {e}")
}

/// Per-layer stacked bars: sign, exponent and mantissa bits (AFP), or integer bits (INT).
fn bits_plot(layers: &[LayerPlan]) -> Result<String> {
    let n = layers.len();
    svg(1080, 380, |root| {
        let mut c = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(56)
            // A segmented range a..b has the segments a..=b: one per layer.
            .build_cartesian_2d((0..n.max(2) - 1).into_segmented(), 0f64..9.5f64)
            .map_err(plot_err)?;
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels(n.min(40))
            .y_labels(10)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => i.to_string(),
                _ => String::new(),
            })
            .y_label_formatter(&|v| format!("{v:.0}"))
            .light_line_style(WHITE)
            .x_desc("layer")
            .y_desc("bits per weight")
            .label_style((FONT, LABEL))
            .axis_desc_style((FONT, DESC))
            .draw()
            .map_err(plot_err)?;
        let bar = |i: usize, y0: f64, y1: f64, color: RGBColor| {
            let mut r = Rectangle::new(
                [
                    (SegmentValue::Exact(i), y0),
                    (SegmentValue::Exact(i + 1), y1),
                ],
                color.filled(),
            );
            r.set_margin(0, 0, 3, 3);
            r
        };
        let parts = |l: &LayerPlan| -> (f64, f64, f64, f64) {
            match l.weight.format.name {
                FormatName::Afp { signed, e, m } => {
                    (if signed { 1.0 } else { 0.0 }, e as f64, m as f64, 0.0)
                }
                FormatName::Int { bits } => (0.0, 0.0, 0.0, bits as f64),
            }
        };
        let series: [(&str, RGBColor, usize); 4] = [
            ("sign", GREY, 0),
            ("exponent E", BLUE, 1),
            ("mantissa M", ORANGE, 2),
            ("integer (INT)", GREEN, 3),
        ];
        for (label, color, k) in series {
            let rects: Vec<_> = layers
                .iter()
                .enumerate()
                .filter_map(|(i, l)| {
                    let p = parts(l);
                    let v = [p.0, p.1, p.2, p.3];
                    let y0: f64 = v[..k].iter().sum();
                    (v[k] > 0.0).then(|| bar(i, y0, y0 + v[k], color))
                })
                .collect();
            if rects.is_empty() {
                continue;
            }
            c.draw_series(rects)
                .map_err(plot_err)?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                });
        }
        legend(&mut c, SeriesLabelPosition::UpperRight)?;
        Ok(())
    })
}

/// The levels of a layer's format for the offset (AFP) or scale (INT) most of its channels
/// use, with a description.
fn layer_levels(l: &LayerPlan) -> (Vec<f32>, String) {
    let groups = l.weight.offsets.len().max(l.weight.scales.len());
    match l.weight.format.format() {
        Some(fmt) => {
            let mut offs = l.weight.offsets.clone();
            offs.sort_unstable();
            // The most common offset (the largest among equals, for a deterministic choice).
            let mut best = (0usize, 0i32);
            let mut i = 0;
            while i < offs.len() {
                let j = offs[i..].iter().take_while(|&&o| o == offs[i]).count();
                if j >= best.0 {
                    best = (j, offs[i]);
                }
                i += j;
            }
            let levels = Grid::new(fmt, best.1)
                .map(|g| g.levels())
                .unwrap_or_default();
            (
                levels,
                format!(
                    "{} at t={} ({}/{} channels)",
                    l.weight.format.label(),
                    best.1,
                    best.0,
                    groups
                ),
            )
        }
        None => {
            let mut sc: Vec<f32> = l
                .weight
                .scales
                .iter()
                .copied()
                .filter(|s| s.is_finite())
                .collect();
            sc.sort_by(f32::total_cmp);
            let s = sc.get(sc.len() / 2).copied().unwrap_or(0.0);
            let q = (1i32 << (l.weight.format.bits.clamp(2, 8) - 1)) - 1;
            let levels = (-q..=q).map(|k| k as f32 * s).collect();
            (
                levels,
                format!("{}, median scale {s:.2e}", l.weight.format.label()),
            )
        }
    }
}

fn histogram_plot(i: usize, l: &LayerPlan, w: &LayerWeights) -> Result<String> {
    const BINS: usize = 90;
    let absmax = w
        .values
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f32, |a, &v| a.max(v.abs()));
    let r = if absmax > 0.0 {
        absmax as f64 * 1.05
    } else {
        1.0
    };
    let mut counts = vec![0u64; BINS];
    for &v in w.values.iter().filter(|v| v.is_finite()) {
        let b = ((v as f64 + r) / (2.0 * r) * BINS as f64) as usize;
        counts[b.min(BINS - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.08;
    let (levels, what) = layer_levels(l);
    let caption = format!(
        "#{i} {} ({} weights, {} channels)",
        short_name(&l.node, 28),
        l.params,
        w.channels
    );
    svg(570, 350, |root| {
        let mut c = ChartBuilder::on(root)
            .caption(caption, (FONT, DESC))
            .margin(10)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d(-r..r, 0f64..top)
            .map_err(plot_err)?;
        c.configure_mesh()
            .disable_mesh()
            .x_labels(6)
            .y_labels(5)
            .x_label_formatter(&|v| fmt_tick(*v))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_desc(format!("weight; red lines: {what}"))
            .y_desc("count")
            .label_style((FONT, SMALL))
            .axis_desc_style((FONT, SMALL))
            .draw()
            .map_err(plot_err)?;
        let width = 2.0 * r / BINS as f64;
        c.draw_series(counts.iter().enumerate().map(|(b, &n)| {
            let x0 = -r + b as f64 * width;
            Rectangle::new([(x0, 0.0), (x0 + width, n as f64)], BLUE.mix(0.75).filled())
        }))
        .map_err(plot_err)?;
        let lines: Vec<_> = levels
            .iter()
            .map(|&v| v as f64)
            .filter(|v| v.abs() <= r)
            .map(|v| PathElement::new(vec![(v, 0.0), (v, top)], RED.mix(0.55).stroke_width(1)))
            .collect();
        c.draw_series(lines).map_err(plot_err)?;
        Ok(())
    })
}

/// A short tick label for a weight value.
fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn family_color(f: &str) -> RGBColor {
    match f {
        "afp" => BLUE,
        "int" => GREEN,
        "fp8-e4m3" => PURPLE,
        "fp8-e5m2" => ORANGE,
        _ => GREY,
    }
}

fn sweep_plot(v: &serde_json::Value) -> Result<String> {
    let rows = v["rows"].as_array().map(|r| r.as_slice()).unwrap_or(&[]);
    let num = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(0.0);
    let fp32 = rows.iter().find(|r| r["format"] == "fp32");
    let quant: Vec<&serde_json::Value> = rows.iter().filter(|r| r["format"] != "fp32").collect();
    // Families in order of first appearance.
    let mut families: Vec<&str> = Vec::new();
    for r in &quant {
        let f = r["format"].as_str().unwrap_or("?");
        if !families.contains(&f) {
            families.push(f);
        }
    }
    let kb = |r: &serde_json::Value| num(r, "weight_bytes") / 1000.0;
    let xmax = quant.iter().map(|r| kb(r)).fold(0.0, f64::max).max(1e-3) * 1.1;
    let tops = quant
        .iter()
        .chain(fp32.iter())
        .map(|r| num(r, "top1"))
        .collect::<Vec<_>>();
    let ymax = (tops.iter().copied().fold(0.0, f64::max) + 3.0).min(100.0);
    let ymin = (tops.iter().copied().fold(100.0, f64::min) - 5.0).max(0.0);
    svg(1080, 420, |root| {
        let mut c = ChartBuilder::on(root)
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax, ymin..ymax)
            .map_err(plot_err)?;
        c.configure_mesh()
            .x_desc("quantized weights (kB)")
            .y_desc("top-1 accuracy (%)")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, LABEL))
            .axis_desc_style((FONT, DESC))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(plot_err)?;
        if let Some(f) = fp32 {
            let y = num(f, "top1");
            c.draw_series(LineSeries::new(
                vec![(0.0, y), (xmax, y)],
                BLACK.stroke_width(1),
            ))
            .map_err(plot_err)?
            .label(format!("FP32 ({y:.2}%)"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.stroke_width(1)));
        }
        for fam in families {
            let color = family_color(fam);
            let mut pts: Vec<(f64, f64, f64)> = quant
                .iter()
                .filter(|r| r["format"] == fam)
                .map(|r| (kb(r), num(r, "top1"), num(r, "avg_weight_bits")))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            c.draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, p.1)),
                color.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label(fam.to_string())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
            c.draw_series(
                pts.iter()
                    .map(|p| Circle::new((p.0, p.1), 4, color.filled())),
            )
            .map_err(plot_err)?;
            // Width labels above the AFP points, below INT, right of the others: apart.
            let (dx, dy) = match fam {
                "afp" => (-4, -22),
                "int" => (-4, 6),
                _ => (8, -10),
            };
            c.draw_series(pts.iter().map(|p| {
                EmptyElement::at((p.0, p.1))
                    + Text::new(
                        format!("{:.0}b", p.2),
                        (dx, dy),
                        (FONT, SMALL).into_font().color(&color),
                    )
            }))
            .map_err(plot_err)?;
        }
        legend(&mut c, SeriesLabelPosition::LowerRight)?;
        Ok(())
    })
}

fn energy_plot(r: &EnergyReport) -> Result<String> {
    let rows = [
        ("FP32", &r.fp32),
        ("INT8 dynamic", &r.int8_dynamic),
        ("AFP", &r.afp),
    ];
    let uj = |pj: f64| pj / 1e6;
    let xmax = rows
        .iter()
        .map(|(_, b)| uj(b.total_pj()))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.5;
    let afp_total = r.afp.total_pj();
    svg(1080, 300, |root| {
        let mut c = ChartBuilder::on(root)
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(120)
            .build_cartesian_2d(0f64..xmax, (0..rows.len() - 1).into_segmented())
            .map_err(plot_err)?;
        c.configure_mesh()
            .disable_y_mesh()
            .y_labels(rows.len())
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => rows
                    .get(rows.len() - 1 - *i)
                    .map(|r| r.0.to_string())
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .x_label_formatter(&|v| format!("{v:.0}"))
            .light_line_style(WHITE)
            .x_desc("energy per image (uJ)")
            .label_style((FONT, LABEL))
            .axis_desc_style((FONT, DESC))
            .draw()
            .map_err(plot_err)?;
        let parts: [(&str, RGBColor, usize); 3] = [
            ("compute", BLUE, 0),
            ("weight traffic", ORANGE, 1),
            ("activation traffic", GREEN, 2),
        ];
        for (label, color, k) in parts {
            let rects: Vec<_> = rows
                .iter()
                .enumerate()
                .map(|(i, (_, b))| {
                    let v = [uj(b.compute_pj()), uj(b.weight_pj()), uj(b.act_pj())];
                    let x0: f64 = v[..k].iter().sum();
                    // The first row at the top.
                    let y = rows.len() - 1 - i;
                    let mut rect = Rectangle::new(
                        [
                            (x0, SegmentValue::Exact(y)),
                            (x0 + v[k], SegmentValue::Exact(y + 1)),
                        ],
                        color.filled(),
                    );
                    rect.set_margin(8, 8, 0, 0);
                    rect
                })
                .collect();
            c.draw_series(rects)
                .map_err(plot_err)?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                });
        }
        c.draw_series(rows.iter().enumerate().map(|(i, (_, b))| {
            let y = rows.len() - 1 - i;
            Text::new(
                format!(
                    "  {:.2} uJ ({:.1}x AFP)",
                    uj(b.total_pj()),
                    b.total_pj() / afp_total.max(1e-30)
                ),
                (uj(b.total_pj()), SegmentValue::CenterOf(y)),
                (FONT, SMALL).into_font(),
            )
        }))
        .map_err(plot_err)?;
        legend(&mut c, SeriesLabelPosition::LowerRight)?;
        Ok(())
    })
}

fn energy_table(h: &mut String, r: &EnergyReport) {
    *h += "<table>\n<tr><th class=\"l\">uJ per image</th><th>compute</th><th>weight traffic</th>\
           <th>activation traffic</th><th>total</th><th>vs AFP</th></tr>\n";
    let afp = r.afp.total_pj();
    for (name, b) in [
        ("FP32", &r.fp32),
        ("INT8 dynamic", &r.int8_dynamic),
        ("AFP", &r.afp),
    ] {
        let _ = writeln!(
            h,
            "<tr><td class=\"l\">{name}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td>\
             <td>{:.3}</td><td>{:.2}x</td></tr>",
            b.compute_pj() / 1e6,
            b.weight_pj() / 1e6,
            b.act_pj() / 1e6,
            b.total_pj() / 1e6,
            b.total_pj() / afp.max(1e-30)
        );
    }
    let _ = writeln!(
        h,
        "</table>\n<p>{:.2} M multiply-accumulates per image.</p>",
        r.macs as f64 / 1e6
    );
}

fn layer_table(h: &mut String, layers: &[LayerPlan], r: &EnergyReport) {
    *h += "<div class=\"wide\"><table class=\"layers\">\n<tr><th>#</th><th class=\"l\">layer</th><th class=\"l\">op</th>\
           <th>weight shape</th><th>params</th><th>format</th><th>bits</th><th>E</th><th>M</th>\
           <th>offsets</th><th>SQNR dB</th><th>input</th><th>MACs</th><th>AFP uJ</th>\
           <th>FP32 uJ</th></tr>\n";
    for (i, l) in layers.iter().enumerate() {
        let (e, m) = match l.weight.format.name {
            FormatName::Afp { e, m, .. } => (e.to_string(), m.to_string()),
            FormatName::Int { .. } => ("-".into(), "-".into()),
        };
        let cells = inspect::LayerCells::of(l);
        let le = r.layers.iter().find(|x| x.node == l.node);
        let shape: Vec<String> = l.weight_shape.iter().map(|d| d.to_string()).collect();
        let _ = writeln!(
            h,
            "<tr><td>{i}</td><td class=\"l\"><code title=\"{}\">{}</code></td><td class=\"l\">{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{e}</td><td>{m}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&l.node),
            esc(&short_name(&l.node, 34)),
            esc(&l.op),
            shape.join("x"),
            l.params,
            l.weight.format.label(),
            l.weight.format.bits,
            cells.offsets,
            cells.sqnr,
            cells.input.unwrap_or("FP32".into()),
            le.map(|x| x.dims.macs.to_string()).unwrap_or_default(),
            le.map(|x| format!("{:.3}", x.afp.total_pj() / 1e6))
                .unwrap_or_default(),
            le.map(|x| format!("{:.3}", x.fp32.total_pj() / 1e6))
                .unwrap_or_default(),
        );
    }
    *h += "</table></div>\n";
}
