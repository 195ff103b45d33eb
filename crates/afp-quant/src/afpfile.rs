//! The `.afp` model file: a safetensors file holding the packed codes of every quantized
//! weight tensor with its offsets (or INT scales) and bias corrections, every other
//! initializer of the ONNX model in its own type, and in the metadata (one key, `afpq`) the
//! format version, a CRC-32 of the content, the plan (formats, granularity, zero modes,
//! activation formats and offsets), the ONNX graph without its weight data, and the model card.
//!
//! Tensor names: `onnx/<initializer>` for stored initializers; for plan layer `i`,
//! `layer/<i>/codes` (U8, codes packed LSB-first at the format's width), `layer/<i>/offsets`
//! (I16, AFP) or `layer/<i>/scales` (F32, INT), `layer/<i>/bias_correction` (F32).
//! An initializer that only feeds a quantized layer's weight is not stored: it is restored as
//! zeros of its shape, and the decoded codes replace it when the plan is applied.

use crate::plan::{Plan, QuantizedModel};
use afp_format::pack;
use afp_onnx::{DataType, GraphProto, ModelProto};
use base64::Engine as _;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// Version of the file layout; readers refuse others.
pub const FILE_VERSION: u32 = 1;
const META_KEY: &str = "afpq";

/// The single metadata entry (safetensors keeps metadata in a hash map, so one key keeps the
/// bytes deterministic). Serialized with `checksum` first: the checksum is computed over the
/// tensor data section followed by this JSON text with the 8 hex digits set to `0`.
#[derive(Serialize, Deserialize)]
struct Meta {
    /// `crc32:` and 8 hex digits.
    checksum: String,
    afp_file_version: u32,
    /// The plan, with offsets, scales and bias corrections moved to tensors.
    plan: Plan,
    /// Initializers restored from codes: name and the plan layer that holds them.
    quantized_initializers: BTreeMap<String, usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    card: Option<serde_json::Value>,
    /// The ONNX model with every initializer's data removed, deflated, base64.
    graph_onnx_deflate: String,
}

const CHECKSUM_PREFIX: &str = "{\"checksum\":\"crc32:";
const CHECKSUM_DIGITS: usize = 8;

/// What a `.afp` file holds, loaded.
#[derive(Debug, Clone)]
pub struct AfpFile {
    /// The ONNX model: stored initializers restored, quantized weights as zeros.
    pub model: ModelProto,
    pub quantized: QuantizedModel,
    pub card: Option<serde_json::Value>,
    pub sizes: FileSizes,
    /// Names of the initializers the codes replace (zeros in `model`).
    pub quantized_initializers: Vec<String>,
}

/// Where the bytes of a `.afp` file go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSizes {
    pub file_bytes: u64,
    /// Packed codes of the quantized weights.
    pub packed_weight_bytes: u64,
    /// Offsets, scales and bias corrections of the quantized layers.
    pub quantized_side_bytes: u64,
    /// Initializers stored as they are (biases, BatchNorm parameters, ...).
    pub unquantized_bytes: u64,
}

impl FileSizes {
    /// Bytes beyond the quantized weights (packed codes with their offsets or scales and bias
    /// corrections) and the stored tensors: the safetensors header, graph, plan and card, as a
    /// share of those.
    pub fn overhead(&self) -> f64 {
        let payload = self.packed_weight_bytes + self.quantized_side_bytes + self.unquantized_bytes;
        (self.file_bytes as f64 - payload as f64) / payload.max(1) as f64
    }
}

/// Maps each plan layer to the initializer that only its weight reads, if any.
fn weight_initializers(g: &GraphProto, plan: &Plan) -> BTreeMap<String, usize> {
    let uses = crate::export::use_counts(g);
    let inits: HashMap<&str, &afp_onnx::TensorProto> =
        g.initializer.iter().map(|t| (t.name(), t)).collect();
    let mut out = BTreeMap::new();
    for (li, lp) in plan.layers.iter().enumerate() {
        let node = crate::export::onnx_node(g, &lp.node).map(|k| &g.node[k]);
        let Some(w) = node.and_then(|n| n.input.get(1)) else {
            continue;
        };
        let Some(t) = inits.get(w.as_str()) else {
            continue;
        };
        let count = afp_onnx::element_count(t).unwrap_or(usize::MAX);
        if uses.get(w.as_str()) == Some(&1)
            && t.data_type == Some(DataType::Float as i32)
            && count == lp.params
        {
            out.insert(w.clone(), li);
        }
    }
    out
}

