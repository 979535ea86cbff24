//! Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus)
//! sampling, from a seeded RNG so that a run can be reproduced.

use super::argmax;
use crate::error::{Error, Result};
use crate::FloatDtype;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How to pick each token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingConfig {
    /// Divides the logits; 0 means greedy (always the most likely token).
    pub temperature: f64,
    /// Sample only among the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities sum to at least `p`.
    pub top_p: Option<f64>,
    /// Seeds the RNG.
    pub seed: u64,
}

impl SamplingConfig {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        Self { temperature: 0.0, top_k: None, top_p: None, seed: 0 }
    }

    fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::InvalidConfig(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            )));
        }
        if self.top_k == Some(0) {
            return Err(Error::InvalidConfig("top-k must be at least 1".into()));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::InvalidConfig(format!("top-p must be in (0, 1], got {p}")));
            }
        }
        Ok(())
    }
}

/// Draws tokens as a [`SamplingConfig`] says.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplingConfig,
    rng: StdRng,
}

impl Sampler {
    /// A sampler; an error for a negative temperature, `top_k = 0` or `top_p` outside (0, 1].
    pub fn new(cfg: SamplingConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self { cfg, rng: StdRng::seed_from_u64(cfg.seed) })
    }

    /// The candidates and their probabilities after temperature, top-k and top-p, most likely
    /// first; they sum to 1.
    pub fn distribution<E: FloatDtype>(&self, logits: &[E]) -> Vec<(usize, f64)> {
        let t = self.cfg.temperature.max(f64::MIN_POSITIVE);
        let scaled: Vec<f64> = logits.iter().map(|l| l.to_f64().unwrap_or(f64::NEG_INFINITY) / t).collect();
        let max = scaled.iter().cloned().filter(|x| !x.is_nan()).fold(f64::NEG_INFINITY, f64::max);
        let mut probs: Vec<(usize, f64)> =
            scaled.iter().enumerate().map(|(i, &x)| (i, if x.is_nan() { 0.0 } else { (x - max).exp() })).collect();
        // Most likely first; ties keep the lower id first, so the result is deterministic.
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Some(k) = self.cfg.top_k {
            probs.truncate(k.max(1));
        }
        let total: f64 = probs.iter().map(|p| p.1).sum();
        for p in &mut probs {
            p.1 /= total;
        }
        if let Some(top_p) = self.cfg.top_p {
            let mut cumulative = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    cumulative += p.1;
                    cumulative >= top_p - 1e-12
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            let total: f64 = probs.iter().map(|p| p.1).sum();
            for p in &mut probs {
                p.1 /= total;
            }
        }
        probs
    }

    /// The next token for `logits` over the vocabulary.
    pub fn sample<E: FloatDtype>(&mut self, logits: &[E]) -> usize {
        if self.cfg.temperature == 0.0 {
            return argmax(logits);
        }
        let probs = self.distribution(logits);
        let mut u: f64 = self.rng.gen();
        for &(token, p) in &probs {
            if u < p {
                return token;
            }
            u -= p;
        }
        probs.last().map_or(0, |p| p.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f64, top_k: Option<usize>, top_p: Option<f64>) -> Sampler {
        Sampler::new(SamplingConfig { temperature, top_k, top_p, seed: 7 }).unwrap()
    }

    #[test]
    fn top_k_and_top_p_keep_the_most_likely_tokens() {
        // Probabilities 0.5, 0.25, 0.125, 0.125 at temperature 1.
        let logits = [3f64.ln() + 2f64.ln(), 3f64.ln() + 1f64.ln(), 3f64.ln() + 0.5f64.ln(), 3f64.ln() + 0.5f64.ln()];
        let d = sampler(1.0, None, None).distribution(&logits);
        assert_eq!(d.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert!((d[0].1 - 0.5).abs() < 1e-12 && (d[3].1 - 0.125).abs() < 1e-12);
        let k2 = sampler(1.0, Some(2), None).distribution(&logits);
        assert_eq!(k2.len(), 2);
        assert!((k2[0].1 - 2.0 / 3.0).abs() < 1e-12);
        let p75 = sampler(1.0, None, Some(0.75)).distribution(&logits);
        assert_eq!(p75.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 1]);
        let p76 = sampler(1.0, None, Some(0.76)).distribution(&logits);
        assert_eq!(p76.len(), 3);
    }

    #[test]
    fn sampling_is_reproducible_and_follows_the_distribution() {
        let logits = [0.0f32, 1.0, 2.0];
        let draw = |seed| {
            let mut s = Sampler::new(SamplingConfig { temperature: 1.0, top_k: None, top_p: None, seed }).unwrap();
            (0..4000).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
        let counts = draw(3).iter().fold([0usize; 3], |mut c, &t| {
            c[t] += 1;
            c
        });
        let z: f64 = (0..3).map(|i| (i as f64).exp()).sum();
        for (i, &c) in counts.iter().enumerate() {
            let expected = (i as f64).exp() / z;
            assert!((c as f64 / 4000.0 - expected).abs() < 0.03, "token {i}: {c} of 4000, expected {expected}");
        }
    }

    #[test]
    fn greedy_and_low_temperature_pick_the_maximum() {
        let logits = [0.1f32, 2.0, 1.9];
        assert_eq!(sampler(0.0, None, None).sample(&logits), 1);
        assert_eq!(sampler(1e-3, None, None).sample(&logits), 1);
    }

    #[test]
    fn bad_settings_are_rejected() {
        let base = SamplingConfig::greedy();
        assert!(Sampler::new(SamplingConfig { temperature: -1.0, ..base }).is_err());
        assert!(Sampler::new(SamplingConfig { top_k: Some(0), ..base }).is_err());
        assert!(Sampler::new(SamplingConfig { top_p: Some(1.5), ..base }).is_err());
    }
}
