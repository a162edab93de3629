//! `fileLogLevelForEvents` (spec §10.2): log records at or above the configured level also become telemetry
//! events (module = the record's target).
//!
//! Records that carry a `module` field were already emitted as events by their module and are skipped, so no
//! event is sent twice. Messages are redacted when the event is built; this layer never blocks.
//!
//! The layer goes into the subscriber with its level as its own filter ([`EventLayer::filtered`]): a layer
//! without one enables every callsite of every level, so each connection's debug span and each request's debug
//! line would be built on the proxy's path for nothing.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{Filtered, LevelFilter};
use tracing_subscriber::layer::Context;

use super::{EventLevel, EventSink};

/// Turns log records into telemetry events.
pub struct EventLayer {
    sink: EventSink,
    /// The least severe level forwarded.
    min: tracing::Level,
}

impl EventLayer {
    pub fn new(sink: EventSink, min: tracing::Level) -> EventLayer {
        EventLayer { sink, min }
    }

    /// The layer filtered at `min`, as the agent's subscriber takes it (see the module's doc).
    pub fn filtered<S: tracing::Subscriber>(
        sink: EventSink,
        min: tracing::Level,
    ) -> Filtered<EventLayer, LevelFilter, S> {
        EventLayer::new(sink, min).with_filter(LevelFilter::from_level(min))
    }
}

#[derive(Default)]
struct Text {
    message: String,
    fields: String,
    has_module: bool,
}

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "module" => self.has_module = true,
            name => {
                let _ = write!(self.fields, " {name}={value:?}");
            }
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            "module" => self.has_module = true,
            name => {
                let _ = write!(self.fields, " {name}={value}");
            }
        }
    }
}

fn level(l: &tracing::Level) -> EventLevel {
    match *l {
        tracing::Level::ERROR => EventLevel::Error,
        tracing::Level::WARN => EventLevel::Warn,
        tracing::Level::INFO => EventLevel::Info,
        tracing::Level::DEBUG => EventLevel::Debug,
        tracing::Level::TRACE => EventLevel::Trace,
    }
}

impl<S: tracing::Subscriber> Layer<S> for EventLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        // tracing orders levels by verbosity: ERROR < WARN < … < TRACE.
        if *meta.level() > self.min {
            return;
        }
        let mut text = Text::default();
        event.record(&mut text);
        if text.has_module {
            return;
        }
        self.sink.emit(
            level(meta.level()),
            meta.target(),
            &format!("{}{}", text.message, text.fields),
        );
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn records_at_or_above_the_level_become_events_once() {
        let sink = EventSink::new();
        let subscriber = tracing_subscriber::registry()
            .with(EventLayer::new(sink.clone(), tracing::Level::WARN));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("too verbose");
            tracing::warn!(addr = "127.0.0.1:1", "listener retry");
            tracing::error!(module = "KeyKeeper", "already an event");
            tracing::error!("token=abc leaked?");
        });
        let events = sink.drain();
        let messages: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            ["listener retry addr=127.0.0.1:1", "token=*** leaked?"]
        );
        assert_eq!(events[0].event_level, EventLevel::Warn);
        assert_eq!(events[1].event_level, EventLevel::Error);
    }

    /// As the agent composes it: records below the level are not enabled at all (the proxy's debug span and
    /// request lines are not built), and those at it still become events.
    #[test]
    fn the_filtered_layer_leaves_more_verbose_callsites_disabled() {
        let sink = EventSink::new();
        let subscriber = tracing_subscriber::registry()
            .with(EventLayer::filtered(sink.clone(), tracing::Level::INFO));
        tracing::subscriber::with_default(subscriber, || {
            assert!(!tracing::enabled!(tracing::Level::DEBUG));
            assert!(tracing::debug_span!("conn").is_disabled());
            assert!(tracing::enabled!(tracing::Level::INFO));
            tracing::info!("kept");
        });
        let events = sink.drain();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].message, "kept");
    }
}
