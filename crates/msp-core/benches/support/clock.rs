//! Bench clocks. Wall time by default; with `MSP_BENCH_CLOCK=thread-cpu`, the benchmark thread's own CPU time
//! (Linux `/proc/thread-self/schedstat`), which stays honest on a machine shared with other builds, where
//! wall time also counts the time the thread waited for a core.

use std::time::Duration;

use criterion::Criterion;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};

/// The environment variable that selects the clock.
pub(crate) const CLOCK_ENV: &str = "MSP_BENCH_CLOCK";

/// Runs `bench` under the clock the environment selects, with criterion's command-line options.
pub(crate) fn run(bench: fn(&mut Criterion<WallTime>), bench_cpu: fn(&mut Criterion<ThreadCpuTime>)) {
    if std::env::var(CLOCK_ENV).as_deref() == Ok("thread-cpu") {
        let mut c = Criterion::default()
            .with_measurement(ThreadCpuTime { wall: WallTime })
            .configure_from_args();
        bench_cpu(&mut c);
        c.final_summary();
    } else {
        let mut c = Criterion::default().configure_from_args();
        bench(&mut c);
        c.final_summary();
    }
}

/// CPU time consumed by the calling thread, in nanoseconds.
pub(crate) struct ThreadCpuTime {
    wall: WallTime,
}

fn thread_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat")
        .expect("Linux schedstat is readable");
    stat.split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .expect("schedstat starts with run time in ns")
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = Duration;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }

    fn end(&self, start: u64) -> Duration {
        Duration::from_nanos(thread_cpu_ns().saturating_sub(start))
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        self.wall.formatter()
    }
}
