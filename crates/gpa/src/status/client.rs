//! `gpa status [--config <path>] [--wait <seconds>]` (spec §9.6): asks the running agent's `/provision`
//! whether provisioning finished, then prints the `proxyAgentStatus` of `status.json`.
//!
//! Exit codes: 0 finished without error, 1 not finished, 2 finished with an error (printed), 3 finished without
//! error but the printed overall `status` is not `SUCCESS`. This client never sends anywhere but the
//! configured loopback listener.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use msp_core::status::{AggregateStatus, OverallState, ProxyAgentStatus};
use tokio::time::Instant;

use super::provision::ProvisionAnswer;
use super::writer::STATUS_FILE;
use crate::config::Config;
use crate::hostcall::{self, HostCallError};

/// Re-poll period (spec §9.6).
pub const POLL_PERIOD: Duration = Duration::from_millis(100);
/// Bound on one `/provision` call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The exit codes of `gpa status` (spec §9.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusExit {
    Finished = 0,
    NotFinished = 1,
    FinishedWithError = 2,
    NotSuccess = 3,
}

/// One `/provision` call.
pub async fn ask(
    listener: std::net::SocketAddr,
    tick: i64,
    notify: bool,
) -> Result<ProvisionAnswer, HostCallError> {
    let mut req = http::Request::builder()
        .method(http::Method::GET)
        .uri("/provision")
        .header("host", hostcall::host_header(listener))
        .header("metadata", "true")
        .header("x-ms-azure-time-tick", tick.to_string());
    if notify {
        req = req.header("x-ms-azure-notify", "true");
    }
    let req = req.body(Full::new(Bytes::new()))?;
    let resp = tokio::time::timeout(CALL_TIMEOUT, hostcall::send(listener, req))
        .await
        .map_err(|_| HostCallError::Timeout {
            addr: listener,
            after: CALL_TIMEOUT,
        })??
        .expect(|s| s == http::StatusCode::OK)?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Wire {
        finished: bool,
        #[serde(default)]
        error_message: String,
    }
    let wire: Wire = serde_json::from_str(&resp.body).map_err(|_| HostCallError::Undecodable {
        encoding: "JSON /provision answer",
    })?;
    Ok(ProvisionAnswer {
        finished: wire.finished,
        error_message: wire.error_message,
    })
}

/// Polls until finished or `wait` has passed since `started`; returns the last answer (or the last error).
pub async fn wait_for(
    listener: std::net::SocketAddr,
    wait: Duration,
) -> Result<ProvisionAnswer, HostCallError> {
    let started = Instant::now();
    let tick = crate::clock::unix_nanos();
    let mut first = true;
    loop {
        let answer = ask(listener, tick, first).await;
        first = false;
        if matches!(&answer, Ok(a) if a.finished) || started.elapsed() >= wait {
            return answer;
        }
        tokio::time::sleep(POLL_PERIOD).await;
    }
}

/// The printed text and exit code for an answer and the status file's content (pure).
pub fn outcome(
    answer: &Result<ProvisionAnswer, HostCallError>,
    status_file: Option<&[u8]>,
) -> (StatusExit, String) {
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            return (
                StatusExit::NotFinished,
                format!("Provisioning has not finished: cannot reach the agent: {e}"),
            );
        }
    };
    if !answer.finished {
        return (
            StatusExit::NotFinished,
            "Provisioning has not finished.".to_owned(),
        );
    }
    if !answer.error_message.is_empty() {
        return (
            StatusExit::FinishedWithError,
            format!(
                "Provisioning finished with errors:\n{}",
                answer.error_message.trim_end()
            ),
        );
    }
    let status: Option<ProxyAgentStatus> = status_file
        .and_then(|b| serde_json::from_slice::<AggregateStatus>(b).ok())
        .map(|d| d.proxy_agent_status);
    match status {
        Some(s) => {
            let text = serde_json::to_string_pretty(&s).unwrap_or_default();
            let code = if s.status == OverallState::Success {
                StatusExit::Finished
            } else {
                StatusExit::NotSuccess
            };
            (code, text)
        }
        None => (StatusExit::Finished, "Provisioning finished.".to_owned()),
    }
}

