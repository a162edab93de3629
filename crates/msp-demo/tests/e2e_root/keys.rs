//! The latched key (FAQ "How is the latched key created, and how does it bind to the VM?", catalog B6): the
//! host generates one key per VM, and a key is usable only on its own VM's connection.

use std::net::SocketAddr;
use std::time::SystemTime;

use msp_core::Mode;
use msp_core::wire::Key;
use msp_demo::fabric::{Fabric, IMDS_IP};
use msp_host::audit::Decision;
use msp_host::client::{self, Request};

use crate::support::{INSTANCE, fabric, last_audit, latched, require_root, with_mode};

const ENFORCE_STATE: &str = "WireServer Enforce -  IMDS Enforce - HostGA Enforce";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_root_b6_latched_keys_are_unique_per_vm_and_useless_from_another_vm() {
    require_root!("e2e_root_b6_latched_keys_are_unique_per_vm_and_useless_from_another_vm");
    let enforce = Some(with_mode(Mode::Enforce));
    let mut f = fabric(&[("vm1", enforce.clone()), ("vm2", enforce)]).await;
    let Fabric { vms, host, .. } = &mut f;
    for vm in vms.iter_mut() {
        vm.start_agent().unwrap();
    }
    let g1 = latched(host, "vm1", ENFORCE_STATE).await;
    let g2 = latched(host, "vm2", ENFORCE_STATE).await;
    assert_ne!(g1, g2, "one key per VM");

    // vm1's key, stolen from its key directory, signs a request sent from vm2's address.
    let stolen = Key::parse(&std::fs::read(vms[0].key_dir().join(format!("{g1}.key"))).unwrap())
        .expect("the key file holds a Key");
    let (guid, key) = stolen.signing_parts().unwrap();
    let signed = Request::new("GET", INSTANCE)
        .header("Host", &IMDS_IP.to_string())
        .header("Metadata", "true")
        .agent_headers(true, SystemTime::now())
        .sign(&guid, &key);
    let imds = SocketAddr::from((IMDS_IP, 80));
    let send_from = |i: usize| {
        let rt = vms[i].runtime().unwrap();
        let req = signed.clone();
        async move {
            rt.run(async move { client::send(imds, None, &req).await })
                .await
                .unwrap()
                .expect("IMDS answers")
        }
    };
    let r = send_from(1).await;
    assert_eq!(
        (r.status, r.header("x-msp-reason")),
        (401, Some("KEY_UNKNOWN"))
    );
    let rec = last_audit(host, "vm2", "imds").await;
    assert_eq!(rec.decision, Decision::Rejected);
    assert_eq!(rec.key_guid.as_deref(), Some(g1.as_str()));
    assert_eq!(
        rec.key_owner.as_deref(),
        Some("vm1"),
        "only the audit log names the owner"
    );

    // The very same request from vm1 itself is valid: the key is bound to its VM, not broken.
    let r = send_from(0).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        last_audit(host, "vm1", "imds").await.decision,
        Decision::Allowed
    );
}
