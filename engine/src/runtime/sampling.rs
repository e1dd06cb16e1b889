//! Token sampling: penalties, greedy, temperature, top-k, top-p, min-p, seeded RNG, logprobs.
//!
//! Order of operations (the Hugging Face order, documented so results are reproducible):
//! 1. penalties on the raw logits: repetition penalty (CTRL style: positive logits divided,
//!    negative multiplied) over prompt + generated tokens; presence and frequency penalties
//!    (OpenAI definition) over generated tokens only;
//! 2. greedy (argmax, lowest id on ties) when `temperature == 0` or `top_k == 1`;
//! 3. otherwise divide by temperature, keep the `top_k` largest, softmax, keep the smallest
//!    most-likely set whose mass reaches `top_p`, drop tokens below `min_p × p_max`,
//!    renormalise and draw with the sequence's RNG.
//!
//! Logprobs report the model's own distribution: log-softmax of the raw logits, before
//! penalties and temperature (what OpenAI-compatible servers usually return).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

/// Sampling settings for one sequence. `Default` is greedy with no penalties.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = disabled.
    pub top_k: usize,
    /// 1.0 = disabled.
    pub top_p: f32,
    /// 0.0 = disabled.
    pub min_p: f32,
    /// 1.0 = disabled.
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// RNG seed; `None` draws one from the OS.
    pub seed: Option<u64>,
    /// Number of top alternatives to report per token (`None` = no logprobs at all).
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            logprobs: None,
        }
    }
}

/// Log-probability of the chosen token and of the most likely alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    pub logprob: f32,
    /// `(token, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// The result of one sampling step.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprobs: Option<TokenLogprobs>,
}

/// Per-sequence sampler: holds the RNG and the token counts the penalties need.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Tokens seen in the prompt (for the repetition penalty).
    prompt_tokens: Vec<u32>,
    /// How often each generated token was sampled so far.
    generated: HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Sampler {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let mut prompt_tokens = prompt.to_vec();
        prompt_tokens.sort_unstable();
        prompt_tokens.dedup();
        Sampler { params, rng, prompt_tokens, generated: HashMap::new() }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (modified in place by the penalties) and records
    /// it for the penalties of later steps.
    pub fn sample(&mut self, logits: &mut [f32]) -> Sampled {
        let logprobs = self.params.logprobs.map(|n| (log_softmax(logits), n));
        self.apply_penalties(logits);
        let token = if self.is_greedy() {
            argmax(logits)
        } else {
            let dist = candidate_distribution(logits, &self.params);
            draw(&dist, self.rng.gen::<f32>())
        };
        *self.generated.entry(token).or_insert(0) += 1;
        let logprobs = logprobs.map(|(lp, n)| TokenLogprobs {
            logprob: lp.get(token as usize).copied().unwrap_or(f32::NEG_INFINITY),
            top: top_n(&lp, n),
        });
        Sampled { token, logprobs }
    }

    fn is_greedy(&self) -> bool {
        self.params.temperature <= 0.0 || self.params.top_k == 1
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let rp = self.params.repetition_penalty;
        if rp != 1.0 && rp > 0.0 {
            let seen = self.prompt_tokens.iter().chain(self.generated.keys());
            let mut done = std::collections::HashSet::new();
            for &t in seen {
                if !done.insert(t) {
                    continue;
                }
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / rp } else { *l * rp };
                }
            }
        }
        let (pp, fp) = (self.params.presence_penalty, self.params.frequency_penalty);
        if pp != 0.0 || fp != 0.0 {
            for (&t, &count) in &self.generated {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= pp + fp * count as f32;
                }
            }
        }
    }
}

/// Index of the largest value; the lowest index wins ties; NaN never wins.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in values.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

/// Numerically stable log-softmax.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let log_sum = sum.ln() as f32 + max;
    logits.iter().map(|&l| l - log_sum).collect()
}

/// The `n` largest entries as `(index, value)`, largest first (lowest index on ties).
pub fn top_n(values: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..values.len() as u32).collect();
    let by_value_desc = |a: &u32, b: &u32| {
        let (va, vb) = (values[*a as usize], values[*b as usize]);
        vb.total_cmp(&va).then(a.cmp(b))
    };
    if n < idx.len() && n > 0 {
        idx.select_nth_unstable_by(n - 1, by_value_desc);
        idx.truncate(n);
    }
    idx.sort_unstable_by(by_value_desc);
    idx.truncate(n);
    idx.into_iter().map(|i| (i, values[i as usize])).collect()
}

