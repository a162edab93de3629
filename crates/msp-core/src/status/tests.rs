use super::*;
use serde_json::Value;

fn vectors() -> Value {
    serde_json::from_str(include_str!("../../tests/vectors/status.json")).unwrap()
}

#[test]
fn spec_example_round_trips_field_for_field() {
    let example = vectors()["current"].clone();
    let doc: AggregateStatus = serde_json::from_value(example.clone()).unwrap();
    assert_eq!(serde_json::to_value(&doc).unwrap(), example);
    assert_eq!(doc.proxy_agent_status.evaluate(), OverallState::Success);
}

#[test]
fn reference_instance_view_reads_with_case_insensitive_states() {
    let view: ProxyAgentStatus =
        serde_json::from_value(vectors()["reference_instance_view"].clone()).unwrap();
    assert_eq!(view.status, OverallState::Success);
    assert!(
        view.key_latch_status
            .state(state_keys::WIRESERVER_RULE_ID)
            .unwrap()
            .starts_with("/SUBSCRIPTIONS/")
    );
    assert_eq!(
        view.key_latch_status.state("KEYGUID"),
        Some("e3882f98-da8d-4410-8394-06c23462781c")
    );
    assert_eq!(view.proxy_connections_count, 590);
}

#[test]
fn conf_084_success_iff_three_modules_running() {
    let mut s = ProxyAgentStatus::default();
    assert_eq!(s.status, OverallState::Unknown);
    assert_eq!(s.evaluate(), OverallState::Error);
    s.key_latch_status.status = ModuleState::Running;
    s.ebpf_program_status.status = ModuleState::Running;
    assert_eq!(s.evaluate(), OverallState::Error);
    s.proxy_listener_status.status = ModuleState::Running;
    assert_eq!(s.evaluate(), OverallState::Success);
    // Monitor and telemetry do not take part.
    s.telemetry_logger_status.status = ModuleState::Stopped;
    assert_eq!(s.evaluate(), OverallState::Success);
    s.ebpf_program_status.status = ModuleState::Stopped;
    assert_eq!(s.evaluate(), OverallState::Error);
}

#[test]
fn conf_082_summary_items_have_exactly_eight_fields() {
    let doc: AggregateStatus = serde_json::from_value(vectors()["current"].clone()).unwrap();
    let item = serde_json::to_value(&doc.proxy_connection_summary[0]).unwrap();
    let mut keys: Vec<_> = item.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "count",
            "ip",
            "port",
            "processCmdLine",
            "processFullPath",
            "responseStatus",
            "userGroups",
            "userName"
        ]
    );
}

#[test]
fn default_module_message_is_status_unknown() {
    assert_eq!(
        serde_json::to_value(ModuleStatus::default()).unwrap()["message"],
        "Status unknown."
    );
    assert_eq!(
        serde_json::to_value(ModuleStatus::default()).unwrap()["status"],
        "UNKNOWN"
    );
}

#[test]
fn timestamp_format_is_utc_millis_without_zone() {
    assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000");
    // Wed, 23 Apr 2025 12:00:00 GMT = 1745409600.
    assert_eq!(
        format_timestamp(1_745_409_600_123),
        "2025-04-23T12:00:00.123"
    );
    assert_eq!(format_timestamp(951_782_400_000), "2000-02-29T00:00:00.000");
    assert_eq!(
        format_timestamp(4_107_542_399_999),
        "2100-02-28T23:59:59.999"
    );
}
