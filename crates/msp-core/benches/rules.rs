//! Allowlist compile and evaluate (spec §4): budgets ≤ 5 ms to compile and ≤ 10 µs to evaluate a
//! 1,000-privilege item.

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use msp_core::canon::{Destination, Request};
use msp_core::endpoint::EndpointAddrs;
use msp_core::rules::{CompiledItem, Decision, Items, authorize, decide, parse_item};
use msp_core::{Claims, Endpoint};

const PRIVILEGES: usize = 1000;
const ROLES: usize = 100;
const IDENTITIES: usize = 100;

/// 1,000 privileges under 50 areas, 100 roles of 10 privileges, 100 identities, each role assigned to 3.
fn item_json() -> String {
    let mut privileges = String::new();
    for i in 0..PRIVILEGES {
        let sep = if i == 0 { "" } else { "," };
        write!(
            privileges,
            r#"{sep}{{"name":"p{i}","path":"/metadata/area{}/resource{i}","queryParameters":{{"api-version":"2021-0{}-01"}}}}"#,
            i % 50,
            i % 9 + 1
        )
        .unwrap();
    }
    let roles: Vec<String> = (0..ROLES)
        .map(|r| {
            let names: Vec<String> = (0..10).map(|k| format!(r#""p{}""#, r * 10 + k)).collect();
            format!(r#"{{"name":"r{r}","privileges":[{}]}}"#, names.join(","))
        })
        .collect();
    let identities: Vec<String> = (0..IDENTITIES)
        .map(|i| format!(r#"{{"name":"i{i}","userName":"user{i}","exePath":"/usr/bin/app{i}"}}"#))
        .collect();
    let assignments: Vec<String> = (0..ROLES)
        .map(|r| {
            format!(
                r#"{{"role":"r{r}","identities":["i{}","i{}","i{}"]}}"#,
                r,
                (r + 1) % 100,
                (r + 7) % 100
            )
        })
        .collect();
    format!(
        r#"{{"defaultAccess":"deny","mode":"enforce","id":"bench","rules":{{"privileges":[{privileges}],
            "roles":[{}],"identities":[{}],"roleAssignments":[{}]}}}}"#,
        roles.join(","),
        identities.join(","),
        assignments.join(",")
    )
}

fn claims(user: usize) -> Claims {
    Claims {
        user_id: 1000,
        user_name: format!("user{user}").into(),
        user_groups: [format!("user{user}")].into(),
        process_id: 4242,
        process_name: format!("app{user}").into(),
        process_full_path: format!("/usr/bin/app{user}").into(),
        process_cmd_line: "undefined".into(),
        run_as_elevated: false,
        client_ip: "127.0.0.1".into(),
        client_port: 40000,
    }
}

fn bench(c: &mut Criterion) {
    let json = item_json();
    let doc = parse_item(&json).expect("bench item is valid");
    let item = CompiledItem::compile(doc.clone());
    assert_eq!(item.privileges().len(), PRIVILEGES);

    let mut group = c.benchmark_group("rules");
    group.bench_function("compile_1000_from_json", |b| {
        b.iter(|| CompiledItem::compile(parse_item(black_box(&json)).unwrap()))
    });
    group.bench_function("compile_1000_from_doc", |b| {
        b.iter_batched(
            || doc.clone(),
            CompiledItem::compile,
            criterion::BatchSize::LargeInput,
        )
    });

    let addrs = EndpointAddrs::default();
    let imds = Destination::Endpoint(Endpoint::Imds);
    // p537 (role r53) is assigned to i53, i54 and i60: i60 matches, after two misses.
    let allowed = b"/metadata/area37/resource537/sub?api-version=2021-07-01&format=json";
    let default_denied = b"/metadata/area37/unknown?api-version=2021-07-01";
    let rule_denied = b"/metadata/area37/resource537?api-version=2021-07-01";
    let cases: [(&str, &[u8], usize); 3] = [
        ("evaluate_1000_allow", allowed, 60),
        ("evaluate_1000_default_deny", default_denied, 60),
        ("evaluate_1000_rule_deny", rule_denied, 1),
    ];
    for (name, target, user) in cases {
        let claims = claims(user);
        let request = Request {
            method: "GET",
            target,
            dest: &imds,
            addrs: &addrs,
        };
        let decision = decide(Some(&item), &request, &claims);
        assert_eq!(
            matches!(decision, Decision::Allow { .. }),
            name.ends_with("allow"),
            "{name}: {decision:?}"
        );
        group.bench_function(name, |b| {
            b.iter(|| decide(Some(black_box(&item)), black_box(&request), &claims))
        });
    }
    let items = Items {
        imds: Some(item.clone()),
        ..Items::default()
    };
    let request = Request {
        method: "GET",
        target: allowed,
        dest: &imds,
        addrs: &addrs,
    };
    let claims = claims(60);
    group.bench_function("authorize_1000_allow", |b| {
        b.iter(|| authorize(black_box(&request), false, &claims, black_box(&items)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
