//! Canonicalisation on the hot path (spec §5): every proxied request runs the guard and `canonicalize`.
//! Budget: a typical IMDS URL ≤ 2 µs p50. The `slot_` cases run `canonicalize_into` with one slot reused from
//! call to call, as the agent does.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use msp_core::Endpoint;
use msp_core::canon::{
    CanonicalRequest, Destination, canonicalize, canonicalize_into, raw_path, traversal_guard,
};
use msp_core::endpoint::EndpointAddrs;

const TOKEN: &[u8] = b"/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F";
const INSTANCE: &[u8] = b"/metadata/instance/compute?api-version=2021-02-01&format=json";
const ABSOLUTE: &[u8] = b"http://169.254.169.254/metadata/instance?api-version=2021-02-01";

fn bench(c: &mut Criterion) {
    let addrs = EndpointAddrs::default();
    let imds = Destination::Endpoint(Endpoint::Imds);
    let mut group = c.benchmark_group("canon");
    for (name, target) in [
        ("imds_token", TOKEN),
        ("imds_instance", INSTANCE),
        ("absolute_form", ABSOLUTE),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| canonicalize(black_box("GET"), black_box(target), &imds, &addrs))
        });
        let mut slot = CanonicalRequest::default();
        group.bench_function(format!("slot_{name}"), |b| {
            b.iter(|| {
                canonicalize_into(
                    black_box("GET"),
                    black_box(target),
                    &imds,
                    &addrs,
                    &mut slot,
                )
            })
        });
    }
    group.bench_function("traversal_guard", |b| {
        b.iter(|| traversal_guard(raw_path(black_box(TOKEN))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
