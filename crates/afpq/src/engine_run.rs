//! Running an image classifier on batches of any size: one engine session per batch size.

use afp_engine::{Model, Session};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;

/// How a `.afp` model is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// The packed engine when every layer has a packed kernel, else simulated (with a note).
    Auto,
    /// Kernels on the packed codes (no de-quantized weight tensors): AFP integer kernels, or
    /// where the integers fit no container (or the plan has no activation formats) codes
    /// decoded through a table into f32 multiply-adds.
    Packed,
    /// f32 kernels on weights decoded from their codes, inputs rounded to their grids.
    Simulated,
}

/// Hands the heap's free pages back to the operating system. glibc keeps freed memory for
/// reuse; without this, what building a session freed (the graph's transients, and the codes
/// the packed layers replace: one byte per weight, 25 MB for ResNet-50) stays resident under
/// the activation buffers a run touches next, and counts in peak memory.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns glibc's own free pages to the kernel, under its
    // arena locks; it has no preconditions and leaves every live allocation as it is.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub struct Classifier {
    pub model: Model,
    /// Applied to every lowered graph: the quantized model, simulated or packed.
    pub plan: Option<afp_quant::QuantizedModel>,
    pub engine: Engine,
    /// Packed layers, built with the first session and shared by all batch sizes.
    packed: Option<std::sync::Arc<afp_quant::packed::PackedModel>>,
    /// Quiet: no note when `Auto` falls back to the simulated engine.
    pub quiet: bool,
    pub threads: usize,
    sessions: HashMap<usize, Session>,
    /// C, H, W of the single input.
    pub input_chw: [usize; 3],
}

impl Classifier {
    pub fn new(model: Model, threads: usize) -> Result<Classifier> {
        let inputs = model.input_names();
        if inputs.len() != 1 {
            bail!(
                "the model has {} inputs ({inputs:?}); an image classifier has one",
                inputs.len()
            );
        }
        let shape = model.input_shape(&inputs[0], 1)?;
        if shape.len() != 4 {
            bail!(
                "input {:?} has shape {shape:?}; an image batch N x C x H x W is expected",
                inputs[0]
            );
        }
        Ok(Classifier {
            model,
            plan: None,
            engine: Engine::Simulated,
            packed: None,
            quiet: false,
            threads,
            sessions: HashMap::new(),
            input_chw: [shape[1], shape[2], shape[3]],
        })
    }

    /// Fails unless images preprocessed to `chw` fit the model's input.
    pub fn check_input(&self, chw: [usize; 3]) -> Result<()> {
        if chw != self.input_chw {
            bail!(
                "the preprocessing makes {}x{}x{} images but the model expects {}x{}x{} (wrong card or preset for this model?)",
                chw[0], chw[1], chw[2], self.input_chw[0], self.input_chw[1], self.input_chw[2]
            );
        }
        Ok(())
    }

    pub fn session(&mut self, batch: usize) -> Result<&mut Session> {
        if !self.sessions.contains_key(&batch) {
            // A plan made without BatchNorm folding applies to a graph lowered the same way.
            let fold_batchnorm = self.plan.as_ref().is_none_or(|q| q.plan.fold_bn());
            let passes = afp_engine::passes::PassOptions { fold_batchnorm };
            let mut g = self
                .model
                .lower_with(batch, passes)
                .with_context(|| format!("preparing the model for batch {batch}"))?;
            if let Some(p) = &self.plan {
                if self.engine != Engine::Simulated && self.packed.is_none() {
                    match afp_quant::packed::pack(&g, p) {
                        Ok(pm) => self.packed = Some(std::sync::Arc::new(pm)),
                        Err(e) if self.engine == Engine::Packed => {
                            bail!("the packed engine cannot run this model: {e}")
                        }
                        Err(e) => {
                            if !self.quiet {
                                eprintln!("note: simulated engine ({e})");
                            }
                            self.engine = Engine::Simulated;
                        }
                    }
                }
                match &self.packed {
                    Some(pm) if self.engine != Engine::Simulated => {
                        afp_quant::packed::apply_packed(&mut g, pm)
                            .map_err(anyhow::Error::msg)
                            .context("applying the packed layers")?;
                        // Every later session reuses the packed layers: the unpacked codes
                        // (one byte per weight) are not needed any more.
                        // (Their memory goes back to the OS with the trim below.)
                        if let Some(q) = self.plan.as_mut() {
                            q.codes = Vec::new();
                        }
                    }
                    _ => afp_quant::apply(&mut g, p)
                        .map_err(anyhow::Error::msg)
                        .context("applying the quantization plan")?,
                }
            }
            // Inference only: residual Adds into the convolution epilogues, then the encoding
            // of each integer layer's input into its producer's epilogue.
            afp_engine::passes::fuse_residual_add(&mut g);
            afp_engine::passes::fuse_quad_handover(&mut g);
            afp_engine::passes::fuse_codes_too(&mut g);
            afp_engine::exec::check_runtime_types(&g)?;
            let s = Session::new(g, self.threads)?;
            self.sessions.insert(batch, s);
            release_free_heap();
        }
        Ok(self.sessions.get_mut(&batch).expect("inserted above"))
    }

