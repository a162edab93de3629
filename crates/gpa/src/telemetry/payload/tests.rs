use super::*;
use crate::telemetry::EventLevel;

fn event(message: &str) -> Event {
    Event {
        event_level: EventLevel::Warn,
        message: message.to_owned(),
        version: "0.1.0".to_owned(),
        task_name: "gpa".to_owned(),
        event_pid: "42".to_owned(),
        event_tid: "43".to_owned(),
        operation_id: "KeyKeeper".to_owned(),
        time_stamp: "2025-04-23T12:00:00.123".to_owned(),
    }
}

fn meta() -> VmMetadata {
    VmMetadata {
        tenant_name: "tenant".into(),
        role_name: "role".into(),
        role_instance_name: "role_IN_0".into(),
        container_id: "c-1".into(),
        resource_group_name: "rg".into(),
        subscription_id: "sub".into(),
        vm_id: "vm".into(),
        image_origin: 1,
        os_version: "Linux:6.18".into(),
        ram: 2048,
        processors: 2,
    }
}

const COMMON: &str = concat!(
    r#"<Param Name="KeywordName" Value="{&quot;CpuArchitecture&quot;:&quot;x86_64&quot;}" T="mt:wstr" />"#,
    r#"<Param Name="TenantName" Value="tenant" T="mt:wstr" />"#,
    r#"<Param Name="RoleName" Value="role" T="mt:wstr" />"#,
    r#"<Param Name="RoleInstanceName" Value="role_IN_0" T="mt:wstr" />"#,
    r#"<Param Name="ContainerId" Value="c-1" T="mt:wstr" />"#,
    r#"<Param Name="ResourceGroupName" Value="rg" T="mt:wstr" />"#,
    r#"<Param Name="SubscriptionId" Value="sub" T="mt:wstr" />"#,
    r#"<Param Name="VMId" Value="vm" T="mt:wstr" />"#,
    r#"<Param Name="ImageOrigin" Value="1" T="mt:uint64" />"#,
    r#"<Param Name="OSVersion" Value="Linux:6.18" T="mt:wstr" />"#,
    r#"<Param Name="RAM" Value="2048" T="mt:uint64" />"#,
    r#"<Param Name="Processors" Value="2" T="mt:uint64" />"#,
);

const HEADER: &str = concat!(
    r#"<Param Name="EventPid" Value="42" T="mt:wstr" />"#,
    r#"<Param Name="EventTid" Value="43" T="mt:wstr" />"#,
    r#"<Param Name="GAVersion" Value="0.1.0" T="mt:wstr" />"#,
    r#"<Param Name="ExecutionMode" Value="ProxyAgent" T="mt:wstr" />"#,
    r#"<Param Name="TaskName" Value="gpa" T="mt:wstr" />"#,
    r#"<Param Name="OpcodeName" Value="2025-04-23T12:00:00.123" T="mt:wstr" />"#,
);

#[test]
fn conf_090_generic_and_extension_payload_golden() {
    let items = [
        TelemetryItem::Generic(event("a<b & \"c\" ]]>")),
        TelemetryItem::Extension(ExtensionStatus {
            event: event("status"),
            extension_type: "Monitoring".into(),
            is_internal: true,
            name: "ProxyAgentStatus".into(),
            version: "0.1.0".into(),
            operation: "ProxyAgentStatus".into(),
            operation_success: false,
            message: "{}".into(),
            duration: 0,
        }),
    ];
    let (payloads, dropped) = pack(&items, &meta());
    assert_eq!(dropped, 0);
    let expected = format!(
        concat!(
            r#"<?xml version="1.0"?><TelemetryData version="1.0">"#,
            r#"<Provider id="FFF0196F-EE4C-4EAF-9AA5-776F622DEB4F"><Event id="7"><![CDATA[{common}{header}"#,
            r#"<Param Name="EventName" Value="MicrosoftAzureGuestProxyAgent" T="mt:wstr" />"#,
            r#"<Param Name="CapabilityUsed" Value="WARN" T="mt:wstr" />"#,
            r#"<Param Name="Context1" Value="a&lt;b &amp; &quot;c&quot; ]]&gt;" T="mt:wstr" />"#,
            r#"<Param Name="Context2" Value="2025-04-23T12:00:00.123" T="mt:wstr" />"#,
            r#"<Param Name="Context3" Value="KeyKeeper" T="mt:wstr" />]]></Event></Provider>"#,
            r#"<Provider id="69B669B9-4AF8-4C50-BDC4-6006FA76E975"><Event id="1"><![CDATA[{common}{header}"#,
            r#"<Param Name="ExtensionType" Value="Monitoring" T="mt:wstr" />"#,
            r#"<Param Name="IsInternal" Value="True" T="mt:bool" />"#,
            r#"<Param Name="Name" Value="ProxyAgentStatus" T="mt:wstr" />"#,
            r#"<Param Name="Version" Value="0.1.0" T="mt:wstr" />"#,
            r#"<Param Name="Operation" Value="ProxyAgentStatus" T="mt:wstr" />"#,
            r#"<Param Name="OperationSuccess" Value="False" T="mt:bool" />"#,
            r#"<Param Name="Message" Value="{{}}" T="mt:wstr" />"#,
            r#"<Param Name="Duration" Value="0" T="mt:uint64" />]]></Event></Provider>"#,
            r#"</TelemetryData>"#
        ),
        common = COMMON,
        header = HEADER
    );
    assert_eq!(payloads, [expected]);
}

#[test]
fn conf_090_payloads_stay_under_64_kib_and_oversized_events_are_dropped() {
    let big = "x".repeat(3_000);
    let mut items: Vec<TelemetryItem> = (0..100)
        .map(|_| TelemetryItem::Generic(event(&big)))
        .collect();
    items.insert(
        50,
        TelemetryItem::Generic(event(&"y".repeat(MAX_PAYLOAD_BYTES))),
    );
    let (payloads, dropped) = pack(&items, &meta());
    assert_eq!(dropped, 1);
    assert!(payloads.len() >= 5, "{}", payloads.len());
    let mut total = 0;
    for p in &payloads {
        assert!(p.len() < MAX_PAYLOAD_BYTES, "{}", p.len());
        assert!(p.starts_with(
            r#"<?xml version="1.0"?><TelemetryData version="1.0"><Provider id="FFF0196F"#
        ));
        assert!(p.ends_with("</Provider></TelemetryData>"));
        assert!(!p.contains("> <") && !p.contains(">\n<"));
        total += p.matches("<Event id=\"7\">").count();
    }
    assert_eq!(total, 100, "every fitting event sent exactly once");
}

#[test]
fn empty_input_has_no_payload() {
    assert_eq!(pack(&[], &meta()), (Vec::new(), 0));
}
