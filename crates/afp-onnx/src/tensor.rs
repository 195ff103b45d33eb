//! Typed access to `TensorProto` contents.

use crate::onnx::tensor_proto::{DataLocation, DataType};
use crate::onnx::TensorProto;
use crate::OnnxError;

fn tname(t: &TensorProto) -> &str {
    t.name.as_deref().unwrap_or("")
}

/// The tensor's element type. Errors for values that are not in the ONNX `DataType` enum.
pub fn data_type(t: &TensorProto) -> Result<DataType, OnnxError> {
    let v = t.data_type.unwrap_or(0);
    DataType::try_from(v).map_err(|_| OnnxError::tensor(tname(t), format!("unknown data_type {v}")))
}

/// The ONNX name of a `data_type` value (`"FLOAT"`, ...), or `unknown(N)`.
pub fn data_type_name(data_type: i32) -> String {
    match DataType::try_from(data_type) {
        Ok(dt) => dt.as_str_name().to_string(),
        Err(_) => format!("unknown({data_type})"),
    }
}

/// Bits per element of a fixed-size element type as stored in `raw_data`
/// (4 for INT4/UINT4/FLOAT4E2M1, 2 for INT2/UINT2). `None` for UNDEFINED, STRING and the
/// 6-bit float types (whose packing this crate does not handle).
pub fn element_bits(dt: DataType) -> Option<u32> {
    use DataType::*;
    Some(match dt {
        Undefined | String | Float6e2m3 | Float6e3m2 => return None,
        Uint2 | Int2 => 2,
        Uint4 | Int4 | Float4e2m1 => 4,
        Uint8 | Int8 | Bool | Float8e4m3fn | Float8e4m3fnuz | Float8e5m2 | Float8e5m2fnuz
        | Float8e8m0 => 8,
        Uint16 | Int16 | Float16 | Bfloat16 => 16,
        Float | Int32 | Uint32 => 32,
        Double | Int64 | Uint64 | Complex64 => 64,
        Complex128 => 128,
    })
}

/// Number of bytes `count` elements of type `dt` occupy in `raw_data` (sub-byte types are
/// packed, the last byte padded). `None` on overflow or when the type has no fixed size.
pub fn raw_byte_len(dt: DataType, count: usize) -> Option<usize> {
    let bits = element_bits(dt)? as usize;
    Some(count.checked_mul(bits)?.div_ceil(8))
}

/// The tensor's dimensions as `usize`. Errors on negative dimensions.
pub fn tensor_dims(t: &TensorProto) -> Result<Vec<usize>, OnnxError> {
    t.dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| {
                OnnxError::tensor(
                    tname(t),
                    format!("negative dimension {d} in dims {:?}", t.dims),
                )
            })
        })
        .collect()
}

/// Number of elements (product of the dims, 1 for a scalar), overflow-checked.
pub fn element_count(t: &TensorProto) -> Result<usize, OnnxError> {
    tensor_dims(t)?.into_iter().try_fold(1usize, |acc, d| {
        acc.checked_mul(d).ok_or_else(|| {
            OnnxError::tensor(
                tname(t),
                format!("element count of dims {:?} overflows usize", t.dims),
            )
        })
    })
}

/// The raw bytes to decode, or `None` to use the typed field. Errors if the data is still
/// external or if both raw_data and the typed field hold values.
fn raw_source<'a>(
    t: &'a TensorProto,
    typed_field: &str,
    typed_len: usize,
) -> Result<Option<&'a [u8]>, OnnxError> {
    if t.data_location == Some(DataLocation::External as i32) {
        return Err(OnnxError::tensor(
            tname(t),
            "data is stored externally and was not loaded (use read_model on the model file)",
        ));
    }
    match t.raw_data.as_deref() {
        Some(raw) if !raw.is_empty() && typed_len > 0 => Err(OnnxError::tensor(
            tname(t),
            format!(
                "both raw_data ({} bytes) and {typed_field} ({typed_len} values) are set",
                raw.len()
            ),
        )),
        Some(raw) if !raw.is_empty() => Ok(Some(raw)),
        _ => Ok(None),
    }
}

fn from_raw<const N: usize, T>(
    t: &TensorProto,
    raw: &[u8],
    count: usize,
    conv: impl Fn([u8; N]) -> T,
) -> Result<Vec<T>, OnnxError> {
    let expected = count.checked_mul(N);
    if expected != Some(raw.len()) {
        return Err(OnnxError::tensor(
            tname(t),
            format!(
                "raw_data has {} bytes but dims {:?} of {} need {count} x {N} bytes",
                raw.len(),
                t.dims,
                data_type_name(t.data_type.unwrap_or(0))
            ),
        ));
    }
    Ok(raw
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            conv(a)
        })
        .collect())
}

fn from_typed<S: Copy, T>(
    t: &TensorProto,
    field: &str,
    values: &[S],
    count: usize,
    conv: impl Fn(S) -> Result<T, OnnxError>,
) -> Result<Vec<T>, OnnxError> {
    if values.len() != count {
        return Err(OnnxError::tensor(
            tname(t),
            format!(
                "{field} has {} values but dims {:?} give {count} elements",
                values.len(),
                t.dims
            ),
        ));
    }
    values.iter().map(|&v| conv(v)).collect()
}

