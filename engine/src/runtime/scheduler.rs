//! The engine thread: owns the model, admits requests from a bounded queue, prefills each new
//! sequence, then steps every active sequence together with one `Model::forward_batch` per
//! step (batched decode: MoE models read each selected expert once per step for all of them).
//!
//! Callers get a channel of [`Event`]s per request. Dropping the receiver cancels the
//! sequence: the engine checks `is_closed()` before prefill and at every step, so a client
//! that disconnects stops costing compute within one step.

use super::generate::{
    Event, FinishReason, Finished, GenerateRequest, StopMatcher, TextCodec, TextDecoder, TokenEvent,
};
use super::sampling::{Sampled, Sampler};
use crate::models::{Logits, Model, ModelInfo, SeqState};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Limits of the engine.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Sequences decoded together at most.
    pub max_concurrency: usize,
    /// Requests allowed to wait for a slot; more are refused with [`SubmitError::QueueFull`].
    pub queue_capacity: usize,
    /// Tokens per sequence (prompt + generated) at most.
    pub context: usize,
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the request queue is full ({0} waiting); retry later")]
    QueueFull(usize),
    #[error("the engine has stopped")]
    ShutDown,
    #[error("prompt ({prompt} tokens) + max_tokens ({max_tokens}) exceeds the context of {context} tokens")]
    TooLong { prompt: usize, max_tokens: usize, context: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
}

/// Counters and gauges the engine maintains (read by `/metrics`).
#[derive(Debug, Default)]
pub struct EngineStats {
    pub queue_depth: AtomicUsize,
    pub active: AtomicUsize,
    pub prompt_tokens_total: AtomicU64,
    pub completion_tokens_total: AtomicU64,
    pub cancelled_total: AtomicU64,
    /// Decode throughput of recent steps (tokens/s over all sequences), stored as f64 bits.
    decode_tps_bits: AtomicU64,
}

impl EngineStats {
    pub fn decode_tokens_per_second(&self) -> f64 {
        f64::from_bits(self.decode_tps_bits.load(Ordering::Relaxed))
    }

    /// Exponential moving average so one slow step (a prefill in between) does not dominate.
    fn record_step(&self, tokens: usize, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if secs <= 0.0 {
            return;
        }
        let now = tokens as f64 / secs;
        let old = self.decode_tokens_per_second();
        let new = if old == 0.0 { now } else { 0.8 * old + 0.2 * now };
        self.decode_tps_bits.store(new.to_bits(), Ordering::Relaxed);
    }
}

