//! The README's main command keeps working: the demo, run whole, reports every step as MSP promises. It runs in
//! a namespace of its own, so its loopback addresses collide with nothing else on the machine.

use std::process::Command;

use msp_demo::netns::NetNs;

use crate::support::{exe, require_root};

#[test]
fn e2e_root_the_demo_passes_every_step() {
    require_root!("e2e_root_the_demo_passes_every_step");
    let ns = NetNs::create("demo").unwrap();
    let out = Command::new(exe())
        .arg("--json")
        .arg("--netns")
        .arg(ns.path())
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let failed: Vec<&serde_json::Value> = doc["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["checks"].as_array().into_iter().flatten())
        .filter(|c| c["ok"] != true)
        .collect();
    assert!(failed.is_empty(), "checks that did not hold: {failed:#?}");
    assert_eq!(doc["error"], serde_json::Value::Null, "{doc:#}");
    assert_eq!(doc["steps"].as_array().map(Vec::len), Some(5), "{doc:#}");
    assert_eq!(doc["ok"], true);
    assert_eq!(out.status.code(), Some(0));
}
