//! Runtime: sampling, generation (stop strings, EOS, streaming detokenization) and the
//! engine thread that batches decode steps over all active sequences.

pub mod codec;
pub mod experts;
pub mod generate;
pub mod pool;
pub mod profile;
pub mod queue;
pub mod sampling;
pub mod scheduler;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

pub use generate::{ChatMessage, Event, FinishReason, Finished, GenerateRequest, TextCodec, TokenEvent};
pub use sampling::{SamplingParams, TokenLogprobs};
pub use scheduler::{EngineStats, Scheduler, SchedulerConfig, SchedulerHandle, SubmitError};