struct Job {
    req: GenerateRequest,
    events: UnboundedSender<Event>,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Job>,
    shutdown: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    stats: EngineStats,
    cfg: SchedulerConfig,
    info: ModelInfo,
    codec: Arc<dyn TextCodec>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A poisoned lock only means a panic elsewhere while holding it; the queue itself is
        // still consistent (push/pop are single operations), so keep serving.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Owns the engine thread; dropping it stops the thread after the current step.
pub struct Scheduler {
    handle: SchedulerHandle,
    thread: Option<JoinHandle<()>>,
}

/// Cheap, clonable access to a running scheduler.
#[derive(Clone)]
pub struct SchedulerHandle {
    shared: Arc<Shared>,
}

impl Scheduler {
    pub fn start(
        model: Box<dyn Model>,
        codec: Arc<dyn TextCodec>,
        mut cfg: SchedulerConfig,
    ) -> std::io::Result<Scheduler> {
        cfg.max_concurrency = cfg.max_concurrency.max(1);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            stats: EngineStats::default(),
            info: model.info().clone(),
            cfg,
            codec,
        });
        let engine_shared = shared.clone();
        let thread = std::thread::Builder::new().name("hy-engine".into()).spawn(move || {
            let shared = engine_shared.clone();
            let outcome = catch_unwind(AssertUnwindSafe(|| Engine::new(model, engine_shared).run()));
            // Whatever ended the loop, refuse new work (503) and fail what still waits, so
            // no client hangs on an engine that is gone.
            let mut q = shared.lock();
            q.shutdown = true;
            let msg = if outcome.is_err() {
                "the engine stopped after an internal error"
            } else {
                "the server is shutting down"
            };
            for job in q.pending.drain(..) {
                let _ = job.events.send(Event::Error(msg.into()));
            }
        })?;
        Ok(Scheduler { handle: SchedulerHandle { shared }, thread: Some(thread) })
    }

    pub fn handle(&self) -> SchedulerHandle {
        self.handle.clone()
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.handle.shared.lock().shutdown = true;
        self.handle.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl SchedulerHandle {
    /// Queues a request; events arrive on the returned receiver.
    pub fn submit(&self, req: GenerateRequest) -> Result<UnboundedReceiver<Event>, SubmitError> {
        let cfg = &self.shared.cfg;
        if req.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if req.prompt.len().saturating_add(req.max_tokens) > cfg.context {
            return Err(SubmitError::TooLong {
                prompt: req.prompt.len(),
                max_tokens: req.max_tokens,
                context: cfg.context,
            });
        }
        let (tx, rx) = unbounded_channel();
        let mut q = self.shared.lock();
        if q.shutdown {
            return Err(SubmitError::ShutDown);
        }
        if q.pending.len() >= cfg.queue_capacity {
            return Err(SubmitError::QueueFull(q.pending.len()));
        }
        q.pending.push_back(Job { req, events: tx });
        self.shared.stats.queue_depth.store(q.pending.len(), Ordering::Relaxed);
        drop(q);
        self.shared.wake.notify_one();
        Ok(rx)
    }

    pub fn stats(&self) -> &EngineStats {
        &self.shared.stats
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.shared.cfg
    }

    pub fn model_info(&self) -> &ModelInfo {
        &self.shared.info
    }

    pub fn codec(&self) -> &Arc<dyn TextCodec> {
        &self.shared.codec
    }
}

/// Prompt tokens run per prefill call. Long prompts are prefilled in chunks between decode
/// steps, so one long prompt delays the other streams by one chunk at a time, not by its
/// whole prefill.
pub const PREFILL_CHUNK: usize = 256;

/// A sequence whose prompt is (partly) still to be run.
struct Prefilling {
    seq: Active,
    prompt: Vec<u32>,
    /// Prompt tokens already in the cache.
    done: usize,
}

/// One sequence being generated.
struct Active {
    events: UnboundedSender<Event>,
    state: SeqState,
    sampler: Sampler,
    decoder: Box<dyn TextDecoder>,
    stop: StopMatcher,
    prompt_len: usize,
    max_tokens: usize,
    generated: usize,
    /// The token to feed at the next decode step.
    next: u32,
}

enum Step {
    Continue,
    Finished,
}

struct Engine {
    model: Box<dyn Model>,
    shared: Arc<Shared>,
    eos: Vec<u32>,
    prefilling: VecDeque<Prefilling>,
    active: Vec<Active>,
}

impl Engine {
    fn new(model: Box<dyn Model>, shared: Arc<Shared>) -> Engine {
        let eos = shared.codec.eos_ids();
        Engine { model, shared, eos, prefilling: VecDeque::new(), active: Vec::new() }
    }

    fn run(mut self) {
        while let Some(jobs) = self.admit() {
            for job in jobs {
                self.enqueue(job);
            }
            self.prefill_chunk();
            self.decode_step();
            let n = self.active.len() + self.prefilling.len();
            self.shared.stats.active.store(n, Ordering::Relaxed);
        }
        let msg = "the server is shutting down";
        for seq in self.active.drain(..).chain(self.prefilling.drain(..).map(|p| p.seq)) {
            let _ = seq.events.send(Event::Error(msg.into()));
        }
    }

    /// Takes waiting jobs up to the concurrency limit; blocks while there is nothing to do.
    /// `None` means shut down.
    fn admit(&mut self) -> Option<Vec<Job>> {
        let shared = self.shared.clone();
        let mut q = shared.lock();
        loop {
            if q.shutdown {
                return None;
            }
            let busy = self.active.len() + self.prefilling.len();
            let n = shared.cfg.max_concurrency.saturating_sub(busy).min(q.pending.len());
            let jobs: Vec<Job> = q.pending.drain(..n).collect();
            shared.stats.queue_depth.store(q.pending.len(), Ordering::Relaxed);
            if !jobs.is_empty() || busy > 0 {
                return Some(jobs);
            }
            q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Sets up a new sequence (no compute yet); its prompt runs in [`Engine::prefill_chunk`].
    fn enqueue(&mut self, job: Job) {
        let req = job.req;
        let prompt_len = req.prompt.len();
        let model = &self.model;
        let state = match flatten(catch_unwind(AssertUnwindSafe(|| {
            anyhow::Ok(model.new_state(prompt_len + req.max_tokens))
        }))) {
            Ok(s) => s,
            Err(msg) => {
                let _ = job.events.send(Event::Error(format!("could not allocate the sequence: {msg}")));
                return;
            }
        };
        let seq = Active {
            events: job.events,
            state,
            sampler: Sampler::new(req.sampling, &req.prompt),
            decoder: self.shared.codec.decoder(),
            stop: StopMatcher::new(req.stop),
            prompt_len,
            max_tokens: req.max_tokens,
            generated: 0,
            next: 0,
        };
        self.prefilling.push_back(Prefilling { seq, prompt: req.prompt, done: 0 });
    }

    /// Runs the next chunk of the oldest unfinished prompt; after its last chunk samples the
    /// first token and moves the sequence to decoding.
    fn prefill_chunk(&mut self) {
        let Some(mut p) = self.prefilling.pop_front() else { return };
        if p.seq.events.is_closed() {
            self.shared.stats.cancelled_total.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let end = (p.done + PREFILL_CHUNK).min(p.prompt.len());
        let model = &self.model;
        let chunk = &p.prompt[p.done..end];
        let state = &mut p.seq.state;
        let result = flatten(catch_unwind(AssertUnwindSafe(|| model.forward(state, chunk, Logits::Last))));
        let mut logits = match result {
            Ok(l) => l,
            Err(msg) => {
                let _ = p.seq.events.send(Event::Error(format!("prefill failed: {msg}")));
                return;
            }
        };
        self.shared.stats.prompt_tokens_total.fetch_add((end - p.done) as u64, Ordering::Relaxed);
        p.done = end;
        if p.done < p.prompt.len() {
            self.prefilling.push_front(p);
            return;
        }
        let mut seq = p.seq;
        let sampled = seq.sampler.sample(&mut logits);
        if let Step::Continue = self.accept(&mut seq, sampled) {
            self.active.push(seq);
        }
    }

    /// One forward_batch over every active sequence, then sampling and event delivery.
    fn decode_step(&mut self) {
        let stats = &self.shared.stats;
        let before = self.active.len();
        self.active.retain(|s| !s.events.is_closed());
        stats.cancelled_total.fetch_add((before - self.active.len()) as u64, Ordering::Relaxed);
        if self.active.is_empty() {
            return;
        }
        let t0 = Instant::now();
        let tokens: Vec<u32> = self.active.iter().map(|s| s.next).collect();
        let model = &self.model;
        let mut states: Vec<&mut SeqState> = self.active.iter_mut().map(|s| &mut s.state).collect();
        let result = catch_unwind(AssertUnwindSafe(|| model.forward_batch(&mut states, &tokens)));
        drop(states);
        let rows = match flatten(result) {
            Ok(rows) if rows.len() == tokens.len() => rows,
            Ok(rows) => {
                return self.fail_all(&format!("model returned {} rows for {} sequences", rows.len(), tokens.len()))
            }
            Err(msg) => return self.fail_all(&format!("decode failed: {msg}")),
        };
        stats.record_step(tokens.len(), t0.elapsed());
        let mut active = std::mem::take(&mut self.active);
        let mut kept = Vec::with_capacity(active.len());
        for (mut seq, mut logits) in active.drain(..).zip(rows) {
            let sampled = seq.sampler.sample(&mut logits);
            if let Step::Continue = self.accept(&mut seq, sampled) {
                kept.push(seq);
            }
        }
        self.active = kept;
    }

    fn fail_all(&mut self, msg: &str) {
        for seq in self.active.drain(..) {
            let _ = seq.events.send(Event::Error(msg.to_string()));
        }
    }

    /// Records a sampled token: EOS, text + stop strings, limits. Sends the events.
    fn accept(&self, seq: &mut Active, sampled: Sampled) -> Step {
        seq.generated += 1;
        self.shared.stats.completion_tokens_total.fetch_add(1, Ordering::Relaxed);
        if self.eos.contains(&sampled.token) {
            return self.finish(seq, FinishReason::Stop, false);
        }
        let piece = seq.decoder.push(sampled.token);
        let (text, hit) = seq.stop.push(&piece);
        let event = TokenEvent { token: sampled.token, text, logprobs: sampled.logprobs };
        if seq.events.send(Event::Token(event)).is_err() {
            self.shared.stats.cancelled_total.fetch_add(1, Ordering::Relaxed);
            return Step::Finished;
        }
        if hit {
            return self.finish(seq, FinishReason::Stop, true);
        }
        let context_full = seq.state.pos + 1 > seq.state.max_tokens;
        if seq.generated >= seq.max_tokens || context_full {
            return self.finish(seq, FinishReason::Length, false);
        }
        seq.next = sampled.token;
        Step::Continue
    }

    fn finish(&self, seq: &mut Active, mut reason: FinishReason, stopped: bool) -> Step {
        let mut tail = String::new();
        if !stopped {
            let rest = seq.decoder.finish();
            let (text, hit) = seq.stop.push(&rest);
            tail.push_str(&text);
            if hit {
                reason = FinishReason::Stop;
            } else {
                tail.push_str(&seq.stop.finish());
            }
        }
        let done = Finished { reason, tail, prompt_tokens: seq.prompt_len, completion_tokens: seq.generated };
        let _ = seq.events.send(Event::Done(done));
        Step::Finished
    }
}

/// Turns a caught panic or a model error into a message.
fn flatten<T>(r: std::thread::Result<anyhow::Result<T>>) -> Result<T, String> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(panic) => Err(panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the model panicked".into())),
    }
}
