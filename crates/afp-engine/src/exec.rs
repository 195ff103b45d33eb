//! The executor: a schedule planned once per graph, with intermediate buffers reused as soon
//! as their last reader has run, and kernels running on a dedicated rayon pool.

use crate::error::{EngineError, Result};
use crate::ir::{Graph, Node, Op, ValueId};
use crate::ops;
use afp_kernels::GemmBias;

/// A graph ready to run, with its buffers.
pub struct Session {
    graph: Graph,
    /// Shared so a run can hold the pool while it borrows the session mutably.
    pool: std::sync::Arc<rayon::ThreadPool>,
    /// Buffer of each slot.
    slots: Vec<Vec<f32>>,
    /// Slot of each runtime value (inputs and node outputs).
    slot_of: Vec<Option<usize>>,
    /// f32 elements of each value's buffer (see [`buffer_lens`]).
    lens: Vec<usize>,
    /// Where a reader's codes start in the buffer of a value also stored as codes
    /// ([`afp_kernels::QConv::writing_codes_too`]): after its f32 elements.
    codes_at: Vec<Option<usize>>,
    scratch: Vec<f32>,
    qscratch: afp_kernels::QScratch,
    /// Per node: a 3x3 convolution's weights transformed for Winograd's F(2x2, 3x3), made
    /// once (see [`afp_kernels::WinogradWeights`]).
    winograd: Vec<Option<afp_kernels::WinogradWeights>>,
}

/// The f32 elements each value's buffer holds: its element count, or for the output of a
/// layer that stores it as the next layer's u8 channel quads, the quarter or so they take,
/// or for one stored as f32 and as a reader's codes, both; and where those codes start.
fn buffer_lens(g: &Graph) -> (Vec<usize>, Vec<Option<usize>>) {
    let mut lens: Vec<usize> = g.values.iter().map(|v| v.numel()).collect();
    let mut codes_at = vec![None; g.values.len()];
    for n in &g.nodes {
        if let Op::QConv(q) | Op::QConvAdd { q, .. } = &n.op {
            let Some(len) = afp_kernels::quads_f32_len(&g.values[n.output].shape) else {
                continue;
            };
            if q.writes_quads() {
                lens[n.output] = len.min(lens[n.output]);
            } else if q.writes_codes_too() {
                codes_at[n.output] = Some(lens[n.output]);
                lens[n.output] += len;
            }
        }
    }
    (lens, codes_at)
}

/// Assigns buffers: a value's slot is free again after its last reader.
fn plan(g: &Graph, lens: &[usize]) -> (usize, Vec<Option<usize>>, Vec<usize>) {
    let mut last_use = vec![0usize; g.values.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for &v in &n.inputs {
            last_use[v] = i;
        }
    }
    let mut slot_of = vec![None; g.values.len()];
    let mut sizes: Vec<usize> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let take = |need: usize, sizes: &mut Vec<usize>, free: &mut Vec<usize>| -> usize {
        // Smallest free slot that fits, else the largest free one (grown), else a new one.
        let fit = free
            .iter()
            .enumerate()
            .filter(|(_, &s)| sizes[s] >= need)
            .min_by_key(|(_, &s)| sizes[s])
            .map(|(i, _)| i);
        let pick = fit.or_else(|| {
            free.iter()
                .enumerate()
                .max_by_key(|(_, &s)| sizes[s])
                .map(|(i, _)| i)
        });
        match pick {
            Some(i) => {
                let s = free.swap_remove(i);
                sizes[s] = sizes[s].max(need);
                s
            }
            None => {
                sizes.push(need);
                sizes.len() - 1
            }
        }
    };
    for &i in &g.inputs {
        slot_of[i] = Some(take(lens[i], &mut sizes, &mut free));
    }
    for (k, n) in g.nodes.iter().enumerate() {
        slot_of[n.output] = Some(take(lens[n.output], &mut sizes, &mut free));
        let mut seen = Vec::new();
        for &v in &n.inputs {
            if last_use[v] == k && !g.outputs.contains(&v) && !seen.contains(&v) {
                seen.push(v);
                if let Some(s) = slot_of[v] {
                    free.push(s);
                }
            }
        }
    }
    (sizes.len(), slot_of, sizes)
}

