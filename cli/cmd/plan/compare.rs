//! `hy plan MODEL --compare`: profiles (and --hardware, if given) × quantizations.

use hy_planner::plan::{auto_candidates, plan, ModelInput, PlanOptions, QuantChoice};
use hy_planner::{Efficiency, Quant};
use serde::Serialize;

use super::{load_hardware_file, Args};
use crate::exit;

#[derive(Serialize)]
struct Cell {
    target: String,
    quant: String,
    context: u64,
    concurrency: u64,
    fits: bool,
    weights_bytes: u64,
    shortfall_bytes: u64,
    decode_tokens_per_s: f64,
    prefill_tokens_per_s: f64,
}

pub fn run(
    args: &Args,
    input: &ModelInput,
    quant: Option<QuantChoice>,
    eff: &(Efficiency, String),
) -> anyhow::Result<i32> {
    let quants: Vec<Quant> = match (input, quant) {
        (_, Some(QuantChoice::Fixed(q))) => vec![q],
        (ModelInput::Catalog(m), _) => auto_candidates(m),
        (ModelInput::Fixed { .. }, _) => vec![],
    };
    let mut targets = Vec::new();
    let (profiles, _) = hy_profiles::all();
    for p in profiles {
        targets.push((p.name.clone(), p.hardware.clone(), Some(p.defaults.context), Some(p.defaults.concurrency)));
    }
    if let Some(path) = &args.hardware {
        let label = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        targets.push((label, load_hardware_file(path)?, None, None));
    }
    let max_ctx = match input {
        ModelInput::Catalog(m) => m.architecture.max_context,
        ModelInput::Fixed { spec, .. } => spec.arch.max_context,
    };
    let mut cells = Vec::new();
    for (name, hw, ctx, conc) in &targets {
        let context = args.context.or(*ctx).unwrap_or(32768).min(max_ctx);
        let concurrency = args.concurrency.or(*conc).unwrap_or(1);
        let mut o = PlanOptions::new(context, concurrency);
        o.efficiency = eff.0.clone();
        o.efficiency_source = eff.1.clone();
        let choices: Vec<QuantChoice> = if quants.is_empty() {
            vec![QuantChoice::Auto]
        } else {
            quants.iter().map(|q| QuantChoice::Fixed(*q)).collect()
        };
        for q in choices {
            let p = plan(input, hw, q, &o).map_err(super::plan_error)?;
            cells.push(Cell {
                target: name.clone(),
                quant: p.quant.clone(),
                context,
                concurrency,
                fits: p.fits,
                weights_bytes: p.weights_bytes,
                shortfall_bytes: p.shortfall_bytes,
                decode_tokens_per_s: p.predicted.decode_tokens_per_s,
                prefill_tokens_per_s: p.predicted.prefill_tokens_per_s,
            });
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&cells)?);
        return Ok(exit::OK);
    }
    let cols: Vec<String> = {
        let mut c: Vec<String> = Vec::new();
        for cell in &cells {
            if !c.contains(&cell.quant) {
                c.push(cell.quant.clone());
            }
        }
        c
    };
    let model = cells.first().map(|_| args.model.clone().unwrap_or_default()).unwrap_or_default();
    println!("{model}: decode tok/s for one request (\"-\" = does not fit, short by GB); context per row");
    let w = targets.iter().map(|t| t.0.len()).max().unwrap_or(6).max(6);
    print!("{:<w$} {:>8}", "TARGET", "CONTEXT");
    for c in &cols {
        print!(" {c:>14}");
    }
    println!();
    for (name, ..) in &targets {
        let row: Vec<&Cell> = cells.iter().filter(|c| &c.target == name).collect();
        print!("{:<w$} {:>8}", name, row.first().map(|c| c.context).unwrap_or(0));
        for col in &cols {
            let text = match row.iter().find(|c| &c.quant == col) {
                Some(c) if c.fits => format!("{:.1}", c.decode_tokens_per_s),
                Some(c) => format!("- ({:.0})", c.shortfall_bytes as f64 / 1e9),
                None => String::new(),
            };
            print!(" {text:>14}");
        }
        println!();
    }
    let sizes: Vec<String> = cols
        .iter()
        .filter_map(|q| {
            cells.iter().find(|c| &c.quant == q).map(|c| format!("{q} {:.1} GB", c.weights_bytes as f64 / 1e9))
        })
        .collect();
    println!("weights: {}", sizes.join(", "));
    Ok(exit::OK)
}
