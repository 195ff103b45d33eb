//! Calibration: run the FP32 graph on a few images and keep, for the input of every layer to
//! quantize, its range, a sample of its values (activation formats) and a sample of the
//! vectors its weights multiply (patches for Conv, rows for Gemm/MatMul), for the output-error
//! objective and bias correction.

use afp_engine::ir::{Conv2d, Graph, Op, ValueId};
use afp_engine::{Result, Session};

/// Values kept per batch for the activation sample.
const SAMPLE_PER_BATCH: usize = 8192;
/// Patches (or rows) kept per image.
const PATCHES_PER_IMAGE: usize = 16;
/// Output positions per image whose input vectors enter the Hessian (spread evenly).
const HESSIAN_POSITIONS_PER_IMAGE: usize = 1024;

#[derive(Debug, Clone, Default)]
pub struct InputStats {
    pub min: f32,
    pub max: f32,
    pub sample: Vec<f32>,
    /// Per group of the layer: sampled input vectors, each of the group's reduction length.
    pub patches: Vec<Vec<f32>>,
    pub patch_len: usize,
    pub patch_count: usize,
    /// Per group, `sum x xᵀ` over the input vectors (GPTQ rounding); empty unless asked for.
    pub hessians: Vec<crate::gptq::Hessian>,
}

impl InputStats {
    fn new(groups: usize, patch_len: usize) -> InputStats {
        InputStats {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            patches: vec![Vec::new(); groups],
            patch_len,
            ..Default::default()
        }
    }

    /// Mean sampled input vector of group `g`.
    pub fn mean_patch(&self, g: usize) -> Vec<f32> {
        let mut m = vec![0f64; self.patch_len];
        for p in self.patches[g].chunks(self.patch_len) {
            for (a, &v) in m.iter_mut().zip(p) {
                *a += v as f64;
            }
        }
        let n = self.patch_count.max(1) as f64;
        m.iter().map(|&v| (v / n) as f32).collect()
    }
}

/// What the calibrator needs to know of a layer (so it need not borrow the graph).
struct LayerInfo {
    input: ValueId,
    conv: Option<Conv2d>,
    shape: Vec<usize>,
}

/// Collects statistics for the input of each node in `layers` (indices into `g.nodes`).
pub struct Calibrator {
    infos: Vec<LayerInfo>,
    stats: Vec<InputStats>,
    batches: usize,
    graph_input: ValueId,
}

impl Calibrator {
    /// `hessians`: also accumulate each layer's input Hessian (for GPTQ rounding).
    pub fn new(g: &Graph, layers: &[usize], hessians: bool) -> Calibrator {
        let stats = layers
            .iter()
            .map(|&k| {
                let n = &g.nodes[k];
                let (groups, k_len) = match &n.op {
                    Op::Conv { conv, .. } => (conv.group, conv.depth()),
                    _ => (1, *g.values[n.inputs[0]].shape.last().unwrap_or(&1)),
                };
                let mut st = InputStats::new(groups, k_len);
                if hessians {
                    st.hessians = vec![crate::gptq::Hessian::new(k_len); groups];
                }
                st
            })
            .collect();
        let infos = layers
            .iter()
            .map(|&k| {
                let n = &g.nodes[k];
                LayerInfo {
                    input: n.inputs[0],
                    conv: match &n.op {
                        Op::Conv { conv, .. } => Some(conv.clone()),
                        _ => None,
                    },
                    shape: g.values[n.inputs[0]].shape.clone(),
                }
            })
            .collect();
        Calibrator {
            infos,
            stats,
            batches: 0,
            graph_input: g.inputs[0],
        }
    }

    /// Runs one batch and updates the statistics.
    pub fn observe(&mut self, session: &mut Session, input: &[f32]) -> Result<()> {
        let batch_no = self.batches;
        self.batches += 1;
        // The graph input is nobody's output: observe it directly.
        for (info, st) in self.infos.iter().zip(self.stats.iter_mut()) {
            if info.input == self.graph_input {
                update(info, input, st, batch_no);
            }
        }
        let infos = &self.infos;
        let stats = &mut self.stats;
        session.run_observed(&[input], &mut |_, node, data| {
            for (info, st) in infos.iter().zip(stats.iter_mut()) {
                if info.input == node.output {
                    update(info, data, st, batch_no);
                }
            }
        })?;
        Ok(())
    }

