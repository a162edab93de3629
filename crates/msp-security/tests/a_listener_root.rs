//! Catalog A1 and A2: the proxy listens on the configured loopback address and nowhere else. The agent's own
//! bind code (`gpa::lifecycle::bind_listener`, fed by the validated configuration) runs inside a network
//! namespace the test created, which also has a non-loopback address (TEST-NET-1 on a veth interface), so the
//! scan touches no real interface.
#![cfg(target_os = "linux")]

use std::net::SocketAddr;
use std::path::Path;

use gpa::config::{Config, ProcessEnv};
use gpa::lifecycle::bind_listener;
use gpa::status::StatusBoard;
use msp_security::{NetNs, probe, root_ready};
use tokio_util::sync::CancellationToken;

/// The port the test agent listens on (inside its own namespace, so a fixed port cannot collide).
const PORT: u16 = 3080;
/// A non-loopback address of the "VM" (documentation range, RFC 5737), inside the test namespace only.
const VM_ADDR: &str = "192.0.2.10";

/// Local addresses of every listening TCP socket (`/proc/thread-self/net/tcp` and `tcp6`, state 0A) in this thread's netns.
fn listening() -> Vec<String> {
    let mut out = Vec::new();
    for (file, v6) in [
        ("/proc/thread-self/net/tcp", false),
        ("/proc/thread-self/net/tcp6", true),
    ] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(3) == Some(&"0A") {
                out.push(format!("{}{}", if v6 { "v6:" } else { "v4:" }, f[1]));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a1_a2_root_only_the_configured_loopback_address_listens_and_others_are_refused() {
    if !root_ready("a1_a2_root_only_the_configured_loopback_address_listens_and_others_are_refused")
    {
        return;
    }
    let ns = NetNs::new("a1");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(["-n", &ns.name])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // A veth pair with both ends in the namespace: the VM's "network interface".
    run(&["link", "add", "vm0", "type", "veth", "peer", "name", "vm1"]);
    run(&["addr", "add", &format!("{VM_ADDR}/24"), "dev", "vm0"]);
    run(&["link", "set", "vm0", "up"]);
    run(&["link", "set", "vm1", "up"]);

    // The configuration as the agent loads it; a non-loopback listener is refused at load time.
    let json = format!(r#"{{"proxyListenAddress": "127.0.0.1:{PORT}"}}"#);
    let config = Config::from_json(Path::new("test.json"), json.as_bytes(), &ProcessEnv)
        .expect("loopback listener accepted");
    for bad in [
        format!("{VM_ADDR}:{PORT}"),
        format!("0.0.0.0:{PORT}"),
        format!("[::]:{PORT}"),
    ] {
        let json = format!(r#"{{"proxyListenAddress": "{bad}"}}"#);
        let err = Config::from_json(Path::new("test.json"), json.as_bytes(), &ProcessEnv)
            .expect_err("non-loopback listener refused");
        assert!(err.to_string().contains("proxyListenAddress"), "{err}");
    }

    // Bind the way the agent does, inside the namespace; the listener lives on a thread there.
    let addr = config.proxy_listen_address;
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = ns.spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let board = StatusBoard::new();
            let listener = bind_listener(addr, &board, &CancellationToken::new())
                .await
                .expect("bound");
            tx.send(listening()).unwrap();
            // Accept and drop, so a connect that reaches it is visible as "connected".
            tokio::select! {
                _ = async { loop { let _ = listener.accept().await; } } => {}
                _ = stop_rx => {}
            }
        });
    });
    let sockets = rx.recv().unwrap();
    // A1: exactly one listening socket in the namespace: 127.0.0.1:3080 (little-endian hex in /proc).
    assert_eq!(sockets, vec![format!("v4:0100007F:{PORT:04X}")]);

    // A2: every other address of the VM refuses the port; the configured one accepts.
    let refused = |to: SocketAddr| {
        let p = probe!().in_netns(&ns);
        async move {
            let r = p.tcp(to, b"", 500).await;
            assert!(!r.ok(), "{to}: {:?}", r.0);
            assert_eq!(r.errno(), libc::ECONNREFUSED, "{to}: {:?}", r.0);
        }
    };
    refused(format!("{VM_ADDR}:{PORT}").parse().unwrap()).await;
    refused(format!("127.0.0.2:{PORT}").parse().unwrap()).await;
    refused(format!("[::1]:{PORT}").parse().unwrap()).await;
    // The IPv4-mapped form of the VM address, from a dual-stack socket.
    let r = probe!()
        .in_netns(&ns)
        .tcp_args(
            format!("{VM_ADDR}:{PORT}").parse().unwrap(),
            b"",
            500,
            &["--mapped"],
        )
        .await;
    assert_eq!(r.errno(), libc::ECONNREFUSED, "{:?}", r.0);
    let ok = probe!().in_netns(&ns).tcp(addr, b"", 500).await;
    assert!(ok.ok(), "{:?}", ok.0);

    stop_tx.send(()).unwrap();
    server.join().unwrap();
}
