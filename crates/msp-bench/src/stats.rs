//! Numbers from the workers' outcomes: request rates, latency percentiles, CPU per request. Pure.

use serde::Serialize;

use crate::procfs::TICKS_PER_SEC;
use crate::worker::Outcome;

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (nanoseconds), sorted in place.
    pub fn of(samples: &mut [u32]) -> Percentiles {
        samples.sort_unstable();
        let at = |q: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples
                .get(rank - 1)
                .map_or(0.0, |&ns| f64::from(ns) / 1000.0)
        };
        Percentiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
        }
    }

    /// `self - base`, field by field.
    pub fn minus(&self, base: &Percentiles) -> Percentiles {
        Percentiles {
            p50: self.p50 - base.p50,
            p90: self.p90 - base.p90,
            p99: self.p99 - base.p99,
            p999: self.p999 - base.p999,
        }
    }
}

/// One side (through the agent, or direct) of one workload, all rounds together.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Side {
    pub requests: u64,
    pub failed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Requests per second over all measured windows.
    pub rps: f64,
    /// Requests per second of each round.
    pub round_rps: Vec<f64>,
    pub latency_us: Percentiles,
    /// CPU time per request of the agent, the host and the load generator, microseconds.
    pub agent_cpu_us: f64,
    pub host_cpu_us: f64,
    pub client_cpu_us: f64,
}

/// Accumulates the rounds of one side.
#[derive(Debug, Default)]
pub struct SideAcc {
    requests: u64,
    failed: u64,
    first_error: Option<String>,
    window_ns: u64,
    round_rps: Vec<f64>,
    samples: Vec<u32>,
    agent_ticks: u64,
    host_ticks: u64,
    client_us: u64,
}

impl SideAcc {
    /// Adds one round; `watched_ticks` are ordered agent, host.
    pub fn add(&mut self, o: Outcome) {
        self.requests += o.ok;
        self.failed += o.failed;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.window_ns += o.window_ns;
        if o.window_ns > 0 {
            self.round_rps.push(o.ok as f64 * 1e9 / o.window_ns as f64);
        }
        self.samples.extend_from_slice(&o.latencies_ns);
        self.agent_ticks += o.watched_ticks.first().copied().unwrap_or(0);
        self.host_ticks += o.watched_ticks.get(1).copied().unwrap_or(0);
        self.client_us += o.self_cpu_us;
    }

    pub fn finish(mut self) -> Side {
        let per_request_us = |ticks: u64| -> f64 {
            if self.requests == 0 {
                return 0.0;
            }
            ticks as f64 * 1e6 / TICKS_PER_SEC as f64 / self.requests as f64
        };
        Side {
            requests: self.requests,
            failed: self.failed,
            first_error: self.first_error.take(),
            rps: if self.window_ns == 0 {
                0.0
            } else {
                self.requests as f64 * 1e9 / self.window_ns as f64
            },
            round_rps: self.round_rps.clone(),
            latency_us: Percentiles::of(&mut self.samples),
            agent_cpu_us: per_request_us(self.agent_ticks),
            host_cpu_us: per_request_us(self.host_ticks),
            client_cpu_us: if self.requests == 0 {
                0.0
            } else {
                self.client_us as f64 / self.requests as f64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u32> = (1..=1000).map(|i| i * 1000).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.p50, p.p90, p.p99, p.p999), (500.0, 900.0, 990.0, 999.0));
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
    }

    #[test]
    fn rates_and_cpu_per_request() {
        let mut acc = SideAcc::default();
        acc.add(Outcome {
            ok: 1000,
            window_ns: 500_000_000,
            latencies_ns: vec![10_000; 1000],
            watched_ticks: vec![2, 5],
            self_cpu_us: 3000,
            ..Outcome::default()
        });
        let s = acc.finish();
        assert_eq!(s.rps, 2000.0);
        assert_eq!(s.agent_cpu_us, 20.0);
        assert_eq!(s.host_cpu_us, 50.0);
        assert_eq!(s.client_cpu_us, 3.0);
        assert_eq!(s.latency_us.p50, 10.0);
    }
}
