//! Round trip over the real models of the shared data bundle.
//!
//! Needs `AFPQ_SHARED_DATA` (e.g. `/work/shared/data`); skipped when it is unset.

use std::path::{Path, PathBuf};

use afp_onnx::*;

const MODELS: [&str; 4] = [
    "resnet8_cifar10",
    "mobilenet_v2_random",
    "efficientnet_lite0",
    "resnet50",
];

fn shared_data() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("AFPQ_SHARED_DATA") else {
        println!("skipped: AFPQ_SHARED_DATA is not set");
        return None;
    };
    let dir = PathBuf::from(dir);
    assert!(
        dir.join("models").is_dir(),
        "AFPQ_SHARED_DATA={} but {} is not a directory",
        dir.display(),
        dir.join("models").display()
    );
    Some(dir)
}

/// The integer after `"key":` in the model card (a tiny JSON scrape, no serde).
fn card_int(card: &str, key: &str) -> u64 {
    let pat = format!("\"{key}\":");
    let at = card
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in card"))
        + pat.len();
    card[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap_or_else(|e| panic!("{key} in card: {e}"))
}

fn check_model(dir: &Path, name: &str) {
    let path = dir.join("models").join(format!("{name}.onnx"));
    let card = std::fs::read_to_string(dir.join("models").join(format!("{name}.json")))
        .unwrap_or_else(|e| panic!("model card of {name}: {e}"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes.len() as u64, card_int(&card, "file_bytes"));

    let m = decode_model(&bytes).unwrap();
    let re = encode_model(&m);
    let m2 = decode_model(&re).unwrap();
    assert_eq!(
        m, m2,
        "{name}: decode(encode(decode(file))) != decode(file)"
    );
    // The strongest check: prost re-encodes the file byte for byte.
    assert_eq!(re.len(), bytes.len(), "{name}: re-encoded length differs");
    assert!(re == bytes, "{name}: re-encoded bytes differ from the file");

    // read_model on the file gives the same model (no external data in these files).
    assert_eq!(read_model(&path).unwrap(), m);

    // Tensor helpers over all initializers: params in the card = FLOAT initializer elements.
    let g = m.graph.as_ref().unwrap();
    let mut params = 0u64;
    for t in &g.initializer {
        let n = element_count(t).unwrap();
        match data_type(t).unwrap() {
            DataType::Float => {
                let v = tensor_f32(t).unwrap();
                assert_eq!(v.len(), n);
                params += n as u64;
            }
            DataType::Int64 | DataType::Int32 => assert_eq!(tensor_i64(t).unwrap().len(), n),
            other => panic!("{name}: initializer of type {other:?}"),
        }
    }
    assert_eq!(
        params,
        card_int(&card, "params"),
        "{name}: FLOAT parameter count"
    );
    assert_eq!(
        g.node.len() as u64,
        card_int(&card, "nodes"),
        "{name}: node count"
    );
    // Constant nodes have a readable `value` tensor.
    for n in g
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some("Constant"))
    {
        let t = attr_tensor(n, "value").expect("Constant without value");
        if tensor_f32(t).is_err() {
            tensor_i64(t).unwrap();
        }
    }
    println!(
        "{name}: {} bytes, {} nodes, {} initializers, {params} FLOAT params: byte-identical round trip",
        bytes.len(),
        g.node.len(),
        g.initializer.len()
    );
}

#[test]
fn real_models_round_trip() {
    let Some(dir) = shared_data() else { return };
    for name in MODELS {
        check_model(&dir, name);
    }
}

#[test]
fn write_model_then_read_model_on_real_model() {
    let Some(dir) = shared_data() else { return };
    let src = dir.join("models/resnet8_cifar10.onnx");
    let m = read_model(&src).unwrap();
    let out = std::env::temp_dir().join(format!("afp-onnx-it-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let dst = out.join("resnet8_cifar10.onnx");
    write_model(&dst, &m).unwrap();
    assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
    assert_eq!(read_model(&dst).unwrap(), m);
    std::fs::remove_dir_all(&out).unwrap();
}
