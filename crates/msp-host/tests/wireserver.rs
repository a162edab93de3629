//! WireServer's fabric surface: versions, the goal state whose SharedConfig URL names the configured
//! WireServer endpoint (spec §3.7), and the SharedConfig it points to; HostGAPlugin's `/health`.

mod support;

use msp_host::Host;
use msp_host::client::Request;
use support::*;

fn between<'a>(text: &'a str, open: &str, close: &str) -> &'a str {
    let start = text.find(open).expect(open) + open.len();
    let end = text[start..].find(close).expect(close) + start;
    &text[start..end]
}

#[tokio::test]
async fn goal_state_names_the_wireserver_endpoint_and_its_shared_config_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let agent = latch(&host, ip_a()).await;
    let r = send(
        host.wireserver,
        ip_a(),
        &agent.sign(goal_state_request(&host), true),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().contains("xml"));
    let xml = r.text();
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"utf-8\"?>"));
    assert_eq!(xml.matches("<GoalState").count(), 1);
    assert!(xml.trim_end().ends_with("</GoalState>"));
    let url = between(&xml, "<SharedConfig>", "</SharedConfig>").replace("&amp;", "&");
    let prefix = format!("http://{}/machine/", host.wireserver);
    assert!(url.starts_with(&prefix), "{url}");
    let target = &url[prefix.len() - "/machine/".len()..];
    let r = send(
        host.wireserver,
        ip_a(),
        &agent.sign(
            Request::new("GET", target).header("x-ms-version", "2012-11-30"),
            true,
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{target}");
    let shared = r.text();
    assert!(
        shared.contains("<SharedConfig") && shared.contains(&format!("name=\"{VM_A}\"")),
        "{shared}"
    );

    let versions = agent.sign(Request::new("GET", "/?comp=versions"), true);
    let r = send(host.wireserver, ip_a(), &versions).await;
    assert!(
        r.text()
            .contains("<Preferred><Version>2015-04-05</Version></Preferred>")
    );
    let health = agent.sign(Request::new("GET", "/health"), true);
    assert_eq!(send(host.hostga, ip_a(), &health).await.status, 200);
    host.shutdown().await;
}

#[tokio::test]
async fn a_configured_wireserver_endpoint_is_what_the_goal_state_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.wireserver_endpoint = Some("168.63.129.16:80".parse().unwrap());
    let host = Host::start(cfg).await.unwrap();
    let agent = latch(&host, ip_a()).await;
    let r = send(
        host.wireserver,
        ip_a(),
        &agent.sign(goal_state_request(&host), true),
    )
    .await;
    // Port 80 is implied, as in the `Host` header rule of spec §1.3.
    assert!(
        r.text()
            .contains("<SharedConfig>http://168.63.129.16/machine/"),
        "{}",
        r.text()
    );
    host.shutdown().await;
}