/// safetensors type of an ONNX element type stored as itself (others are stored as bytes).
fn st_dtype(dt: DataType) -> Option<Dtype> {
    use DataType::*;
    Some(match dt {
        Float => Dtype::F32,
        Double => Dtype::F64,
        Float16 => Dtype::F16,
        Bfloat16 => Dtype::BF16,
        Int8 => Dtype::I8,
        Uint8 => Dtype::U8,
        Int16 => Dtype::I16,
        Uint16 => Dtype::U16,
        Int32 => Dtype::I32,
        Uint32 => Dtype::U32,
        Int64 => Dtype::I64,
        Uint64 => Dtype::U64,
        Bool => Dtype::BOOL,
        _ => return None,
    })
}

fn le_bytes<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

/// One tensor to write: name, type, shape, bytes.
type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

/// Serializes a quantized model to the bytes of a `.afp` file (deterministic).
pub fn to_bytes(
    model: &ModelProto,
    q: &QuantizedModel,
    card: Option<&serde_json::Value>,
) -> Result<(Vec<u8>, FileSizes), String> {
    let g = model.graph.as_ref().ok_or("the ONNX model has no graph")?;
    if q.codes.len() != q.plan.layers.len() {
        return Err(format!(
            "{} code tensors for {} layers",
            q.codes.len(),
            q.plan.layers.len()
        ));
    }
    let quantized = weight_initializers(g, &q.plan);
    let mut entries: Vec<Entry> = Vec::new();
    let mut sizes = FileSizes {
        file_bytes: 0,
        packed_weight_bytes: 0,
        quantized_side_bytes: 0,
        unquantized_bytes: 0,
    };
    let mut stripped = model.clone();
    let sg = stripped.graph.as_mut().expect("checked above");
    for t in &mut sg.initializer {
        if !quantized.contains_key(t.name()) {
            let bytes = afp_onnx::tensor_raw_bytes(t)
                .map_err(|e| format!("initializer {:?}: {e}", t.name()))?;
            let dt = afp_onnx::data_type(t).map_err(|e| e.to_string())?;
            let (dtype, shape) = match st_dtype(dt) {
                Some(d) => (d, afp_onnx::tensor_dims(t).map_err(|e| e.to_string())?),
                None => (Dtype::U8, vec![bytes.len()]),
            };
            sizes.unquantized_bytes += bytes.len() as u64;
            entries.push((format!("onnx/{}", t.name()), dtype, shape, bytes));
        }
        afp_onnx::clear_tensor_data(t);
    }
    let mut plan = q.plan.clone();
    for (i, (lp, codes)) in plan.layers.iter_mut().zip(&q.codes).enumerate() {
        let packed = pack::pack(codes, lp.weight.format.bits)
            .map_err(|e| format!("layer {:?}: {e}", lp.node))?;
        sizes.packed_weight_bytes += packed.len() as u64;
        entries.push((
            format!("layer/{i}/codes"),
            Dtype::U8,
            vec![packed.len()],
            packed,
        ));
        let mut side = |name: &str, dtype, n: usize, bytes: Vec<u8>| {
            sizes.quantized_side_bytes += bytes.len() as u64;
            entries.push((format!("layer/{i}/{name}"), dtype, vec![n], bytes));
        };
        let offsets = std::mem::take(&mut lp.weight.offsets);
        if !offsets.is_empty() {
            // One byte per offset when they all fit (they do for weights in practice).
            if let Ok(narrow) = offsets
                .iter()
                .map(|&t| i8::try_from(t))
                .collect::<Result<Vec<i8>, _>>()
            {
                side(
                    "offsets",
                    Dtype::I8,
                    narrow.len(),
                    le_bytes(&narrow, i8::to_le_bytes),
                );
            } else {
                let wide: Vec<i16> = offsets
                    .iter()
                    .map(|&t| i16::try_from(t).map_err(|_| format!("offset {t} out of range")))
                    .collect::<Result<_, _>>()?;
                side(
                    "offsets",
                    Dtype::I16,
                    wide.len(),
                    le_bytes(&wide, i16::to_le_bytes),
                );
            }
        }
        let scales = std::mem::take(&mut lp.weight.scales);
        if !scales.is_empty() {
            side(
                "scales",
                Dtype::F32,
                scales.len(),
                le_bytes(&scales, f32::to_le_bytes),
            );
        }
        if let Some(b) = lp.bias_correction.take() {
            side(
                "bias_correction",
                Dtype::F32,
                b.len(),
                le_bytes(&b, f32::to_le_bytes),
            );
        }
    }
    let graph = {
        use std::io::Write as _;
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&afp_onnx::encode_model(&stripped))
            .and_then(|_| z.finish())
            .map_err(|e| e.to_string())?
    };
    let meta = Meta {
        checksum: format!("crc32:{}", "0".repeat(CHECKSUM_DIGITS)),
        afp_file_version: FILE_VERSION,
        plan,
        quantized_initializers: quantized,
        card: card.cloned(),
        graph_onnx_deflate: base64::engine::general_purpose::STANDARD.encode(graph),
    };
    let mut meta_text = serde_json::to_string(&meta).map_err(|e| e.to_string())?;
    let serialize = |meta: Option<HashMap<String, String>>| {
        let views: Vec<(String, TensorView)> = entries
            .iter()
            .map(|(n, d, s, b)| {
                TensorView::new(*d, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| format!("tensor {n:?}: {e:?}"))
            })
            .collect::<Result<_, _>>()?;
        safetensors::serialize(views, &meta).map_err(|e| format!("{e:?}"))
    };
    // The data section does not depend on the metadata: lay it out once to checksum it.
    let draft = serialize(None)?;
    let crc = checksum(data_section(&draft)?, &meta_text)?;
    meta_text.replace_range(
        CHECKSUM_PREFIX.len()..CHECKSUM_PREFIX.len() + CHECKSUM_DIGITS,
        &format!("{crc:08x}"),
    );
    let meta = HashMap::from([(META_KEY.to_string(), meta_text)]);
    let bytes = serialize(Some(meta))?;
    sizes.file_bytes = bytes.len() as u64;
    Ok((bytes, sizes))
}