    /// Evaluates the images `indices` of `ds`, with a progress bar labelled `what`.
    pub fn evaluate(
        &mut self,
        ds: &afp_eval::Dataset,
        indices: &[usize],
        src: &crate::common::DataSource,
        batch: usize,
        what: &str,
        quiet: bool,
    ) -> Result<afp_eval::Evaluation> {
        let pb = crate::common::progress(indices.len() as u64, what, quiet);
        let ev = afp_eval::evaluate(
            ds,
            indices,
            &src.preprocess,
            batch,
            src.label_offset,
            |x, n| self.infer(x, n),
            |done| pb.set_position(done as u64),
        )?;
        pb.finish_and_clear();
        Ok(ev)
    }

    /// Scores (`n x classes`) of a batch of `n` preprocessed images.
    pub fn infer(&mut self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let s = self.session(n)?;
        Ok(s.run(&[x])?.remove(0))
    }

    /// The engine sessions actually run (after `Auto` chose), once a session exists.
    pub fn engine_used(&self) -> &'static str {
        match (&self.plan, self.engine) {
            (None, _) => "fp32",
            (Some(_), Engine::Simulated) => "simulated",
            (Some(_), _) if self.packed.is_some() => "packed",
            _ => "auto",
        }
    }

    /// The packed layers (kernel and bytes per layer), once a packed session exists.
    pub fn packed_layers(&self) -> Option<Vec<afp_quant::packed::PackedLayerInfo>> {
        self.packed.as_ref().map(|p| p.layers())
    }
}

/// Reads a `.afp` file.
pub fn read_afp(path: &std::path::Path) -> Result<afp_quant::afpfile::AfpFile> {
    afp_quant::afpfile::read(path).map_err(anyhow::Error::msg)
}

/// A classifier for a model file: an ONNX model, or a `.afp` file computed by `engine`
/// (packed kernels on the codes, or simulated: weights decoded from their codes, layer inputs
/// rounded to their formats).
pub fn open(path: &std::path::Path, threads: usize, engine: Engine) -> Result<Classifier> {
    if path.extension().is_some_and(|e| e == "afp") {
        let mut f = read_afp(path)?;
        // The quantized weights come from the codes: lower them as untouched placeholders.
        let placeholders: std::collections::HashSet<String> =
            std::mem::take(&mut f.quantized_initializers)
                .into_iter()
                .collect();
        if let Some(g) = f.model.graph.as_mut() {
            for t in &mut g.initializer {
                if placeholders.contains(t.name()) {
                    t.raw_data = Some(Vec::new());
                }
            }
        }
        let mut model = afp_engine::Model::from_proto(f.model)
            .with_context(|| format!("the model in {}", path.display()))?;
        model.placeholders = placeholders;
        let mut c = Classifier::new(model, threads)?;
        c.plan = Some(f.quantized);
        c.engine = engine;
        Ok(c)
    } else {
        Classifier::new(crate::common::load_model(path)?, threads)
    }
}

#[cfg(test)]
mod tests {
    /// Trimming the heap keeps live allocations intact: memory freed before it is given back,
    /// memory still held reads back what was written.
    #[test]
    fn releasing_the_free_heap_keeps_live_data() {
        let live: Vec<Vec<u32>> = (0..64u32).map(|i| vec![i; 4096]).collect();
        let freed: Vec<Vec<u8>> = (0..256).map(|i| vec![i as u8; 64 * 1024]).collect();
        drop(freed);
        super::release_free_heap();
        for (i, v) in live.iter().enumerate() {
            assert!(v.iter().all(|&x| x == i as u32));
        }
        let again = vec![7u8; 1 << 20];
        assert_eq!(again.iter().map(|&x| x as usize).sum::<usize>(), 7 << 20);
    }
}
