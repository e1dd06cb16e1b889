//! Scheduler tests against the counting model (see `testing.rs`).

use super::generate::{Event, FinishReason, GenerateRequest, TextCodec};
use super::sampling::SamplingParams;
use super::scheduler::{Scheduler, SchedulerConfig, SubmitError};
use super::testing::{ByteCodec, CountingModel, EOS};
use std::sync::Arc;
use std::time::Duration;

fn start(delay_ms: u64, max_concurrency: usize, queue: usize) -> (Scheduler, Arc<std::sync::Mutex<Vec<usize>>>) {
    let model = CountingModel::new(Duration::from_millis(delay_ms));
    let batches = model.batches.clone();
    let cfg = SchedulerConfig { max_concurrency, queue_capacity: queue, context: 64 };
    let s = Scheduler::start(Box::new(model), Arc::new(ByteCodec), cfg).expect("spawn engine thread");
    (s, batches)
}

fn req(prompt: &str, max_tokens: usize, stop: &[&str]) -> GenerateRequest {
    GenerateRequest {
        prompt: ByteCodec.encode(prompt, false),
        max_tokens,
        stop: stop.iter().map(|s| s.to_string()).collect(),
        sampling: SamplingParams::default(),
    }
}

/// Collects (text, finish reason, completion tokens) from a request's events.
fn collect(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>) -> (String, FinishReason, usize) {
    let mut text = String::new();
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            Event::Token(t) => text.push_str(&t.text),
            Event::Done(d) => {
                text.push_str(&d.tail);
                return (text, d.reason, d.completion_tokens);
            }
            Event::Error(e) => panic!("engine error: {e}"),
        }
    }
    panic!("channel closed without Done");
}

#[test]
fn greedy_runs_until_eos() {
    let (s, _) = start(0, 4, 4);
    let (text, reason, n) = collect(s.handle().submit(req("w", 20, &[])).unwrap());
    // w → x y z EOS: three letters, then EOS counted as the fourth token.
    assert_eq!((text.as_str(), reason, n), ("xyz", FinishReason::Stop, 4));
}

#[test]
fn max_tokens_gives_length() {
    let (s, _) = start(0, 4, 4);
    let (text, reason, n) = collect(s.handle().submit(req("a", 5, &[])).unwrap());
    assert_eq!((text.as_str(), reason, n), ("bcdef", FinishReason::Length, 5));
}

#[test]
fn stop_string_ends_and_is_not_emitted() {
    let (s, _) = start(0, 4, 4);
    let (text, reason, _) = collect(s.handle().submit(req("a", 20, &["fg"])).unwrap());
    assert_eq!((text.as_str(), reason), ("bcde", FinishReason::Stop));
}

#[test]
fn concurrent_sequences_are_decoded_in_one_batch() {
    let (s, batches) = start(5, 8, 8);
    let h = s.handle();
    let rxs: Vec<_> = (0..4).map(|_| h.submit(req("a", 10, &[])).unwrap()).collect();
    for rx in rxs {
        assert_eq!(collect(rx).0, "bcdefghijk");
    }
    let seen = batches.lock().unwrap().clone();
    // The engine admits all queued jobs before stepping; jobs submitted while a step runs
    // join at the next one. At least one step must have carried more than one sequence.
    assert!(seen.iter().any(|&b| b > 1), "batch sizes: {seen:?}");
    assert!(seen.iter().all(|&b| b <= 4), "batch sizes: {seen:?}");
}

#[test]
fn queue_bound_and_context_are_enforced() {
    // One slot, queue of one, slow steps: the third request must be refused.
    let (s, _) = start(20, 1, 1);
    let h = s.handle();
    let first = h.submit(req("a", 40, &[])).unwrap();
    // Wait until the engine has taken the first job so the queue is empty again.
    while h.stats().active.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(2));
    }
    let second = h.submit(req("a", 2, &[])).unwrap();
    assert!(matches!(h.submit(req("a", 2, &[])), Err(SubmitError::QueueFull(1))));
    assert!(matches!(h.submit(req("a", 64, &[])), Err(SubmitError::TooLong { .. })));
    assert!(matches!(h.submit(req("", 1, &[])), Err(SubmitError::EmptyPrompt)));
    drop(first);
    assert_eq!(collect(second).0, "bc");
}

#[test]
fn dropping_the_receiver_cancels_the_sequence() {
    let (s, _) = start(5, 2, 2);
    let h = s.handle();
    let mut rx = h.submit(req("a", 60 - 1, &[])).unwrap();
    // Take one token so the sequence is active, then hang up.
    assert!(matches!(rx.blocking_recv(), Some(Event::Token(_))));
    drop(rx);
    let stats = h.stats();
    while stats.cancelled_total.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(2));
    }
    // It was cancelled long before its 59 tokens: counting model would emit ≤ 59.
    assert!(stats.completion_tokens_total.load(std::sync::atomic::Ordering::Relaxed) < 59);
}

#[test]
fn eos_is_not_in_the_text_and_logprobs_are_reported() {
    let (s, _) = start(0, 1, 1);
    let mut r = req("y", 5, &[]);
    r.sampling.logprobs = Some(2);
    let mut rx = s.handle().submit(r).unwrap();
    let mut tokens = Vec::new();
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            Event::Token(t) => {
                let lp = t.logprobs.expect("logprobs requested");
                assert_eq!(lp.top.len(), 2);
                assert_eq!(lp.top[0].0, t.token);
                tokens.push(t.token);
            }
            Event::Done(d) => {
                assert_eq!(d.completion_tokens, 2);
                break;
            }
            Event::Error(e) => panic!("{e}"),
        }
    }
    assert_eq!(tokens, vec![u32::from(b'z')]);
    assert!(!tokens.contains(&EOS));
}

#[test]
fn long_prompts_are_prefilled_in_chunks_with_the_same_result() {
    use super::scheduler::PREFILL_CHUNK;
    let model = CountingModel::new(Duration::ZERO);
    let cfg = SchedulerConfig { max_concurrency: 2, queue_capacity: 2, context: 4 * PREFILL_CHUNK };
    let s = Scheduler::start(Box::new(model), Arc::new(ByteCodec), cfg).expect("spawn engine thread");
    // 2.5 chunks of 'a' ending in "k": only the last position's logits matter.
    let prompt = format!("{}k", "a".repeat(PREFILL_CHUNK * 5 / 2));
    let (text, reason, _) = collect(s.handle().submit(req(&prompt, 3, &[])).unwrap());
    assert_eq!((text.as_str(), reason), ("lmn", FinishReason::Length));
    let prefilled = s.handle().stats().prompt_tokens_total.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(prefilled as usize, prompt.len());
}
