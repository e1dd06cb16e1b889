//! The text form of a plan: aligned tables, one section per decision.

use std::fmt::Write;

use hy_planner::Plan;

/// Decimal units with one decimal ("404.4 GB", "2.4 MB"), so tiny models stay readable.
pub fn gb(bytes: u64) -> String {
    signed_gb(bytes as i64)
}

fn signed_gb(bytes: i64) -> String {
    let b = bytes as f64;
    match b.abs() {
        x if x >= 1e9 || x == 0.0 => format!("{:.1} GB", b / 1e9),
        x if x >= 1e6 => format!("{:.1} MB", b / 1e6),
        x if x >= 1e3 => format!("{:.1} kB", b / 1e3),
        _ => format!("{bytes} B"),
    }
}

/// Renders the plan for a terminal.
pub fn render(p: &Plan) -> String {
    let mut s = String::new();
    let verdict =
        if p.fits { "FITS".to_string() } else { format!("DOES NOT FIT (short by {})", gb(p.shortfall_bytes)) };
    let _ = writeln!(s, "{} at {} ({}) on {}: {verdict}", p.model, p.quant, p.quant_choice, p.hardware);
    let _ = writeln!(
        s,
        "  source: {}{}",
        p.model_source,
        if p.exact_sizes { " (exact tensor bytes)" } else { " (bytes computed from shapes × bits per weight)" }
    );
    let _ = writeln!(
        s,
        "  context {} tokens × {} request(s); KV cache {} B/token, {} in total; mode: {}",
        p.context,
        p.concurrency,
        p.kv_bytes_per_token,
        gb(p.kv_bytes),
        p.mode
    );
    weights(&mut s, p);
    devices(&mut s, p);
    let _ = writeln!(s, "\nNUMA: {} over {} node(s): {}", p.numa.policy, p.numa.nodes, p.numa.reason);
    if !p.gpu_expert_layers.is_empty() {
        let _ = writeln!(s, "Expert layers on the GPU: {} of them", p.gpu_expert_layers.len());
    }
    predicted(&mut s, p);
    assumptions(&mut s, p);
    for e in &p.excluded {
        let _ = writeln!(s, "\nExcluded: {} ({})", e.what, gb(e.bytes));
    }
    if !p.warnings.is_empty() {
        let _ = writeln!(s, "\nWarnings:");
        for w in &p.warnings {
            let _ = writeln!(s, "  - {w}");
        }
    }
    if !p.suggestions.is_empty() {
        let _ = writeln!(s, "\nWhat would fit:");
        for w in &p.suggestions {
            let _ = writeln!(s, "  - {w}");
        }
    }
    s
}

fn weights(s: &mut String, p: &Plan) {
    let _ = writeln!(s, "\nWeights: {} in total ({} bytes)", gb(p.weights_bytes), p.weights_bytes);
    let _ = writeln!(s, "  {:<20} {:<22} {:>10}  {:<22} LAYERS", "COMPONENT", "TYPES", "SIZE", "DEVICE");
    for c in &p.components {
        let places: Vec<_> = p.placement.iter().filter(|x| x.component == c.component).collect();
        for (i, pl) in places.iter().enumerate() {
            let (name, types) = if i == 0 { (c.component.as_str(), c.summary.as_str()) } else { ("", "") };
            let dev = if pl.policy == "whole" { pl.device.clone() } else { format!("{} ({})", pl.device, pl.policy) };
            let _ = writeln!(
                s,
                "  {:<20} {:<22} {:>10}  {:<22} {}",
                name,
                types,
                gb(pl.bytes),
                dev,
                pl.layers.as_deref().unwrap_or("")
            );
        }
    }
    for (i, kv) in p.placement.iter().filter(|x| x.component == "kv_cache").enumerate() {
        let (name, ty) = if i == 0 { ("kv_cache", "16-bit") } else { ("", "") };
        let dev = if kv.policy == "whole" { kv.device.clone() } else { format!("{} ({})", kv.device, kv.policy) };
        let _ = writeln!(
            s,
            "  {:<20} {:<22} {:>10}  {:<22} {}",
            name,
            ty,
            gb(kv.bytes),
            dev,
            kv.layers.as_deref().unwrap_or("")
        );
    }
}

