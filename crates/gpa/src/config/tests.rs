use super::*;

fn env() -> BTreeMap<String, String> {
    BTreeMap::from([("STATE".to_owned(), "/tmp/gpa-state".to_owned())])
}

fn parse(json: &str) -> Result<Config, ConfigError> {
    Config::from_json(
        Path::new("/etc/azure/proxy-agent.json"),
        json.as_bytes(),
        &env(),
    )
}

#[test]
fn conf_003_host_name_endpoint_is_rejected_naming_file_and_key() {
    let err = parse(r#"{"imdsEndpoint": "metadata.azure.internal:80"}"#).unwrap_err();
    assert!(
        matches!(&err, ConfigError::NotIpLiteral { key, value, .. }
            if key == "imdsEndpoint" && value == "metadata.azure.internal:80"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("/etc/azure/proxy-agent.json") && text.contains("imdsEndpoint"),
        "{text}"
    );
}

#[test]
fn conf_003_endpoint_without_port_is_rejected() {
    let err = parse(r#"{"wireServerEndpoint": "168.63.129.16"}"#).unwrap_err();
    assert!(
        matches!(err, ConfigError::NotIpLiteral { ref key, .. } if key == "wireServerEndpoint")
    );
}

#[test]
fn conf_003_ip_literals_are_accepted_ipv6_in_brackets() {
    let c = parse(
        r#"{"wireServerEndpoint": "127.0.0.16:8080", "imdsEndpoint": "[::1]:8081",
                      "proxyListenAddress": "127.0.0.1:13080"}"#,
    )
    .unwrap();
    assert_eq!(c.endpoints().wireserver, "127.0.0.16:8080".parse().unwrap());
    assert_eq!(c.endpoints().imds, "[::1]:8081".parse().unwrap());
    assert_eq!(c.proxy_listen_address, "127.0.0.1:13080".parse().unwrap());
}

#[test]
fn conf_089_unknown_key_stops_with_file_and_key() {
    let err = parse(r#"{"logFolder": "/tmp/x", "pollIntervalSeconds": 3}"#).unwrap_err();
    assert!(
        matches!(&err, ConfigError::UnknownKey { key, .. } if key == "pollIntervalSeconds"),
        "{err:?}"
    );
    assert!(err.to_string().contains("/etc/azure/proxy-agent.json"));
}

#[test]
fn conf_089_wrong_type_names_the_key() {
    let err = parse(r#"{"pollKeyStatusIntervalInSeconds": "fifteen"}"#).unwrap_err();
    assert!(
        matches!(&err, ConfigError::InvalidValue { key, .. } if key == "pollKeyStatusIntervalInSeconds"),
        "{err:?}"
    );
    let err = parse(r#"{"fileLogLevel": "Loud"}"#).unwrap_err();
    assert!(
        matches!(&err, ConfigError::InvalidValue { key, .. } if key == "fileLogLevel"),
        "{err:?}"
    );
}

#[test]
fn invalid_json_and_non_object_are_errors() {
    assert!(matches!(parse("{"), Err(ConfigError::InvalidJson { .. })));
    assert!(matches!(parse("[1]"), Err(ConfigError::InvalidJson { .. })));
}

#[test]
fn listener_must_be_loopback() {
    let err = parse(r#"{"proxyListenAddress": "0.0.0.0:3080"}"#).unwrap_err();
    assert!(
        matches!(err, ConfigError::ListenerNotLoopback { .. }),
        "{err:?}"
    );
    let err = parse(r#"{"proxyListenAddress": "10.0.0.4:3080"}"#).unwrap_err();
    assert!(matches!(err, ConfigError::ListenerNotLoopback { .. }));
}

#[test]
fn zero_interval_is_refused() {
    let err = parse(r#"{"pollKeyStatusIntervalInSeconds": 0}"#).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Zero { key, .. } if key == "pollKeyStatusIntervalInSeconds")
    );
}

#[test]
fn intervals_and_timeouts_over_a_year_are_refused_naming_the_key() {
    let err = parse(r#"{"idleConnectionTimeoutInSeconds": 18446744073709551615}"#).unwrap_err();
    assert!(
        matches!(&err, ConfigError::ValueTooLarge { key, value: u64::MAX, max: MAX_SECONDS, .. }
            if key == "idleConnectionTimeoutInSeconds"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("idleConnectionTimeoutInSeconds"),
        "{err}"
    );
    let year = format!(r#"{{"monitorIntervalInSeconds": {MAX_SECONDS}}}"#);
    assert!(parse(&year).is_ok(), "a year is still accepted");
    let more = format!(r#"{{"monitorIntervalInSeconds": {}}}"#, MAX_SECONDS + 1);
    assert!(matches!(
        parse(&more),
        Err(ConfigError::ValueTooLarge { .. })
    ));
}

#[test]
fn busy_polling_defaults_to_200_us_turns_off_at_0_and_is_refused_over_1_ms() {
    assert_eq!(Config::default().proxy_busy_poll_in_microseconds, 200);
    let off = parse(r#"{"proxyBusyPollInMicroseconds": 0}"#).unwrap();
    assert_eq!(off.proxy_busy_poll_in_microseconds, 0);
    let most = format!(r#"{{"proxyBusyPollInMicroseconds": {MAX_BUSY_POLL_MICROS}}}"#);
    assert_eq!(parse(&most).unwrap().proxy_busy_poll_in_microseconds, 1_000);
    let err = parse(r#"{"proxyBusyPollInMicroseconds": 1001}"#).unwrap_err();
    assert!(
        matches!(&err, ConfigError::ValueTooLarge { key, value: 1001, max: 1_000, .. }
            if key == "proxyBusyPollInMicroseconds"),
        "{err:?}"
    );
    assert!(err.to_string().contains("1 ms"), "{err}");
}

#[test]
fn missing_explicit_file_is_an_error() {
    let err = Config::load(Some(Path::new("/nonexistent/gpa.json")), &env()).unwrap_err();
    assert!(matches!(err, ConfigError::Missing { .. }));
    assert!(err.to_string().contains("/nonexistent/gpa.json"));
}

#[test]
fn load_reads_an_explicit_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(
        &path,
        br#"{"latchKeyFolder": "%STATE%/keys", "reportStatusToHost": true}"#,
    )
    .unwrap();
    let (c, used) = Config::load(Some(&path), &env()).unwrap();
    assert_eq!(used.as_deref(), Some(path.as_path()));
    assert_eq!(c.latch_key_folder, PathBuf::from("/tmp/gpa-state/keys"));
    assert_eq!(c.rules_dir(), PathBuf::from("/tmp/gpa-state/rules"));
    assert!(c.report_status_to_host);
}

#[test]
fn percent_expansion_leaves_unknown_and_lone_percent() {
    let e = env();
    assert_eq!(expand("%STATE%/a", &e), "/tmp/gpa-state/a");
    assert_eq!(expand("%NOPE%/a", &e), "%NOPE%/a");
    assert_eq!(expand("50% off", &e), "50% off");
    assert_eq!(expand("%%STATE%", &e), "%/tmp/gpa-state");
    assert_eq!(expand("é%STATE%ü", &e), "é/tmp/gpa-state\u{fc}");
}

#[test]
fn defaults_follow_spec_10_2_and_round_trip() {
    let d = Config::default();
    assert_eq!(d.poll_interval(), Duration::from_secs(15));
    assert_eq!(d.monitor_interval(), Duration::from_secs(60));
    assert_eq!(d.host_call_timeout(), Duration::from_secs(30));
    assert_eq!(d.proxy_listen_address.to_string(), "127.0.0.1:3080");
    assert_eq!(d.endpoints().hostga.to_string(), "168.63.129.16:32526");
    assert_eq!(
        d.rules_dir(),
        PathBuf::from("/var/lib/azure-proxy-agent/rules")
    );
    let printed = Config::defaults_json();
    assert!(
        printed.contains("\"pollKeyStatusIntervalInSeconds\": 15"),
        "{printed}"
    );
    assert!(
        printed.contains("\"hostGAPluginEndpoint\": \"168.63.129.16:32526\""),
        "{printed}"
    );
    assert_eq!(parse(&printed).unwrap(), d);
}

#[test]
fn ignored_compatibility_keys_are_accepted() {
    let c = parse(
        r#"{"hostGAPluginSupport": 1, "wireServerSupport": {"x": true}, "imdsSupport": "on",
                      "canonicalRequestMode": "shadow", "ebpfProgramName": "x.o"}"#,
    )
    .unwrap();
    assert_eq!(c.canonical_request_mode.as_deref(), Some("shadow"));
}

#[test]
fn empty_log_folder_means_no_files() {
    let c = parse(r#"{"logFolder": ""}"#).unwrap();
    assert_eq!(c.log_dir(), None);
    assert!(Config::default().log_dir().is_some());
}
