//! The XML payload of `POST /machine/?comp=telemetrydata` (spec §11.3), built purely from events and VM
//! metadata.
//!
//! No whitespace between elements, every value XML-escaped, `T` typed `mt:wstr`, `mt:uint64` or `mt:bool`, each
//! payload under [`MAX_PAYLOAD_BYTES`]; an event too large on its own is dropped and counted. This module must
//! never read a clock or the network.

use super::event::Event;

/// Provider of generic log events (event id 7).
pub const GENERIC_PROVIDER: &str = "FFF0196F-EE4C-4EAF-9AA5-776F622DEB4F";
/// Provider of extension-status events (event id 1).
pub const EXTENSION_PROVIDER: &str = "69B669B9-4AF8-4C50-BDC4-6006FA76E975";
/// A payload is strictly smaller than this, in bytes (spec §11.3).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

const HEAD: &str = r#"<?xml version="1.0"?><TelemetryData version="1.0">"#;
const TAIL: &str = "</TelemetryData>";

/// VM facts sent with every event (spec §11.3 "common" parameters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmMetadata {
    pub tenant_name: String,
    pub role_name: String,
    pub role_instance_name: String,
    pub container_id: String,
    pub resource_group_name: String,
    pub subscription_id: String,
    pub vm_id: String,
    /// 1 when the IMDS `offer` is non-empty, else 0.
    pub image_origin: u64,
    pub os_version: String,
    /// Megabytes.
    pub ram: u64,
    pub processors: u64,
}

/// An extension-status event (provider `69B669B9-…`, id 1): the periodic `proxyAgentStatus` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionStatus {
    pub event: Event,
    pub extension_type: String,
    pub is_internal: bool,
    pub name: String,
    pub version: String,
    pub operation: String,
    pub operation_success: bool,
    pub message: String,
    pub duration: u64,
}

/// One item to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TelemetryItem {
    Generic(Event),
    Extension(ExtensionStatus),
}

enum Value<'a> {
    Str(&'a str),
    U64(u64),
    Bool(bool),
}

fn param(out: &mut String, name: &str, value: Value<'_>) {
    let (text, ty) = match value {
        Value::Str(s) => (escape(s), "mt:wstr"),
        Value::U64(n) => (n.to_string(), "mt:uint64"),
        Value::Bool(b) => ((if b { "True" } else { "False" }).to_owned(), "mt:bool"),
    };
    out.push_str("<Param Name=\"");
    out.push_str(name);
    out.push_str("\" Value=\"");
    out.push_str(&text);
    out.push_str("\" T=\"");
    out.push_str(ty);
    out.push_str("\" />");
}

/// XML-escapes `& < > " '`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn common(out: &mut String, meta: &VmMetadata) {
    param(
        out,
        "KeywordName",
        Value::Str(r#"{"CpuArchitecture":"x86_64"}"#),
    );
    param(out, "TenantName", Value::Str(&meta.tenant_name));
    param(out, "RoleName", Value::Str(&meta.role_name));
    param(
        out,
        "RoleInstanceName",
        Value::Str(&meta.role_instance_name),
    );
    param(out, "ContainerId", Value::Str(&meta.container_id));
    param(
        out,
        "ResourceGroupName",
        Value::Str(&meta.resource_group_name),
    );
    param(out, "SubscriptionId", Value::Str(&meta.subscription_id));
    param(out, "VMId", Value::Str(&meta.vm_id));
    param(out, "ImageOrigin", Value::U64(meta.image_origin));
    param(out, "OSVersion", Value::Str(&meta.os_version));
    param(out, "RAM", Value::U64(meta.ram));
    param(out, "Processors", Value::U64(meta.processors));
}

fn header(out: &mut String, e: &Event) {
    param(out, "EventPid", Value::Str(&e.event_pid));
    param(out, "EventTid", Value::Str(&e.event_tid));
    param(out, "GAVersion", Value::Str(&e.version));
    param(out, "ExecutionMode", Value::Str("ProxyAgent"));
    param(out, "TaskName", Value::Str(&e.task_name));
    param(out, "OpcodeName", Value::Str(&e.time_stamp));
}

