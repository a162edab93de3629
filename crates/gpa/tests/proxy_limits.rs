//! The proxy's framing, limits and timeouts (spec §8.1, §8.3–§8.5; catalog A3, A4, A6, A8–A10) over loopback,
//! without root: the real proxy against the real in-process `msp_host`, attribution injected through the
//! `Attributor` seam, and a recording stand-in for the original destination.

mod proxy_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use proxy_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn text(r: &[u8]) -> String {
    String::from_utf8_lossy(r).into_owned()
}

/// The exact 405 of spec §8.3.
const EXACT_405: &str = "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH\r\n\
Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\nx-msp-reason: METHOD_NOT_ALLOWED\r\n\r\nMethod Not Allowed";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_074_a3_a4_methods_versions_and_upgrades() {
    let t = TestAgent::start(Options::default()).await;
    t.ready().await;
    let h = t.imds();
    for req in [
        format!("CONNECT {h} HTTP/1.1\r\nHost: {h}\r\n\r\n"),
        format!("TRACE / HTTP/1.1\r\nHost: {h}\r\n\r\n"),
        format!("get / HTTP/1.1\r\nHost: {h}\r\n\r\n"),
        format!("FOO /metadata HTTP/1.1\r\nHost: {h}\r\n\r\n"),
    ] {
        let r = t.send(h, Who::Root, req.as_bytes()).await;
        assert_eq!(text(&r.raw), EXACT_405, "{req}");
    }
    for (req, code) in [
        ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_owned(), "BAD_REQUEST"),
        (
            format!("GET / HTTP/9.9\r\nHost: {h}\r\n\r\n"),
            "BAD_REQUEST",
        ),
        (
            format!("OPTIONS * HTTP/1.1\r\nHost: {h}\r\n\r\n"),
            "BAD_REQUEST",
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: {h}\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"),
            "UPGRADE_REFUSED",
        ),
        (
            format!(
                "GET /ws HTTP/1.1\r\nHost: {h}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x\r\n\r\n"
            ),
            "UPGRADE_REFUSED",
        ),
    ] {
        let mut s = t.connect(h, Who::Root).await;
        s.write_all(req.as_bytes()).await.unwrap();
        let r = read_response(&mut s).await;
        assert_eq!(r.refusal(), (400, code.to_owned()), "{req}");
        assert_eq!(r.header("connection").as_deref(), Some("close"));
        assert!(closed(&mut s).await);
    }
    // catalog A3: a 64 KB request-target.
    let r = t
        .send(
            h,
            Who::Root,
            format!("GET /{} HTTP/1.1\r\n", "a".repeat(64 * 1024)).as_bytes(),
        )
        .await;
    assert_eq!(r.refusal(), (414, "URI_TOO_LONG".to_owned()));
    assert_eq!(t.recorder.connection_count(), 0);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_075_a6_smuggling_framing_is_400_and_the_next_request_never_runs() {
    let t = TestAgent::start(Options::default()).await;
    t.ready().await;
    let h = t.imds();
    let smuggled = format!("GET /metadata/second HTTP/1.1\r\nHost: {h}\r\n\r\n");
    for framing in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
        "Content-Length: 4\r\nContent-Length: 5",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        "X-A: 1\r\n folded",
    ] {
        let req = format!(
            "POST /metadata/first HTTP/1.1\r\nHost: {h}\r\n{framing}\r\n\r\n0\r\n\r\n{smuggled}"
        );
        let mut s = t.connect(h, Who::Root).await;
        s.write_all(req.as_bytes()).await.unwrap();
        let r = read_response(&mut s).await;
        assert_eq!(r.refusal(), (400, "BAD_REQUEST".to_owned()), "{framing}");
        assert!(closed(&mut s).await, "closed after {framing}");
    }
    assert_eq!(
        t.recorder.connection_count(),
        0,
        "neither request went upstream"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_077_a9_bodies_over_the_limit_are_413() {
    let t = TestAgent::start(Options::default()).await;
    t.ready().await;
    let h = t.imds();
    // Declared: answered from the head alone, before any body byte is sent.
    let mut s = t.connect(h, Who::Root).await;
    s.write_all(
        format!("POST /metadata/a HTTP/1.1\r\nHost: {h}\r\nContent-Length: 102401\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.refusal(), (413, "BODY_TOO_LARGE".to_owned()));
    // Chunked growing past 100 KiB: 413 and close.
    let mut s = t.connect(h, Who::Root).await;
    s.write_all(
        format!("POST /metadata/a HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let chunk = [
        format!("{:x}\r\n", 60 * 1024).into_bytes(),
        vec![b'z'; 60 * 1024],
        b"\r\n".to_vec(),
    ]
    .concat();
    s.write_all(&chunk).await.unwrap();
    s.write_all(&chunk).await.unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.refusal(), (413, "BODY_TOO_LARGE".to_owned()));
    assert!(closed(&mut s).await);
    // Exactly at the limit is fine.
    let body = vec![b'k'; 102_400];
    let mut req =
        format!("POST /metadata/a HTTP/1.1\r\nHost: {h}\r\nContent-Length: 102400\r\n\r\n")
            .into_bytes();
    req.extend_from_slice(&body);
    let r = t.send(h, Who::Root, &req).await;
    assert_eq!(r.status, 200);
    assert_eq!(t.recorder.last().body, body);
    assert_eq!(t.recorder.connection_count(), 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_078_a10_slowloris_is_closed_at_the_header_timeout_while_others_are_served() {
    let t = TestAgent::start(Options {
        header_timeout: 1,
        ..Options::default()
    })
    .await;
    t.ready().await;
    let h = t.imds();
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = t.connect(h, Who::Root).await;
        s.write_all(b"GET /metadata/a HTTP/1.1\r\nHo")
            .await
            .unwrap();
        slow.push(s);
    }
    let mut silent = t.connect(h, Who::Root).await;
    let started = Instant::now();
    // Keep dribbling while a normal client is served.
    for s in &mut slow {
        let _ = s.write_all(b"s").await;
    }
    let r = t.send(h, Who::Root, &get("/metadata/ok", h)).await;
    assert_eq!(r.status, 200, "a normal client is served during the attack");
    let mut timed_out = 0;
    for mut s in slow {
        let r = read_response(&mut s).await;
        assert_eq!(r.refusal(), (408, "HEADER_TIMEOUT".to_owned()));
        assert_eq!(r.header("connection").as_deref(), Some("close"));
        timed_out += 1;
    }
    assert_eq!(timed_out, 200);
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(8),
        "closed at the header timeout, not later: {elapsed:?}"
    );
    // No bytes at all: a silent close, no 408.
    closed_silently(&mut silent, STEP).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_079_a8_too_many_or_too_large_headers_431_long_target_414() {
    let t = TestAgent::start(Options::default()).await;
    t.ready().await;
    let h = t.imds();
    let mut many = format!("GET /metadata/a HTTP/1.1\r\nHost: {h}\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let r = t.send(h, Who::Root, many.as_bytes()).await;
    assert_eq!(r.refusal(), (431, "HEADERS_TOO_LARGE".to_owned()));
    let big = format!(
        "GET /metadata/a HTTP/1.1\r\nHost: {h}\r\nX-Big: {}\r\n\r\n",
        "v".repeat(64 * 1024)
    );
    let r = t.send(h, Who::Root, big.as_bytes()).await;
    assert_eq!(r.refusal(), (431, "HEADERS_TOO_LARGE".to_owned()));
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: {h}\r\n\r\n",
        "a".repeat(8 * 1024)
    );
    let r = t.send(h, Who::Root, long.as_bytes()).await;
    assert_eq!(r.refusal(), (414, "URI_TOO_LONG".to_owned()));
    assert_eq!(t.recorder.connection_count(), 0);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_080_upstream_that_never_answers_is_504_and_101_is_502() {
    let t = TestAgent::start(Options {
        upstream_response_timeout: 1,
        ..Options::default()
    })
    .await;
    t.ready().await;
    let h = t.imds();
    t.recorder.set_reply(Reply::Silence);
    let started = Instant::now();
    let r = t.send(h, Who::Root, &get("/metadata/a", h)).await;
    assert_eq!(r.refusal(), (504, "UPSTREAM_TIMEOUT".to_owned()));
    assert!(started.elapsed() >= Duration::from_millis(900));
    t.recorder.set_reply(Reply::Bytes(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n".to_vec(),
    ));
    let r = t.send(h, Who::Root, &get("/metadata/a", h)).await;
    assert_eq!(r.refusal(), (502, "UPSTREAM_PROTOCOL".to_owned()));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_081_every_generated_response_closes_and_carries_its_reason() {
    let t = TestAgent::start(Options {
        wireserver_unreachable: true,
        ..Options::default()
    })
    .await;
    let h = t.imds();
    let cases = [
        (Who::Direct, get("/metadata/a", h), 421, "NO_ATTRIBUTION"),
        (Who::Stale, get("/metadata/a", h), 403, "IDENTITY_STALE"),
        (Who::Root, get("/metadata/a", h), 503, "NOT_READY"),
        (
            Who::Root,
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            400,
            "BAD_REQUEST",
        ),
    ];
    for (who, req, status, code) in cases {
        let mut s = t.connect(h, who.clone()).await;
        s.write_all(&req).await.unwrap();
        let r = read_response(&mut s).await;
        assert_eq!(r.refusal(), (status, code.to_owned()), "{who:?}");
        assert_eq!(r.header("connection").as_deref(), Some("close"));
        assert!(r.body.is_empty());
        assert!(closed(&mut s).await);
    }
    let failed = t.hub.document().failed_authenticate_summary;
    let statuses: Vec<&str> = failed.iter().map(|i| i.response_status.as_str()).collect();
    assert!(
        statuses.contains(&"421 Misdirected Request") && statuses.contains(&"403 Forbidden"),
        "{statuses:?}"
    );
    assert_eq!(t.recorder.connection_count(), 0);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_uses_one_upstream_connection_and_reopens_after_a_clean_close() {
    let t = TestAgent::start(Options::default()).await;
    t.ready().await;
    let h = t.imds();
    let mut s = t.connect(h, Who::Root).await;
    for i in 0..3 {
        s.write_all(&get(&format!("/metadata/{i}"), h))
            .await
            .unwrap();
        let r = read_response(&mut s).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), None);
    }
    assert_eq!(
        t.recorder.connection_count(),
        1,
        "requests serialised on one upstream connection"
    );
    t.recorder.set_reply(Reply::BytesThenClose(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec(),
    ));
    for i in 0..2 {
        s.write_all(&get(&format!("/metadata/c{i}"), h))
            .await
            .unwrap();
        assert_eq!(read_response(&mut s).await.status, 200);
    }
    // The first went on the open connection, which the host then closed; the second needed a new one.
    assert_eq!(
        t.recorder.connection_count(),
        2,
        "reopened after a clean close"
    );
    // Another downstream connection never shares an upstream one.
    t.recorder.set_reply(Reply::Bytes(OK_REPLY.to_vec()));
    let r = t.send(h, Who::Root, &get("/metadata/other", h)).await;
    assert_eq!(r.status, 200);
    assert_eq!(t.recorder.connection_count(), 3);
    t.stop().await;
}

/// One request on `s`, its head in two writes 5 ms apart when `split`; the answer must be the recorder's.
async fn exchange(s: &mut tokio::net::TcpStream, target: &str, h: SocketAddr, split: bool) {
    let request = get(target, h);
    let (first, rest) = request.split_at(if split { 20 } else { request.len() });
    s.write_all(first).await.unwrap();
    if !rest.is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
        s.write_all(rest).await.unwrap();
    }
    let r = read_response(s).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]), "{target}");
}

/// A connection alone on its lane polls for its next bytes (docs/DECISIONS.md): whatever the limit, answers that
/// come within the poll, answers that come after it, and heads that arrive in pieces are all served, in order,
/// on one upstream connection.
#[tokio::test]
async fn a_lone_connection_is_served_alike_whether_bytes_come_within_its_poll_or_after_it() {
    for busy_poll_us in [0, 200, 1_000] {
        let t = TestAgent::start(Options {
            busy_poll_us,
            ..Options::default()
        })
        .await;
        t.ready().await;
        let h = t.imds();
        let mut s = t.connect(h, Who::Root).await;
        let target = |i: usize| format!("/metadata/{busy_poll_us}/{i}");
        // Quick answers teach the lane to poll; then late ones and split heads, then quick ones again.
        for i in 0..20 {
            exchange(&mut s, &target(i), h, false).await;
        }
        let late = Reply::Late(Duration::from_millis(5), OK_REPLY.to_vec());
        t.recorder.set_reply(late);
        for i in 20..24 {
            exchange(&mut s, &target(i), h, i % 2 == 0).await;
        }
        t.recorder.set_reply(Reply::Bytes(OK_REPLY.to_vec()));
        for i in 24..30 {
            exchange(&mut s, &target(i), h, i == 25).await;
        }
        let recorded = t.recorder.recorded();
        assert_eq!(recorded.len(), 30, "{busy_poll_us} µs");
        for (i, r) in recorded.iter().enumerate() {
            let line = format!("GET {} HTTP/1.1\r\n", target(i));
            assert!(
                r.head.starts_with(line.as_bytes()),
                "{busy_poll_us} µs, {i}"
            );
        }
        assert_eq!(t.recorder.connection_count(), 1, "{busy_poll_us} µs");
        t.stop().await;
    }
}

/// Clients that reconnect at once are accepted by the accepting lane's poll once it has learned to (docs/DECISIONS.md):
/// each connection keeps its own caller (the attribution is found by the client's address) and is served on an
/// upstream connection of its own.
#[tokio::test]
async fn connections_made_one_after_another_are_each_attributed_and_served() {
    for busy_poll_us in [0, 1_000] {
        let t = TestAgent::start(Options {
            busy_poll_us,
            ..Options::default()
        })
        .await;
        t.ready().await;
        let h = t.imds();
        for i in 0..30 {
            let who = if i % 2 == 0 { Who::Root } else { Who::User };
            let mut s = t.connect(h, who).await;
            exchange(&mut s, &format!("/metadata/{busy_poll_us}/{i}"), h, false).await;
            if i == 29 {
                // The last client says it is done and waits: the agent closes its side too, whether or not a
                // next connection comes.
                s.shutdown().await.unwrap();
                assert!(closed(&mut s).await, "{busy_poll_us} µs: the agent closes");
            }
        }
        // Each connection's upstream connection closes once its client has gone, the last one included.
        assert_eq!(
            t.recorder.wait_ended(30).await,
            30,
            "{busy_poll_us} µs: upstream connections closed"
        );
        let recorded = t.recorder.recorded();
        assert_eq!(recorded.len(), 30, "{busy_poll_us} µs");
        for (i, r) in recorded.iter().enumerate() {
            let root = if i % 2 == 0 { "true" } else { "false" };
            let claims = r.all("x-ms-azure-host-claims");
            let expected = format!(r#""isRoot": "{root}""#);
            assert!(
                claims.len() == 1 && claims[0].contains(&expected),
                "{busy_poll_us} µs, {i}: {claims:?}"
            );
        }
        assert_eq!(t.recorder.connection_count(), 30, "{busy_poll_us} µs");
        t.stop().await;
    }
}

/// A head trickled a byte at a time into a connection that polls at the longest limit still meets the header
/// timeout (catalog A10), while the bytes keep coming. (Not a proof that no poll bypasses the deadline: a writer
/// that stalls for a whole budget sends the wait to the reactor, which checks it. The proxy polls only for a
/// wait's first bytes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trickled_inside_the_poll_budget_still_gets_408() {
    let t = TestAgent::start(Options {
        header_timeout: 1,
        busy_poll_us: 1_000,
        ..Options::default()
    })
    .await;
    t.ready().await;
    let h = t.imds();
    // Teach the lane that requests come quickly, so that it polls.
    let mut s = t.connect(h, Who::Root).await;
    for i in 0..5 {
        exchange(&mut s, &format!("/metadata/{i}"), h, false).await;
    }
    let mut reader = s.into_std().unwrap();
    reader.set_nonblocking(false).unwrap();
    let mut writer = reader.try_clone().unwrap();
    let answered = Arc::new(AtomicBool::new(false));
    let trickle = std::thread::spawn({
        let answered = answered.clone();
        move || {
            use std::io::Write;
            let started = Instant::now();
            let mut head = b"GET /metadata/slow HTTP/1.1\r\nX-Slow: "
                .iter()
                .chain(std::iter::repeat(&b'a'));
            while !answered.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(5) {
                let byte = *head.next().unwrap();
                if writer.write_all(&[byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_micros(300));
            }
            started.elapsed()
        }
    });
    let mut response = Vec::new();
    let read = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        reader.set_read_timeout(Some(STEP)).unwrap();
        let _ = reader.read_to_end(&mut response);
        response
    });
    let response = read.await.unwrap();
    answered.store(true, Ordering::SeqCst);
    let trickled = trickle.join().unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("HEADER_TIMEOUT"), "{text}");
    assert!(
        trickled < Duration::from_secs(5),
        "answered while the bytes still came: {trickled:?}"
    );
    t.stop().await;
}

