//! Attribute getters on `NodeProto`.
//!
//! Each getter returns `None` when the attribute is absent or has another type. Attributes
//! without a `type` (IR version < 0.0.2) are accepted when the requested value field is set.

use crate::onnx::attribute_proto::AttributeType;
use crate::onnx::{AttributeProto, NodeProto, TensorProto};

/// The attribute called `name`, if any.
pub fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
}

/// The attribute if its type is `ty` or unset; the flag tells whether it was unset (legacy).
fn typed<'a>(
    node: &'a NodeProto,
    name: &str,
    ty: AttributeType,
) -> Option<(&'a AttributeProto, bool)> {
    let a = attr(node, name)?;
    match a.r#type.unwrap_or(0) {
        0 => Some((a, true)),
        t if t == ty as i32 => Some((a, false)),
        _ => None,
    }
}

/// INT attribute.
pub fn attr_int(node: &NodeProto, name: &str) -> Option<i64> {
    let (a, untyped) = typed(node, name, AttributeType::Int)?;
    if untyped {
        a.i
    } else {
        Some(a.i.unwrap_or(0))
    }
}

/// INTS attribute.
pub fn attr_ints<'a>(node: &'a NodeProto, name: &str) -> Option<&'a [i64]> {
    let (a, untyped) = typed(node, name, AttributeType::Ints)?;
    (!untyped || !a.ints.is_empty()).then_some(a.ints.as_slice())
}

/// FLOAT attribute.
pub fn attr_float(node: &NodeProto, name: &str) -> Option<f32> {
    let (a, untyped) = typed(node, name, AttributeType::Float)?;
    if untyped {
        a.f
    } else {
        Some(a.f.unwrap_or(0.0))
    }
}

/// FLOATS attribute.
pub fn attr_floats<'a>(node: &'a NodeProto, name: &str) -> Option<&'a [f32]> {
    let (a, untyped) = typed(node, name, AttributeType::Floats)?;
    (!untyped || !a.floats.is_empty()).then_some(a.floats.as_slice())
}

/// STRING attribute as UTF-8 text (`None` also if the bytes are not valid UTF-8).
pub fn attr_string<'a>(node: &'a NodeProto, name: &str) -> Option<&'a str> {
    let (a, untyped) = typed(node, name, AttributeType::String)?;
    match a.s.as_deref() {
        Some(s) => std::str::from_utf8(s).ok(),
        None if untyped => None,
        None => Some(""),
    }
}

/// TENSOR attribute (e.g. the `value` of a `Constant` node).
pub fn attr_tensor<'a>(node: &'a NodeProto, name: &str) -> Option<&'a TensorProto> {
    typed(node, name, AttributeType::Tensor)?.0.t.as_ref()
}
