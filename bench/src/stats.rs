//! Latency samples reduced to what the report shows: percentiles and a CDF.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A latency distribution, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Latency {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// (fraction, ms) points of the CDF, for plots.
    pub cdf: Vec<(f64, f64)>,
}

impl Latency {
    /// Summarises `samples` (any order).
    pub(crate) fn of(mut samples: Vec<Duration>) -> Latency {
        samples.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let at = |p: f64| {
            if samples.is_empty() {
                return 0.0;
            }
            let i = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
            ms(samples[i])
        };
        let mut cdf: Vec<(f64, f64)> = (0..=200)
            .map(|i| i as f64 / 200.0)
            .map(|p| (p, at(p)))
            .collect();
        cdf.push((0.999, at(0.999)));
        cdf.sort_by(|a, b| a.0.total_cmp(&b.0));
        Latency {
            count: samples.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: at(1.0),
            cdf: if samples.is_empty() { vec![] } else { cdf },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let l = Latency::of((1..=100).rev().map(Duration::from_millis).collect());
        assert_eq!(
            (l.count, l.p50_ms, l.p99_ms, l.max_ms),
            (100, 50.0, 99.0, 100.0)
        );
        assert_eq!(Latency::of(vec![]).count, 0);
    }
}
