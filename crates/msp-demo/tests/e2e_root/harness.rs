//! The suite's own promise: a failing scenario leaves nothing behind (namespaces, cgroups, processes, files).

use msp_core::Mode;
use msp_demo::netns::ip;

use crate::support::{fabric, latched, require_root, with_mode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_root_a_failing_scenario_leaves_nothing_behind() {
    require_root!("e2e_root_a_failing_scenario_leaves_nothing_behind");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let scenario = tokio::spawn(async move {
        let mut f = fabric(&[("vm1", Some(with_mode(Mode::Enforce)))]).await;
        f.vms[0].start_agent().unwrap();
        latched(
            &f.host,
            "vm1",
            "WireServer Enforce -  IMDS Enforce - HostGA Enforce",
        )
        .await;
        let created = (
            [
                f.host_netns().name().to_owned(),
                f.vms[0].netns().name().to_owned(),
            ],
            f.vms[0].cgroup.path().to_path_buf(),
            f.vms[0].agent().unwrap().pid(),
            f.dir().to_path_buf(),
        );
        tx.send(created).unwrap();
        panic!("the scenario fails here, with everything running");
    });
    assert!(scenario.await.unwrap_err().is_panic());
    let (namespaces, cgroup, agent, dir) = rx.await.unwrap();

    let listed = ip(&["netns", "list"]).unwrap();
    for ns in namespaces {
        assert!(!listed.contains(&ns), "{ns} left behind: {listed}");
    }
    assert!(!cgroup.exists(), "{} left behind", cgroup.display());
    assert!(!dir.exists(), "{} left behind", dir.display());
    let alive = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(agent).unwrap()),
        None,
    );
    assert_eq!(
        alive,
        Err(nix::errno::Errno::ESRCH),
        "agent {agent} left running"
    );
}
