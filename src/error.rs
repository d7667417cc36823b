//! One error type for the whole crate. Every variant names what was wrong and where,
//! so the CLI can print it as is and exit non-zero.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A model file (GGUF, safetensors, config.json) is malformed, truncated or hostile.
    #[error("{file}: {msg}")]
    Format { file: String, msg: String },
    /// A tensor the model needs is missing or has the wrong shape or type.
    #[error("{file}: tensor '{tensor}': {msg}")]
    Tensor { file: String, tensor: String, msg: String },
    /// The model's architecture or one of its settings is not supported.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    /// A user-supplied argument is out of range or inconsistent.
    #[error("invalid argument {arg}: {msg}")]
    Arg { arg: String, msg: String },
    /// The prompt (plus the tokens to generate) does not fit the context.
    #[error("context: {0}")]
    Context(String),
    /// No GPU adapter could be found or opened.
    #[error("no GPU: {0}")]
    NoAdapter(String),
    /// The adapter lacks a feature or limit quill needs.
    #[error("GPU '{adapter}' lacks what this needs: {msg}")]
    MissingCapability { adapter: String, msg: String },
    /// An op was called with shapes that do not fit together.
    #[error("op {op}: {msg}")]
    Shape { op: &'static str, msg: String },
    /// wgpu reported a validation or out-of-memory error, or the device was lost.
    #[error("GPU error in {during}: {msg}")]
    Gpu { during: String, msg: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn format(file: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Format { file: file.into(), msg: msg.into() }
    }
    pub fn tensor(file: impl Into<String>, tensor: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor { file: file.into(), tensor: tensor.into(), msg: msg.into() }
    }
    pub fn arg(arg: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Arg { arg: arg.into(), msg: msg.into() }
    }
    pub fn gpu(during: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Gpu { during: during.into(), msg: msg.into() }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
