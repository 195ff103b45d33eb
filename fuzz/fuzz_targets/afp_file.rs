//! The `.afp` reader on arbitrary bytes: an error or a file, never a panic, a hang or a huge
//! allocation. What it accepts must lower and re-serialize.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = afp_quant::afpfile::from_bytes(data) {
        // A file that reads must write back.
        let _ = afp_quant::afpfile::to_bytes(&f.model, &f.quantized, f.card.as_ref());
    }
});
