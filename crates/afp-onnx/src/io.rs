//! Reading, decoding, encoding and writing models; external-data resolution.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message;

use crate::onnx::tensor_proto::DataLocation;
use crate::onnx::{
    AttributeProto, GraphProto, ModelProto, NodeProto, SparseTensorProto, TensorProto,
};
use crate::tensor::{data_type, element_count, raw_byte_len};
use crate::OnnxError;

fn decode_from(bytes: &[u8], origin: impl Fn() -> String) -> Result<ModelProto, OnnxError> {
    let model = ModelProto::decode(bytes).map_err(|cause| OnnxError::Decode {
        origin: origin(),
        cause,
    })?;
    if model.ir_version.is_none() && model.graph.is_none() {
        return Err(OnnxError::NotAModel {
            origin: origin(),
            reason: format!(
                "{} bytes decode to a ModelProto without ir_version and without graph",
                bytes.len()
            ),
        });
    }
    Ok(model)
}

/// Decodes a serialized `ModelProto`. External data is not resolved (there is no file).
///
/// Errors on invalid protobuf and on messages with neither `ir_version` nor `graph`.
pub fn decode_model(bytes: &[u8]) -> Result<ModelProto, OnnxError> {
    decode_from(bytes, || "<bytes>".to_string())
}

/// Serializes a model. Deterministic: fields are written in field-number order.
pub fn encode_model(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Reads and decodes an ONNX file, then loads every external-data tensor (initializers,
/// sparse initializers, attribute tensors, in subgraphs, functions and training info too)
/// into `raw_data` and marks it `DEFAULT`.
///
/// External `location`s must be relative paths inside the model's directory; `offset` and
/// `length` must lie within that file and `length` must equal dims x element size.
pub fn read_model(path: &Path) -> Result<ModelProto, OnnxError> {
    let bytes = fs::read(path).map_err(|cause| OnnxError::Io {
        action: "cannot read ONNX model",
        path: path.to_path_buf(),
        cause,
    })?;
    let mut model = decode_from(&bytes, || path.display().to_string())?;
    drop(bytes);
    let mut loader = ExternalLoader::new(path);
    for_each_tensor_mut(&mut model, &mut |t| loader.load_if_external(t))?;
    Ok(model)
}

/// Writes the model atomically: to a temporary file in the same directory, fsync, rename over
/// `path`, then (best effort) fsync the directory. The bytes are those of [`encode_model`].
pub fn write_model(path: &Path, model: &ModelProto) -> Result<(), OnnxError> {
    let size = model.encoded_len();
    if size > i32::MAX as usize {
        return Err(OnnxError::TooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    write_atomic(path, &encode_model(model))
}

/// Writes `bytes` to `path` atomically: to a temporary file in the same directory, fsync,
/// rename over `path`, then (best effort) fsync the directory. A failure leaves no file behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OnnxError> {
    let io_err = |action, path: &Path| {
        let path = path.to_path_buf();
        move |cause| OnnxError::Io {
            action,
            path,
            cause,
        }
    };
    let file_name = path.file_name().ok_or_else(|| OnnxError::Io {
        action: "cannot write ONNX model",
        path: path.to_path_buf(),
        cause: std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name"),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}-{}.tmp",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err("cannot create temporary file", &tmp))?;
        f.write_all(bytes)
            .map_err(io_err("cannot write temporary file", &tmp))?;
        f.sync_all()
            .map_err(io_err("cannot fsync temporary file", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(io_err("cannot rename temporary file onto", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // Make the rename durable; not every platform can open or sync a directory.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Calls `f` on every tensor of the model (including nested graphs).
fn for_each_tensor_mut<F>(model: &mut ModelProto, f: &mut F) -> Result<(), OnnxError>
where
    F: FnMut(&mut TensorProto) -> Result<(), OnnxError>,
{
    if let Some(g) = model.graph.as_mut() {
        graph_tensors(g, f)?;
    }
    for func in &mut model.functions {
        nodes_tensors(&mut func.node, f)?;
        for a in &mut func.attribute_proto {
            attr_tensors(a, f)?;
        }
    }
    for ti in &mut model.training_info {
        for g in ti.initialization.iter_mut().chain(ti.algorithm.iter_mut()) {
            graph_tensors(g, f)?;
        }
    }
    Ok(())
}

fn sparse_tensors<F>(s: &mut SparseTensorProto, f: &mut F) -> Result<(), OnnxError>
where
    F: FnMut(&mut TensorProto) -> Result<(), OnnxError>,
{
    for t in s.values.iter_mut().chain(s.indices.iter_mut()) {
        f(t)?;
    }
    Ok(())
}

fn graph_tensors<F>(g: &mut GraphProto, f: &mut F) -> Result<(), OnnxError>
where
    F: FnMut(&mut TensorProto) -> Result<(), OnnxError>,
{
    for t in &mut g.initializer {
        f(t)?;
    }
    for s in &mut g.sparse_initializer {
        sparse_tensors(s, f)?;
    }
    nodes_tensors(&mut g.node, f)
}

fn nodes_tensors<F>(nodes: &mut [NodeProto], f: &mut F) -> Result<(), OnnxError>
where
    F: FnMut(&mut TensorProto) -> Result<(), OnnxError>,
{
    for n in nodes {
        for a in &mut n.attribute {
            attr_tensors(a, f)?;
        }
    }
    Ok(())
}

fn attr_tensors<F>(a: &mut AttributeProto, f: &mut F) -> Result<(), OnnxError>
where
    F: FnMut(&mut TensorProto) -> Result<(), OnnxError>,
{
    for t in a.t.iter_mut().chain(a.tensors.iter_mut()) {
        f(t)?;
    }
    for s in a
        .sparse_tensor
        .iter_mut()
        .chain(a.sparse_tensors.iter_mut())
    {
        sparse_tensors(s, f)?;
    }
    for g in a.g.iter_mut().chain(a.graphs.iter_mut()) {
        graph_tensors(g, f)?;
    }
    Ok(())
}

struct ExternalLoader<'a> {
    model: &'a Path,
    dir: PathBuf,
    /// Canonical model directory, computed on first use.
    canonical_dir: Option<PathBuf>,
}

impl<'a> ExternalLoader<'a> {
    fn new(model: &'a Path) -> Self {
        let dir = match model.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        ExternalLoader {
            model,
            dir,
            canonical_dir: None,
        }
    }

    fn err(&self, t: &TensorProto, reason: impl Into<String>) -> OnnxError {
        OnnxError::ExternalData {
            model: self.model.to_path_buf(),
            tensor: t.name.clone().unwrap_or_default(),
            reason: reason.into(),
        }
    }

    fn load_if_external(&mut self, t: &mut TensorProto) -> Result<(), OnnxError> {
        if t.data_location != Some(DataLocation::External as i32) {
            return Ok(());
        }
        let bytes = self.load(t)?;
        t.raw_data = Some(bytes);
        t.data_location = Some(DataLocation::Default as i32);
        t.external_data.clear();
        Ok(())
    }

    fn load(&mut self, t: &TensorProto) -> Result<Vec<u8>, OnnxError> {
        let (mut location, mut offset, mut length) = (None, None, None);
        for e in &t.external_data {
            let key = e.key.as_deref().unwrap_or("");
            let value = e.value.as_deref().unwrap_or("");
            let slot = match key {
                "location" => &mut location,
                "offset" => &mut offset,
                "length" => &mut length,
                _ => continue, // e.g. "checksum": informative only
            };
            if slot.replace(value).is_some() {
                return Err(self.err(t, format!("key '{key}' appears more than once")));
            }
        }
        let location = location
            .filter(|l| !l.is_empty())
            .ok_or_else(|| self.err(t, "no 'location' entry in external_data"))?;
        let parse = |key: &str, v: Option<&str>| -> Result<Option<u64>, OnnxError> {
            v.map(|s| {
                s.trim().parse::<u64>().map_err(|_| {
                    self.err(t, format!("'{key}' = '{s}' is not a non-negative integer"))
                })
            })
            .transpose()
        };
        let offset = parse("offset", offset)?.unwrap_or(0);
        let length = parse("length", length)?;

        let file_path = self.checked_location(t, location)?;
        let mut file = File::open(&file_path).map_err(|e| {
            self.err(
                t,
                format!("cannot open data file {}: {e}", file_path.display()),
            )
        })?;
        let file_len = file
            .metadata()
            .map_err(|e| self.err(t, format!("cannot stat {}: {e}", file_path.display())))?
            .len();
        if offset > file_len {
            return Err(self.err(
                t,
                format!("offset {offset} is beyond the end of '{location}' ({file_len} bytes)"),
            ));
        }
        let length = length.unwrap_or(file_len - offset);
        if offset.checked_add(length).is_none_or(|end| end > file_len) {
            return Err(self.err(
                t,
                format!(
                    "offset {offset} + length {length} is beyond the end of '{location}' ({file_len} bytes)"
                ),
            ));
        }
        let dt = data_type(t).map_err(|e| self.err(t, e.to_string()))?;
        let count = element_count(t).map_err(|e| self.err(t, e.to_string()))?;
        let expected = raw_byte_len(dt, count).ok_or_else(|| {
            self.err(
                t,
                format!(
                    "data type {} has no fixed element size; cannot load it as raw bytes",
                    dt.as_str_name()
                ),
            )
        })?;
        if u64::try_from(expected).ok() != Some(length) {
            return Err(self.err(
                t,
                format!(
                    "length is {length} bytes but dims {:?} of {} need {expected} bytes",
                    t.dims,
                    dt.as_str_name()
                ),
            ));
        }
        // `expected` == `length` <= file size, so this allocation is bounded by the file.
        let mut buf = vec![0u8; expected];
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| {
                self.err(
                    t,
                    format!(
                        "cannot read {length} bytes at offset {offset} of {}: {e}",
                        file_path.display()
                    ),
                )
            })?;
        Ok(buf)
    }

    /// Resolves `location` relative to the model directory, rejecting absolute paths, `..`
    /// and anything (e.g. a symlink) that resolves outside the model directory.
    fn checked_location(&mut self, t: &TensorProto, location: &str) -> Result<PathBuf, OnnxError> {
        let rel = Path::new(location);
        let looks_absolute = location.starts_with(['/', '\\'])
            || location.as_bytes().get(1) == Some(&b':')
            || rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, Component::RootDir | Component::Prefix(_)));
        if looks_absolute {
            return Err(self.err(
                t,
                format!(
                    "location '{location}' is absolute; it must be relative to the model directory"
                ),
            ));
        }
        if location.split(['/', '\\']).any(|part| part == "..") {
            return Err(self.err(
                t,
                format!("location '{location}' contains '..' and would escape the model directory"),
            ));
        }
        let full = self.dir.join(rel);
        if self.canonical_dir.is_none() {
            let c = fs::canonicalize(&self.dir).map_err(|e| {
                self.err(
                    t,
                    format!("cannot resolve model directory {}: {e}", self.dir.display()),
                )
            })?;
            self.canonical_dir = Some(c);
        }
        let canonical = fs::canonicalize(&full)
            .map_err(|e| self.err(t, format!("cannot open data file {}: {e}", full.display())))?;
        if let Some(dir) = &self.canonical_dir {
            if !canonical.starts_with(dir) {
                return Err(self.err(
                    t,
                    format!(
                        "location '{location}' resolves to {}, outside the model directory",
                        canonical.display()
                    ),
                ));
            }
        }
        if !canonical.is_file() {
            return Err(self.err(t, format!("location '{location}' is not a regular file")));
        }
        Ok(canonical)
    }
}
