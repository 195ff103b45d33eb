use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Onnx(#[from] afp_onnx::OnnxError),
    #[error("unsupported operators (nothing was run): {}", list_unsupported(.0))]
    Unsupported(Vec<(String, Vec<String>)>),
    #[error("node {node:?} ({op}): {reason}")]
    Node {
        node: String,
        op: String,
        reason: String,
    },
    #[error("model graph: {0}")]
    Graph(String),
    #[error("input {name:?}: {reason}")]
    Input { name: String, reason: String },
}

fn list_unsupported(ops: &[(String, Vec<String>)]) -> String {
    ops.iter()
        .map(|(op, nodes)| format!("{op} (nodes: {})", nodes.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

pub(crate) fn node_err(node: &str, op: &str, reason: impl Into<String>) -> EngineError {
    EngineError::Node {
        node: node.to_string(),
        op: op.to_string(),
        reason: reason.into(),
    }
}
