use crate::common;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// ONNX model, or quantized model (.afp).
    model: PathBuf,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8", value_parser = clap::value_parser!(u32).range(1..))]
    batch: Vec<u32>,
    /// Thread counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2", value_parser = clap::value_parser!(u32).range(1..))]
    threads: Vec<u32>,
    /// Measure for at least this many seconds per configuration (after warm-up).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Warm-up runs per configuration.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Also measure ONNX Runtime on the same model, batch and threads (../shared/tools/peer_ort.py,
    /// with the Python of AFPQ_PEER_PYTHON or ~/.cache/afpq-peer-venv).
    #[arg(long)]
    peer: bool,
    /// With --peer: measure afpq and ONNX Runtime this many times in turn and report the
    /// medians and the median of the per-round ratios (the machine's speed drifts).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Also report where the time goes: per operator type and the slowest nodes, each node's
    /// fastest and median of 7 runs (with --json: every node, under "profile")
    #[arg(long)]
    profile: bool,
    #[command(flatten)]
    out: common::OutputArgs,
    /// How a .afp model is computed: packed kernels (integer, or table lookup where the
    /// integers fit no container) where every layer has one (auto), packed only, or simulated
    /// (f32 kernels on decoded weights).
    #[arg(long, value_enum, default_value = "auto")]
    engine: crate::engine_run::Engine,
}

/// Peak resident memory of this process so far (VmHWM), where the OS reports it.
fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Run times of one session on one input, after warm-up.
#[derive(Clone, Copy)]
pub struct Timing {
    pub batch: usize,
    pub runs: usize,
    pub images_per_s: f64,
    pub median_s: f64,
}

/// Runs `s` on `x` (`batch` images) `warmup` times, then for at least `seconds` (and at least
/// 3 times), and reports images per second and the median time per run.
pub fn measure(
    s: &mut afp_engine::Session,
    x: &[f32],
    batch: usize,
    warmup: usize,
    seconds: f64,
) -> Result<Timing> {
    for _ in 0..warmup {
        s.run(&[x])?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds || times.len() < 3 {
        let t = Instant::now();
        s.run(&[x])?;
        times.push(t.elapsed().as_secs_f64());
    }
    let total: f64 = times.iter().sum();
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(Timing {
        batch,
        runs: times.len(),
        images_per_s: batch as f64 * times.len() as f64 / total,
        median_s: times[times.len() / 2],
    })
}

/// The median of a non-empty list (the upper one of an even count).
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// Deterministic standard-normal-ish input (sum of uniforms), as the peer script uses random normal data.
pub fn input(n: usize) -> Vec<f32> {
    let mut s = 0x853c49e6748fea9bu64;
    (0..n)
        .map(|_| {
            let mut acc = 0f32;
            for _ in 0..4 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                acc += (s >> 40) as f32 / (1u64 << 24) as f32;
            }
            (acc - 2.0) * 1.732
        })
        .collect()
}

fn peer_paths() -> Result<(PathBuf, PathBuf)> {
    let py = match std::env::var_os("AFPQ_PEER_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/afpq-peer-venv/bin/python"),
    };
    let script = match std::env::var_os("AFPQ_PEER_SCRIPT") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from("../shared/tools/peer_ort.py"),
    };
    if !py.is_file() || !script.is_file() {
        bail!(
            "--peer needs ONNX Runtime: run ../shared/tools/setup_peer.sh (looked for {} and {}; set AFPQ_PEER_PYTHON / AFPQ_PEER_SCRIPT)",
            py.display(),
            script.display()
        );
    }
    Ok((py, script))
}

