//! Downloads from Hugging Face / ModelScope / plain file servers.
