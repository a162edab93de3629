//! The five steps of the demo. Each observes the system through what an operator has: the host's VM view and
//! audit log, the agent's instance view and status file, and what the workloads got.

use std::path::Path;

use msp_core::Mode;
use msp_core::status::{ModuleState, OverallState, ProxyAgentStatus, state_keys};
use msp_host::audit::{AuditRecord, Decision};
use msp_host::vm::settings::ProfileRef;

use super::narrate::Narrator;
use super::{Demo, STATE_TIMEOUT};
use crate::error::HarnessError;
use crate::fetch::FetchResult;
use crate::process::{AgentProcess, RunAs};
use crate::wait;

/// An ordinary metadata read.
const INSTANCE: &str = "/metadata/instance?api-version=2021-02-01";
/// A managed-identity token: the secret the allowlist protects.
const TOKEN: &str = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F";
/// The allowlist of step 3: only root and `/usr/bin/curl` may read tokens; everything else stays open.
const PROFILE_NAME: &str = "token-readers";
const PROFILE_ID: &str = "token-readers-v1";
const PROFILE: &str = r#"{"defaultAccess": "allow", "id": "token-readers-v1", "rules": {
  "privileges": [{"name": "token", "path": "/metadata/identity/oauth2/token"}],
  "roles": [{"name": "read-tokens", "privileges": ["token"]}],
  "identities": [{"name": "root", "userName": "root"}, {"name": "curl", "exePath": "/usr/bin/curl"}],
  "roleAssignments": [{"role": "read-tokens", "identities": ["root", "curl"]}]}}"#;
const CURL: &str = "/usr/bin/curl";

pub(super) async fn run(mut demo: Demo, n: &mut Narrator) -> Result<(), HarnessError> {
    disabled(&demo, n).await?;
    let guid = audit(&demo, n).await?;
    allowlist(&demo, n).await?;
    enforce(&demo, n, &guid).await?;
    agent_down(&mut demo, n, &guid).await?;
    demo.shutdown().await;
    Ok(())
}

fn short(guid: &str) -> &str {
    guid.get(..8).unwrap_or(guid)
}

fn latch_state(s: &ProxyAgentStatus, key: &str) -> String {
    s.key_latch_status.state(key).unwrap_or_default().to_owned()
}

/// `200 signed (host: allowed, key 9cf81e97)` and friends.
fn describe(r: &FetchResult, audit: Option<&AuditRecord>) -> String {
    let via = if r.via_agent {
        "via the agent"
    } else {
        "direct"
    };
    let host = match audit {
        Some(a) => match (&a.key_guid, &a.reason) {
            (Some(g), None) => format!("host: {}, signed with key {}", a.decision, short(g)),
            (_, Some(reason)) => format!("host: {} {reason}", a.decision),
            (None, None) => format!("host: {}, unsigned", a.decision),
        },
        None => "host: no record".to_owned(),
    };
    format!("{} {via} ({host})", r.brief())
}

async fn wait_view(
    demo: &Demo,
    what: &str,
    ok: impl Fn(&ProxyAgentStatus) -> bool,
) -> Result<ProxyAgentStatus, HarnessError> {
    wait_view_since(demo, what, 0, ok).await
}

/// [`wait_view`] counting only reports received at or after `since_ms`.
async fn wait_view_since(
    demo: &Demo,
    what: &str,
    since_ms: u64,
    ok: impl Fn(&ProxyAgentStatus) -> bool,
) -> Result<ProxyAgentStatus, HarnessError> {
    let deadline = tokio::time::Instant::now() + STATE_TIMEOUT;
    let mut last = None;
    loop {
        if let Some(view) = demo.instance_view(since_ms).await {
            if ok(&view) {
                return Ok(view);
            }
            last = Some(view);
        }
        if tokio::time::Instant::now() >= deadline {
            let seen = last.map_or_else(
                || "no instance view yet".to_owned(),
                |v| {
                    format!(
                        "last instance view: {}, key latch \"{}\"",
                        overall_word(v.status),
                        v.key_latch_status.message
                    )
                },
            );
            return Err(HarnessError::Timeout {
                what: format!("{what} ({seen})"),
                after: STATE_TIMEOUT,
            });
        }
        tokio::time::sleep(wait::POLL_EVERY).await;
    }
}

