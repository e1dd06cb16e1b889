//! `/metrics` in the Prometheus text format.

use crate::runtime::EngineStats;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

/// HTTP-side counters; the engine-side ones live in [`EngineStats`].
#[derive(Default)]
pub struct HttpMetrics {
    /// (endpoint, status) → count.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
}

impl HttpMetrics {
    pub fn record(&self, endpoint: &'static str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((endpoint, status)).or_insert(0) += 1;
    }

    pub fn render(&self, engine: &EngineStats) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP hy_requests_total HTTP requests by endpoint and status code.");
        let _ = writeln!(out, "# TYPE hy_requests_total counter");
        let m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        for ((endpoint, status), n) in m.iter() {
            let _ = writeln!(out, "hy_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}");
        }
        drop(m);
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let gauges: [(&str, &str, &str, String); 6] = [
            (
                "hy_prompt_tokens_total",
                "counter",
                "Prompt tokens prefilled.",
                load(&engine.prompt_tokens_total).to_string(),
            ),
            (
                "hy_completion_tokens_total",
                "counter",
                "Tokens generated.",
                load(&engine.completion_tokens_total).to_string(),
            ),
            (
                "hy_cancelled_total",
                "counter",
                "Sequences stopped because the client went away.",
                load(&engine.cancelled_total).to_string(),
            ),
            (
                "hy_decode_tokens_per_second",
                "gauge",
                "Decode throughput over all sequences, moving average of recent steps.",
                format!("{:.3}", engine.decode_tokens_per_second()),
            ),
            (
                "hy_queue_depth",
                "gauge",
                "Requests waiting for a sequence slot.",
                engine.queue_depth.load(Ordering::Relaxed).to_string(),
            ),
            (
                "hy_active_sequences",
                "gauge",
                "Sequences being generated.",
                engine.active.load(Ordering::Relaxed).to_string(),
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        out
    }
}
