//! Component health (FAQ "How do I check component health?"): the instance view reports each component; all
//! RUNNING when healthy, and a component that cannot work is reported as such.

use std::time::Duration;

use msp_core::Mode;
use msp_core::status::{ModuleState, OverallState};
use msp_demo::fabric::Fabric;

use crate::support::{fabric, require_root, view_until, view_until_within, with_mode};

/// Without provisioning the agent starts its status writer at 60 s of uptime (spec §2.8), so a component that
/// is broken from the start shows up only then.
const BROKEN_REPORT_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_root_component_health_every_component_running() {
    require_root!("e2e_root_component_health_every_component_running");
    let mut f = fabric(&[("vm1", Some(with_mode(Mode::Enforce)))]).await;
    let Fabric { vms, host, .. } = &mut f;
    let vm = &mut vms[0];
    vm.start_agent().unwrap();
    let v = view_until(host, "vm1", "every component RUNNING", |v| {
        [
            v.key_latch_status.status,
            v.ebpf_program_status.status,
            v.proxy_listener_status.status,
            v.telemetry_logger_status.status,
            v.monitor_status.status,
        ]
        .iter()
        .all(|s| *s == ModuleState::Running)
    })
    .await;
    assert_eq!(v.status, OverallState::Success);
    assert!(
        v.ebpf_program_status
            .message
            .starts_with("Started Redirector with eBPF maps - "),
        "{v:?}"
    );
    assert!(
        v.proxy_listener_status
            .message
            .starts_with("Started proxy listener 127.0.0.1:3080, ready to accept request - "),
        "{v:?}"
    );
    // The agent's own status file says the same.
    let local = vm.agent().unwrap().status().expect("status.json");
    assert_eq!(local.proxy_agent_status.status, OverallState::Success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_root_component_health_a_redirector_that_cannot_attach_is_reported() {
    require_root!("e2e_root_component_health_a_redirector_that_cannot_attach_is_reported");
    let mut f = fabric(&[("vm1", Some(with_mode(Mode::Enforce)))]).await;
    let not_a_cgroup = f.dir().join("not-a-cgroup");
    std::fs::create_dir(&not_a_cgroup).unwrap();
    let Fabric { vms, host, .. } = &mut f;
    let vm = &mut vms[0];
    let mut config = vm.agent_config();
    config.cgroup_root = Some(not_a_cgroup);
    vm.start_agent_with(config).unwrap();
    let v = view_until_within(
        host,
        "vm1",
        "the redirector failure",
        BROKEN_REPORT_TIMEOUT,
        |v| {
            v.ebpf_program_status.status != ModuleState::Running
                && v.status != OverallState::Unknown
        },
    )
    .await;
    assert_eq!(v.ebpf_program_status.status, ModuleState::Unknown, "{v:?}");
    assert!(
        v.ebpf_program_status
            .message
            .starts_with("Failed to start redirector: "),
        "{v:?}"
    );
    assert_eq!(v.status, OverallState::Error);
    assert_eq!(
        v.key_latch_status.status,
        ModuleState::Running,
        "the other components still run"
    );
    assert!(!host.vm_view("vm1").await.unwrap().provisioned);
}