/// The normalised distribution a non-greedy draw uses: `(token, probability)` after
/// temperature, top-k, top-p and min-p. Most likely first when top-k or top-p sorted it;
/// otherwise in token order. Public so tests can check it against hand-computed values.
pub fn candidate_distribution(logits: &[f32], p: &SamplingParams) -> Vec<(u32, f32)> {
    let temp = if p.temperature > 0.0 { p.temperature } else { 1.0 };
    let mut cands: Vec<(u32, f32)> =
        logits.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(i, &l)| (i as u32, l / temp)).collect();
    if cands.is_empty() {
        // Every logit was -inf or NaN: fall back to the first token rather than panic.
        return vec![(0, 1.0)];
    }
    let desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if p.top_k > 0 && p.top_k < cands.len() {
        cands.select_nth_unstable_by(p.top_k - 1, desc);
        cands.truncate(p.top_k);
    }
    softmax_in_place(&mut cands);
    if p.top_p < 1.0 {
        // Sorting the whole vocabulary is only needed for top-p.
        cands.sort_unstable_by(desc);
        let mut cum = 0.0f32;
        let mut keep = cands.len();
        for (i, c) in cands.iter().enumerate() {
            cum += c.1;
            if cum >= p.top_p {
                keep = i + 1;
                break;
            }
        }
        cands.truncate(keep.max(1));
    }
    if p.min_p > 0.0 {
        let pmax = cands.iter().map(|c| c.1).fold(0.0f32, f32::max);
        cands.retain(|c| c.1 >= p.min_p * pmax);
    }
    let total: f32 = cands.iter().map(|c| c.1).sum();
    for c in &mut cands {
        c.1 /= total;
    }
    cands
}

fn softmax_in_place(cands: &mut [(u32, f32)]) {
    let max = cands.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for c in cands.iter_mut() {
        c.1 = (c.1 - max).exp();
        sum += c.1;
    }
    for c in cands.iter_mut() {
        c.1 /= sum;
    }
}

