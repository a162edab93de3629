//! The proxy's request-head parser on the hot path (spec §8.1): every proxied request runs `find_end` on what it
//! read and `parse_into` on the head. Two heads: the IMDS request `msp-bench` sends, and a WireServer-style head
//! with a dozen fields. Run with `cargo bench -p gpa --bench proxy_head`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gpa::proxy::head::{self, RequestHead};

const IMDS: &[u8] =
    b"GET /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nHost: 169.254.169.254\r\n\
Metadata: true\r\nUser-Agent: msp-bench\r\n\r\n";

const WIRESERVER: &[u8] = b"POST /machine?comp=health HTTP/1.1\r\nHost: 168.63.129.16\r\n\
x-ms-version: 2012-11-30\r\nx-ms-agent-name: WALinuxAgent\r\nUser-Agent: WALinuxAgent/2.9.1.1\r\n\
Content-Type: text/xml;charset=utf-8\r\nContent-Length: 512\r\nAccept: */*\r\nAccept-Encoding: identity\r\n\
x-ms-client-request-id: 2f7b1c0e-6a43-4f43-9a55-8a1d0e2b9c11\r\nx-ms-guest-agent-name: WALinuxAgent\r\n\
Connection: keep-alive\r\nx-ms-containerid: 7e3c9f1a-1b2c-4d5e-8f90-a1b2c3d4e5f6\r\n\r\n";

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("proxy_head");
    for (name, bytes) in [("imds", IMDS), ("wireserver", WIRESERVER)] {
        assert!(
            head::parse(bytes).is_ok(),
            "{name}: the bench head must parse"
        );
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        // The connection reuses one `RequestHead` across its requests, as here.
        let mut out = RequestHead::default();
        group.bench_function(name, |b| {
            b.iter(|| {
                let end = head::find_end(black_box(bytes), 0);
                head::parse_into(black_box(bytes), &mut out).is_ok() && end.is_some()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