/// Step 1: MSP is off; nothing is intercepted and the host accepts unsigned requests.
async fn disabled(demo: &Demo, n: &mut Narrator) -> Result<(), HarnessError> {
    n.step(1, "MSP disabled");
    let vm = demo.vm().await?;
    n.check(
        "VM model: proxyAgentSettings",
        "enabled = false",
        format!("enabled = {}", vm.proxy_agent_settings.enabled),
        !vm.proxy_agent_settings.enabled,
    );
    let view = wait_view(demo, "the agent's first instance view", |v| {
        latch_state(v, state_keys::SECURE_CHANNEL_STATE) == "disabled"
    })
    .await;
    let state = view
        .as_ref()
        .map(|v| latch_state(v, state_keys::SECURE_CHANNEL_STATE));
    n.check(
        "instance view: secureChannelState",
        "\"disabled\"",
        format!("{:?}", state.as_deref().unwrap_or("(no instance view)")),
        state.is_ok_and(|s| s == "disabled"),
    );
    let r = demo.fetch(RunAs::ROOT, true, INSTANCE).await?;
    let a = demo.last_imds_audit().await;
    let ok = r.status == Some(200)
        && !r.via_agent
        && a.as_ref()
            .is_some_and(|a| a.decision == Decision::Unchecked);
    n.check(
        "root   GET /metadata/instance",
        "200 direct, unsigned (host: unchecked)",
        describe(&r, a.as_ref()),
        ok,
    );
    Ok(())
}

/// Step 2: switched on in Audit without restarting anything; returns the latched key guid.
async fn audit(demo: &Demo, n: &mut Narrator) -> Result<String, HarnessError> {
    n.step(2, "MSP enabled in Audit on the running VM (no restart)");
    demo.edit_settings(|s| {
        s.enabled = true;
        s.wire_server.mode = Mode::Audit;
        s.imds.mode = Mode::Audit;
    })
    .await?;
    let expected_state = "WireServer Audit -  IMDS Audit - HostGA Audit";
    let view = wait_view(demo, "the key to be latched", |v| {
        latch_state(v, state_keys::SECURE_CHANNEL_STATE) == expected_state
            && v.key_latch_status.state(state_keys::KEY_GUID).is_some()
            && v.status == OverallState::Success
    })
    .await;
    let host_guid = demo.vm().await?.key.latched_guid.unwrap_or_default();
    let agent_guid = view
        .as_ref()
        .map(|v| latch_state(v, state_keys::KEY_GUID))
        .unwrap_or_default();
    n.check(
        "key latched",
        "the agent holds the key the host latched",
        format!("agent {} / host {}", short(&agent_guid), short(&host_guid)),
        !host_guid.is_empty() && agent_guid == host_guid,
    );
    let state = view
        .as_ref()
        .map(|v| latch_state(v, state_keys::SECURE_CHANNEL_STATE))
        .unwrap_or_default();
    n.check(
        "instance view: secureChannelState",
        expected_state,
        format!("{state:?}"),
        state == expected_state,
    );
    if let Ok(v) = &view {
        let modules = [
            ("keyLatch", v.key_latch_status.status),
            ("ebpf", v.ebpf_program_status.status),
            ("listener", v.proxy_listener_status.status),
            ("telemetry", v.telemetry_logger_status.status),
            ("monitor", v.monitor_status.status),
        ];
        let all = modules.iter().all(|(_, s)| *s == ModuleState::Running);
        let text: Vec<String> = modules
            .iter()
            .map(|(m, s)| format!("{m} {}", state_word(*s)))
            .collect();
        n.check(
            "instance view: components",
            "every component RUNNING, status SUCCESS",
            format!("{} → {}", text.join(", "), overall_word(v.status)),
            all && v.status == OverallState::Success,
        );
    }
    let provisioned = demo.vm().await?.provisioned;
    n.check(
        "VM model: provisioned",
        "true (secure channel established)",
        provisioned.to_string(),
        provisioned,
    );
    for user in [RunAs::ROOT, RunAs::nobody()] {
        let r = demo.fetch(user, true, INSTANCE).await?;
        let a = demo.last_imds_audit().await;
        let ok = r.status == Some(200)
            && r.via_agent
            && a.as_ref().is_some_and(|a| {
                a.decision == Decision::Allowed && a.key_guid.as_deref() == Some(&host_guid)
            });
        n.check(
            &format!("{:<6} GET /metadata/instance", user.name()),
            "200 via the agent (host: allowed, signed with the latched key)",
            describe(&r, a.as_ref()),
            ok,
        );
    }
    connection_summary(demo, n).await;
    Ok(host_guid)
}

fn state_word(s: ModuleState) -> &'static str {
    match s {
        ModuleState::Running => "RUNNING",
        ModuleState::Stopped => "STOPPED",
        ModuleState::Unknown => "UNKNOWN",
    }
}

