//! tokenizer (being built).
