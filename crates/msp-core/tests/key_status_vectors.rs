//! `KeyStatus` vectors of spec §2.3–§2.6 (conformance items 6–12), loaded from `tests/vectors/key_status.json`.

use msp_core::wire::KeyStatus;
use msp_core::{Endpoint, Mode};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    accepted: Vec<Accepted>,
    rejected: Vec<Rejected>,
}

#[derive(Deserialize)]
struct Accepted {
    name: String,
    body: serde_json::Value,
    state: String,
    /// WireServer, HostGAPlugin, IMDS.
    modes: [String; 3],
    /// wireServerRuleId, imdsRuleId, hostGARuleId.
    ids: [String; 3],
}

#[derive(Deserialize)]
struct Rejected {
    name: String,
    body: serde_json::Value,
    error: String,
}

fn vectors() -> Vectors {
    serde_json::from_str(include_str!("vectors/key_status.json")).expect("vectors parse")
}

#[test]
fn conf_009_to_012_accepted_statuses_derive_state_modes_and_ids() {
    for v in vectors().accepted {
        let body = serde_json::to_vec(&v.body).unwrap();
        let status = KeyStatus::parse(&body).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        let derived = status.derive();
        assert_eq!(derived.state.to_string(), v.state, "{}", v.name);
        let modes: Vec<Mode> = v.modes.iter().map(|m| Mode::parse(m).unwrap()).collect();
        assert_eq!(
            [
                derived.modes.get(Endpoint::WireServer),
                derived.modes.get(Endpoint::HostGaPlugin),
                derived.modes.get(Endpoint::Imds)
            ],
            [modes[0], modes[1], modes[2]],
            "{} modes",
            v.name
        );
        let ids = &derived.rule_ids;
        assert_eq!(
            [&ids.wireserver, &ids.imds, &ids.hostga],
            [&v.ids[0], &v.ids[1], &v.ids[2]],
            "{} ids",
            v.name
        );
    }
}

#[test]
fn conf_006_rejected_statuses_name_the_problem() {
    for v in vectors().rejected {
        let body = serde_json::to_vec(&v.body).unwrap();
        let err = KeyStatus::parse(&body).expect_err(&v.name).to_string();
        assert!(
            err.contains(&v.error),
            "{}: {err:?} lacks {:?}",
            v.name,
            v.error
        );
    }
}