/// IEEE 754 half precision bits to f32 (exact).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    if exp == 0 {
        // zero or subnormal: man * 2^-24, exact in f32
        let v = man as f32 * f32::from_bits(0x3380_0000);
        if sign != 0 {
            -v
        } else {
            v
        }
    } else if exp == 0x1f {
        f32::from_bits(sign | 0x7f80_0000 | (man << 13))
    } else {
        f32::from_bits(sign | ((exp + 112) << 23) | (man << 13))
    }
}

/// The tensor's values as f32, from `raw_data` (little-endian) or the typed field.
///
/// Supports FLOAT (exact), DOUBLE (rounded to f32), FLOAT16 and BFLOAT16 (exact). The number
/// of values must equal the product of the dims.
pub fn tensor_f32(t: &TensorProto) -> Result<Vec<f32>, OnnxError> {
    let dt = data_type(t)?;
    let count = element_count(t)?;
    let ok = |v| Ok(v);
    match dt {
        DataType::Float => match raw_source(t, "float_data", t.float_data.len())? {
            Some(raw) => from_raw::<4, _>(t, raw, count, f32::from_le_bytes),
            None => from_typed(t, "float_data", &t.float_data, count, ok),
        },
        DataType::Double => match raw_source(t, "double_data", t.double_data.len())? {
            Some(raw) => from_raw::<8, _>(t, raw, count, |b| f64::from_le_bytes(b) as f32),
            None => from_typed(t, "double_data", &t.double_data, count, |v| Ok(v as f32)),
        },
        DataType::Float16 | DataType::Bfloat16 => {
            let conv = |bits: u16| {
                if dt == DataType::Float16 {
                    f16_to_f32(bits)
                } else {
                    f32::from_bits(u32::from(bits) << 16)
                }
            };
            match raw_source(t, "int32_data", t.int32_data.len())? {
                Some(raw) => from_raw::<2, _>(t, raw, count, |b| conv(u16::from_le_bytes(b))),
                None => from_typed(t, "int32_data", &t.int32_data, count, |v| {
                    u16::try_from(v).map(conv).map_err(|_| {
                        OnnxError::tensor(
                            tname(t),
                            format!("int32_data value {v} is not a 16-bit pattern"),
                        )
                    })
                }),
            }
        }
        other => Err(OnnxError::tensor(
            tname(t),
            format!(
                "cannot read {} data as f32 (supported: FLOAT, DOUBLE, FLOAT16, BFLOAT16)",
                other.as_str_name()
            ),
        )),
    }
}

/// The tensor's values as i64, from `raw_data` (little-endian) or the typed field
/// (`int64_data`, `int32_data` or `uint64_data`).
///
/// Supports INT64, INT32, INT16, INT8, UINT8, UINT16, UINT32, UINT64 (values above
/// `i64::MAX` are an error) and BOOL. The number of values must equal the product of the dims.
pub fn tensor_i64(t: &TensorProto) -> Result<Vec<i64>, OnnxError> {
    let dt = data_type(t)?;
    let count = element_count(t)?;
    let from_i32 = |v: i32| Ok(i64::from(v));
    let u64_to_i64 = |v: u64| {
        i64::try_from(v)
            .map_err(|_| OnnxError::tensor(tname(t), format!("UINT64 value {v} exceeds i64::MAX")))
    };
    use DataType::*;
    let (field, typed_len) = match dt {
        Int64 => ("int64_data", t.int64_data.len()),
        Int32 | Int16 | Int8 | Uint8 | Uint16 | Bool => ("int32_data", t.int32_data.len()),
        Uint32 | Uint64 => ("uint64_data", t.uint64_data.len()),
        other => {
            return Err(OnnxError::tensor(
                tname(t),
                format!(
                    "cannot read {} data as i64 (supported: INT8/16/32/64, UINT8/16/32/64, BOOL)",
                    other.as_str_name()
                ),
            ))
        }
    };
    match raw_source(t, field, typed_len)? {
        Some(raw) => match dt {
            Int64 => from_raw::<8, _>(t, raw, count, i64::from_le_bytes),
            Int32 => from_raw::<4, _>(t, raw, count, |b| i64::from(i32::from_le_bytes(b))),
            Int16 => from_raw::<2, _>(t, raw, count, |b| i64::from(i16::from_le_bytes(b))),
            Int8 => from_raw::<1, _>(t, raw, count, |b| i64::from(i8::from_le_bytes(b))),
            Uint8 | Bool => from_raw::<1, _>(t, raw, count, |b| i64::from(b[0])),
            Uint16 => from_raw::<2, _>(t, raw, count, |b| i64::from(u16::from_le_bytes(b))),
            Uint32 => from_raw::<4, _>(t, raw, count, |b| i64::from(u32::from_le_bytes(b))),
            _ => from_raw::<8, _>(t, raw, count, u64::from_le_bytes)?
                .into_iter()
                .map(u64_to_i64)
                .collect(),
        },
        None => match dt {
            Int64 => from_typed(t, field, &t.int64_data, count, Ok),
            Uint32 | Uint64 => from_typed(t, field, &t.uint64_data, count, u64_to_i64),
            _ => from_typed(t, field, &t.int32_data, count, from_i32),
        },
    }
}