/// An FP32 convolution node's inputs: `(weight, bias, residual)`. Conv takes x, weight and
/// an optional bias; Conv+Add x, the residual, weight and an optional bias.
fn conv_inputs(n: &Node) -> Option<(ValueId, Option<ValueId>, Option<ValueId>)> {
    match n.op {
        Op::Conv { .. } => Some((*n.inputs.get(1)?, n.inputs.get(2).copied(), None)),
        Op::ConvAdd { .. } => Some((
            *n.inputs.get(2)?,
            n.inputs.get(3).copied(),
            Some(*n.inputs.get(1)?),
        )),
        _ => None,
    }
}

/// Node `k`'s weights transformed for Winograd's F(2x2, 3x3) when it is a convolution that
/// takes it, with constant f32 weights.
fn winograd_weights(g: &Graph, k: usize) -> Option<afp_kernels::WinogradWeights> {
    let n = &g.nodes[k];
    let (Op::Conv { conv, .. } | Op::ConvAdd { conv, .. }) = &n.op else {
        return None;
    };
    let (w, _, _) = conv_inputs(n)?;
    let xs = &g.values[n.inputs[0]].shape;
    let data = g.values[w].konst.as_ref()?.as_f32()?;
    conv.winograd_weights(*xs.get(2)?, *xs.get(3)?, data)
}

