//! The telemetry task (spec §11.2, §11.3): every minute it drains the queue, refreshes VM metadata (signed when
//! a key is ready), packs the events into payloads and posts them, unsigned, to the configured WireServer as
//! `POST /machine/?comp=telemetrydata`; what cannot be sent is spooled. Spooled files are read back every 5
//! minutes (first after 1 minute), and every 15 minutes the `proxyAgentStatus` object goes out as an
//! extension-status event.
//!
//! It must never sign with a key it keeps: the key is read from the snapshot in force at each call, so a key
//! dropped on `disabled` is never used again (spec §2.10).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use msp_core::status::OverallState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::event::{Event, EventLevel, EventSink};
use super::payload::{ExtensionStatus, TelemetryItem, VmMetadata, pack};
use super::spool::Spool;
use crate::config::EndpointAddrs;
use crate::hostcall::{HostCallError, HostClient, OwnCall};
use crate::snapshot::Snapshot;
use crate::status::board::{AGENT_VERSION, Module, StatusBoard};
use msp_core::status::ModuleState;

/// How often the queue is drained into the sender (spec §11.2).
pub const DRAIN_INTERVAL: Duration = Duration::from_secs(60);
/// How often spooled files are read back (spec §11.2); the first read is after [`DRAIN_INTERVAL`].
pub const SPOOL_READ_INTERVAL: Duration = Duration::from_secs(300);
/// How often the status goes out as an extension-status event (spec §11.2).
pub const STATUS_EVENT_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// Attempts per payload (spec §11.3).
pub const SEND_ATTEMPTS: u32 = 5;
/// Pause between attempts (spec §11.3).
pub const SEND_RETRY_DELAY: Duration = Duration::from_secs(15);
/// `x-ms-version` of telemetry and goal-state calls (spec §3.7).
pub const WIRESERVER_API_VERSION: &str = "2012-11-30";

/// Why the metadata refresh failed; without metadata nothing is sent (spec §11.3).
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("{call}: {source}")]
    Call {
        call: &'static str,
        #[source]
        source: HostCallError,
    },
    #[error("goal state has no {0}")]
    Missing(&'static str),
    #[error("SharedConfig URL {0:?} does not name the configured WireServer endpoint")]
    ForeignSharedConfig(String),
}

/// The telemetry task's state.
pub struct TelemetrySender {
    pub client: HostClient,
    pub endpoints: EndpointAddrs,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub sink: EventSink,
    pub spool: Option<Spool>,
    pub board: Arc<StatusBoard>,
    pub retry_delay: Duration,
    metadata: Option<VmMetadata>,
}

impl TelemetrySender {
    pub fn new(
        client: HostClient,
        endpoints: EndpointAddrs,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        sink: EventSink,
        spool: Option<Spool>,
        board: Arc<StatusBoard>,
    ) -> TelemetrySender {
        TelemetrySender {
            client,
            endpoints,
            snapshots,
            sink,
            spool,
            board,
            retry_delay: SEND_RETRY_DELAY,
            metadata: None,
        }
    }