fn data_section(bytes: &[u8]) -> Result<&[u8], String> {
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or("shorter than a safetensors header")?;
    usize::try_from(n)
        .ok()
        .and_then(|n| n.checked_add(8))
        .and_then(|start| bytes.get(start..))
        .ok_or_else(|| "header length beyond the end of the file".to_string())
}

/// CRC-32 of the data section and the metadata text with its checksum digits zeroed.
fn checksum(data: &[u8], meta_text: &str) -> Result<u32, String> {
    let digits = CHECKSUM_PREFIX.len()..CHECKSUM_PREFIX.len() + CHECKSUM_DIGITS;
    if !meta_text.starts_with(CHECKSUM_PREFIX)
        || !meta_text
            .get(digits.clone())
            .is_some_and(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err("afpq metadata does not start with its checksum".into());
    }
    let mut h = crc32fast::Hasher::new();
    h.update(data);
    h.update(CHECKSUM_PREFIX.as_bytes());
    h.update(&[b'0'; CHECKSUM_DIGITS]);
    h.update(&meta_text.as_bytes()[digits.end..]);
    Ok(h.finalize())
}

/// Writes a `.afp` file atomically. Returns where its bytes went.
pub fn write(
    path: &Path,
    model: &ModelProto,
    q: &QuantizedModel,
    card: Option<&serde_json::Value>,
) -> Result<FileSizes, String> {
    let (bytes, sizes) = to_bytes(model, q, card)?;
    afp_onnx::write_atomic(path, &bytes).map_err(|e| e.to_string())?;
    Ok(sizes)
}

/// Reads a `.afp` file (memory-mapped).
pub fn read(path: &Path) -> Result<AfpFile, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: the map is read-only and private to this call: everything kept is copied out
    // of it before it is dropped. As with any memory map, another process truncating or
    // rewriting the file while it is read is undefined behaviour; afpq writes .afp files
    // atomically (rename), so its own writes never change a mapped file in place.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| format!("cannot map {}: {e}", path.display()))?;
    from_bytes(&map).map_err(|e| format!("{}: {e}", path.display()))
}

fn tensor<'a>(st: &'a SafeTensors, name: &str, dtype: Dtype) -> Result<TensorView<'a>, String> {
    let t = st
        .tensor(name)
        .map_err(|_| format!("tensor {name:?} is missing"))?;
    if t.dtype() != dtype {
        return Err(format!(
            "tensor {name:?} is {:?}, {dtype:?} expected",
            t.dtype()
        ));
    }
    Ok(t)
}

