use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use prost::Message;

use crate::onnx::tensor_shape_proto::{dimension, Dimension};
use crate::onnx::type_proto;
use crate::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "afp-onnx-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                Some(v) => dimension::Value::DimValue(*v),
                                None => dimension::Value::DimParam("N".into()),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn attr_i(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(i),
        ..Default::default()
    }
}

fn attr_is(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: ints.to_vec(),
        ..Default::default()
    }
}

/// A small Conv -> Relu -> Constant/Add model.
fn small_model(weight: TensorProto) -> ModelProto {
    let conv = NodeProto {
        input: vec!["x".into(), "w".into()],
        output: vec!["y".into()],
        name: Some("conv0".into()),
        op_type: Some("Conv".into()),
        attribute: vec![
            attr_is("kernel_shape", &[1, 1]),
            attr_is("pads", &[0, 0, 1, 1]),
            attr_i("group", 1),
            AttributeProto {
                name: Some("auto_pad".into()),
                r#type: Some(AttributeType::String as i32),
                s: Some(b"NOTSET".to_vec()),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let konst = NodeProto {
        output: vec!["c".into()],
        name: Some("const0".into()),
        op_type: Some("Constant".into()),
        attribute: vec![AttributeProto {
            name: Some("value".into()),
            r#type: Some(AttributeType::Tensor as i32),
            t: Some(f32_tensor("", &[1], &[0.5])),
            ..Default::default()
        }],
        ..Default::default()
    };
    let add = NodeProto {
        input: vec!["y".into(), "c".into()],
        output: vec!["z".into()],
        name: Some("add0".into()),
        op_type: Some("Add".into()),
        ..Default::default()
    };
    let leaky = NodeProto {
        input: vec!["z".into()],
        output: vec!["out".into()],
        name: Some("leaky0".into()),
        op_type: Some("LeakyRelu".into()),
        attribute: vec![AttributeProto {
            name: Some("alpha".into()),
            r#type: Some(AttributeType::Float as i32),
            f: Some(0.125),
            ..Default::default()
        }],
        ..Default::default()
    };
    ModelProto {
        ir_version: Some(8),
        producer_name: Some("afp-onnx-test".into()),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        metadata_props: vec![StringStringEntryProto {
            key: Some("k".into()),
            value: Some("v".into()),
        }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: vec![conv, konst, add, leaky],
            initializer: vec![weight],
            input: vec![value_info("x", &[None, Some(2), Some(1), Some(1)])],
            output: vec![value_info("out", &[None, Some(3), Some(2), Some(2)])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

const W: [f32; 6] = [1.0, -2.5, 3.25, 0.0, -0.0, 1e-30];

fn weight() -> TensorProto {
    f32_tensor("w", &[3, 2, 1, 1], &W)
}

#[test]
fn encode_decode_round_trip() {
    let m = small_model(weight());
    let bytes = encode_model(&m);
    let back = decode_model(&bytes).unwrap();
    assert_eq!(back, m);
    assert_eq!(encode_model(&back), bytes, "encoding must be deterministic");
    // proto2 presence survives: explicitly set zero/empty values are kept.
    let g = back.graph.as_ref().unwrap();
    assert_eq!(g.node[0].attribute[2].i, Some(1));
    assert_eq!(back.opset_import[0].domain.as_deref(), Some(""));
}

#[test]
fn fields_are_encoded_in_field_number_order() {
    // ModelProto: ir_version = 1, producer_name = 2, graph = 7, opset_import = 8.
    let m = small_model(weight());
    let bytes = encode_model(&m);
    let mut tags = Vec::new();
    let mut buf = bytes.as_slice();
    while !buf.is_empty() {
        let key = prost::encoding::decode_varint(&mut buf).unwrap();
        let (tag, wt) = ((key >> 3) as u32, (key & 7) as u8);
        tags.push(tag);
        match wt {
            0 => {
                prost::encoding::decode_varint(&mut buf).unwrap();
            }
            2 => {
                let len = prost::encoding::decode_varint(&mut buf).unwrap() as usize;
                buf = &buf[len..];
            }
            _ => panic!("unexpected wire type {wt}"),
        }
    }
    let mut sorted = tags.clone();
    sorted.sort();
    assert_eq!(tags, sorted);
    assert_eq!(tags.first(), Some(&1));
}

#[test]
fn float_data_and_raw_data_agree() {
    let raw = f32_tensor("w", &[3, 2, 1, 1], &W);
    assert_eq!(raw.raw_data.as_ref().unwrap().len(), 24);
    assert!(raw.float_data.is_empty());
    let typed = TensorProto {
        name: Some("w".into()),
        dims: vec![3, 2, 1, 1],
        data_type: Some(DataType::Float as i32),
        float_data: W.to_vec(),
        ..Default::default()
    };
    let a = tensor_f32(&raw).unwrap();
    let b = tensor_f32(&typed).unwrap();
    assert_eq!(
        a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        W.map(f32::to_bits)
    );
    assert_eq!(
        b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        W.map(f32::to_bits)
    );
    assert_eq!(tensor_dims(&raw).unwrap(), vec![3, 2, 1, 1]);
    assert_eq!(element_count(&raw).unwrap(), 6);
    assert_eq!(data_type(&raw).unwrap(), DataType::Float);
    // scalar: no dims, one element
    let s = f32_tensor("s", &[], &[7.0]);
    assert_eq!(element_count(&s).unwrap(), 1);
    assert_eq!(tensor_f32(&s).unwrap(), vec![7.0]);
}

#[test]
fn tensor_count_mismatches_are_errors() {
    let mut t = weight();
    t.dims = vec![7];
    let e = tensor_f32(&t).unwrap_err().to_string();
    assert!(e.contains("'w'") && e.contains("24 bytes"), "{e}");

    let mut t = weight();
    t.raw_data = None;
    t.float_data = vec![1.0; 5];
    let e = tensor_f32(&t).unwrap_err().to_string();
    assert!(
        e.contains("float_data has 5 values") && e.contains("6 elements"),
        "{e}"
    );

    let mut t = weight();
    t.float_data = vec![1.0; 6];
    let e = tensor_f32(&t).unwrap_err().to_string();
    assert!(e.contains("both raw_data"), "{e}");

    let mut t = weight();
    t.dims = vec![3, -2];
    let e = tensor_f32(&t).unwrap_err().to_string();
    assert!(e.contains("negative dimension -2"), "{e}");

    let mut t = weight();
    t.dims = vec![i64::MAX, i64::MAX, 4];
    let e = element_count(&t).unwrap_err().to_string();
    assert!(e.contains("overflows"), "{e}");
    assert!(tensor_f32(&t).is_err());

    let mut t = weight();
    t.data_location = Some(DataLocation::External as i32);
    let e = tensor_f32(&t).unwrap_err().to_string();
    assert!(e.contains("externally"), "{e}");

    let mut t = weight();
    t.data_type = Some(99);
    assert!(tensor_f32(&t)
        .unwrap_err()
        .to_string()
        .contains("unknown data_type 99"));
    t.data_type = Some(DataType::String as i32);
    assert!(tensor_f32(&t).unwrap_err().to_string().contains("STRING"));
    assert!(tensor_i64(&weight())
        .unwrap_err()
        .to_string()
        .contains("FLOAT"));

    assert!(try_f32_tensor("bad", &[2, 2], &[1.0]).is_err());
    assert!(try_f32_tensor("bad", &[-1], &[]).is_err());
}

#[test]
#[should_panic(expected = "f32_tensor")]
fn f32_tensor_panics_on_wrong_length() {
    f32_tensor("bad", &[2, 2], &[1.0]);
}

fn tensor(dt: DataType, dims: &[i64]) -> TensorProto {
    TensorProto {
        name: Some("t".into()),
        dims: dims.to_vec(),
        data_type: Some(dt as i32),
        ..Default::default()
    }
}

#[test]
fn other_float_types() {
    let vals = [1.5f64, -2.0, 1e300];
    let mut t = tensor(DataType::Double, &[3]);
    t.double_data = vals.to_vec();
    assert_eq!(tensor_f32(&t).unwrap(), vec![1.5, -2.0, f32::INFINITY]);
    let mut r = tensor(DataType::Double, &[3]);
    r.raw_data = Some(vals.iter().flat_map(|v| v.to_le_bytes()).collect());
    assert_eq!(tensor_f32(&r).unwrap(), tensor_f32(&t).unwrap());

    let half: [u16; 7] = [0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00, 0x8000, 0x3555];
    let expect = [
        1.0f32,
        -2.0,
        65504.0,
        5.960_464_5e-8,
        f32::INFINITY,
        -0.0,
        0.333_251_95,
    ];
    let mut h = tensor(DataType::Float16, &[7]);
    h.raw_data = Some(half.iter().flat_map(|v| v.to_le_bytes()).collect());
    let got = tensor_f32(&h).unwrap();
    assert_eq!(
        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        expect.map(f32::to_bits)
    );
    let mut h2 = tensor(DataType::Float16, &[7]);
    h2.int32_data = half.iter().map(|&v| i32::from(v)).collect();
    assert_eq!(
        tensor_f32(&h2)
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>(),
        expect.map(f32::to_bits)
    );
    let mut nan = tensor(DataType::Float16, &[1]);
    nan.int32_data = vec![0x7e00];
    assert!(tensor_f32(&nan).unwrap()[0].is_nan());
    nan.int32_data = vec![70000];
    assert!(tensor_f32(&nan).is_err());

    let mut b = tensor(DataType::Bfloat16, &[2]);
    b.raw_data = Some(vec![0x80, 0x3f, 0x40, 0xc0]); // 0x3f80 = 1.0, 0xc040 = -3.0
    assert_eq!(tensor_f32(&b).unwrap(), vec![1.0, -3.0]);
}

#[test]
fn integer_tensors() {
    let vals = [0i64, -1, i64::MAX, i64::MIN, 42];
    let mut a = tensor(DataType::Int64, &[5]);
    a.int64_data = vals.to_vec();
    let mut b = tensor(DataType::Int64, &[5]);
    b.raw_data = Some(vals.iter().flat_map(|v| v.to_le_bytes()).collect());
    assert_eq!(tensor_i64(&a).unwrap(), vals);
    assert_eq!(tensor_i64(&b).unwrap(), vals);

    let mut c = tensor(DataType::Int32, &[2]);
    c.raw_data = Some([-5i32, 7].iter().flat_map(|v| v.to_le_bytes()).collect());
    assert_eq!(tensor_i64(&c).unwrap(), [-5, 7]);
    let mut c2 = tensor(DataType::Int32, &[2]);
    c2.int32_data = vec![-5, 7];
    assert_eq!(tensor_i64(&c2).unwrap(), [-5, 7]);

    let mut d = tensor(DataType::Int8, &[3]);
    d.raw_data = Some(vec![0xff, 0x80, 0x7f]);
    assert_eq!(tensor_i64(&d).unwrap(), [-1, -128, 127]);
    let mut e = tensor(DataType::Uint8, &[3]);
    e.raw_data = Some(vec![0xff, 0x80, 0x7f]);
    assert_eq!(tensor_i64(&e).unwrap(), [255, 128, 127]);
    let mut f = tensor(DataType::Uint16, &[1]);
    f.raw_data = Some(vec![0xff, 0xff]);
    assert_eq!(tensor_i64(&f).unwrap(), [65535]);
    let mut g = tensor(DataType::Bool, &[2]);
    g.int32_data = vec![1, 0];
    assert_eq!(tensor_i64(&g).unwrap(), [1, 0]);
    let mut h = tensor(DataType::Uint64, &[2]);
    h.uint64_data = vec![3, u64::MAX];
    assert!(tensor_i64(&h).unwrap_err().to_string().contains("exceeds"));
    h.uint64_data = vec![3, 4];
    assert_eq!(tensor_i64(&h).unwrap(), [3, 4]);
    let mut u = tensor(DataType::Uint32, &[1]);
    u.raw_data = Some(u32::MAX.to_le_bytes().to_vec());
    assert_eq!(tensor_i64(&u).unwrap(), [i64::from(u32::MAX)]);
    let mut short = tensor(DataType::Int64, &[2]);
    short.raw_data = Some(vec![0; 9]);
    assert!(tensor_i64(&short)
        .unwrap_err()
        .to_string()
        .contains("9 bytes"));
    // empty tensor
    assert_eq!(
        tensor_i64(&tensor(DataType::Int64, &[0, 4])).unwrap(),
        Vec::<i64>::new()
    );
}

#[test]
fn element_sizes() {
    assert_eq!(raw_byte_len(DataType::Float, 3), Some(12));
    assert_eq!(raw_byte_len(DataType::Int4, 3), Some(2));
    assert_eq!(raw_byte_len(DataType::Uint2, 5), Some(2));
    assert_eq!(raw_byte_len(DataType::Complex128, 1), Some(16));
    assert_eq!(raw_byte_len(DataType::String, 1), None);
    assert_eq!(raw_byte_len(DataType::Double, usize::MAX), None);
    assert_eq!(element_bits(DataType::Float16), Some(16));
    assert_eq!(data_type_name(1), "FLOAT");
    assert_eq!(data_type_name(1000), "unknown(1000)");
}

#[test]
fn attribute_getters() {
    let m = small_model(weight());
    let g = m.graph.unwrap();
    let conv = &g.node[0];
    assert_eq!(attr_ints(conv, "pads"), Some(&[0i64, 0, 1, 1][..]));
    assert_eq!(attr_int(conv, "group"), Some(1));
    assert_eq!(attr_string(conv, "auto_pad"), Some("NOTSET"));
    assert_eq!(attr_int(conv, "pads"), None, "wrong type");
    assert_eq!(attr_int(conv, "missing"), None);
    assert_eq!(attr_float(&g.node[3], "alpha"), Some(0.125));
    assert_eq!(attr_floats(&g.node[3], "alpha"), None);
    let t = attr_tensor(&g.node[1], "value").unwrap();
    assert_eq!(tensor_f32(t).unwrap(), vec![0.5]);
    assert!(attr(conv, "kernel_shape").is_some());
    // legacy attribute without type
    let legacy = NodeProto {
        attribute: vec![AttributeProto {
            name: Some("axis".into()),
            i: Some(-1),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(attr_int(&legacy, "axis"), Some(-1));
    assert_eq!(attr_float(&legacy, "axis"), None);
}

#[test]
fn malformed_bytes_are_errors_not_panics() {
    assert!(matches!(
        decode_model(&[]),
        Err(OnnxError::NotAModel { .. })
    ));
    assert!(matches!(
        decode_model(&[0xff; 16]),
        Err(OnnxError::Decode { .. })
    ));
    // wire type 7 does not exist
    assert!(decode_model(&[0x0f]).is_err());
    // a length prefix far beyond the buffer
    assert!(decode_model(&[0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2]).is_err());
    let e = decode_model(&[0xff; 16]).unwrap_err().to_string();
    assert!(
        e.contains("<bytes>") && e.contains("not a valid ONNX model"),
        "{e}"
    );

    let good = encode_model(&small_model(weight()));
    // every truncation: must not panic; cutting inside the graph field must fail
    let mut errors = 0;
    for n in 0..good.len() {
        if decode_model(&good[..n]).is_err() {
            errors += 1;
        }
    }
    assert!(
        errors > good.len() / 2,
        "{errors} of {} truncations failed",
        good.len()
    );
    // deterministic fuzzing: random bytes and bit flips, only checking for no panic
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..3000 {
        let len = (next() % 64) as usize;
        let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = decode_model(&junk);
        let mut flipped = good.clone();
        let i = (next() as usize) % flipped.len();
        flipped[i] ^= 1 << (next() % 8);
        if let Ok(m) = decode_model(&flipped) {
            let _ = encode_model(&m);
            if let Some(g) = &m.graph {
                for t in &g.initializer {
                    let _ = tensor_f32(t);
                    let _ = tensor_i64(t);
                }
            }
        }
    }
}

/// ModelProto.graph -> (GraphProto.node -> NodeProto.attribute -> AttributeProto.g)* nesting.
fn nested_model_bytes(levels: usize) -> Vec<u8> {
    assert_eq!(levels % 3, 0);
    let mut inner: Vec<u8> = Vec::new();
    for level in 0..levels {
        let tag = match level % 3 {
            0 => 0x32, // AttributeProto.g = 6 (wraps a GraphProto)
            1 => 0x2a, // NodeProto.attribute = 5
            _ => 0x0a, // GraphProto.node = 1
        };
        let mut outer = vec![tag];
        prost::encoding::encode_varint(inner.len() as u64, &mut outer);
        outer.extend_from_slice(&inner);
        inner = outer;
    }
    let mut bytes = vec![0x3a]; // ModelProto.graph = 7
    prost::encoding::encode_varint(inner.len() as u64, &mut bytes);
    bytes.extend_from_slice(&inner);
    bytes
}

#[test]
fn deeply_nested_message_is_an_error() {
    let ok = decode_model(&nested_model_bytes(30)).unwrap();
    let g = ok.graph.unwrap();
    assert!(g.node[0].attribute[0].g.is_some());
    // prost's recursion limit (100) turns pathological nesting into an error, not a stack overflow
    assert!(decode_model(&nested_model_bytes(600)).is_err());
}

fn external(t: &mut TensorProto, location: &str, offset: Option<u64>, length: Option<u64>) {
    t.raw_data = None;
    t.data_location = Some(DataLocation::External as i32);
    let kv = |k: &str, v: String| StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    t.external_data = vec![kv("location", location.into())];
    if let Some(o) = offset {
        t.external_data.push(kv("offset", o.to_string()));
    }
    if let Some(l) = length {
        t.external_data.push(kv("length", l.to_string()));
    }
}

fn w_bytes() -> Vec<u8> {
    W.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes `prefix ++ W ++ suffix` to `dir/rel` and a model whose weight `w` points at it.
fn external_model(dir: &Path, location: &str, offset: Option<u64>, length: Option<u64>) -> PathBuf {
    let mut w = weight();
    external(&mut w, location, offset, length);
    let model = small_model(w);
    let path = dir.join("model.onnx");
    write_model(&path, &model).unwrap();
    path
}

fn write_side_file(path: &Path, prefix: usize, suffix: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut data = vec![0xAB; prefix];
    data.extend(w_bytes());
    data.extend(vec![0xCD; suffix]);
    std::fs::write(path, data).unwrap();
}

#[test]
fn external_data_is_loaded() {
    let dir = TempDir::new("ext");
    write_side_file(&dir.path().join("weights.bin"), 16, 8);
    let path = external_model(dir.path(), "weights.bin", Some(16), Some(24));
    let raw = decode_model(&std::fs::read(&path).unwrap()).unwrap();
    let w_raw = &raw.graph.as_ref().unwrap().initializer[0];
    assert!(
        tensor_f32(w_raw).is_err(),
        "unresolved external data must not be readable"
    );

    let m = read_model(&path).unwrap();
    let w = &m.graph.as_ref().unwrap().initializer[0];
    assert_eq!(w.data_location, Some(DataLocation::Default as i32));
    assert!(w.external_data.is_empty());
    assert_eq!(w.raw_data.as_deref(), Some(&w_bytes()[..]));
    assert_eq!(tensor_f32(w).unwrap(), W.to_vec());
    // everything else is untouched
    let mut expect = raw.clone();
    expect.graph.as_mut().unwrap().initializer[0] = w.clone();
    assert_eq!(m, expect);

    // subdirectory, no offset/length (whole file)
    let dir2 = TempDir::new("ext2");
    write_side_file(&dir2.path().join("data/w.bin"), 0, 0);
    let path2 = external_model(dir2.path(), "data/w.bin", None, None);
    let m2 = read_model(&path2).unwrap();
    assert_eq!(
        tensor_f32(&m2.graph.unwrap().initializer[0]).unwrap(),
        W.to_vec()
    );
}

#[test]
fn external_data_in_attribute_tensor_is_loaded() {
    let dir = TempDir::new("ext-attr");
    std::fs::write(dir.path().join("c.bin"), 0.5f32.to_le_bytes()).unwrap();
    let mut model = small_model(weight());
    let g = model.graph.as_mut().unwrap();
    let t = g.node[1].attribute[0].t.as_mut().unwrap();
    external(t, "c.bin", Some(0), Some(4));
    let path = dir.path().join("m.onnx");
    write_model(&path, &model).unwrap();
    let m = read_model(&path).unwrap();
    let t = attr_tensor(&m.graph.as_ref().unwrap().node[1], "value").unwrap();
    assert_eq!(tensor_f32(t).unwrap(), vec![0.5]);
}

fn ext_error(
    location: &str,
    offset: Option<u64>,
    length: Option<u64>,
    side: (usize, usize),
) -> String {
    let dir = TempDir::new("bad");
    write_side_file(&dir.path().join("weights.bin"), side.0, side.1);
    let path = external_model(dir.path(), location, offset, length);
    let e = read_model(&path).unwrap_err();
    assert!(matches!(e, OnnxError::ExternalData { .. }), "{e:?}");
    let s = e.to_string();
    assert!(s.contains("model.onnx") && s.contains("tensor 'w'"), "{s}");
    s
}

#[test]
fn bad_external_data_is_rejected() {
    let e = ext_error("../weights.bin", Some(0), Some(24), (0, 0));
    assert!(e.contains("escape"), "{e}");
    let e = ext_error("sub/../../weights.bin", Some(0), Some(24), (0, 0));
    assert!(e.contains("escape"), "{e}");
    let e = ext_error("/etc/passwd", None, None, (0, 0));
    assert!(e.contains("absolute"), "{e}");
    let e = ext_error("C:\\w.bin", None, None, (0, 0));
    assert!(e.contains("absolute"), "{e}");
    let e = ext_error("", None, None, (0, 0));
    assert!(e.contains("no 'location'"), "{e}");
    let e = ext_error("missing.bin", None, None, (0, 0));
    assert!(e.contains("cannot open"), "{e}");
    let e = ext_error("weights.bin", Some(100), Some(24), (0, 0));
    assert!(e.contains("offset 100 is beyond"), "{e}");
    let e = ext_error("weights.bin", Some(4), Some(24), (0, 0));
    assert!(e.contains("beyond the end"), "{e}");
    // huge length: rejected before any allocation
    let e = ext_error("weights.bin", Some(0), Some(u64::MAX), (0, 0));
    assert!(e.contains("beyond the end"), "{e}");
    let e = ext_error("weights.bin", Some(u64::MAX), Some(u64::MAX), (0, 0));
    assert!(e.contains("beyond"), "{e}");
    // in range but wrong size for dims [3,2,1,1] FLOAT
    let e = ext_error("weights.bin", Some(0), Some(20), (0, 0));
    assert!(
        e.contains("length is 20 bytes") && e.contains("need 24"),
        "{e}"
    );
    let e = ext_error("weights.bin", None, None, (0, 4));
    assert!(e.contains("length is 28 bytes"), "{e}");
    let e = ext_error(".", None, None, (0, 0));
    assert!(e.contains("not a regular file"), "{e}");

    // malformed offset
    let dir = TempDir::new("bad-offset");
    write_side_file(&dir.path().join("weights.bin"), 0, 0);
    let mut w = weight();
    external(&mut w, "weights.bin", None, None);
    w.external_data.push(StringStringEntryProto {
        key: Some("offset".into()),
        value: Some("-3".into()),
    });
    let path = dir.path().join("model.onnx");
    write_model(&path, &small_model(w)).unwrap();
    let e = read_model(&path).unwrap_err().to_string();
    assert!(e.contains("'offset' = '-3'"), "{e}");
}

#[cfg(unix)]
#[test]
fn symlink_escaping_the_model_directory_is_rejected() {
    let outside = TempDir::new("outside");
    write_side_file(&outside.path().join("secret.bin"), 0, 0);
    let dir = TempDir::new("link");
    std::os::unix::fs::symlink(outside.path().join("secret.bin"), dir.path().join("w.bin"))
        .unwrap();
    let path = external_model(dir.path(), "w.bin", None, None);
    let e = read_model(&path).unwrap_err().to_string();
    assert!(e.contains("outside the model directory"), "{e}");
}

#[test]
fn write_model_is_atomic_and_deterministic() {
    let dir = TempDir::new("write");
    let path = dir.path().join("m.onnx");
    std::fs::write(&path, b"old contents").unwrap();
    let m = small_model(weight());
    write_model(&path, &m).unwrap();
    let first = std::fs::read(&path).unwrap();
    assert_eq!(first, encode_model(&m));
    write_model(&path, &m).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), first);
    assert_eq!(read_model(&path).unwrap(), m);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("m.onnx")],
        "no temp file left"
    );

    let e = write_model(&dir.path().join("no/such/dir/m.onnx"), &m).unwrap_err();
    assert!(matches!(e, OnnxError::Io { .. }));
    assert!(e.to_string().contains("no/such/dir"), "{e}");

    let e = read_model(&dir.path().join("absent.onnx"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot read ONNX model") && e.contains("absent.onnx"),
        "{e}"
    );
    std::fs::write(dir.path().join("junk.onnx"), [0xffu8; 32]).unwrap();
    let e = read_model(&dir.path().join("junk.onnx"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("junk.onnx"), "{e}");
}

#[test]
fn unknown_enum_values_survive_round_trip() {
    let mut m = small_model(weight());
    m.graph.as_mut().unwrap().initializer[0].data_type = Some(77);
    let back = decode_model(&encode_model(&m)).unwrap();
    assert_eq!(back.graph.unwrap().initializer[0].data_type, Some(77));
    let _ = ModelProto::decode(&encode_model(&m)[..]).unwrap();
}