impl Session {
    pub fn new(graph: Graph, threads: usize) -> Result<Session> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build()
            .map_err(|e| EngineError::Graph(format!("cannot start {threads} threads: {e}")))?;
        let (lens, codes_at) = buffer_lens(&graph);
        let (_, slot_of, sizes) = plan(&graph, &lens);
        let slots = sizes.iter().map(|&s| vec![0f32; s]).collect();
        let winograd = (0..graph.nodes.len())
            .map(|k| winograd_weights(&graph, k))
            .collect();
        Ok(Session {
            winograd,
            graph,
            pool: std::sync::Arc::new(pool),
            slots,
            slot_of,
            lens,
            codes_at,
            scratch: Vec::new(),
            qscratch: afp_kernels::QScratch::default(),
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Replaces the data of the f32 constant `id` by `data` (same length) and returns the old
    /// data: lets a caller perturb one weight and restore it without copying the graph
    /// (sensitivity measurement). Buffers do not depend on constant values.
    pub fn swap_const(&mut self, id: ValueId, data: Vec<f32>) -> Result<Vec<f32>> {
        let v = self
            .graph
            .values
            .get_mut(id)
            .ok_or_else(|| EngineError::Graph(format!("no value {id}")))?;
        match v.konst.as_mut().map(|c| &mut c.data) {
            Some(crate::tensor::ConstData::F32(old)) if old.len() == data.len() => {
                let old = std::mem::replace(old, data);
                for k in 0..self.graph.nodes.len() {
                    if self.graph.nodes[k].inputs.contains(&id) {
                        self.winograd[k] = winograd_weights(&self.graph, k);
                    }
                }
                Ok(old)
            }
            _ => Err(EngineError::Graph(format!(
                "value {:?} is not an f32 constant of {} elements",
                v.name,
                data.len()
            ))),
        }
    }

    /// Bytes held by intermediate buffers.
    pub fn buffer_bytes(&self) -> usize {
        self.slots.iter().map(|s| s.capacity() * 4).sum()
    }

    /// Runs the graph on one f32 tensor per graph input; returns one tensor per graph output.
    pub fn run(&mut self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
        self.run_observed(inputs, &mut |_, _, _| {})
    }

    /// As [`Session::run`], calling `observe(node index, node, output data)` after every node
    /// (the data of an output stored as the next layer's channel quads is their bytes).
    pub fn run_observed(
        &mut self,
        inputs: &[&[f32]],
        observe: &mut (dyn FnMut(usize, &Node, &[f32]) + Send),
    ) -> Result<Vec<Vec<f32>>> {
        self.set_inputs(inputs)?;
        self.run_nodes_observed(0..self.graph.nodes.len(), observe)?;
        Ok(self.outputs())
    }

    /// Copies one f32 tensor per graph input into its buffer (the first step of a run).
    pub fn set_inputs(&mut self, inputs: &[&[f32]]) -> Result<()> {
        if inputs.len() != self.graph.inputs.len() {
            return Err(EngineError::Graph(format!(
                "{} inputs given, the model has {}",
                inputs.len(),
                self.graph.inputs.len()
            )));
        }
        for (k, &id) in self.graph.inputs.clone().iter().enumerate() {
            let v = &self.graph.values[id];
            if inputs[k].len() != v.numel() {
                return Err(EngineError::Input {
                    name: v.name.clone(),
                    reason: format!(
                        "{} values given, shape {:?} needs {}",
                        inputs[k].len(),
                        v.shape,
                        v.numel()
                    ),
                });
            }
            let s = self.slot_of[id].expect("inputs have slots");
            self.slots[s][..inputs[k].len()].copy_from_slice(inputs[k]);
        }
        Ok(())
    }

    /// Runs the nodes `nodes` in schedule order. The inputs and the nodes before them must
    /// have run, in this session or in the one [`Session::copy_buffers_from`] copied: a run
    /// can stop after any node and go on from there.
    pub fn run_nodes(&mut self, nodes: std::ops::Range<usize>) -> Result<()> {
        self.run_nodes_observed(nodes, &mut |_, _, _| {})
    }

    fn run_nodes_observed(
        &mut self,
        nodes: std::ops::Range<usize>,
        observe: &mut (dyn FnMut(usize, &Node, &[f32]) + Send),
    ) -> Result<()> {
        if nodes.end > self.graph.nodes.len() {
            return Err(EngineError::Graph(format!(
                "nodes up to {} asked, the graph has {}",
                nodes.end,
                self.graph.nodes.len()
            )));
        }
        let pool = self.pool.clone();
        let helpers = pool.current_num_threads().saturating_sub(1);
        pool.install(|| -> Result<()> {
            let run = || -> Result<()> {
                for k in nodes {
                    self.run_node(k)?;
                    let n = &self.graph.nodes[k];
                    observe(k, n, self.data(n.output));
                }
                Ok(())
            };
            if helpers == 0 {
                return run();
            }
            keep_helpers_awake(helpers, run)
        })
    }

    /// The graph outputs, after a run's last node.
    pub fn outputs(&self) -> Vec<Vec<f32>> {
        self.graph
            .outputs
            .iter()
            .map(|&o| {
                let s = self.slot_of[o].expect("outputs have slots");
                self.slots[s][..self.graph.values[o].numel()].to_vec()
            })
            .collect()
    }

    /// Makes this session's buffers those of `other`, a session over a graph with the same
    /// nodes and shapes (so the same buffer plan), to go on from where `other` stopped. The
    /// graphs' constants may differ.
    pub fn copy_buffers_from(&mut self, other: &Session) -> Result<()> {
        if self.slot_of != other.slot_of
            || self.lens != other.lens
            || self.codes_at != other.codes_at
        {
            return Err(EngineError::Graph(
                "the two sessions' graphs do not have the same buffers".into(),
            ));
        }
        for (mine, theirs) in self.slots.iter_mut().zip(&other.slots) {
            mine.clone_from(theirs);
        }
        Ok(())
    }

    fn data(&self, v: ValueId) -> &[f32] {
        let val = &self.graph.values[v];
        match &val.konst {
            Some(c) => c
                .as_f32()
                .expect("runtime ops read f32 constants (checked at build)"),
            // A value also stored as codes: its f32 elements.
            None => &self.buffer(v)[..self.codes_at[v].unwrap_or(self.lens[v])],
        }
    }

    /// The buffer of the runtime value `v`, as long as `buffer_lens` made it.
    fn buffer(&self, v: ValueId) -> &[f32] {
        &self.slots[self.slot_of[v].expect("runtime values have slots")][..self.lens[v]]
    }

    /// The input of a layer `q` reading `v`: the codes after `v`'s values when `q` reads
    /// codes and `v` holds them after its values, else `v`'s data.
    fn layer_input(&self, q: &afp_kernels::QConv, v: ValueId) -> &[f32] {
        match (q.reads_quads(), self.codes_at[v]) {
            (true, Some(at)) => &self.buffer(v)[at..],
            _ => self.data(v),
        }
    }

    fn run_node(&mut self, k: usize) -> Result<()> {
        let node = &self.graph.nodes[k];
        let s_out = self.slot_of[node.output].expect("outputs have slots");
        let mut out = std::mem::take(&mut self.slots[s_out]);
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut qscratch = std::mem::take(&mut self.qscratch);
        let n_out = self.lens[node.output];
        let res = self.compute(k, node, &mut out[..n_out], &mut scratch, &mut qscratch);
        self.slots[s_out] = out;
        self.scratch = scratch;
        self.qscratch = qscratch;
        res
    }

    fn compute(
        &self,
        k: usize,
        node: &Node,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
        qscratch: &mut afp_kernels::QScratch,
    ) -> Result<()> {
        let g = &self.graph;
        let shape = |v: ValueId| g.values[v].shape.as_slice();
        let x = node.inputs[0];
        let xs = shape(x);
        let osh = shape(node.output);
        match &node.op {
            Op::Conv { conv, act } | Op::ConvAdd { conv, act } => {
                let (w, bias, residual) = conv_inputs(node).ok_or_else(|| {
                    EngineError::Graph(format!("{}: convolution inputs missing", node.name))
                })?;
                let bias = bias.map(|b| self.data(b));
                let residual = residual.map(|r| self.data(r));
                let (n, h, wd, input) = (xs[0], xs[2], xs[3], self.data(x));
                match &self.winograd[k] {
                    Some(ww) => conv
                        .run_add_winograd(n, h, wd, input, ww, bias, residual, *act, out, scratch),
                    None => conv.run_add(
                        n,
                        h,
                        wd,
                        input,
                        self.data(w),
                        bias,
                        residual,
                        *act,
                        out,
                        scratch,
                    ),
                }
            }
            Op::Gemm {
                trans_a,
                trans_b,
                alpha,
                beta,
                act,
            } => {
                let (m, n) = (osh[0], osh[1]);
                let k = if *trans_a { xs[0] } else { xs[1] };
                let bias = node.inputs.get(2).map(|&c| {
                    let d = self.data(c);
                    let cs = shape(c);
                    if d.len() == 1 {
                        GemmBias::Scalar(d[0])
                    } else if d.len() == m * n && cs.len() == 2 && cs[0] == m {
                        GemmBias::Full(d)
                    } else if cs.len() == 2 && cs[1] == 1 {
                        GemmBias::Col(d)
                    } else {
                        GemmBias::Row(d)
                    }
                });
                afp_kernels::gemm(
                    m,
                    n,
                    k,
                    self.data(x),
                    *trans_a,
                    self.data(node.inputs[1]),
                    *trans_b,
                    *alpha,
                    *beta,
                    bias,
                    *act,
                    out,
                );
            }
            Op::MatMul { act } => {
                let bsh = shape(node.inputs[1]);
                let (m, kk, n) = (xs[xs.len() - 2], xs[xs.len() - 1], bsh[bsh.len() - 1]);
                let (a, b) = (self.data(x), self.data(node.inputs[1]));
                let batches = out.len() / (m * n).max(1);
                let b_batches = b.len() / (kk * n).max(1);
                for i in 0..batches {
                    let bi = i % b_batches.max(1);
                    afp_kernels::gemm(
                        m,
                        n,
                        kk,
                        &a[i * m * kk..(i + 1) * m * kk],
                        false,
                        &b[bi * kk * n..(bi + 1) * kk * n],
                        false,
                        1.0,
                        0.0,
                        None,
                        *act,
                        &mut out[i * m * n..(i + 1) * m * n],
                    );
                }
            }
            Op::Binary { op, act } => {
                let b = node.inputs[1];
                ops::binary(
                    *op,
                    *act,
                    self.data(x),
                    xs,
                    self.data(b),
                    shape(b),
                    out,
                    osh,
                );
            }
            Op::Sum { act } => {
                if node.inputs.iter().all(|&v| shape(v) == osh) {
                    let parts: Vec<&[f32]> = node.inputs.iter().map(|&v| self.data(v)).collect();
                    ops::sum_same_shape(&parts, *act, out);
                } else {
                    let first = node.inputs[0];
                    ops::binary(
                        crate::ir::BinOp::Add,
                        afp_kernels::Activation::None,
                        self.data(first),
                        shape(first),
                        &[0.0],
                        &[],
                        out,
                        osh,
                    );
                    let mut acc = vec![0f32; out.len()];
                    for (i, &v) in node.inputs.iter().enumerate().skip(1) {
                        let a = if i + 1 == node.inputs.len() {
                            *act
                        } else {
                            afp_kernels::Activation::None
                        };
                        acc.copy_from_slice(out);
                        ops::binary(
                            crate::ir::BinOp::Add,
                            a,
                            &acc,
                            osh,
                            self.data(v),
                            shape(v),
                            out,
                            osh,
                        );
                    }
                    if node.inputs.len() == 1 {
                        act.apply_slice(out);
                    }
                }
            }
            Op::Unary(act) => {
                out.copy_from_slice(self.data(x));
                act.apply_slice(out);
            }
            Op::ChannelAffine { act } => {
                ops::channel_affine(
                    *act,
                    self.data(x),
                    xs,
                    self.data(node.inputs[1]),
                    self.data(node.inputs[2]),
                    out,
                );
            }
            Op::MaxPool(p) => p.max(xs[0] * xs[1], xs[2], xs[3], self.data(x), out),
            Op::AveragePool {
                pool,
                count_include_pad,
            } => pool.avg(
                xs[0] * xs[1],
                xs[2],
                xs[3],
                self.data(x),
                *count_include_pad,
                out,
            ),
            Op::GlobalAveragePool => afp_kernels::global_avg_pool(
                xs[0] * xs[1],
                xs[2..].iter().product(),
                self.data(x),
                out,
            ),
            Op::ReduceMean { axes, .. } => ops::reduce_mean(self.data(x), xs, axes, out),
            Op::Pad { pads, mode, value } => {
                ops::pad(self.data(x), xs, pads, *mode, *value, out, osh)
            }
            Op::Concat { axis } => {
                let parts: Vec<(&[f32], &[usize])> = node
                    .inputs
                    .iter()
                    .map(|&v| (self.data(v), shape(v)))
                    .collect();
                ops::concat(&parts, *axis, out);
            }
            Op::Copy => out.copy_from_slice(self.data(x)),
            Op::Transpose { perm } => ops::transpose(self.data(x), xs, perm, out),
            Op::Softmax { axis, coerce_2d } => {
                ops::softmax(self.data(x), xs, *axis, *coerce_2d, out)
            }
            Op::Slice { starts, steps } => ops::slice(self.data(x), xs, starts, steps, osh, out),
            Op::QConv(q) => q.run(xs[0], xs[2], xs[3], self.layer_input(q, x), out, qscratch),
            Op::QConvAdd { q, act } => q.run_add(
                xs[0],
                xs[2],
                xs[3],
                self.layer_input(q, x),
                Some(self.data(node.inputs[1])),
                *act,
                out,
                qscratch,
            ),
            Op::QGemm(q) => {
                let rows = self.data(x).len() / q.depth().max(1);
                q.run(rows, self.data(x), out, qscratch)
            }
            Op::LookupConv(q) => q.run(xs[0], xs[2], xs[3], self.data(x), out, scratch),
            Op::LookupGemm(q) => {
                let rows = self.data(x).len() / q.depth().max(1);
                q.run(rows, self.data(x), out)
            }
            Op::Quantize { grid } => {
                out.copy_from_slice(self.data(x));
                grid.quantize_slice(out).map_err(|e| {
                    crate::error::node_err(
                        &node.name,
                        "Quantize",
                        format!("input {:?}: {e}", g.values[x].name),
                    )
                })?;
            }
        }
        Ok(())
    }
}

/// Checks that every runtime op reads f32 data (integer tensors only exist at load time).
pub fn check_runtime_types(g: &Graph) -> Result<()> {
    for n in &g.nodes {
        for &v in &n.inputs {
            if let Some(c) = &g.values[v].konst {
                if !c.is_float() {
                    return Err(crate::error::node_err(&n.name, n.op.name(), format!("input {:?} is an integer tensor at run time; only float tensors are computed", g.values[v].name)));
                }
            }
        }
    }
    Ok(())
}

/// Runs `f` on this pool thread while the pool's `helpers` other threads look for work
/// without going to sleep (as ONNX Runtime's pool spins): between two parallel kernels the
/// graph thread runs alone long enough for an idle rayon worker to go to sleep, and the
/// next kernel then waits for it to wake. Measured at batch 1 on 2 threads: 1 to 2% off
/// ResNet-50 and MobileNet-v2 (docs/BENCHMARKS.md, session 14).
fn keep_helpers_awake<R: Send>(helpers: usize, f: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    /// Ends the helpers' loops however `f` ends (a panic included: the scope waits for them).
    struct Release<'a>(&'a AtomicBool);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let done = AtomicBool::new(false);
    let started = AtomicUsize::new(0);
    rayon::scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| {
                started.fetch_add(1, Ordering::AcqRel);
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        // The spinning jobs were pushed onto this thread's own queue: wait (without taking
        // jobs) until other threads have taken them all, so this thread never runs one (it
        // would spin until `f`, below it on the same stack, finished).
        while started.load(Ordering::Acquire) < helpers {
            std::hint::spin_loop();
        }
        let _release = Release(&done);
        f()
    })
}
