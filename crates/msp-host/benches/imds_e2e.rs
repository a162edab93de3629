//! End-to-end signed IMDS requests per second against an in-process host on loopback: keep-alive
//! connections, each request verified, served and audited (SQLite, batched). Client and host share the
//! machine's cores, so the number is a floor.

use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use msp_core::sign::{KeyGuid, SigningKey};
use msp_core::wire::{KEY_REQUEST_BODY, Key};
use msp_host::client::{self, Connection, Request};
use msp_host::{Host, HostConfig};

/// Concurrent keep-alive connections.
const CONNECTIONS: usize = 16;

async fn latch(host: &msp_host::RunningHost) -> (KeyGuid, SigningKey) {
    let r = client::send(
        host.wireserver,
        None,
        &Request::new("POST", "/secure-channel/key").body(KEY_REQUEST_BODY),
    )
    .await
    .unwrap();
    let (guid, key) = Key::parse(&r.body).unwrap().signing_parts().unwrap();
    let att = Request::new(
        "POST",
        &format!("/secure-channel/key/{guid}/key-attestation"),
    )
    .agent_headers(true, SystemTime::now())
    .sign(&guid, &key);
    assert_eq!(
        client::send(host.wireserver, None, &att)
            .await
            .unwrap()
            .status,
        200
    );
    (guid, key)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = rt
        .block_on(Host::start(HostConfig::test(dir.path())))
        .unwrap();
    let (guid, key) = rt.block_on(latch(&host));
    let req = Request::new(
        "GET",
        "/metadata/instance?api-version=2021-02-01&format=json",
    )
    .header("Host", "169.254.169.254")
    .header("Metadata", "true")
    .agent_headers(false, SystemTime::now())
    .sign(&guid, &key)
    .to_bytes();
    let imds = host.imds;
    let mut conns: Vec<Connection> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..CONNECTIONS {
            v.push(Connection::open(imds, None).await.unwrap());
        }
        v
    });

    let mut g = c.benchmark_group("e2e");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("signed_imds_instance_keepalive_16_conns", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let per = iters.div_ceil(CONNECTIONS as u64);
                let start = Instant::now();
                let mut tasks = Vec::new();
                for mut conn in conns.drain(..) {
                    let req = req.clone();
                    tasks.push(tokio::spawn(async move {
                        for _ in 0..per {
                            let r = conn.send_raw(&req).await.unwrap();
                            assert_eq!(r.status, 200);
                        }
                        conn
                    }));
                }
                for t in tasks {
                    conns.push(t.await.unwrap());
                }
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per * CONNECTIONS as u64) as f64)
            })
        })
    });
    g.finish();
    drop(conns);
    rt.block_on(host.shutdown());
}

criterion_group!(benches, bench);
criterion_main!(benches);
