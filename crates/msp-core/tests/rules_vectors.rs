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
        &parse_item(&text).unwrap_or_else(|e| panic!("item {name}: {e}")),
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

#[test]
fn conf_039_to_049_rule_evaluation_vectors() {
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
        for case in snapshot["cases"].as_array().unwrap() {
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
    assert!(count >= 40, "{count} cases");
}
