//! What the demo tells its user: live, short lines in text mode, or one JSON document at the end (`--json`).
//!
//! Every claim the demo makes is a [`Check`] with what was expected and what was observed, so the narration
//! cannot say "works" when it did not. This module must never print anything but what it is given.

use std::io::Write;

use serde::Serialize;

/// One observed fact and whether it is what MSP promises.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub what: String,
    pub expected: String,
    pub got: String,
    pub ok: bool,
}

/// One step of the demo.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub number: u8,
    pub title: String,
    pub checks: Vec<Check>,
    /// Extra lines shown under the step (connection summaries).
    pub details: Vec<String>,
}

/// The machine-readable result (`--json`).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Every check of every step held.
    pub ok: bool,
    /// What was started where.
    pub setup: Vec<(String, String)>,
    pub steps: Vec<Step>,
    /// Why the demo stopped early, if it did.
    pub error: Option<String>,
    /// A prerequisite that is missing, with how to get it.
    pub missing: Option<String>,
    pub interrupted: bool,
}

/// Collects the report and, in text mode, prints it as it happens.
#[derive(Debug)]
pub struct Narrator {
    json: bool,
    pub report: Report,
}

const WHAT_WIDTH: usize = 34;

impl Narrator {
    pub fn new(json: bool) -> Narrator {
        Narrator {
            json,
            report: Report::default(),
        }
    }

    fn say(&self, line: &str) {
        if !self.json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }

    pub fn title(&self, line: &str) {
        self.say(line);
    }

    pub fn setup(&mut self, what: &str, detail: String) {
        self.say(&format!("  {what:<10} {detail}"));
        self.report.setup.push((what.to_owned(), detail));
    }

    pub fn step(&mut self, number: u8, title: &str) {
        self.say(&format!("\n{number}. {title}"));
        self.report.steps.push(Step {
            number,
            title: title.to_owned(),
            checks: Vec::new(),
            details: Vec::new(),
        });
    }

    /// Records a check; returns whether it held.
    pub fn check(&mut self, what: &str, expected: &str, got: String, ok: bool) -> bool {
        let mark = if ok { "✔" } else { "✘" };
        self.say(&format!("   {mark} {what:<WHAT_WIDTH$} {got}"));
        if !ok {
            self.say(&format!("     {:<WHAT_WIDTH$} expected: {expected}", ""));
        }
        if let Some(step) = self.report.steps.last_mut() {
            step.checks.push(Check {
                what: what.to_owned(),
                expected: expected.to_owned(),
                got,
                ok,
            });
        }
        ok
    }

    pub fn detail(&mut self, line: String) {
        self.say(&format!("       {line}"));
        if let Some(step) = self.report.steps.last_mut() {
            step.details.push(line);
        }
    }

    /// Whether every check so far held.
    pub fn all_ok(&self) -> bool {
        self.report
            .steps
            .iter()
            .all(|s| s.checks.iter().all(|c| c.ok))
    }

    /// Prints the closing line (text) or the whole report (JSON).
    pub fn finish(mut self) {
        self.report.ok = self.report.error.is_none()
            && self.report.missing.is_none()
            && !self.report.interrupted
            && self.all_ok();
        if self.json {
            let mut out = std::io::stdout().lock();
            let _ = serde_json::to_writer_pretty(&mut out, &self.report);
            let _ = writeln!(out);
            return;
        }
        let r = &self.report;
        let line = if let Some(m) = &r.missing {
            format!("msp-demo cannot run here: {m}")
        } else if r.interrupted {
            "\ninterrupted; everything the demo started has been removed".to_owned()
        } else if let Some(e) = &r.error {
            format!("\nthe demo stopped: {e}\neverything it started has been removed")
        } else if r.ok {
            "\nevery step behaved as MSP promises; everything the demo started has been removed"
                .to_owned()
        } else {
            let failed = r
                .steps
                .iter()
                .flat_map(|s| s.checks.iter())
                .filter(|c| !c.ok)
                .count();
            format!(
                "\n{failed} check(s) did not hold (marked ✘); everything the demo started has been removed"
            )
        };
        if r.missing.is_some() || r.error.is_some() {
            eprintln!("{}", line.trim_start());
        } else {
            self.say(&line);
        }
    }
}
