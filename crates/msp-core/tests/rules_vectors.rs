//! Rule-evaluation vectors (spec §3.5, §4.3–§4.5): `tests/vectors/rules_eval.json`, one loop test.

use msp_core::canon::{Destination, Request};
use msp_core::endpoint::EndpointAddrs;
use msp_core::rules::{AllowedBy, CompiledItem, Decision, Items, authorize, parse_item};
use msp_core::{Claims, Endpoint};
use serde_json::{Value, json};

fn claims(doc: &Value, name: &str) -> Claims {
    let mut merged = doc["claims_defaults"].clone();
    let given = doc["claims"][name]
        .as_object()
        .unwrap_or_else(|| panic!("claims {name}"));
    for (k, v) in given {
        merged[k] = v.clone();
    }
    serde_json::from_value(merged).unwrap()
}

fn item(doc: &Value, snapshot: &Value, key: &str) -> Option<CompiledItem> {
    let name = snapshot.get(key)?.as_str()?;
    let text = doc["items"][name].to_string();
    Some(CompiledItem::compile(
        parse_item(&text).unwrap_or_else(|e| panic!("item {name}: {e}")),
    ))
}

fn destination(label: &str) -> (Destination, bool) {
    match label {
        "Unknown" => (Destination::Unknown("10.0.0.1:80".into()), false),
        // The listener is classified like any address, then recognised by the caller.
        "Listener" => (Destination::Endpoint(Endpoint::Imds), true),
        _ => (
            Destination::Endpoint(
                Endpoint::ALL
                    .into_iter()
                    .find(|e| e.label() == label)
                    .unwrap(),
            ),
            false,
        ),
    }
}

/// The vector spelling of a decision.
fn spell(decision: &Decision) -> Value {
    let denial =
        |kind: &str, reason: &msp_core::Reason, privilege: &Option<std::sync::Arc<str>>| {
            let mut v = json!({"decision": kind, "reason": reason.code()});
            if let Some(p) = privilege {
                v["privilege"] = json!(&**p);
            }
            v
        };
    match decision {
        Decision::Allow {
            by:
                AllowedBy::Privilege {
                    privilege,
                    identity,
                },
        } => {
            json!({"decision": "Allow", "by": "Privilege", "privilege": &**privilege, "identity": &**identity})
        }
        Decision::Allow { by } => json!({"decision": "Allow", "by": format!("{by:?}")}),
        Decision::Deny { reason, privilege } => denial("Deny", reason, privilege),
        Decision::AuditDeny { reason, privilege } => denial("AuditDeny", reason, privilege),
    }
}

/// Runs the vector cases tagged with conformance item `conf` (all cases for `None`); returns how many ran.
fn run(conf: Option<u64>) -> usize {
    let doc: Value = serde_json::from_str(include_str!("vectors/rules_eval.json")).unwrap();
    let addrs = EndpointAddrs::default();
    let mut count = 0;
    for snapshot in doc["snapshots"].as_array().unwrap() {
        let wireserver = item(&doc, snapshot, "wireserver");
        let items = Items {
            hostga: wireserver.clone(),
            wireserver,
            imds: item(&doc, snapshot, "imds"),
        };
        let cases = snapshot["cases"].as_array().unwrap();
        for case in cases
            .iter()
            .filter(|c| conf.is_none() || c["conf"].as_u64() == conf)
        {
            let (dest, listener_is_dest) = destination(case["dest"].as_str().unwrap());
            let request = Request {
                method: case["method"].as_str().unwrap(),
                target: case["target"].as_str().unwrap().as_bytes(),
                dest: &dest,
                addrs: &addrs,
            };
            let claims = claims(&doc, case["claims"].as_str().unwrap());
            let decision = authorize(&request, listener_is_dest, &claims, &items);
            assert_eq!(
                spell(&decision),
                case["expect"],
                "snapshot {}: {case}",
                snapshot["name"]
            );
            count += 1;
        }
    }
    count
}

#[test]
fn rule_evaluation_vectors() {
    assert!(run(None) >= 40);
}

#[test]
fn conf_039_mode_disabled_allows_without_evaluating() {
    assert!(run(Some(39)) >= 2);
}

#[test]
fn conf_040_touched_privilege_without_identity_denies_even_under_default_allow() {
    assert!(run(Some(40)) >= 3);
}

#[test]
fn conf_041_audit_denials_are_forwarded_as_audit_deny() {
    // The summary entry itself is the proxy's; here: the decision carries the enforce reason.
    assert!(run(Some(41)) >= 1);
}

#[test]
fn conf_042_privilege_prefix_is_segment_aware() {
    assert!(run(Some(42)) >= 2);
}

#[test]
fn conf_043_required_parameters_extra_parameters_and_value_case() {
    assert!(run(Some(43)) >= 2);
}

#[test]
fn conf_044_repeated_query_keys_neither_pass_nor_slip() {
    assert!(run(Some(44)) >= 3);
}

#[test]
fn conf_045_d3_user_names_are_byte_exact() {
    assert!(run(Some(45)) >= 2);
}

#[test]
fn conf_046_exe_path_selects_curl_not_python() {
    assert!(run(Some(46)) >= 3);
}

#[test]
fn conf_047_non_root_to_wireserver_or_hostga_is_not_elevated() {
    assert!(run(Some(47)) >= 6);
}

#[test]
fn conf_048_listener_destination_is_forbidden() {
    assert!(run(Some(48)) >= 1);
}

#[test]
fn conf_049_hostga_is_decided_by_the_wireserver_host_item() {
    assert!(run(Some(49)) >= 1);
}

#[test]
fn conf_060_canonical_errors_deny_with_their_code() {
    assert!(run(Some(60)) >= 2);
}

#[test]
fn conf_062_absolute_form_host_mismatch_is_canon_host() {
    assert!(run(Some(62)) >= 1);
}
