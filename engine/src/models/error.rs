//! Typed errors of the model layer (loading and running).

/// What went wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("tensor `{name}` is missing from {source_desc}; the file is incomplete or not a supported {arch} model")]
    MissingTensor { name: String, source_desc: String, arch: String },

    #[error("tensor `{name}`: {msg}")]
    BadTensor { name: String, msg: String },

    #[error("model configuration `{key}`: {msg}")]
    BadConfig { key: String, msg: String },

    #[error("unsupported model: {0}")]
    Unsupported(String),

    #[error("token id {id} is out of range: the vocabulary has {vocab} tokens")]
    TokenOutOfRange { id: u32, vocab: usize },

    #[error("context overflow: {have} tokens in the cache + {adding} new exceed the state's capacity of {max}; start a new sequence or raise the context size")]
    ContextOverflow { have: usize, adding: usize, max: usize },

    #[error("the sequence state does not belong to this model (wrong cache type)")]
    WrongState,

    #[error("kernel failed on `{name}`: {msg}")]
    Kernel { name: String, msg: String },
}

impl ModelError {
    pub fn config(key: &str, msg: impl Into<String>) -> Self {
        ModelError::BadConfig { key: key.to_string(), msg: msg.into() }
    }

    pub fn tensor(name: &str, msg: impl Into<String>) -> Self {
        ModelError::BadTensor { name: name.to_string(), msg: msg.into() }
    }
}