/// A silent close of `s` within `within`, without a byte.
async fn closed_silently(s: &mut tokio::net::TcpStream, within: Duration) {
    let mut buf = Vec::new();
    let n = tokio::time::timeout(within, s.read_to_end(&mut buf))
        .await
        .expect("the connection was closed")
        .unwrap();
    assert_eq!(n, 0, "{}", text(&buf));
}

/// The keep-alive idle limit (spec §8.4) and the head limit after it, which is shorter here: the connection's
/// timer, armed for the idle wait, has to move back to the head's deadline when a head starts to arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_close_silently_and_a_late_head_gets_its_own_shorter_limit() {
    let t = TestAgent::start(Options {
        idle_timeout: 3,
        header_timeout: 1,
        ..Options::default()
    })
    .await;
    t.ready().await;
    let h = t.imds();
    let (mut idle, mut slow) = (t.connect(h, Who::Root).await, t.connect(h, Who::Root).await);
    idle.write_all(&get("/metadata/a", h)).await.unwrap();
    assert_eq!(read_response(&mut idle).await.status, 200);
    let idle_since = Instant::now();
    slow.write_all(&get("/metadata/a", h)).await.unwrap();
    assert_eq!(read_response(&mut slow).await.status, 200);
    let started = Instant::now();
    slow.write_all(b"GET /metadata/b HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let r = read_response(&mut slow).await;
    let head_waited = started.elapsed();
    assert_eq!(r.refusal(), (408, "HEADER_TIMEOUT".to_owned()));
    assert!(
        head_waited >= Duration::from_millis(900) && head_waited < Duration::from_millis(2500),
        "the 1 s head limit, not the 3 s idle one: {head_waited:?}"
    );
    closed_silently(&mut idle, STEP).await;
    // Open until the 3 s idle limit, well past the 1 s head limit (the agent's idle wait began before
    // `idle_since`, by the time the response reached the client).
    let idled = idle_since.elapsed();
    assert!(
        idled >= Duration::from_millis(2500),
        "open for the idle limit: {idled:?}"
    );
    t.stop().await;
}