    /// Runs until `cancel`; the remaining queue is spooled on the way out.
    pub async fn run(mut self, cancel: CancellationToken) {
        self.board.set(
            Module::Telemetry,
            ModuleState::Running,
            "Telemetry event logger thread started.",
        );
        let start = tokio::time::Instant::now();
        let mut drain = tokio::time::interval_at(start + DRAIN_INTERVAL, DRAIN_INTERVAL);
        let mut spool_read = tokio::time::interval_at(start + DRAIN_INTERVAL, SPOOL_READ_INTERVAL);
        let mut status =
            tokio::time::interval_at(start + STATUS_EVENT_INTERVAL, STATUS_EVENT_INTERVAL);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = drain.tick() => {
                    let events = self.sink.drain();
                    let items = events.into_iter().map(TelemetryItem::Generic).collect();
                    self.send(items, &cancel).await;
                }
                _ = spool_read.tick() => self.requeue_spool(),
                _ = status.tick() => {
                    let item = self.status_item();
                    self.send(vec![item], &cancel).await;
                }
            }
        }
        let left: Vec<Event> = self.sink.drain();
        self.spool_events(&left);
        self.board.set(
            Module::Telemetry,
            ModuleState::Stopped,
            "Stop signal received, exiting the event logger thread.",
        );
    }

    fn status_item(&self) -> TelemetryItem {
        let status = self.board.proxy_agent_status();
        let message = serde_json::to_string(&status).unwrap_or_default();
        TelemetryItem::Extension(ExtensionStatus {
            event: Event::new(EventLevel::Info, "gpa", "ProxyAgentStatus", ""),
            extension_type: "Monitoring".to_owned(),
            is_internal: true,
            name: "ProxyAgentStatus".to_owned(),
            version: AGENT_VERSION.to_owned(),
            operation: "ProxyAgentStatus".to_owned(),
            operation_success: status.status == OverallState::Success,
            message,
            duration: 0,
        })
    }

    fn requeue_spool(&self) {
        if let Some(spool) = &self.spool {
            match spool.take_all() {
                Ok(events) => events.into_iter().for_each(|e| self.sink.push(e)),
                Err(e) => tracing::warn!(error = %e, "cannot read spooled events"),
            }
        }
    }

    fn spool_events(&self, events: &[Event]) {
        let Some(spool) = &self.spool else { return };
        match spool.write(events, crate::clock::unix_nanos()) {
            Ok(true) => {}
            Ok(false) => tracing::warn!(count = events.len(), "event spool full; events dropped"),
            Err(e) => tracing::warn!(error = %e, "cannot spool events"),
        }
    }

    /// Sends `items`; events that cannot be sent are spooled.
    async fn send(&mut self, items: Vec<TelemetryItem>, cancel: &CancellationToken) {
        if items.is_empty() {
            return;
        }
        match self.refresh_metadata().await {
            Ok(meta) => self.metadata = Some(meta),
            Err(e) => tracing::warn!(error = %e, "telemetry metadata refresh failed"),
        }
        let Some(meta) = self.metadata.clone() else {
            self.spool_events(&generic_events(items));
            return;
        };
        let (payloads, dropped) = pack(&items, &meta);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "telemetry events too large for one payload dropped"
            );
        }
        for payload in payloads {
            if !self.post(payload, cancel).await {
                self.spool_events(&generic_events(items));
                return;
            }
        }
    }

    /// Posts one payload, up to [`SEND_ATTEMPTS`] times.
    async fn post(&self, payload: String, cancel: &CancellationToken) -> bool {
        let body = Bytes::from(payload);
        for attempt in 1..=SEND_ATTEMPTS {
            let call = OwnCall {
                method: http::Method::POST,
                dest: self.endpoints.wireserver,
                target: "/machine/?comp=telemetrydata".to_owned(),
                headers: vec![
                    ("x-ms-version", WIRESERVER_API_VERSION.to_owned()),
                    ("content-type", "text/xml; charset=utf-8".to_owned()),
                ],
                body: body.clone(),
                date: self.snapshots.borrow().date_header(),
                // Exempt (spec §3.5): never signed.
                sign: None,
            };
            match self
                .client
                .call(call)
                .await
                .and_then(|r| r.expect(|s| s.is_success()))
            {
                Ok(_) => return true,
                Err(e) => tracing::warn!(attempt, error = %e, "telemetry send failed"),
            }
            if attempt < SEND_ATTEMPTS {
                tokio::select! {
                    () = cancel.cancelled() => return false,
                    () = tokio::time::sleep(self.retry_delay) => {}
                }
            }
        }
        false
    }

    async fn get(
        &self,
        call: &'static str,
        dest: std::net::SocketAddr,
        target: String,
        headers: Vec<(&'static str, String)>,
    ) -> Result<String, MetadataError> {
        let snap = self.snapshots.borrow().clone();
        let own = OwnCall {
            method: http::Method::GET,
            dest,
            target,
            headers,
            body: Bytes::new(),
            date: snap.date_header(),
            sign: snap.key.as_ref(),
        };
        self.client
            .call(own)
            .await
            .and_then(|r| r.expect(|s| s.is_success()))
            .map(|r| r.body)
            .map_err(|source| MetadataError::Call { call, source })
    }

    /// Goal state, SharedConfig and IMDS instance calls (spec §3.7).
    async fn refresh_metadata(&self) -> Result<VmMetadata, MetadataError> {
        let ws = self.endpoints.wireserver;
        let version = vec![("x-ms-version", WIRESERVER_API_VERSION.to_owned())];
        let goal = self
            .get(
                "goal state",
                ws,
                "/machine?comp=goalstate".to_owned(),
                version.clone(),
            )
            .await?;
        let url = xml_text(&goal, "SharedConfig").ok_or(MetadataError::Missing("SharedConfig"))?;
        let target = shared_config_target(&url, ws)
            .ok_or_else(|| MetadataError::ForeignSharedConfig(url.clone()))?;
        let shared = self.get("SharedConfig", ws, target, version).await?;
        let imds = self
            .get(
                "IMDS instance",
                self.endpoints.imds,
                "/metadata/instance?api-version=2018-02-01".to_owned(),
                vec![("metadata", "true".to_owned())],
            )
            .await?;
        let compute: serde_json::Value = serde_json::from_str(&imds).unwrap_or_default();
        let text = |k: &str| {
            compute["compute"][k]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        Ok(VmMetadata {
            tenant_name: xml_attr(&shared, "Deployment", "name").unwrap_or_default(),
            role_name: xml_attr(&shared, "Role", "name").unwrap_or_default(),
            role_instance_name: xml_text(&goal, "InstanceId").unwrap_or_default(),
            container_id: xml_text(&goal, "ContainerId").unwrap_or_default(),
            resource_group_name: text("resourceGroupName"),
            subscription_id: text("subscriptionId"),
            vm_id: text("vmId"),
            image_origin: u64::from(!text("offer").is_empty()),
            os_version: os_version(),
            ram: ram_mb(),
            processors: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        })
    }
}

fn generic_events(items: Vec<TelemetryItem>) -> Vec<Event> {
    items
        .into_iter()
        .filter_map(|i| match i {
            TelemetryItem::Generic(e) => Some(e),
            TelemetryItem::Extension(_) => None,
        })
        .collect()
}

/// The origin-form target of a SharedConfig URL, only when it names `wireserver` (spec §3.7, decided).
pub fn shared_config_target(url: &str, wireserver: std::net::SocketAddr) -> Option<String> {
    let rest = url.trim().strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let authority = authority.to_owned();
    let addr: std::net::SocketAddr = authority
        .parse()
        .or_else(|_| format!("{authority}:80").parse())
        .ok()?;
    (addr == wireserver).then(|| path.replace("&amp;", "&"))
}

/// The text of the first `<tag>…</tag>`, XML-unescaped.
pub fn xml_text(doc: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = doc.find(&open)? + open.len();
    let end = doc[start..].find(&format!("</{tag}>"))? + start;
    Some(unescape(doc[start..end].trim()))
}

/// The value of `attr` on the first `<element …>`.
pub fn xml_attr(doc: &str, element: &str, attr: &str) -> Option<String> {
    let open = format!("<{element} ");
    let start = doc.find(&open)? + open.len();
    let end = doc[start..].find('>')? + start;
    let tag = &doc[start..end];
    let key = format!("{attr}=\"");
    let v = tag.find(&key)? + key.len();
    let close = tag[v..].find('"')? + v;
    Some(unescape(&tag[v..close]))
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn os_version() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("Linux:{}", release.trim())
}

fn ram_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_config_must_name_the_configured_wireserver() {
        let ws: std::net::SocketAddr = "127.0.0.16:8080".parse().unwrap();
        assert_eq!(
            shared_config_target(
                "http://127.0.0.16:8080/machine/1/x?comp=config&amp;type=sharedConfig",
                ws
            ),
            Some("/machine/1/x?comp=config&type=sharedConfig".to_owned())
        );
        assert_eq!(
            shared_config_target("http://10.0.0.1:8080/machine", ws),
            None
        );
        assert_eq!(
            shared_config_target("https://127.0.0.16:8080/machine", ws),
            None
        );
        let real: std::net::SocketAddr = "168.63.129.16:80".parse().unwrap();
        assert_eq!(
            shared_config_target("http://168.63.129.16/m", real),
            Some("/m".to_owned())
        );
    }

    #[test]
    fn xml_extraction() {
        let goal = "<GoalState><Container><ContainerId>c&amp;1</ContainerId><RoleInstanceList><RoleInstance>\
                    <InstanceId>role_IN_0</InstanceId><Configuration><SharedConfig>http://x/y</SharedConfig>";
        assert_eq!(xml_text(goal, "ContainerId").as_deref(), Some("c&1"));
        assert_eq!(xml_text(goal, "InstanceId").as_deref(), Some("role_IN_0"));
        assert_eq!(xml_text(goal, "Missing"), None);
        let shared = r#"<SharedConfig version="1"><Deployment name="dep-1" guid="g"><Role name="web" /></SharedConfig>"#;
        assert_eq!(
            xml_attr(shared, "Deployment", "name").as_deref(),
            Some("dep-1")
        );
        assert_eq!(xml_attr(shared, "Role", "name").as_deref(), Some("web"));
    }
}