/// `gpa status`: prints and returns the exit code.
pub async fn run(config: &Config, wait: Duration) -> StatusExit {
    let answer = wait_for(config.proxy_listen_address, wait).await;
    let file = config
        .log_dir()
        .and_then(|d| std::fs::read(Path::new(d).join(STATUS_FILE)).ok());
    let (code, text) = outcome(&answer, file.as_deref());
    println!("{text}");
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(error: &str) -> Result<ProvisionAnswer, HostCallError> {
        Ok(ProvisionAnswer {
            finished: true,
            error_message: error.to_owned(),
        })
    }

    #[tokio::test]
    async fn conf_088_polls_every_100ms_with_one_tick_and_notifies_only_first() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU32, Ordering};

        use crate::test_host::{FakeHost, response};

        let calls = Arc::new(AtomicU32::new(0));
        let seen = calls.clone();
        let host = FakeHost::start(Arc::new(move |_| {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let body = format!(r#"{{"finished":{},"errorMessage":""}}"#, n >= 3);
            Some(response(
                "200 OK",
                &[("content-type", "application/json; charset=utf-8")],
                body.as_bytes(),
            ))
        }))
        .await;
        let answer = wait_for(host.addr, Duration::from_secs(5)).await.unwrap();
        assert!(answer.finished);
        let reqs = host.requests();
        assert_eq!(reqs.len(), 4);
        assert_eq!(reqs[0].header("x-ms-azure-notify"), Some("true"));
        assert!(
            reqs[1..]
                .iter()
                .all(|r| r.header("x-ms-azure-notify").is_none())
        );
        let tick = reqs[0].header("x-ms-azure-time-tick").unwrap();
        assert!(tick.parse::<i64>().unwrap() > 0);
        assert!(
            reqs.iter()
                .all(|r| r.header("x-ms-azure-time-tick") == Some(tick))
        );
        assert!(
            reqs.iter()
                .all(|r| r.target == "/provision" && r.header("metadata") == Some("true"))
        );

        // --wait 0: one try, not finished → exit 1.
        let not_yet = FakeHost::start(Arc::new(|_| {
            Some(response(
                "200 OK",
                &[],
                br#"{"finished":false,"errorMessage":""}"#,
            ))
        }))
        .await;
        let answer = wait_for(not_yet.addr, Duration::ZERO).await;
        assert_eq!(not_yet.requests().len(), 1);
        assert_eq!(outcome(&answer, None).0, StatusExit::NotFinished);
    }

    #[test]
    fn conf_088_exit_codes() {
        let not = Ok(ProvisionAnswer {
            finished: false,
            error_message: String::new(),
        });
        assert_eq!(outcome(&not, None).0, StatusExit::NotFinished);
        let (code, text) = outcome(&finished("keyLatchStatus - x\r\n"), None);
        assert_eq!(code, StatusExit::FinishedWithError);
        assert!(text.contains("keyLatchStatus - x"));
        assert_eq!(outcome(&finished(""), None).0, StatusExit::Finished);
        let mut doc = AggregateStatus::default();
        doc.proxy_agent_status.status = OverallState::Error;
        let bytes = serde_json::to_vec(&doc).unwrap();
        assert_eq!(
            outcome(&finished(""), Some(&bytes)).0,
            StatusExit::NotSuccess
        );
        doc.proxy_agent_status.status = OverallState::Success;
        let bytes = serde_json::to_vec(&doc).unwrap();
        let (code, text) = outcome(&finished(""), Some(&bytes));
        assert_eq!(code, StatusExit::Finished);
        assert!(text.contains("\"status\": \"SUCCESS\""));
        let unreachable = Err(HostCallError::ConnectTimeout {
            addr: "127.0.0.1:1".parse().unwrap(),
        });
        assert_eq!(outcome(&unreachable, None).0, StatusExit::NotFinished);
    }
}