fn from_le<T, const N: usize>(b: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    b.chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunk of N bytes")))
        .collect()
}

/// Largest ONNX graph (without weight data) a file may inflate to.
const MAX_GRAPH_BYTES: u64 = 256 << 20;

/// Inflates at most `limit` bytes: a small hostile stream cannot make a huge allocation.
fn inflate_bounded(deflated: &[u8], limit: u64) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(deflated)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("graph: {e}"))?;
    if out.len() as u64 > limit {
        return Err(format!("graph: inflates beyond {limit} bytes"));
    }
    Ok(out)
}

/// Parses the bytes of a `.afp` file. Every length is checked against the bytes present
/// before it is used, so a hostile file gives an error, not a panic or a huge allocation.
pub fn from_bytes(bytes: &[u8]) -> Result<AfpFile, String> {
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("not a .afp file: not a safetensors file ({e:?})"))?;
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a .afp file: not a safetensors file ({e:?})"))?;
    let meta_text = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or("no afpq metadata: not a .afp file")?;
    let crc = checksum(data_section(bytes)?, meta_text)?;
    let recorded = &meta_text[CHECKSUM_PREFIX.len()..CHECKSUM_PREFIX.len() + CHECKSUM_DIGITS];
    // Fuzzing builds (`cargo fuzz`, `--cfg fuzzing`) skip the comparison, so that mutated
    // files reach the parser behind it instead of all stopping here.
    if format!("{crc:08x}") != recorded && !cfg!(fuzzing) {
        return Err(format!(
            "checksum mismatch ({crc:08x} computed, {recorded} recorded): the file is corrupted"
        ));
    }
    let meta: Meta = serde_json::from_str(meta_text).map_err(|e| format!("afpq metadata: {e}"))?;
    if meta.afp_file_version != FILE_VERSION {
        return Err(format!(
            "file version {} is not supported (this afpq reads version {FILE_VERSION})",
            meta.afp_file_version
        ));
    }
    let deflated = base64::engine::general_purpose::STANDARD
        .decode(&meta.graph_onnx_deflate)
        .map_err(|e| format!("graph: {e}"))?;
    let graph_bytes = inflate_bounded(&deflated, MAX_GRAPH_BYTES)?;
    let mut model = afp_onnx::decode_model(&graph_bytes).map_err(|e| format!("graph: {e}"))?;
    let content = meta;
    let mut plan = content.plan;
    let mut expected: BTreeSet<String> = BTreeSet::new();
    let mut sizes = FileSizes {
        file_bytes: bytes.len() as u64,
        packed_weight_bytes: 0,
        quantized_side_bytes: 0,
        unquantized_bytes: 0,
    };
    // Layers: codes, offsets or scales, bias corrections.
    let mut codes = Vec::with_capacity(plan.layers.len());
    for (i, lp) in plan.layers.iter_mut().enumerate() {
        let what = |e: String| format!("layer {i} ({:?}): {e}", lp.node);
        let bits = lp.weight.format.bits;
        if !(2..=8).contains(&bits) {
            return Err(what(format!("{bits}-bit weights are not supported")));
        }
        let name = format!("layer/{i}/codes");
        let t = tensor(&st, &name, Dtype::U8).map_err(what)?;
        if t.data().len() != pack::packed_len(lp.params, bits) {
            return Err(what(format!(
                "{} bytes of codes for {} weights of {bits} bits",
                t.data().len(),
                lp.params
            )));
        }
        codes.push(pack::unpack(t.data(), bits, lp.params).map_err(|e| what(e.to_string()))?);
        sizes.packed_weight_bytes += t.data().len() as u64;
        expected.insert(name);
        let side = if lp.weight.format.format().is_some() {
            let name = format!("layer/{i}/offsets");
            let t = st
                .tensor(&name)
                .map_err(|_| what(format!("tensor {name:?} is missing")))?;
            lp.weight.offsets = match t.dtype() {
                Dtype::I8 => t.data().iter().map(|&b| i32::from(b as i8)).collect(),
                Dtype::I16 => from_le(t.data(), |b| i32::from(i16::from_le_bytes(b))),
                d => return Err(what(format!("offsets are {d:?}, I8 or I16 expected"))),
            };
            expected.insert(name);
            // Optional real scales on top of the offsets (`--scale real`).
            let scales = format!("layer/{i}/scales");
            let extra = if st.tensor(&scales).is_ok() {
                let t = tensor(&st, &scales, Dtype::F32).map_err(what)?;
                lp.weight.scales = from_le(t.data(), f32::from_le_bytes);
                expected.insert(scales);
                t.data().len()
            } else {
                0
            };
            t.data().len() + extra
        } else {
            let name = format!("layer/{i}/scales");
            let t = tensor(&st, &name, Dtype::F32).map_err(what)?;
            lp.weight.scales = from_le(t.data(), f32::from_le_bytes);
            expected.insert(name);
            t.data().len()
        };
        sizes.quantized_side_bytes += side as u64;
        let name = format!("layer/{i}/bias_correction");
        if st.tensor(&name).is_ok() {
            let t = tensor(&st, &name, Dtype::F32).map_err(what)?;
            lp.bias_correction = Some(from_le(t.data(), f32::from_le_bytes));
            sizes.quantized_side_bytes += t.data().len() as u64;
            expected.insert(name);
        }
    }
    // Initializers: from their tensors, or zeros for those the codes replace.
    let g = model.graph.as_mut().ok_or("graph: no graph")?;
    for t in &mut g.initializer {
        let name = t.name().to_string();
        let what = |e: String| format!("initializer {name:?}: {e}");
        let dt = afp_onnx::data_type(t).map_err(|e| what(e.to_string()))?;
        let count = afp_onnx::element_count(t).map_err(|e| what(e.to_string()))?;
        if let Some(&li) = content.quantized_initializers.get(&name) {
            let lp = plan
                .layers
                .get(li)
                .ok_or_else(|| what(format!("refers to layer {li}, which does not exist")))?;
            if dt != DataType::Float || count != lp.params {
                return Err(what(format!(
                    "{count} {} values, but layer {li} has {} f32 weights",
                    dt.as_str_name(),
                    lp.params
                )));
            }
            // Bounded: the layer's codes, checked above, hold `params` values.
            t.raw_data = Some(vec![0u8; count * 4]);
        } else {
            let key = format!("onnx/{name}");
            let v = st
                .tensor(&key)
                .map_err(|_| what("its data is missing".into()))?;
            let want = afp_onnx::raw_byte_len(dt, count)
                .ok_or_else(|| what("no fixed element size".into()))?;
            let dtype = st_dtype(dt).unwrap_or(Dtype::U8);
            if v.dtype() != dtype || v.data().len() != want {
                return Err(what(format!(
                    "stored as {:?} with {} bytes; {} x {count} needs {dtype:?} with {want}",
                    v.dtype(),
                    v.data().len(),
                    dt.as_str_name()
                )));
            }
            sizes.unquantized_bytes += want as u64;
            t.raw_data = Some(v.data().to_vec());
            expected.insert(key);
        }
    }
    for name in st.names() {
        if !expected.contains(name.as_str()) {
            return Err(format!("unexpected tensor {name:?}"));
        }
    }
    Ok(AfpFile {
        model,
        quantized: QuantizedModel { plan, codes },
        card: content.card,
        sizes,
        quantized_initializers: content.quantized_initializers.into_keys().collect(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::calib::InputStats;
    use crate::plan::{Plan, PLAN_VERSION};
    use crate::quantize::{plan_layers, quantizable_layers, totals, ActMode, QuantizeOptions};
    use crate::search::{Family, Objective, SearchOptions, Strategy};
    use afp_format::{offset::OffsetRule, Granularity, ZeroMode};

    /// A small PyTorch-style network (Conv, BatchNorm, Gemm), quantized at `bits` bits in
    /// `family`, with its ONNX model.
    pub(crate) fn quantized(bits: u32, family: Family) -> (ModelProto, QuantizedModel) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../afp-engine/tests/fixtures/ops/torch_style.onnx");
        let model = afp_engine::Model::load(&path).unwrap();
        let g = model.lower(1).unwrap();
        let layers = quantizable_layers(&g);
        assert!(layers.len() >= 2);
        let stats = vec![InputStats::default(); layers.len()];
        let o = QuantizeOptions {
            search: SearchOptions {
                strategy: Strategy::Exhaustive,
                family,
                granularity: Granularity::PerChannel,
                objective: Objective::Mse,
                penalty: 0.0,
                offset_rule: OffsetRule::Mse,
                zero_mode: ZeroMode::Subnormal,
                int8_kernels: false,
            },
            bits,
            avg_bits: None,
            acts: ActMode::None,
            act_family: Family::Afp,
            avg_act_bits: None,
            keep_first_last: false,
            bias_correct: false,
            min_bits: 3,
            max_bits: 8,
            gptq: None,
            allocation: crate::quantize::Allocation::WeightError,
            act_objective: crate::quantize::ActObjective::Mse,
            real_scales: false,
            check_proxy: 0,
        };
        let (mut lp, codes) = plan_layers(&g, &layers, &stats, &o).unwrap();
        lp[0].bias_correction = Some(vec![0.25; lp[0].weight_shape[0]]);
        let plan = Plan {
            afpq_plan_version: PLAN_VERSION,
            model: path.display().to_string(),
            model_bytes: 1,
            options: serde_json::json!({"bits": bits}),
            calibration: vec![],
            totals: totals(&lp),
            layers: lp,
        };
        (model.proto, QuantizedModel { plan, codes })
    }

    #[test]
    fn a_file_reads_back_as_written_and_is_deterministic() {
        for (bits, family) in [(5, Family::Afp), (4, Family::Int), (8, Family::Afp)] {
            let (proto, q) = quantized(bits, family);
            let card = serde_json::json!({"name": "x"});
            let (bytes, sizes) = to_bytes(&proto, &q, Some(&card)).unwrap();
            assert_eq!(to_bytes(&proto, &q, Some(&card)).unwrap().0, bytes);
            assert_eq!(sizes.file_bytes, bytes.len() as u64);
            let f = from_bytes(&bytes).unwrap();
            assert_eq!(f.quantized, q);
            assert_eq!(f.card, Some(card));
            assert_eq!(f.sizes, sizes);
            // Every initializer but the quantized weights is back, byte for byte.
            let orig = proto.graph.as_ref().unwrap();
            let back = f.model.graph.as_ref().unwrap();
            assert_eq!(orig.node, back.node);
            let mut zeroed = 0;
            for (a, b) in orig.initializer.iter().zip(&back.initializer) {
                let (ra, rb) = (
                    afp_onnx::tensor_raw_bytes(a).unwrap(),
                    afp_onnx::tensor_raw_bytes(b).unwrap(),
                );
                if ra != rb {
                    assert!(rb.iter().all(|&x| x == 0), "{}", a.name());
                    zeroed += 1;
                }
            }
            assert_eq!(zeroed, q.plan.layers.len());
            // The packed codes take `bits` per weight.
            let params: usize = q.plan.layers.iter().map(|l| l.params).sum();
            assert!(
                sizes.packed_weight_bytes as usize <= params * bits as usize / 8 + q.codes.len()
            );
        }
    }

    /// AFP plans with real scales on top of their offsets (`--scale real`) keep both.
    #[test]
    fn real_scales_read_back() {
        let (proto, mut q) = quantized(5, Family::Afp);
        for lp in &mut q.plan.layers {
            lp.weight.scales = (0..lp.weight.offsets.len())
                .map(|i| 0.75 + i as f32 / 64.0)
                .collect();
        }
        let (bytes, _) = to_bytes(&proto, &q, None).unwrap();
        assert_eq!(from_bytes(&bytes).unwrap().quantized, q);
    }

    #[test]
    fn every_corrupted_byte_is_an_error_not_a_panic() {
        let (proto, q) = quantized(4, Family::Afp);
        let (bytes, _) = to_bytes(&proto, &q, None).unwrap();
        let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut accepted = Vec::new();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x5a;
            // Padding spaces at the end of the header are not content.
            if from_bytes(&b).is_ok() && !(bytes[i] == b' ' && i < header_end) {
                accepted.push(i);
            }
        }
        assert!(accepted.is_empty(), "corruption accepted at {accepted:?}");
        for len in [0, 7, 8, 100, header_end, bytes.len() - 1] {
            assert!(from_bytes(&bytes[..len]).is_err(), "truncated to {len}");
        }
    }

    #[test]
    fn hostile_lengths_are_rejected_before_allocation() {
        let (proto, mut q) = quantized(4, Family::Afp);
        // A plan claiming far more weights than its codes hold.
        q.plan.layers[0].params = usize::MAX / 8;
        let mut q2 = q.clone();
        q2.codes[0] = vec![0; 3];
        let err = to_bytes(&proto, &q2, None)
            .and_then(|(b, _)| from_bytes(&b).map(|_| ()))
            .unwrap_err();
        assert!(err.contains("codes"), "{err}");
    }
}