/// Stopping the agent closes the connections waiting for their next request at once (not at the 60 s idle
/// limit), and lets a request in flight finish: its client gets its answer, then the stop completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_closes_idle_connections_at_once_and_finishes_requests_in_flight() {
    let t = TestAgent::start(Options {
        upstream_response_timeout: 2,
        ..Options::default()
    })
    .await;
    t.ready().await;
    let h = t.imds();
    let mut idle = t.connect(h, Who::Root).await;
    idle.write_all(&get("/metadata/a", h)).await.unwrap();
    assert_eq!(read_response(&mut idle).await.status, 200);
    t.recorder.set_reply(Reply::Silence);
    let mut busy = t.connect(h, Who::Root).await;
    busy.write_all(&get("/metadata/slow", h)).await.unwrap();
    let deadline = Instant::now() + STEP;
    while t.recorder.requests.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the slow request reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopped = async {
        tokio::time::timeout(STEP, t.stop())
            .await
            .expect("the stop completes");
    };
    let idle_closed = closed_silently(&mut idle, STEP);
    let (_, (), answer) = tokio::join!(stopped, idle_closed, read_response(&mut busy));
    assert_eq!(answer.refusal(), (504, "UPSTREAM_TIMEOUT".to_owned()));
}

/// The configuration puts no upper bound on the timeouts: the largest ones wait (practically) forever instead of
/// overflowing the clock arithmetic, which used to panic the connection's task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_configurable_timeouts_serve_requests() {
    let t = TestAgent::start(Options {
        idle_timeout: u64::MAX,
        header_timeout: u64::MAX,
        upstream_response_timeout: u64::MAX,
        ..Options::default()
    })
    .await;
    t.ready().await;
    let h = t.imds();
    let mut s = t.connect(h, Who::Root).await;
    s.write_all(b"GET /metadata/a HTTP/1.1\r\nHo")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(format!("st: {h}\r\nMetadata: true\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(
        read_response(&mut s).await.status,
        200,
        "a head in two pieces"
    );
    s.write_all(&get("/metadata/b", h)).await.unwrap();
    assert_eq!(read_response(&mut s).await.status, 200, "and the next one");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloaded_connections_get_503() {
    let t = TestAgent::start(Options {
        max_connections: 2,
        ..Options::default()
    })
    .await;
    t.ready().await;
    let h = t.imds();
    let _a = t.connect(h, Who::Root).await;
    let _b = t.connect(h, Who::Root).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = t.connect(h, Who::Root).await;
    let r = read_response(&mut c).await;
    assert_eq!(r.refusal(), (503, "OVERLOADED".to_owned()));
    t.stop().await;
}

/// Not a benchmark and not a timed assertion: prints the added latency of the proxy for sequential keep-alive
/// requests (client, proxy and stand-in share this process), for a sanity check by hand:
/// `cargo test --release -p gpa --test proxy_limits -- --ignored --nocapture latency_sanity`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints a latency sanity number; run by hand"]
async fn latency_sanity_proxy_vs_direct() {
    const N: usize = 5_000;
    let t = TestAgent::start(Options::default()).await;
    t.ready().await;
    let h = t.imds();
    let req = get("/metadata/instance?api-version=2021-02-01", h);
    async fn run(s: &mut tokio::net::TcpStream, req: &[u8]) -> Vec<Duration> {
        let mut times = Vec::with_capacity(N);
        for _ in 0..N {
            let started = Instant::now();
            s.write_all(req).await.unwrap();
            let r = read_response(s).await;
            assert_eq!(r.status, 200);
            times.push(started.elapsed());
        }
        times.sort();
        times
    }
    let cpu = || {
        use nix::sys::resource::{UsageWho, getrusage};
        let u = getrusage(UsageWho::RUSAGE_SELF).unwrap();
        let us = |t: nix::sys::time::TimeVal| (t.tv_sec() * 1_000_000 + t.tv_usec()) as u64;
        Duration::from_micros(us(u.user_time()) + us(u.system_time()))
    };
    let mut direct = tokio::net::TcpStream::connect(t.recorder.addr)
        .await
        .unwrap();
    direct.set_nodelay(true).unwrap();
    run(&mut direct, &req).await; // warm-up
    let c0 = cpu();
    let d = run(&mut direct, &req).await;
    let c1 = cpu();
    let mut proxied = t.connect(h, Who::Root).await;
    proxied.set_nodelay(true).unwrap();
    run(&mut proxied, &req).await;
    let c2 = cpu();
    let p = run(&mut proxied, &req).await;
    let c3 = cpu();
    let pct = |v: &[Duration], q: f64| v[((v.len() as f64 - 1.0) * q) as usize];
    println!(
        "NOT A BENCHMARK: {N} sequential keep-alive GETs, one process (client, proxy, stand-in)\n  \
         direct  p50 {:?} p99 {:?}  process CPU/request {:?}\n  proxied p50 {:?} p99 {:?}  process CPU/request {:?}\n  \
         added p50 {:?}, added CPU/request {:?}",
        pct(&d, 0.5),
        pct(&d, 0.99),
        (c1 - c0) / N as u32,
        pct(&p, 0.5),
        pct(&p, 0.99),
        (c3 - c2) / N as u32,
        pct(&p, 0.5).saturating_sub(pct(&d, 0.5)),
        ((c3 - c2) / N as u32).saturating_sub((c1 - c0) / N as u32),
    );
    t.stop().await;
}

/// Connections open side by side are each served to their end, whichever of the proxy's lanes (one per core)
/// each lands on, and each has its own upstream connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_side_by_side_are_all_served() {
    const CONNECTIONS: usize = 6;
    let t = TestAgent::start(Options::default()).await;
    t.ready().await;
    let h = t.imds();
    let mut streams = Vec::new();
    for _ in 0..CONNECTIONS {
        streams.push(t.connect(h, Who::Root).await);
    }
    for round in 0..3 {
        for (i, s) in streams.iter_mut().enumerate() {
            s.write_all(&get(&format!("/metadata/{round}/{i}"), h))
                .await
                .unwrap();
        }
        for s in &mut streams {
            assert_eq!(read_response(s).await.status, 200, "round {round}");
        }
    }
    assert_eq!(t.recorder.requests.lock().unwrap().len(), 3 * CONNECTIONS);
    assert_eq!(t.recorder.connection_count(), CONNECTIONS);
    t.stop().await;
}