fn run_peer(model: &Path, batch: usize, threads: usize) -> Result<serde_json::Value> {
    let (py, script) = peer_paths()?;
    let out = std::process::Command::new(&py)
        .arg(&script)
        .args(["speed", "--model"])
        .arg(model)
        .args([
            "--batch",
            &batch.to_string(),
            "--threads",
            &threads.to_string(),
            "--iters",
            "20",
        ])
        .output()
        .with_context(|| format!("running {}", py.display()))?;
    if !out.status.success() {
        bail!(
            "peer_ort.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or("");
    serde_json::from_str(last).with_context(|| format!("peer output {last:?}"))
}

pub fn run(a: &Args) -> Result<()> {
    if a.rounds > 1 && !a.peer {
        bail!("--rounds alternates afpq with ONNX Runtime: it needs --peer");
    }
    let mut rows = Vec::new();
    let pb = common::progress(
        (a.threads.len() * a.batch.len()) as u64,
        "bench",
        a.out.no_progress(),
    );
    let mut engine = "fp32";
    let mut kernels: std::collections::BTreeMap<&'static str, usize> = Default::default();
    let mut packed_bytes = None;
    let (mut handovers, mut codes_too) = (0, 0);
    // The peer runs the FP32 ONNX model: for a .afp file, the one it was quantized from.
    let mut peer_model = a.model.clone();
    for &threads in &a.threads {
        let mut clf = crate::engine_run::open(&a.model, threads as usize, a.engine)?;
        clf.quiet = a.out.quiet || a.out.json;
        if let Some(q) = &clf.plan {
            peer_model = PathBuf::from(&q.plan.model);
        }
        for &batch in &a.batch {
            let (threads, batch) = (threads as usize, batch as usize);
            let s = clf.session(batch)?;
            (handovers, codes_too) = code_handovers(s.graph());
            let n: usize = s.graph().values[s.graph().inputs[0]].numel();
            let x = input(n);
            let mut t = measure(s, &x, batch, a.warmup, a.seconds)?;
            let prof = if a.profile {
                let p = profile(s, &x)?;
                if !a.out.json {
                    pb.suspend(|| p.print());
                }
                Some(p)
            } else {
                None
            };
            // With --peer, rounds of (afpq, ONNX Runtime) in turn: (ours, peer's reply).
            let mut rounds: Vec<(Timing, serde_json::Value)> = Vec::new();
            if a.peer {
                if !peer_model.is_file() {
                    bail!(
                        "--peer: the FP32 model {} the .afp file was made from is not there",
                        peer_model.display()
                    );
                }
                for r in 0..a.rounds {
                    if r > 0 {
                        t = measure(s, &x, batch, 0, a.seconds)?;
                    }
                    let p = run_peer(&peer_model, batch, threads)?;
                    rounds.push((t, p));
                }
            }
            engine = clf.engine_used();
            if let Some(layers) = clf.packed_layers() {
                kernels.clear();
                for l in &layers {
                    *kernels.entry(l.kernel).or_default() += 1;
                }
                packed_bytes = Some(layers.iter().map(|l| l.weight_bytes).sum::<usize>());
            }
            let peer_ips = |p: &serde_json::Value| p["images_per_s"].as_f64().unwrap_or(f64::NAN);
            let ours: Vec<f64> = rounds.iter().map(|r| r.0.images_per_s).collect();
            let ips = if rounds.is_empty() {
                t.images_per_s
            } else {
                median(&ours)
            };
            let median_ms = t.median_s * 1e3;
            let mut row = json!({
                "batch": batch, "threads": threads, "runs": t.runs,
                "images_per_s": ips, "ms_per_batch_median": median_ms,
            });
            if let Some(p) = &prof {
                row["profile"] = p.to_json();
            }
            let mut line = format!("batch {batch:>3}  threads {threads:>2}  {ips:>9.1} images/s  median {median_ms:>8.2} ms/batch");
            if let Some((_, p0)) = rounds.first() {
                let theirs: Vec<f64> = rounds.iter().map(|r| peer_ips(&r.1)).collect();
                let ratios: Vec<f64> = ours.iter().zip(&theirs).map(|(o, p)| o / p).collect();
                let (pips, ratio) = (median(&theirs), median(&ratios));
                row["peer"] = p0.clone();
                row["peer"]["images_per_s"] = json!(pips);
                row["ratio_vs_peer"] = json!(ratio);
                if rounds.len() > 1 {
                    row["rounds"] = json!(ours
                        .iter()
                        .zip(&theirs)
                        .map(|(o, p)| json!({"images_per_s": o, "peer_images_per_s": p}))
                        .collect::<Vec<_>>());
                }
                let name = p0["peer"].as_str().unwrap_or("peer");
                line += &format!("   | {name}: {pips:.1} images/s  ratio {ratio:.2}x");
                if rounds.len() > 1 {
                    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
                    line += &format!(
                        " (medians of {} rounds; ratios {})",
                        rounds.len(),
                        each.join(", ")
                    );
                }
            }
            if !a.out.json {
                pb.suspend(|| println!("{line}"));
            }
            pb.inc(1);
            rows.push(row);
        }
    }
    pb.finish_and_clear();
    let peak = peak_rss_bytes();
    if a.out.json {
        println!(
            "{}",
            json!({
                "model": a.model.display().to_string(), "engine": engine,
                "kernels": kernels, "packed_weight_bytes": packed_bytes,
                "peak_rss_bytes": peak, "code_handovers": handovers, "codes_too": codes_too,
                "results": rows,
            })
        );
    } else {
        let ks: Vec<String> = kernels.iter().map(|(k, n)| format!("{n} x {k}")).collect();
        println!(
            "engine {engine}{}{}{}",
            if ks.is_empty() {
                String::new()
            } else {
                format!(" (layers: {})", ks.join(", "))
            },
            match (handovers, codes_too) {
                (0, 0) => String::new(),
                (h, 0) =>
                    format!("; {h} layers store their output as the next layer's input codes"),
                (h, t) => format!(
                    "; {h} layers store their output as the next layer's input codes, {t} as \
                     f32 and as their readers' codes"
                ),
            },
            peak.map_or(String::new(), |p| format!(
                "; peak memory (RSS) {:.1} MB",
                p as f64 / 1e6
            ))
        );
    }
    Ok(())
}

/// Integer layers that store their output as the next layer's u8 input codes
/// (`afp_engine::passes::fuse_quad_handover`), and those that store it as f32 and as their
/// code readers' codes (`fuse_codes_too`).
fn code_handovers(g: &afp_engine::Graph) -> (usize, usize) {
    use afp_engine::Op;
    let (mut quads, mut too) = (0, 0);
    for n in &g.nodes {
        if let Op::QConv(q) | Op::QConvAdd { q, .. } = &n.op {
            quads += q.writes_quads() as usize;
            too += q.writes_codes_too() as usize;
        }
    }
    (quads, too)
}

/// One node's times over the profile runs.
struct NodeTime {
    name: String,
    op: String,
    macs: u64,
    fastest: f64,
    median: f64,
}

/// Per-node times of `PROFILE_RUNS` runs (seconds).
struct Profile {
    runs: usize,
    whole_fastest: f64,
    whole_median: f64,
    nodes: Vec<NodeTime>,
}

/// Times each node (the time between successive node completions) over
/// `PROFILE_RUNS` runs and keeps, per node, its fastest run (what the kernel can do)
/// and its median run (what a run usually gets); the gap between the two sums is time
/// lost to the machine's moments, not to any one kernel.
fn profile(s: &mut afp_engine::Session, x: &[f32]) -> Result<Profile> {
    const PROFILE_RUNS: usize = 7;
    // (name, op type, one time per run)
    let mut per_node: Vec<(String, String, Vec<f64>)> = Vec::new();
    let mut whole = Vec::with_capacity(PROFILE_RUNS);
    for run in 0..PROFILE_RUNS {
        let start = Instant::now();
        let mut last = start;
        let mut k = 0;
        s.run_observed(&[x], &mut |_, n, _| {
            let now = Instant::now();
            let t = (now - last).as_secs_f64();
            if run == 0 {
                per_node.push((n.name.clone(), n.op.name().to_string(), vec![t]));
            } else {
                per_node[k].2.push(t);
            }
            k += 1;
            last = now;
        })?;
        whole.push(start.elapsed().as_secs_f64());
    }
    let macs: std::collections::HashMap<&str, u64> = s
        .graph()
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), s.graph().node_macs(n)))
        .collect();
    let fastest = |ts: &[f64]| ts.iter().copied().fold(f64::INFINITY, f64::min);
    let nodes = per_node
        .into_iter()
        .map(|(name, op, ts)| NodeTime {
            macs: macs.get(name.as_str()).copied().unwrap_or(0),
            fastest: fastest(&ts),
            median: median(&ts),
            name,
            op,
        })
        .collect();
    Ok(Profile {
        runs: PROFILE_RUNS,
        whole_fastest: fastest(&whole),
        whole_median: median(&whole),
        nodes,
    })
}