/// `<Event id="…"><![CDATA[…]]></Event>` of one item; the provider it belongs to.
pub fn event_xml(item: &TelemetryItem, meta: &VmMetadata) -> (&'static str, String) {
    let mut p = String::with_capacity(1024);
    common(&mut p, meta);
    let (provider, id) = match item {
        TelemetryItem::Generic(e) => {
            header(&mut p, e);
            param(
                &mut p,
                "EventName",
                Value::Str("MicrosoftAzureGuestProxyAgent"),
            );
            param(&mut p, "CapabilityUsed", Value::Str(e.event_level.as_str()));
            param(&mut p, "Context1", Value::Str(&e.message));
            param(&mut p, "Context2", Value::Str(&e.time_stamp));
            param(&mut p, "Context3", Value::Str(&e.operation_id));
            (GENERIC_PROVIDER, 7)
        }
        TelemetryItem::Extension(x) => {
            header(&mut p, &x.event);
            param(&mut p, "ExtensionType", Value::Str(&x.extension_type));
            param(&mut p, "IsInternal", Value::Bool(x.is_internal));
            param(&mut p, "Name", Value::Str(&x.name));
            param(&mut p, "Version", Value::Str(&x.version));
            param(&mut p, "Operation", Value::Str(&x.operation));
            param(&mut p, "OperationSuccess", Value::Bool(x.operation_success));
            param(&mut p, "Message", Value::Str(&x.message));
            param(&mut p, "Duration", Value::U64(x.duration));
            (EXTENSION_PROVIDER, 1)
        }
    };
    (
        provider,
        format!("<Event id=\"{id}\"><![CDATA[{p}]]></Event>"),
    )
}

/// Packs items into payloads, each strictly under [`MAX_PAYLOAD_BYTES`], in order. Returns the payloads and the
/// number of items dropped because one alone would not fit.
pub fn pack(items: &[TelemetryItem], meta: &VmMetadata) -> (Vec<String>, usize) {
    let provider_overhead = |id: &str| format!("<Provider id=\"{id}\"></Provider>").len();
    let mut payloads = Vec::new();
    let mut dropped = 0;
    let mut generic: Vec<String> = Vec::new();
    let mut extension: Vec<String> = Vec::new();
    let mut size = HEAD.len() + TAIL.len();
    for item in items {
        let (provider, xml) = event_xml(item, meta);
        let opens_provider = match provider {
            GENERIC_PROVIDER => generic.is_empty(),
            _ => extension.is_empty(),
        };
        let cost = xml.len()
            + if opens_provider {
                provider_overhead(provider)
            } else {
                0
            };
        if HEAD.len() + TAIL.len() + provider_overhead(provider) + xml.len() >= MAX_PAYLOAD_BYTES {
            dropped += 1;
            continue;
        }
        if size + cost >= MAX_PAYLOAD_BYTES {
            payloads.push(render(&generic, &extension));
            generic.clear();
            extension.clear();
            size = HEAD.len() + TAIL.len();
        }
        let opens_provider = match provider {
            GENERIC_PROVIDER => generic.is_empty(),
            _ => extension.is_empty(),
        };
        size += xml.len()
            + if opens_provider {
                provider_overhead(provider)
            } else {
                0
            };
        match provider {
            GENERIC_PROVIDER => generic.push(xml),
            _ => extension.push(xml),
        }
    }
    if !generic.is_empty() || !extension.is_empty() {
        payloads.push(render(&generic, &extension));
    }
    (payloads, dropped)
}

fn render(generic: &[String], extension: &[String]) -> String {
    let mut out = String::from(HEAD);
    for (id, events) in [(GENERIC_PROVIDER, generic), (EXTENSION_PROVIDER, extension)] {
        if events.is_empty() {
            continue;
        }
        out.push_str("<Provider id=\"");
        out.push_str(id);
        out.push_str("\">");
        events.iter().for_each(|e| out.push_str(e));
        out.push_str("</Provider>");
    }
    out.push_str(TAIL);
    out
}

#[cfg(test)]
mod tests;