fn overall_word(s: OverallState) -> &'static str {
    match s {
        OverallState::Success => "SUCCESS",
        OverallState::Error => "ERROR",
        OverallState::Unknown => "UNKNOWN",
    }
}

/// Who called what, from the agent's status file (spec §8.6).
async fn connection_summary(demo: &Demo, n: &mut Narrator) {
    let status = wait::until("the connection summary", STATE_TIMEOUT, || async {
        let doc = demo.agent.as_ref()?.status()?;
        let users: Vec<&str> = doc
            .proxy_connection_summary
            .iter()
            .map(|i| i.user_name.as_str())
            .collect();
        (users.contains(&"root") && users.contains(&RunAs::nobody().name().as_str())).then_some(doc)
    })
    .await;
    let Ok(doc) = status else {
        n.check(
            "connection summary",
            "entries for root and nobody",
            "none within 30 s".into(),
            false,
        );
        return;
    };
    n.check(
        "connection summary (status.json)",
        "who called what, attributed by the kernel",
        format!("{} entries:", doc.proxy_connection_summary.len()),
        true,
    );
    for item in &doc.proxy_connection_summary {
        n.detail(format!(
            "{:<7} {} → {} ×{}",
            item.user_name, item.process_cmd_line, item.response_status, item.count
        ));
    }
}

/// Step 3: the allowlist arrives from the host; in Audit, denials are only recorded.
async fn allowlist(demo: &Demo, n: &mut Narrator) -> Result<(), HarnessError> {
    n.step(
        3,
        "Allowlist: only root and /usr/bin/curl may read tokens (still Audit)",
    );
    demo.admin.put_profile(PROFILE_NAME, PROFILE).await?;
    demo.edit_settings(|s| {
        s.imds.profile = Some(ProfileRef {
            name: PROFILE_NAME.to_owned(),
            version: None,
        });
    })
    .await?;
    let rule_id = wait_view(demo, "the allowlist to reach the agent", |v| {
        latch_state(v, state_keys::IMDS_RULE_ID) == PROFILE_ID
    })
    .await
    .map(|v| latch_state(&v, state_keys::IMDS_RULE_ID))
    .unwrap_or_default();
    n.check(
        "instance view: imdsRuleId",
        "the allowlist's id, delivered by the host",
        format!("{rule_id:?}"),
        rule_id == PROFILE_ID,
    );
    let nobody = RunAs::nobody();
    let r = demo.fetch(RunAs::ROOT, true, TOKEN).await?;
    n.check(
        "root   GET token",
        "200 (allowed by the allowlist)",
        describe(&r, demo.last_imds_audit().await.as_ref()),
        r.status == Some(200) && r.via_agent,
    );
    let r = demo.fetch(nobody, true, TOKEN).await?;
    n.check(
        "nobody GET token",
        "200 (Audit: forwarded, denial recorded)",
        describe(&r, demo.last_imds_audit().await.as_ref()),
        r.status == Some(200) && r.via_agent,
    );
    let name = nobody.name();
    let recorded = wait::until("the audit denial in status.json", STATE_TIMEOUT, || async {
        let doc = demo.agent.as_ref()?.status()?;
        doc.failed_authenticate_summary
            .into_iter()
            .find(|i| i.user_name == name && i.process_cmd_line.contains("oauth2/token"))
    })
    .await;
    n.check(
        "failedAuthenticateSummary",
        "nobody's token read, with the status Enforce would give (403)",
        recorded.as_ref().map_or_else(
            |_| "no entry".to_owned(),
            |i| format!("{} {} ×{}", i.user_name, i.response_status, i.count),
        ),
        recorded.is_ok_and(|i| i.response_status.starts_with("403")),
    );
    Ok(())
}

/// Step 4: Enforce. The allowed workload is signed and verified; the others are refused.
/// Root fetches a token: it must get 200, and the host must have allowed it signed with `guid`.
async fn root_token_is_signed(
    demo: &Demo,
    n: &mut Narrator,
    guid: &str,
    expected: &str,
) -> Result<(), HarnessError> {
    let r = demo.fetch(RunAs::ROOT, true, TOKEN).await?;
    let a = demo.last_imds_audit().await;
    let ok = r.status == Some(200)
        && a.as_ref().is_some_and(|a| {
            a.decision == Decision::Allowed && a.key_guid.as_deref() == Some(guid)
        });
    n.check("root   GET token", expected, describe(&r, a.as_ref()), ok);
    Ok(())
}