impl Profile {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "runs": self.runs,
            "whole_run_fastest_ms": self.whole_fastest * 1e3,
            "whole_run_median_ms": self.whole_median * 1e3,
            "nodes": self.nodes.iter().map(|n| json!({
                "name": n.name, "op": n.op, "macs": n.macs,
                "fastest_ms": n.fastest * 1e3, "median_ms": n.median * 1e3,
            })).collect::<Vec<_>>(),
        })
    }

    fn print(&self) {
        let total_min: f64 = self.nodes.iter().map(|n| n.fastest).sum();
        let total_med: f64 = self.nodes.iter().map(|n| n.median).sum();
        let mut by_op: std::collections::BTreeMap<&str, (f64, f64, usize)> = Default::default();
        for n in &self.nodes {
            let e = by_op.entry(n.op.as_str()).or_default();
            e.0 += n.fastest;
            e.1 += n.median;
            e.2 += 1;
        }
        let mut ops: Vec<_> = by_op.into_iter().collect();
        ops.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
        println!(
            "  profile over {} runs: whole run fastest {:.2} ms, median {:.2} ms; \
             per node fastest summed {:.2} ms, medians summed {:.2} ms",
            self.runs,
            self.whole_fastest * 1e3,
            self.whole_median * 1e3,
            total_min * 1e3,
            total_med * 1e3
        );
        println!(
            "    {:<20} {:>10} {:>12} {:>12}",
            "op", "nodes", "fastest", "median"
        );
        for (op, (tmin, tmed, n)) in ops {
            println!(
                "    {op:<20} {n:>4} nodes {:>9.2} ms {:>9.2} ms {:>5.1}%",
                tmin * 1e3,
                tmed * 1e3,
                100.0 * tmin / total_min
            );
        }
        let mut slowest: Vec<&NodeTime> = self.nodes.iter().collect();
        slowest.sort_by(|a, b| b.fastest.total_cmp(&a.fastest));
        for n in slowest.iter().take(12) {
            let rate = match n.macs {
                0 => String::new(),
                m => format!("{:>6.1} GMAC/s", m as f64 / n.fastest / 1e9),
            };
            println!(
                "    slowest: {:<10} {:>8.2} ms (median {:>8.2} ms) {rate:>13}  {}",
                n.op,
                n.fastest * 1e3,
                n.median * 1e3,
                n.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_is_the_middle_value() {
        assert_eq!(super::median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&[4.0, 1.0, 3.0, 2.0]), 3.0);
        assert_eq!(super::median(&[5.0]), 5.0);
    }
}
