//! The workloads of the benchmark, each run through the agent and direct in alternating rounds.

use std::fmt::Write as _;

use crate::worker::Pattern;

/// What is requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `/metadata/instance`: the host's own instance document (~1 KB response).
    Instance,
    /// A path under the host's upstream prefix: a 64 KiB response.
    Large,
}

/// One workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// Stable name (JSON key, `--only`).
    pub name: &'static str,
    /// Table label.
    pub title: &'static str,
    pub connections: usize,
    pub pattern: Pattern,
    pub resource: Resource,
    /// The agent's IMDS item is the 1,000-privilege allowlist of [`allowlist_item`].
    pub allowlist: bool,
}

const fn ka(name: &'static str, title: &'static str, connections: usize) -> Workload {
    Workload {
        name,
        title,
        connections,
        pattern: Pattern::KeepAlive,
        resource: Resource::Instance,
        allowlist: false,
    }
}

/// Every workload, in run order (the allowlist last: it changes the agent's rules).
pub const ALL: [Workload; 7] = [
    ka("keepalive-1", "keep-alive, 1 connection", 1),
    ka("keepalive-16", "keep-alive, 16 connections", 16),
    ka("keepalive-64", "keep-alive, 64 connections", 64),
    Workload {
        pattern: Pattern::NewConnection,
        ..ka("newconn-1", "new connection per request, 1 client", 1)
    },
    Workload {
        pattern: Pattern::NewConnection,
        ..ka("newconn-8", "new connection per request, 8 clients", 8)
    },
    Workload {
        resource: Resource::Large,
        ..ka(
            "response-64k",
            "64 KiB response, keep-alive, 1 connection",
            1,
        )
    },
    Workload {
        allowlist: true,
        ..ka(
            "allowlist-1000",
            "1,000-privilege allowlist, keep-alive, 1 connection",
            1,
        )
    },
];

/// Privileges in the allowlist workload's item.
pub const PRIVILEGES: usize = 1000;
/// The path the allowlist grants the bench (root); everything else under `/metadata` is denied.
pub const GRANTED_PATH: &str = "/metadata/instance";
/// A path the allowlist does not grant: the agent answers 403 once the item is applied.
pub const DENIED_PATH: &str = "/metadata/versions";

/// The IMDS request target of a resource.
pub fn target(resource: Resource) -> String {
    match resource {
        Resource::Instance => format!("{GRANTED_PATH}?api-version=2021-02-01"),
        Resource::Large => format!(
            "{}blob?api-version=2021-02-01",
            crate::stack::UPSTREAM_PREFIX
        ),
    }
}

/// A spec §4.1 item with [`PRIVILEGES`] privileges under 50 areas in 100 roles of 10, 100 identities; the
/// privilege granting [`GRANTED_PATH`] to `root` is the last one, in the last role.
pub fn allowlist_item() -> String {
    let privileges: Vec<String> = (0..PRIVILEGES)
        .map(|i| {
            let path = if i == PRIVILEGES - 1 {
                GRANTED_PATH.to_owned()
            } else {
                format!("/metadata/area{}/resource{i}", i % 50)
            };
            format!(r#"{{"name":"p{i}","path":"{path}","queryParameters":{{"api-version":"2021-02-01"}}}}"#)
        })
        .collect();
    let roles: Vec<String> = (0..PRIVILEGES / 10)
        .map(|r| {
            let names: Vec<String> = (0..10).map(|k| format!(r#""p{}""#, r * 10 + k)).collect();
            format!(r#"{{"name":"r{r}","privileges":[{}]}}"#, names.join(","))
        })
        .collect();
    let mut identities = String::from(r#"{"name":"bench","userName":"root"}"#);
    for i in 0..99 {
        let _ = write!(
            identities,
            r#",{{"name":"i{i}","userName":"user{i}","exePath":"/usr/bin/app{i}"}}"#
        );
    }
    let assignments: Vec<String> = (0..PRIVILEGES / 10)
        .map(|r| {
            let who = if r == PRIVILEGES / 10 - 1 {
                r#""bench""#.to_owned()
            } else {
                format!(r#""i{}""#, r % 99)
            };
            format!(r#"{{"role":"r{r}","identities":[{who}]}}"#)
        })
        .collect();
    format!(
        r#"{{"defaultAccess":"deny","mode":"enforce","id":"bench-1000","rules":{{"privileges":[{}],"roles":[{}],"identities":[{identities}],"roleAssignments":[{}]}}}}"#,
        privileges.join(","),
        roles.join(","),
        assignments.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowlist_is_a_valid_item_granting_root_the_instance_path() {
        let item = allowlist_item();
        msp_core::rules::parse_item(&item).expect("valid spec §4.1 item");
        let v: serde_json::Value = serde_json::from_str(&item).unwrap();
        assert_eq!(
            v["rules"]["privileges"].as_array().unwrap().len(),
            PRIVILEGES
        );
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = ALL.iter().map(|w| w.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }
}
