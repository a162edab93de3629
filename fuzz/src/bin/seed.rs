//! Writes the seed corpora of every fuzz target from the spec's golden vectors
//! (`crates/msp-core/tests/vectors/*.json`) into `fuzz/corpus/<target>/`. Run from the repository root:
//! `cargo run --manifest-path fuzz/Cargo.toml --bin seed`.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn vectors(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/msp-core/tests/vectors")
        .join(name);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn cases<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

struct Corpus {
    dir: PathBuf,
    count: usize,
}

impl Corpus {
    fn new(target: &str) -> Corpus {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target);
        fs::create_dir_all(&dir).expect("create corpus dir");
        Corpus { dir, count: 0 }
    }

    fn add(&mut self, bytes: impl AsRef<[u8]>) {
        fs::write(self.dir.join(format!("seed-{:04}", self.count)), bytes).expect("write seed");
        self.count += 1;
    }
}

fn http_request(method: &str, target: &str, headers: &[(String, String)], body: &str) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

fn main() {
    // canon: selector byte, then "METHOD target".
    let mut canon = Corpus::new("canon");
    for c in cases(&vectors("canon_paths.json"), "cases") {
        if let Some(input) = text(c, "input") {
            canon.add([b"\0GET ".as_slice(), input.as_bytes()].concat());
        }
        if let Some(hex) = text(c, "input_hex") {
            if let Ok(raw) = hex_decode(hex) {
                canon.add([b"\0GET ".as_slice(), &raw].concat());
            }
        }
    }
    for c in cases(&vectors("canon_targets.json"), "cases") {
        let method = text(c, "method").unwrap_or("GET");
        if let Some(target) = text(c, "target") {
            canon.add(format!("\x01{method} {target}"));
        }
    }
    for c in cases(&vectors("canon_traversal.json"), "cases") {
        if let Some(target) = text(c, "target") {
            canon.add(format!("\x00GET {target}"));
        }
    }
    for c in cases(&vectors("canon_hosts.json"), "cases") {
        if let Some(authority) = text(c, "authority") {
            canon.add(format!("\x00GET http://{authority}/metadata/instance"));
        }
    }

    // rules_doc and rules_local: every item of the rule vectors, whole and as a local file.
    let rules = vectors("rules_eval.json");
    let mut doc = Corpus::new("rules_doc");
    let mut local = Corpus::new("rules_local");
    if let Some(items) = rules.get("items").and_then(Value::as_object) {
        for item in items.values() {
            doc.add(item.to_string());
            let mut file = item.clone();
            if let Some(obj) = file.as_object_mut() {
                obj.remove("mode");
            }
            local.add(file.to_string());
            local.add([b"\xEF\xBB\xBF".as_slice(), file.to_string().as_bytes()].concat());
        }
    }

    // wire: accepted and rejected KeyStatus bodies, and a Key.
    let mut wire = Corpus::new("wire");
    let ks = vectors("key_status.json");
    for c in cases(&ks, "accepted").iter().chain(cases(&ks, "rejected")) {
        if let Some(body) = c.get("body") {
            wire.add(body.to_string());
        }
    }
    wire.add(r#"{"authorizationScheme":"Azure-HMAC-SHA256","guid":"9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf","key":"4A404E635266556A586E3272357538782F413F4428472B4B6250645367566B59","issued":"2025-04-23T12:00:00Z","incarnationId":1}"#);

    // host_verify: the signed requests of spec §3.8 as raw HTTP, with their authorization header.
    let sign = vectors("sign.json");
    let mut verify = Corpus::new("host_verify");
    let mut redact = Corpus::new("redact");
    for r in cases(&sign, "requests") {
        let (Some(method), Some(target)) = (text(r, "method"), text(r, "target")) else {
            continue;
        };
        let mut headers: Vec<(String, String)> = cases(r, "headers")
            .iter()
            .filter_map(|h| {
                Some((
                    h.get(0)?.as_str()?.to_owned(),
                    h.get(1)?.as_str()?.to_owned(),
                ))
            })
            .collect();
        if let Some(sig) = text(r, "signature") {
            let auth = format!("Azure-HMAC-SHA256 9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf {sig}");
            headers.push(("x-ms-azure-host-authorization".into(), auth));
        }
        verify.add(http_request(
            method,
            target,
            &headers,
            text(r, "body").unwrap_or(""),
        ));
        redact.add(target);
        if let Some(input) = text(r, "input") {
            redact.add(input);
        }
    }
    for t in cases(&sign, "targets") {
        if let Some(target) = text(t, "target") {
            redact.add(target);
        }
    }
    redact.add(
        "curl -H Authorization:Bearer eyJ0eXAi.abc https://x/?sig=abc&token=t --password hunter2",
    );
    redact.add("line\nfake: {\"EventLevel\":\"ERROR\"}\u{202e}");
    redact.add("4A404E635266556A586E3272357538782F413F4428472B4B6250645367566B59");

    // proxy_head: the signed requests above, and the catalog's framing attacks (A3, A4, A6, A8).
    let mut head = Corpus::new("proxy_head");
    for r in cases(&sign, "requests") {
        if let (Some(method), Some(target)) = (text(r, "method"), text(r, "target")) {
            head.add(http_request(
                method,
                target,
                &[("Host".into(), "169.254.169.254".into())],
                "",
            ));
        }
    }
    for attack in [
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
        "CONNECT host:443 HTTP/1.1\r\nHost: host:443\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n",
        "GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "GET /a#frag HTTP/1.1\r\nConnection: x-ms-azure-host-claims\r\n\r\n",
    ] {
        head.add(attack);
    }

    for c in [&canon, &doc, &local, &wire, &verify, &redact, &head] {
        println!("{}: {} seeds", c.dir.display(), c.count);
    }
}

fn hex_decode(s: &str) -> Result<Vec<u8>, ()> {
    if s.len() % 2 != 0 {
        return Err(());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2).ok_or(())?, 16).map_err(|_| ()))
        .collect()
}
