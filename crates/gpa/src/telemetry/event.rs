//! Telemetry events (spec §11.1) and the bounded queue every task emits into.
//!
//! Emitting never blocks and never grows memory past [`QUEUE_CAPACITY`] events: when the queue is full the new
//! event is dropped and counted. Messages are redacted (spec §11.4) and cut to [`MAX_MESSAGE_BYTES`] before they
//! are queued, so nothing secret ever sits in the queue, a spool file or a payload.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::status::board::AGENT_VERSION;

/// Events held in memory at most (spec §11.1).
pub const QUEUE_CAPACITY: usize = 1_000;
/// An event message is cut to this many bytes, on a UTF-8 boundary (spec §11.1).
pub const MAX_MESSAGE_BYTES: usize = 4_096;

/// An event level as the wire spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl EventLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            EventLevel::Error => "ERROR",
            EventLevel::Warn => "WARN",
            EventLevel::Info => "INFO",
            EventLevel::Debug => "DEBUG",
            EventLevel::Trace => "TRACE",
        }
    }
}

/// One event (spec §11.1), field names exactly as on the wire and in spool files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Event {
    pub event_level: EventLevel,
    /// Redacted, at most [`MAX_MESSAGE_BYTES`].
    pub message: String,
    pub version: String,
    pub task_name: String,
    pub event_pid: String,
    pub event_tid: String,
    /// The module (`KeyKeeper`, `WireServer`, `IMDS`, `Provisioning`, …).
    pub operation_id: String,
    /// UTC `YYYY-MM-DDTHH:MM:SS.mmm`.
    pub time_stamp: String,
}

impl Event {
    /// Builds an event now: message redacted and cut, pid and thread id of the caller.
    pub fn new(level: EventLevel, task: &str, module: &str, message: &str) -> Event {
        let mut message = super::redact(message);
        super::truncate_utf8(&mut message, MAX_MESSAGE_BYTES);
        Event {
            event_level: level,
            message,
            version: AGENT_VERSION.to_owned(),
            task_name: task.to_owned(),
            event_pid: std::process::id().to_string(),
            event_tid: thread_id(),
            operation_id: module.to_owned(),
            time_stamp: msp_core::status::format_timestamp(crate::clock::unix_ms()),
        }
    }
}

fn thread_id() -> String {
    nix::unistd::gettid().as_raw().to_string()
}

#[derive(Debug, Default)]
struct Queue {
    events: Mutex<VecDeque<Event>>,
    dropped: AtomicU64,
}

/// The emitting side, cheap to clone; every task holds one.
#[derive(Debug, Clone, Default)]
pub struct EventSink {
    queue: Arc<Queue>,
}

impl EventSink {
    pub fn new() -> EventSink {
        EventSink::default()
    }

    /// Queues an event; drops (and counts) it when [`QUEUE_CAPACITY`] events are waiting.
    pub fn emit(&self, level: EventLevel, module: &str, message: &str) {
        self.push(Event::new(level, "gpa", module, message));
    }

    pub fn push(&self, event: Event) {
        let mut q = self.queue.events.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= QUEUE_CAPACITY {
            drop(q);
            self.queue.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.push_back(event);
    }

    /// Takes every queued event, oldest first.
    pub fn drain(&self) -> Vec<Event> {
        let mut q = self.queue.events.lock().unwrap_or_else(|p| p.into_inner());
        q.drain(..).collect()
    }

    pub fn len(&self) -> usize {
        self.queue.events.lock().map(|q| q.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events dropped because the queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_is_bounded_and_counts_drops() {
        let sink = EventSink::new();
        for i in 0..QUEUE_CAPACITY + 5 {
            sink.emit(EventLevel::Info, "KeyKeeper", &format!("event {i}"));
        }
        assert_eq!(sink.len(), QUEUE_CAPACITY);
        assert_eq!(sink.dropped(), 5);
        let drained = sink.drain();
        assert_eq!(
            drained.first().unwrap().message,
            "event 0",
            "oldest kept, newest dropped"
        );
        assert!(sink.is_empty());
    }

    #[test]
    fn event_fields_follow_spec_11_1() {
        let long = "é".repeat(3000);
        let e = Event::new(EventLevel::Warn, "gpa", "KeyKeeper", &long);
        assert!(e.message.len() <= MAX_MESSAGE_BYTES && e.message.chars().all(|c| c == 'é'));
        assert_eq!(e.version, AGENT_VERSION);
        assert_eq!(e.event_pid, std::process::id().to_string());
        assert_eq!(e.time_stamp.len(), "2025-04-23T12:00:00.123".len());
        let json = serde_json::to_value(&e).unwrap();
        for k in [
            "EventLevel",
            "Message",
            "Version",
            "TaskName",
            "EventPid",
            "EventTid",
            "OperationId",
            "TimeStamp",
        ] {
            assert!(json.get(k).is_some(), "{k}");
        }
        assert_eq!(json["EventLevel"], "WARN");
    }

    #[test]
    fn conf_091_messages_are_redacted_before_queueing() {
        let hex = "4A404E635266556A586E3272357538782F413F4428472B4B6250645367566B59";
        let e = Event::new(
            EventLevel::Info,
            "gpa",
            "x",
            &format!("key {hex} url /a?sig=abc&x=1"),
        );
        assert!(
            !e.message.contains(hex) && !e.message.contains("abc"),
            "{}",
            e.message
        );
        assert!(e.message.contains("sig=***"));
    }
}