/// Inverse-CDF draw from a normalised distribution with `u` uniform in [0, 1).
fn draw(dist: &[(u32, f32)], u: f32) -> u32 {
    let mut cum = 0.0f32;
    for &(t, p) in dist {
        cum += p;
        if u < cum {
            return t;
        }
    }
    // Rounding left the total a hair under 1: the last candidate takes the remainder.
    dist.last().map(|c| c.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits whose softmax is exactly [0.1, 0.2, 0.3, 0.4].
    fn logits_1234() -> Vec<f32> {
        [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect()
    }

    fn probs_by_token(dist: &[(u32, f32)], n: usize) -> Vec<f32> {
        let mut out = vec![0.0; n];
        for &(t, p) in dist {
            out[t as usize] = p;
        }
        out
    }

    fn assert_close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} != {b:?}");
        }
    }

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams { temperature: 1.0, ..Default::default() };
        f(&mut p);
        p
    }

    #[test]
    fn plain_softmax_at_temperature_one() {
        let d = candidate_distribution(&logits_1234(), &params(|_| {}));
        assert_close(&probs_by_token(&d, 4), &[0.1, 0.2, 0.3, 0.4]);
    }

    #[test]
    fn temperature_half_squares_the_probabilities() {
        // p_i ∝ exp(ln(i)/0.5) = i² → [1, 4, 9, 16] / 30.
        let d = candidate_distribution(&logits_1234(), &params(|p| p.temperature = 0.5));
        assert_close(&probs_by_token(&d, 4), &[1.0 / 30.0, 4.0 / 30.0, 9.0 / 30.0, 16.0 / 30.0]);
    }

    #[test]
    fn top_k_keeps_the_k_largest() {
        let d = candidate_distribution(&logits_1234(), &params(|p| p.top_k = 2));
        assert_close(&probs_by_token(&d, 4), &[0.0, 0.0, 3.0 / 7.0, 4.0 / 7.0]);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // 0.4 < 0.5 ≤ 0.4 + 0.3.
        let d = candidate_distribution(&logits_1234(), &params(|p| p.top_p = 0.5));
        assert_close(&probs_by_token(&d, 4), &[0.0, 0.0, 3.0 / 7.0, 4.0 / 7.0]);
        // 0.4 + 0.3 + 0.2 = 0.9 ≥ 0.85.
        let d = candidate_distribution(&logits_1234(), &params(|p| p.top_p = 0.85));
        assert_close(&probs_by_token(&d, 4), &[0.0, 2.0 / 9.0, 3.0 / 9.0, 4.0 / 9.0]);
    }

    #[test]
    fn min_p_drops_tokens_below_fraction_of_max() {
        // threshold 0.6 × 0.4 = 0.24: keeps 0.3 and 0.4.
        let d = candidate_distribution(&logits_1234(), &params(|p| p.min_p = 0.6));
        assert_close(&probs_by_token(&d, 4), &[0.0, 0.0, 3.0 / 7.0, 4.0 / 7.0]);
    }

    #[test]
    fn greedy_picks_argmax_lowest_on_ties() {
        let mut s = Sampler::new(SamplingParams::default(), &[]);
        let mut logits = vec![0.5, 2.0, 2.0, -1.0];
        assert_eq!(s.sample(&mut logits).token, 1);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let p = SamplingParams { repetition_penalty: 2.0, ..Default::default() };
        let s = Sampler::new(p, &[0, 1]);
        let mut logits = vec![4.0, -1.0, 3.0];
        s.apply_penalties(&mut logits);
        assert_eq!(logits, vec![2.0, -2.0, 3.0]);
    }

    #[test]
    fn presence_and_frequency_penalties_follow_openai_formula() {
        let p = SamplingParams { presence_penalty: 0.5, frequency_penalty: 0.25, ..Default::default() };
        let mut s = Sampler::new(p, &[2]);
        // Generate token 0 twice (greedy: it stays the argmax) and check its logit drop.
        for _ in 0..2 {
            let mut l = vec![10.0, 0.0, 0.0];
            assert_eq!(s.sample(&mut l).token, 0);
        }
        let mut l = vec![10.0, 0.0, 0.0];
        s.apply_penalties(&mut l);
        // 10 − 2 × 0.25 − 0.5 = 9.0; token 2 is in the prompt only: no OpenAI penalty.
        assert_eq!(l, vec![9.0, 0.0, 0.0]);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_seed_dependent() {
        let run = |seed| {
            let p = params(|p| p.seed = Some(seed));
            let mut s = Sampler::new(p, &[]);
            (0..64).map(|_| s.sample(&mut logits_1234()).token).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn draws_follow_the_distribution() {
        let mut s = Sampler::new(params(|p| p.seed = Some(42)), &[]);
        let mut counts = [0u32; 4];
        let n = 20_000;
        for _ in 0..n {
            counts[s.sample(&mut logits_1234()).token as usize] += 1;
        }
        for (i, &c) in counts.iter().enumerate() {
            let expect = (i + 1) as f32 / 10.0;
            // 5 standard deviations of a binomial proportion at n = 20000 is < 0.018.
            assert!((c as f32 / n as f32 - expect).abs() < 0.02, "{counts:?}");
        }
    }

    #[test]
    fn logprobs_are_log_softmax_of_raw_logits() {
        let p = SamplingParams { logprobs: Some(2), ..Default::default() };
        let mut s = Sampler::new(p, &[]);
        let out = s.sample(&mut logits_1234());
        let lp = out.logprobs.expect("logprobs requested");
        assert_eq!(out.token, 3);
        assert!((lp.logprob - 0.4f32.ln()).abs() < 1e-5);
        assert_eq!(lp.top.len(), 2);
        assert_eq!((lp.top[0].0, lp.top[1].0), (3, 2));
        assert!((lp.top[1].1 - 0.3f32.ln()).abs() < 1e-5);
    }

    #[test]
    fn all_infinite_logits_do_not_panic() {
        let mut s = Sampler::new(params(|_| {}), &[]);
        let mut l = vec![f32::NEG_INFINITY; 3];
        assert_eq!(s.sample(&mut l).token, 0);
    }
}
