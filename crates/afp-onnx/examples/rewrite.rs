//! Re-writes an ONNX model through afp-onnx, for checking the result with ONNX Runtime
//! (see scripts/check_ort_roundtrip.py).
//!
//! `cargo run --release --example rewrite -- <in.onnx> <out_dir>` writes into out_dir:
//! * `rewritten.onnx`: `write_model(read_model(in))`;
//! * `external.onnx` + `external.onnx.data`: the same model with every initializer of at
//!   least 1024 bytes moved to external data (64-byte aligned offsets);
//! * `external_reloaded.onnx`: `write_model(read_model("external.onnx"))`, data inline again.

use std::path::PathBuf;

use afp_onnx::{read_model, write_model, DataLocation, OnnxError, StringStringEntryProto};

fn main() -> Result<(), OnnxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: rewrite <in.onnx> <out_dir>");
        std::process::exit(2);
    }
    let input = PathBuf::from(&args[1]);
    let out = PathBuf::from(&args[2]);
    let model = read_model(&input)?;
    write_model(&out.join("rewritten.onnx"), &model)?;

    let mut ext = model.clone();
    let mut data: Vec<u8> = Vec::new();
    let mut moved = 0;
    for t in &mut ext.graph.as_mut().expect("model has no graph").initializer {
        // Like onnx's convert_model_to_external_data, keep small tensors (shapes, ...) inline:
        // ONNX Runtime's shape inference needs e.g. Reshape's shape input inline.
        if t.raw_data.as_ref().is_none_or(|r| r.len() < 1024) {
            continue;
        }
        let Some(raw) = t.raw_data.take() else {
            continue;
        };
        data.resize(data.len().div_ceil(64) * 64, 0);
        let kv = |k: &str, v: String| StringStringEntryProto {
            key: Some(k.to_string()),
            value: Some(v),
        };
        t.external_data = vec![
            kv("location", "external.onnx.data".to_string()),
            kv("offset", data.len().to_string()),
            kv("length", raw.len().to_string()),
        ];
        t.data_location = Some(DataLocation::External as i32);
        data.extend_from_slice(&raw);
        moved += 1;
    }
    let data_path = out.join("external.onnx.data");
    std::fs::write(&data_path, &data).map_err(|cause| OnnxError::Io {
        action: "cannot write",
        path: data_path,
        cause,
    })?;
    write_model(&out.join("external.onnx"), &ext)?;
    let reloaded = read_model(&out.join("external.onnx"))?;
    write_model(&out.join("external_reloaded.onnx"), &reloaded)?;

    let original = std::fs::read(&input).unwrap_or_default();
    for name in ["rewritten.onnx", "external_reloaded.onnx"] {
        let bytes = std::fs::read(out.join(name)).unwrap_or_default();
        println!(
            "{name}: {} bytes, identical to input: {}",
            bytes.len(),
            bytes == original
        );
    }
    println!(
        "external.onnx: {moved} initializers moved to external.onnx.data ({} bytes)",
        data.len()
    );
    Ok(())
}