    pub fn finish(self) -> Vec<InputStats> {
        self.stats
    }
}

fn update(info: &LayerInfo, data: &[f32], st: &mut InputStats, batch_no: usize) {
    for &v in data {
        st.min = st.min.min(v);
        st.max = st.max.max(v);
    }
    let step = (data.len() / SAMPLE_PER_BATCH).max(1);
    // A different phase per batch, so samples of successive batches do not line up.
    let phase = (batch_no * 7919) % step;
    st.sample
        .extend(data.iter().skip(phase).step_by(step).take(SAMPLE_PER_BATCH));
    let shape = &info.shape;
    if !st.hessians.is_empty() {
        add_to_hessians(info, data, st);
    }
    match &info.conv {
        Some(conv) => {
            let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
            let (oh, ow) = conv.out_hw(h, w);
            let cg = c / conv.group;
            for img in 0..n {
                for j in 0..PATCHES_PER_IMAGE {
                    // Deterministic, spread positions.
                    let pos = (j * 2654435761usize + (batch_no * n + img) * 40503) % (oh * ow);
                    let (y, x) = (pos / ow, pos % ow);
                    let k_len = cg * conv.kh * conv.kw;
                    for grp in 0..conv.group {
                        let out = &mut st.patches[grp];
                        let start = out.len();
                        out.resize(start + k_len, 0.0);
                        input_vector(conv, data, [c, h, w], img, grp, (y, x), &mut out[start..]);
                    }
                    st.patch_count += 1;
                }
            }
        }
        _ => {
            let k_len = st.patch_len;
            let rows = data.len() / k_len.max(1);
            let step = (rows / (PATCHES_PER_IMAGE * shape[0]).max(1)).max(1);
            for r in (0..rows).step_by(step) {
                st.patches[0].extend_from_slice(&data[r * k_len..(r + 1) * k_len]);
                st.patch_count += 1;
            }
        }
    }
}

/// Adds the input vectors of (up to [`HESSIAN_POSITIONS_PER_IMAGE`]) output positions of every
/// image of the batch to the layer's per-group Hessians.
fn add_to_hessians(info: &LayerInfo, data: &[f32], st: &mut InputStats) {
    let shape = &info.shape;
    match &info.conv {
        Some(conv) => {
            let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
            let (oh, ow) = conv.out_hw(h, w);
            let cg = c / conv.group;
            let k_len = cg * conv.kh * conv.kw;
            let npos = oh * ow;
            let take = npos.min(HESSIAN_POSITIONS_PER_IMAGE);
            let mut x = vec![0f32; take * k_len];
            for img in 0..n {
                for grp in 0..conv.group {
                    for (r, row) in x.chunks_exact_mut(k_len).enumerate() {
                        // Evenly spread positions (all of them when there are few).
                        let pos = r * npos / take;
                        input_vector(conv, data, [c, h, w], img, grp, (pos / ow, pos % ow), row);
                    }
                    st.hessians[grp].add(&x, take);
                }
            }
        }
        None => {
            let k_len = st.patch_len;
            let rows = data.len() / k_len.max(1);
            st.hessians[0].add(&data[..rows * k_len], rows);
        }
    }
}

/// The input vector (`c/group x kh x kw` values, zero padded) that group `grp` of `conv`
/// multiplies at output position `(y, x)` of image `img` of `data` (`N x C x H x W`).
fn input_vector(
    conv: &Conv2d,
    data: &[f32],
    [c, h, w]: [usize; 3],
    img: usize,
    grp: usize,
    (y, x): (usize, usize),
    out: &mut [f32],
) {
    let cg = c / conv.group;
    let mut idx = 0;
    for ci in grp * cg..(grp + 1) * cg {
        for ky in 0..conv.kh {
            let iy = (y * conv.stride[0] + ky * conv.dilation[0]) as isize - conv.pads[0] as isize;
            for kx in 0..conv.kw {
                let ix =
                    (x * conv.stride[1] + kx * conv.dilation[1]) as isize - conv.pads[1] as isize;
                out[idx] = if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                    data[((img * c + ci) * h + iy as usize) * w + ix as usize]
                } else {
                    0.0
                };
                idx += 1;
            }
        }
    }
}