fn devices(s: &mut String, p: &Plan) {
    let _ = writeln!(s, "\nMemory per device:");
    let _ = writeln!(
        s,
        "  {:<6} {:<4} {:>10} {:>10} {:>10} {:>9} {:>9} {:>10} {:>7} {:>11}",
        "DEVICE", "KIND", "CAPACITY", "RESERVED", "WEIGHTS", "KV", "BUFFERS", "FREE", "THREADS", "BW (eff.)"
    );
    for d in &p.devices {
        let _ = writeln!(
            s,
            "  {:<6} {:<4} {:>10} {:>10} {:>10} {:>9} {:>9} {:>10} {:>7} {:>6.0} GB/s",
            d.name,
            d.kind,
            gb(d.capacity_bytes),
            gb(d.reserved_bytes),
            gb(d.weights_bytes),
            gb(d.kv_bytes),
            gb(d.other_bytes),
            signed_gb(d.free_bytes),
            d.threads.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
            d.bandwidth_gbps
        );
    }
}

fn predicted(s: &mut String, p: &Plan) {
    let r = &p.predicted;
    let st = &r.step;
    let _ = writeln!(s, "\nPredicted:");
    let _ = writeln!(
        s,
        "  decode   {:.1} tok/s per request at {} tokens of context ({:.1} tok/s with the full {} tokens)",
        r.decode_tokens_per_s, r.decode_position, r.decode_tokens_per_s_at_full_context, p.context
    );
    if p.concurrency > 1 {
        let _ = writeln!(
            s,
            "           {:.1} tok/s over {} concurrent requests",
            r.decode_tokens_per_s_total, p.concurrency
        );
    }
    let _ = writeln!(
        s,
        "  prefill  {:.0} tok/s for a {}-token prompt (experts: {})",
        r.prefill_tokens_per_s, r.prefill_tokens, r.prefill_method
    );
    let _ = writeln!(
        s,
        "  step     {:.1} ms = CPU experts {:.1} + GPU {:.1} + CPU other {:.1} + sync {:.1} - overlap {:.1}",
        st.total_ms, st.cpu_experts_ms, st.gpu_ms, st.cpu_other_ms, st.sync_ms, st.overlap_ms
    );
    if st.cpu_experts_ms > 0.0 {
        let _ = writeln!(
            s,
            "           CPU experts {:.1} ms vs {:.1} ms at full memory bandwidth",
            st.cpu_experts_ms, st.cpu_experts_bound_ms
        );
    }
    let _ = writeln!(s, "  bottleneck: {}", r.bottleneck);
}

fn assumptions(s: &mut String, p: &Plan) {
    let a = &p.assumptions;
    let _ = writeln!(s, "\nAssumptions ({}; override with --calibration FILE or flags):", p.assumptions_source);
    let _ = writeln!(
        s,
        "  stream_efficiency {:.2}  cpu_bandwidth_efficiency {:.2}  gpu_bandwidth_efficiency {:.2}  pcie_efficiency {:.2}",
        a.stream_efficiency, a.cpu_bandwidth_efficiency, a.gpu_bandwidth_efficiency, a.pcie_efficiency
    );
    let _ = writeln!(
        s,
        "  cpu_compute_efficiency {:.2}  gpu_compute_efficiency {:.2}  hybrid_sync_us {:.0}  gpu_layer_overhead_us {:.0}  cpu_layer_overhead_us {:.0}  numa_sync_us {:.0}",
        a.cpu_compute_efficiency,
        a.gpu_compute_efficiency,
        a.hybrid_sync_us,
        a.gpu_layer_overhead_us,
        a.cpu_layer_overhead_us,
        a.numa_sync_us
    );
    let _ = writeln!(
        s,
        "  reserves: OS {:.0}% of RAM (min {:.0} GiB), GPU {:.2} GiB",
        a.os_reserve_fraction * 100.0,
        a.os_reserve_min_gib,
        a.gpu_reserve_gib
    );
}