async fn enforce(demo: &Demo, n: &mut Narrator, guid: &str) -> Result<(), HarnessError> {
    n.step(4, "Enforce");
    demo.edit_settings(|s| {
        s.wire_server.mode = Mode::Enforce;
        s.imds.mode = Mode::Enforce;
    })
    .await?;
    let expected_state = "WireServer Enforce -  IMDS Enforce - HostGA Enforce";
    let state = wait_view(demo, "Enforce to reach the agent", |v| {
        latch_state(v, state_keys::SECURE_CHANNEL_STATE) == expected_state
    })
    .await
    .map(|v| latch_state(&v, state_keys::SECURE_CHANNEL_STATE))
    .unwrap_or_default();
    n.check(
        "instance view: secureChannelState",
        expected_state,
        format!("{state:?}"),
        state == expected_state,
    );
    root_token_is_signed(demo, n, guid, "200, signed, verified by the host").await?;
    let before = demo.last_imds_audit().await.map(|a| a.seq);
    let r = demo.fetch(RunAs::nobody(), true, TOKEN).await?;
    let reached_host = demo.last_imds_audit().await.map(|a| a.seq) != before;
    n.check(
        "nobody GET token",
        "403 RULE_DENY from the agent (never reaches the host)",
        format!(
            "{} from the agent ({})",
            r.brief(),
            if reached_host {
                "the host saw it"
            } else {
                "the host never saw it"
            }
        ),
        r.status == Some(403) && r.reason.as_deref() == Some("RULE_DENY") && !reached_host,
    );
    if Path::new(CURL).exists() {
        let argv = [
            CURL,
            "-s",
            "--noproxy",
            "*",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-H",
            "Metadata: true",
        ]
        .iter()
        .map(Into::into)
        .chain(std::iter::once(
            format!("http://{}{TOKEN}", demo.imds).into(),
        ))
        .collect::<Vec<std::ffi::OsString>>();
        let place = crate::process::Place {
            cgroup: Some(&demo.cgroup),
            netns: None,
        };
        let out = demo
            .launcher
            .run(
                place,
                RunAs::nobody(),
                &argv,
                crate::process::WORKLOAD_TIMEOUT,
            )
            .await?;
        let r = crate::fetch::parse_response(out.stdout.as_bytes());
        n.check(
            "nobody curl token",
            "200 (the allowlist names /usr/bin/curl)",
            r.brief(),
            r.status == Some(200),
        );
    }
    let r = demo.fetch(RunAs::ROOT, false, TOKEN).await?;
    let a = demo.last_imds_audit().await;
    n.check(
        "root outside the cgroup (bypass)",
        "401 from the host (unsigned)",
        describe(&r, a.as_ref()),
        r.status == Some(401) && !r.via_agent,
    );
    Ok(())
}

/// Step 5: the agent goes away; the host refuses everything unsigned; the agent comes back with its key.
async fn agent_down(demo: &mut Demo, n: &mut Narrator, guid: &str) -> Result<(), HarnessError> {
    n.step(5, "The agent is stopped, then restarted");
    if let Some(agent) = demo.agent.take() {
        let pid = agent.pid();
        let status = agent.stop().await?;
        n.check(
            "agent stopped (SIGTERM)",
            "exits, eBPF detached",
            format!("pid {pid} exited ({status})"),
            status.success(),
        );
    }
    for user in [RunAs::ROOT, RunAs::nobody()] {
        let r = demo.fetch(user, true, TOKEN).await?;
        let a = demo.last_imds_audit().await;
        n.check(
            &format!("{:<6} GET token, no agent", user.name()),
            "401 from the host: nothing unsigned gets through",
            describe(&r, a.as_ref()),
            r.status == Some(401),
        );
    }
    let restarted_ms = msp_host::audit::now_ms();
    let agent = AgentProcess::start(&demo.agent_spec)?;
    let pid = agent.pid();
    demo.agent = Some(agent);
    let view = wait_view_since(demo, "the restarted agent's report", restarted_ms, |v| {
        v.status == OverallState::Success
    })
    .await;
    let host_guid = demo.vm().await?.key.latched_guid.unwrap_or_default();
    n.check(
        "agent restarted",
        "SUCCESS with its stored key (no new latch)",
        view.as_ref().map_or_else(
            |e| e.to_string(),
            |v| {
                format!(
                    "pid {pid}: {}, key {} (host: {})",
                    overall_word(v.status),
                    short(&latch_state(v, state_keys::KEY_GUID)),
                    short(&host_guid)
                )
            },
        ),
        view.is_ok_and(|v| latch_state(&v, state_keys::KEY_GUID) == guid) && host_guid == guid,
    );
    root_token_is_signed(demo, n, guid, "200, signed with the same key").await?;
    Ok(())
}
