//! Constant tensors: initializers and the results of constant folding.

use afp_onnx::{DataType, TensorProto};

/// Element data of a constant. Integer and boolean tensors (shape arithmetic) are held as i64.
#[derive(Debug, Clone, PartialEq)]
pub enum ConstData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Const {
    pub shape: Vec<usize>,
    pub data: ConstData,
}

impl Const {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Const {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Const {
            shape,
            data: ConstData::F32(data),
        }
    }
    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Const {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Const {
            shape,
            data: ConstData::I64(data),
        }
    }
    pub fn len(&self) -> usize {
        match &self.data {
            ConstData::F32(v) => v.len(),
            ConstData::I64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn is_float(&self) -> bool {
        matches!(self.data, ConstData::F32(_))
    }
    /// The values as f32 (integers converted).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            ConstData::F32(v) => v.clone(),
            ConstData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
    /// The values as i64 (floats truncated toward zero, as ONNX Cast does).
    pub fn to_i64(&self) -> Vec<i64> {
        match &self.data {
            ConstData::F32(v) => v.iter().map(|&x| x as i64).collect(),
            ConstData::I64(v) => v.clone(),
        }
    }
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            ConstData::F32(v) => Some(v),
            ConstData::I64(_) => None,
        }
    }

    /// Reads an ONNX tensor: float types become f32, integer and boolean types i64.
    pub fn from_proto(t: &TensorProto) -> Result<Const, afp_onnx::OnnxError> {
        let shape = afp_onnx::tensor_dims(t)?;
        let dt = afp_onnx::data_type(t)?;
        let data = match dt {
            DataType::Float | DataType::Double | DataType::Float16 | DataType::Bfloat16 => {
                ConstData::F32(afp_onnx::tensor_f32(t)?)
            }
            _ => ConstData::I64(afp_onnx::tensor_i64(t)?),
        };
        Ok(Const { shape, data })
    }
}
