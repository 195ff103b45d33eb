//! The ONNX reader and the engine's import on arbitrary bytes: an error or a model, never a
//! panic, a hang or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = afp_onnx::decode_model(data) {
        let _ = afp_onnx::encode_model(&m);
        let _ = afp_engine::Model::from_proto(m);
    }
});