/// The tensor's data in the `raw_data` layout (little-endian, sub-byte types packed), whether
/// it is stored in `raw_data` or in a typed field. Fixed-size element types only; the byte
/// count is checked against the dims.
pub fn tensor_raw_bytes(t: &TensorProto) -> Result<Vec<u8>, OnnxError> {
    use DataType::*;
    let dt = data_type(t)?;
    let count = element_count(t)?;
    let expected = raw_byte_len(dt, count).ok_or_else(|| {
        OnnxError::tensor(
            tname(t),
            format!("{} tensors have no fixed element size", dt.as_str_name()),
        )
    })?;
    let typed_len = match dt {
        Float => t.float_data.len(),
        Double => t.double_data.len(),
        Int64 => t.int64_data.len(),
        Uint32 | Uint64 => t.uint64_data.len(),
        _ => t.int32_data.len(),
    };
    if let Some(raw) = raw_source(t, "typed data", typed_len)? {
        if raw.len() != expected {
            return Err(OnnxError::tensor(
                tname(t),
                format!(
                    "raw_data has {} bytes but dims {:?} of {} need {expected}",
                    raw.len(),
                    t.dims,
                    dt.as_str_name()
                ),
            ));
        }
        return Ok(raw.to_vec());
    }
    let bytes: Vec<u8> = match dt {
        Float => from_typed(t, "float_data", &t.float_data, count, |v| {
            Ok(v.to_le_bytes())
        })?
        .concat(),
        Double => from_typed(t, "double_data", &t.double_data, count, |v| {
            Ok(v.to_le_bytes())
        })?
        .concat(),
        Int64 => from_typed(t, "int64_data", &t.int64_data, count, |v| {
            Ok(v.to_le_bytes())
        })?
        .concat(),
        Uint64 => from_typed(t, "uint64_data", &t.uint64_data, count, |v| {
            Ok(v.to_le_bytes())
        })?
        .concat(),
        Uint32 => from_typed(t, "uint64_data", &t.uint64_data, count, |v| {
            u32::try_from(v)
                .map(|v| v.to_le_bytes().to_vec())
                .map_err(|_| OnnxError::tensor(tname(t), format!("UINT32 value {v} out of range")))
        })?
        .concat(),
        Int32 => from_typed(t, "int32_data", &t.int32_data, count, |v| {
            Ok(v.to_le_bytes())
        })?
        .concat(),
        Int16 | Uint16 | Float16 | Bfloat16 => {
            from_typed(t, "int32_data", &t.int32_data, count, |v| {
                Ok((v as u16).to_le_bytes().to_vec())
            })?
            .concat()
        }
        Int8 | Uint8 | Bool | Float8e4m3fn | Float8e4m3fnuz | Float8e5m2 | Float8e5m2fnuz
        | Float8e8m0 => from_typed(t, "int32_data", &t.int32_data, count, |v| Ok(v as u8))?,
        other => {
            return Err(OnnxError::tensor(
                tname(t),
                format!(
                    "{} data in a typed field is not supported",
                    other.as_str_name()
                ),
            ))
        }
    };
    Ok(bytes)
}

/// Removes the tensor's data (raw, typed and external), keeping its name, type and dims.
pub fn clear_tensor_data(t: &mut TensorProto) {
    t.raw_data = None;
    t.float_data.clear();
    t.int32_data.clear();
    t.string_data.clear();
    t.int64_data.clear();
    t.double_data.clear();
    t.uint64_data.clear();
    t.external_data.clear();
    t.data_location = None;
}

/// Builds a FLOAT tensor with its data in `raw_data` (little-endian).
///
/// # Errors
/// If a dim is negative, or the product of `dims` differs from `data.len()`.
pub fn try_f32_tensor(name: &str, dims: &[i64], data: &[f32]) -> Result<TensorProto, OnnxError> {
    let mut t = TensorProto {
        name: Some(name.to_string()),
        dims: dims.to_vec(),
        data_type: Some(DataType::Float as i32),
        ..Default::default()
    };
    let count = element_count(&t)?;
    if count != data.len() {
        return Err(OnnxError::tensor(
            name,
            format!(
                "dims {dims:?} give {count} elements but {} values were given",
                data.len()
            ),
        ));
    }
    t.raw_data = Some(data.iter().flat_map(|v| v.to_le_bytes()).collect());
    Ok(t)
}

/// Builds a FLOAT tensor with its data in `raw_data` (little-endian).
///
/// # Panics
/// If a dim is negative or the product of `dims` differs from `data.len()` (a programming
/// error); use [`try_f32_tensor`] to get an error instead.
pub fn f32_tensor(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    match try_f32_tensor(name, dims, data) {
        Ok(t) => t,
        Err(e) => panic!("f32_tensor: {e}"),
    }
}
