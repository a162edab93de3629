use super::*;

const KEY_JSON: &str = r#"{"authorizationScheme":"Azure-HMAC-SHA256","guid":"9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf","incarnationId":1,
 "issued":"2021-05-05T 12:00:00Z","key":"4A404E635266556A586E3272357538782F413F4428472B4B6250645367566B59"}"#;

#[test]
fn key_example_of_2_7_parses_and_never_prints_its_bytes() {
    let key = Key::parse(KEY_JSON.as_bytes()).unwrap();
    assert_eq!(key.incarnation_id, Some(1));
    assert_eq!(key.issued, "2021-05-05T 12:00:00Z");
    let debug = format!("{key:?}");
    assert!(!debug.contains("4A404E"), "{debug}");
    let (guid, _) = key.signing_parts().unwrap();
    assert_eq!(guid.as_str(), "9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf");
}

#[test]
fn key_file_round_trips_without_null_incarnation() {
    let mut key = Key::parse(KEY_JSON.as_bytes()).unwrap();
    key.incarnation_id = None;
    let pretty = serde_json::to_string_pretty(&key).unwrap();
    assert!(!pretty.contains("incarnationId"));
    assert_eq!(Key::parse(pretty.as_bytes()).unwrap(), key);
}

#[test]
fn conf_013_malformed_keys_are_rejected() {
    let cases = [
        ("\"key\":\"4A404E", "\"key\":\"ZZ404E"),
        ("9cf81e97-0316", "9cf81e970316"),
        ("Azure-HMAC-SHA256", "Azure-HMAC-SHA1"),
        ("6B59\"", "6B\""),
    ];
    for (from, to) in cases {
        let body = KEY_JSON.replacen(from, to, 1);
        assert!(Key::parse(body.as_bytes()).is_err(), "{to} accepted");
    }
    assert!(Key::parse(b"{}").is_err());
    assert!(Key::parse(b"\xff").is_err());
}

#[test]
fn conf_008_default_state_is_unknown() {
    let state = ChannelState::default();
    assert_eq!(state.state.to_string(), "Unknown");
    assert_eq!(state.modes, Modes::uniform(Mode::Disabled));
}

#[test]
fn summary_names_every_field() {
    let body = br#"{"version":"1.0","authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","secureChannelState":"Wireserver"}"#;
    let status = KeyStatus::parse(body).unwrap();
    assert_eq!(
        status.summary(&status.derive()),
        "authorizationScheme: Azure-HMAC-SHA256, keyDeliveryMethod: http, keyGuid: None, secureChannelState: \
         wireserver, version: 1.0, WireServerMode: enforce, IMDSMode: audit"
    );
}

#[test]
fn unknown_required_claims_are_reported() {
    let body = br#"{"version":"2.0","authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","secureChannelEnabled":false,"requiredClaimsHeaderPairs":["isRoot","tenant"]}"#;
    let status = KeyStatus::parse(body).unwrap();
    assert_eq!(
        status.unknown_required_claims().collect::<Vec<_>>(),
        ["tenant"]
    );
}

#[test]
fn empty_guid_means_none() {
    let body = br#"{"version":"2.0","authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","secureChannelEnabled":false,"keyGuid":""}"#;
    assert_eq!(KeyStatus::parse(body).unwrap().latched_guid(), None);
}

#[test]
fn duplicate_mode_key_counts_as_disabled() {
    let body = br#"{"version":"2.0","authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","secureChannelEnabled":true,
        "authorizationRules":{"imds":{"mode":"enforce","mode":"audit","id":"i","defaultAccess":"allow"}}}"#;
    let derived = KeyStatus::parse(body).unwrap().derive();
    assert_eq!(derived.modes.imds, Mode::Disabled);
}

#[test]
fn host_serialises_v2_with_raw_items_intact() {
    let item =
        RawValue::from_string(r#"{"defaultAccess":"allow","mode":"enforce","id":"x"}"#.to_owned())
            .unwrap();
    let status = KeyStatus {
        version: "2.0".into(),
        authorization_scheme: sign::SCHEME.into(),
        key_delivery_method: "http".into(),
        key_guid: None,
        key_incarnation_id: Some(3),
        required_claims_header_pairs: None,
        secure_channel_state: None,
        secure_channel_enabled: Some(true),
        authorization_rules: Some(AuthorizationRules {
            imds: Some(item),
            ..Default::default()
        }),
    };
    let json = serde_json::to_vec(&status).unwrap();
    let back = KeyStatus::parse(&json).unwrap();
    assert_eq!(
        back.derive().state.to_string(),
        "WireServer Disabled -  IMDS Enforce - HostGA Disabled"
    );
    assert_eq!(back.key_incarnation_id, Some(3));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = KeyStatus::parse(&bytes);
            let _ = Key::parse(&bytes);
        }
    }
}
