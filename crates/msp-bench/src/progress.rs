//! A one-line progress bar on standard error (a line per step when standard error is not a terminal).

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Width of the bar, characters.
const WIDTH: usize = 30;

#[derive(Debug)]
pub struct Progress {
    total: usize,
    done: usize,
    started: Instant,
    tty: bool,
}

impl Progress {
    pub fn new(total: usize) -> Progress {
        Progress {
            total: total.max(1),
            done: 0,
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Starts the next step, labelled `what`.
    pub fn step(&mut self, what: &str) {
        let filled = (self.done * WIDTH / self.total).min(WIDTH);
        let line = format!(
            "[{}{}] {:>3}/{} {:>5.1}s  {what}",
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            self.done,
            self.total,
            self.started.elapsed().as_secs_f64()
        );
        self.done += 1;
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    pub fn done(&mut self) {
        self.done = self.total;
        self.step("done");
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}
