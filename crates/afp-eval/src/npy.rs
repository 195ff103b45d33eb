//! Minimal `.npy` reader/writer for little-endian float32 C-order arrays (format versions 1.0 and 2.0).

use std::path::Path;

use crate::error::{Error, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// A float32 array with its shape (C order).
#[derive(Debug, Clone, PartialEq)]
pub struct NpyF32 {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl NpyF32 {
    /// Number of elements implied by the shape.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Read a `.npy` file holding `<f4` data in C order.
pub fn read_npy(path: impl AsRef<Path>) -> Result<NpyF32> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_npy(&bytes).map_err(|msg| Error::Npy {
        path: path.to_path_buf(),
        msg,
    })
}

/// Write `data` with `shape` as a version 1.0 `.npy` (2.0 if the header needs it).
pub fn write_npy(path: impl AsRef<Path>, shape: &[usize], data: &[f32]) -> Result<()> {
    let path = path.as_ref();
    let bytes = encode_npy(shape, data).map_err(|msg| Error::Npy {
        path: path.to_path_buf(),
        msg,
    })?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Encode a float32 array as `.npy` bytes.
pub fn encode_npy(shape: &[usize], data: &[f32]) -> Result<Vec<u8>, String> {
    let numel: usize = shape.iter().product();
    if numel != data.len() {
        return Err(format!(
            "shape {shape:?} holds {numel} values but data has {}",
            data.len()
        ));
    }
    let shape_str = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_str}, }}");
    // Total header (magic + version + length field + dict + padding + '\n') is a multiple of 64.
    let build = |len_field: usize| {
        let unpadded = MAGIC.len() + 2 + len_field + dict.len() + 1;
        let pad = (64 - unpadded % 64) % 64;
        let mut h = dict.clone();
        h.push_str(&" ".repeat(pad));
        h.push('\n');
        h
    };
    let mut out = Vec::with_capacity(128 + data.len() * 4);
    out.extend_from_slice(MAGIC);
    let h1 = build(2);
    if h1.len() <= u16::MAX as usize {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(h1.len() as u16).to_le_bytes());
        out.extend_from_slice(h1.as_bytes());
    } else {
        let h2 = build(4);
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&(h2.len() as u32).to_le_bytes());
        out.extend_from_slice(h2.as_bytes());
    }
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Parse `.npy` bytes; only little-endian float32, C order, versions 1.0 and 2.0.
pub fn parse_npy(bytes: &[u8]) -> Result<NpyF32, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (bad magic)".into());
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (hlen, hstart): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 => {
            if bytes.len() < 12 {
                return Err("truncated header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        _ => return Err(format!("unsupported .npy format version {major}.{minor}")),
    };
    let hend = hstart
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or("truncated header")?;
    let header = std::str::from_utf8(&bytes[hstart..hend]).map_err(|_| "header is not ASCII")?;
    let descr = dict_value(header, "descr").ok_or("header has no 'descr'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    if descr != "<f4" {
        return Err(format!(
            "dtype {descr:?} is not supported (only little-endian float32 '<f4')"
        ));
    }
    let fortran = dict_value(header, "fortran_order").ok_or("header has no 'fortran_order'")?;
    match fortran {
        "False" => {}
        "True" => return Err("Fortran-order arrays are not supported (only C order)".into()),
        other => return Err(format!("bad fortran_order {other:?}")),
    }
    let shape_s = dict_value(header, "shape").ok_or("header has no 'shape'")?;
    let inner = shape_s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("bad shape {shape_s:?}"))?;
    let mut shape = Vec::new();
    for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let d = part
            .trim_end_matches('L')
            .parse::<usize>()
            .map_err(|_| format!("bad shape {shape_s:?}"))?;
        shape.push(d);
    }
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("shape overflows")?;
    let body = &bytes[hend..];
    if body.len() != numel * 4 {
        return Err(format!(
            "shape {shape:?} needs {} data bytes, file has {}",
            numel * 4,
            body.len()
        ));
    }
    let data = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(NpyF32 { shape, data })
}

/// The raw text of a value in the header dict (`'key': value`): a quoted string, a tuple or a bare word.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pos = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = header[pos + key.len() + 2..].trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else if let Some(q) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') {
        rest[1..].find(q)? + 2
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim())
}
