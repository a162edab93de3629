//! Pure transitions of the poll loop, no network (conf 8, 14–20, 24–25).

use super::*;
use msp_core::Mode;

const G1: &str = "9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf";
const G2: &str = "11111111-2222-3333-4444-555555555555";
const HEX: &str = "4A404E635266556A586E3272357538782F413F4428472B4B6250645367566B59";
const INTERVAL: Duration = Duration::from_secs(15);
/// Past the start-up phase, so delays are the interval or backed off.
const LATE: Duration = Duration::from_secs(1000);

fn env(uptime: Duration) -> Env {
    Env {
        uptime,
        jitter: 0.0,
    }
}

fn v2_enforce(guid: Option<&str>) -> Box<KeyStatus> {
    let guid = guid.map_or("null".to_owned(), |g| format!("\"{g}\""));
    let json = format!(
        r#"{{"version":"2.0","authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http",
            "keyGuid":{guid},"keyIncarnationId":1,"secureChannelEnabled":true,"authorizationRules":{{
            "imds":{{"defaultAccess":"allow","mode":"enforce","id":"i"}},
            "wireserver":{{"defaultAccess":"allow","mode":"enforce","id":"w"}}}}}}"#
    );
    Box::new(KeyStatus::parse(json.as_bytes()).unwrap())
}

fn disabled() -> Box<KeyStatus> {
    Box::new(
        KeyStatus::parse(
            br#"{"version":"2.0","authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http",
                "keyGuid":null,"secureChannelEnabled":false}"#,
        )
        .unwrap(),
    )
}

fn key(guid: &str) -> Key {
    let json = format!(
        r#"{{"authorizationScheme":"Azure-HMAC-SHA256","guid":"{guid}","key":"{HEX}","issued":"x","incarnationId":1}}"#
    );
    Key::parse(json.as_bytes()).unwrap()
}

fn ready(guid: &str) -> ReadyKey {
    let (guid, key) = key(guid).signing_parts().unwrap();
    ReadyKey {
        guid,
        key,
        incarnation_id: Some(1),
    }
}

/// Steps and returns the actions.
fn step(kk: &mut Option<KeyKeeper>, event: Event, uptime: Duration) -> Vec<Action> {
    let (next, actions) = kk.take().unwrap().step(event, env(uptime));
    *kk = Some(next);
    actions
}

fn sleep_of(actions: &[Action]) -> Option<Duration> {
    actions.iter().find_map(|a| match a {
        Action::Sleep(d) => Some(*d),
        _ => None,
    })
}

fn has(actions: &[Action], pred: impl Fn(&Action) -> bool) -> bool {
    actions.iter().any(pred)
}

fn messages(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SetMessage(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

/// A keeper that holds `G1` and has applied an enforce status, sleeping at `LATE`.
fn latched() -> Option<KeyKeeper> {
    let mut kk = Some(KeyKeeper::new(INTERVAL, Some(ready(G1))));
    step(&mut kk, Event::Start, LATE);
    let a = step(&mut kk, Event::StatusReceived(v2_enforce(Some(G1))), LATE);
    assert!(has(&a, |a| matches!(a, Action::ApplyPolicy(_))));
    let a = step(&mut kk, Event::PolicyApplied, LATE);
    assert_eq!(sleep_of(&a), Some(INTERVAL));
    kk
}

#[test]
fn conf_008_state_is_unknown_before_the_first_successful_poll() {
    let mut kk = Some(KeyKeeper::new(INTERVAL, None));
    let a = step(&mut kk, Event::Start, Duration::ZERO);
    assert!(
        matches!(a.as_slice(), [Action::SetMessage(m), Action::FetchStatus]
        if m == "poll secure channel status task started.")
    );
    let a = step(
        &mut kk,
        Event::StatusFailed("connection refused".into()),
        Duration::from_secs(1),
    );
    assert_eq!(
        messages(&a),
        ["Failed to get key status - connection refused"]
    );
    assert_eq!(kk.as_ref().unwrap().state(), SecureChannelState::Unknown);
    assert!(!has(&a, |a| matches!(
        a,
        Action::SetChannel(_) | Action::ApplyPolicy(_)
    )));
}

#[test]
fn conf_014_polls_are_1s_apart_while_unknown_in_the_first_300s_then_the_interval() {
    let mut kk = Some(KeyKeeper::new(INTERVAL, None));
    step(&mut kk, Event::Start, Duration::ZERO);
    // Many failures during start-up never back off.
    for i in 1..=20u64 {
        let a = step(
            &mut kk,
            Event::StatusFailed("down".into()),
            Duration::from_secs(i),
        );
        assert_eq!(sleep_of(&a), Some(STARTUP_DELAY), "iteration {i}");
        step(&mut kk, Event::TimerFired, Duration::from_secs(i));
    }
    assert_eq!(
        poll_delay(
            SecureChannelState::Unknown,
            Duration::from_millis(299_999),
            0,
            INTERVAL,
            0.0
        ),
        STARTUP_DELAY
    );
    assert_eq!(
        poll_delay(SecureChannelState::Unknown, STARTUP_PHASE, 0, INTERVAL, 0.0),
        INTERVAL
    );
    // A known state uses the interval even early.
    let enforce = SecureChannelState::Enabled {
        wireserver: Mode::Enforce,
        imds: Mode::Enforce,
    };
    assert_eq!(
        poll_delay(enforce, Duration::from_secs(5), 0, INTERVAL, 0.0),
        INTERVAL
    );
}

#[test]
fn conf_015_backoff_grows_is_capped_at_8x_and_resets_on_success() {
    let s = SecureChannelState::Disabled;
    assert_eq!(
        poll_delay(s, LATE, 1, INTERVAL, 0.0),
        Duration::from_secs(30)
    );
    assert_eq!(
        poll_delay(s, LATE, 2, INTERVAL, 0.0),
        Duration::from_secs(60)
    );
    assert_eq!(
        poll_delay(s, LATE, 3, INTERVAL, 0.0),
        Duration::from_secs(120)
    );
    assert_eq!(
        poll_delay(s, LATE, 50, INTERVAL, 0.0),
        Duration::from_secs(120)
    );
    assert_eq!(
        poll_delay(s, LATE, 3, INTERVAL, 0.1),
        Duration::from_secs(120),
        "jitter never passes the cap"
    );
    assert_eq!(
        poll_delay(s, LATE, 1, INTERVAL, -0.1),
        Duration::from_secs(27)
    );
    assert_eq!(
        poll_delay(s, LATE, 2, INTERVAL, 0.1),
        Duration::from_secs(66)
    );
    assert_eq!(
        poll_delay(s, LATE, 2, INTERVAL, 5.0),
        Duration::from_secs(66),
        "jitter is clamped"
    );

    let mut kk = latched();
    let mut seen = Vec::new();
    for _ in 0..5 {
        step(&mut kk, Event::TimerFired, LATE);
        let a = step(&mut kk, Event::StatusFailed("timed out".into()), LATE);
        seen.push(sleep_of(&a).unwrap().as_secs());
    }
    assert_eq!(seen, [30, 60, 120, 120, 120]);
    assert_eq!(kk.as_ref().unwrap().failures(), 5);
    step(&mut kk, Event::TimerFired, LATE);
    let a = step(&mut kk, Event::StatusReceived(v2_enforce(Some(G1))), LATE);
    assert_eq!(sleep_of(&a), Some(INTERVAL), "one success resets k");
    assert_eq!(kk.as_ref().unwrap().failures(), 0);
}

#[test]
fn conf_016_summary_event_only_when_the_summary_changes() {
    let summaries = |a: &[Action]| {
        a.iter()
            .filter(|a| matches!(a, Action::Log(Level::Warn, m) if m.starts_with("Got key status successfully: ")))
            .count()
    };
    let mut kk = Some(KeyKeeper::new(INTERVAL, Some(ready(G1))));
    step(&mut kk, Event::Start, LATE);
    let a = step(&mut kk, Event::StatusReceived(v2_enforce(Some(G1))), LATE);
    assert_eq!(summaries(&a), 1);
    let text = a.iter().find_map(|a| match a {
        Action::Log(_, m) if m.starts_with("Got") => Some(m.clone()),
        _ => None,
    });
    assert_eq!(
        text.as_deref(),
        Some(
            "Got key status successfully: authorizationScheme: Azure-HMAC-SHA256, keyDeliveryMethod: http, \
             keyGuid: 9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf, secureChannelState: WireServer Enforce -  IMDS \
             Enforce - HostGA Enforce, version: 2.0, WireServerMode: enforce, IMDSMode: enforce."
        )
    );
    step(&mut kk, Event::PolicyApplied, LATE);
    step(&mut kk, Event::TimerFired, LATE);
    let a = step(&mut kk, Event::StatusReceived(v2_enforce(Some(G1))), LATE);
    assert_eq!(summaries(&a), 0, "same summary: no event");
    step(&mut kk, Event::TimerFired, LATE);
    let a = step(&mut kk, Event::StatusReceived(disabled()), LATE);
    assert_eq!(summaries(&a), 1);
}

#[test]
fn conf_017_state_change_with_failed_acquisition_still_updates_policy() {
    let mut kk = Some(KeyKeeper::new(INTERVAL, None));
    step(&mut kk, Event::Start, LATE);
    let a = step(&mut kk, Event::StatusReceived(v2_enforce(Some(G1))), LATE);
    assert!(has(
        &a,
        |a| matches!(a, Action::CheckLocalKey(g) if g.as_str() == G1)
    ));
    let a = step(&mut kk, Event::LocalKeyChecked(LocalKey::Missing), LATE);
    assert!(matches!(a.as_slice(), [Action::AcquireKey]));
    let a = step(
        &mut kk,
        Event::AcquireFailed("409 KEY_LATCHED".into()),
        LATE,
    );
    assert_eq!(
        messages(&a),
        ["Failed to acquire key details: 409 KEY_LATCHED"]
    );
    let modes = a.iter().find_map(|a| match a {
        Action::ApplyPolicy(m) => Some(*m),
        _ => None,
    });
    assert_eq!(
        modes,
        Some(Modes::uniform(Mode::Enforce)),
        "policy applied in the same poll"
    );
    assert!(
        !has(&a, |a| matches!(a, Action::ConfirmLatch)),
        "no key, no latch"
    );
    let a = step(&mut kk, Event::PolicyApplied, LATE);
    assert_eq!(
        sleep_of(&a),
        Some(Duration::from_secs(30)),
        "a needed key that is not ready is a failure"
    );
}

#[test]
fn conf_018_failed_policy_update_is_retried_every_poll_until_it_succeeds() {
    let mut kk = Some(KeyKeeper::new(INTERVAL, Some(ready(G1))));
    step(&mut kk, Event::Start, LATE);
    step(&mut kk, Event::StatusReceived(v2_enforce(Some(G1))), LATE);
    let a = step(
        &mut kk,
        Event::PolicyFailed("map update failed".into()),
        LATE,
    );
    assert!(has(
        &a,
        |a| matches!(a, Action::Log(Level::Error, m) if m.contains("map update failed"))
    ));
    for _ in 0..3 {
        step(&mut kk, Event::TimerFired, LATE);
        let a = step(&mut kk, Event::StatusReceived(v2_enforce(Some(G1))), LATE);
        assert!(has(&a, |a| matches!(a, Action::Log(Level::Warn, m)
            if m == "redirect policy was not update successfully before, retrying now")));
        assert!(has(&a, |a| matches!(a, Action::ApplyPolicy(_))));
        step(&mut kk, Event::PolicyFailed("still failing".into()), LATE);
    }
    step(&mut kk, Event::TimerFired, LATE);
    step(&mut kk, Event::StatusReceived(v2_enforce(Some(G1))), LATE);
    step(&mut kk, Event::PolicyApplied, LATE);
    step(&mut kk, Event::TimerFired, LATE);
    let a = step(&mut kk, Event::StatusReceived(v2_enforce(Some(G1))), LATE);
    assert!(
        !has(&a, |a| matches!(a, Action::ApplyPolicy(_))),
        "applied: no more retries"
    );
}

#[test]
fn conf_019_notification_while_disabled_resets_to_unknown_and_polls_now() {
    let mut kk = Some(KeyKeeper::new(INTERVAL, None));
    step(&mut kk, Event::Start, LATE);
    let a = step(&mut kk, Event::StatusReceived(disabled()), LATE);
    assert!(has(
        &a,
        |a| matches!(a, Action::ApplyPolicy(m) if *m == Modes::uniform(Mode::Disabled))
    ));
    let a = step(&mut kk, Event::PolicyApplied, LATE);
    assert!(has(&a, |a| matches!(a, Action::ConfirmLatch)));
    assert!(messages(&a)[0].starts_with("Customer has not enforce the secure channel state. - "));
    assert!(kk.as_ref().unwrap().is_sleeping());
    let a = step(&mut kk, Event::Notified, LATE + Duration::from_secs(2));
    assert!(has(&a, |a| matches!(a, Action::ResetLatch)));
    assert!(
        matches!(a.last(), Some(Action::FetchStatus)),
        "polls at once"
    );
    assert_eq!(kk.as_ref().unwrap().state(), SecureChannelState::Unknown);
    // The next disabled status runs the transition again, re-confirming the latch.
    let a = step(&mut kk, Event::StatusReceived(disabled()), LATE);
    assert!(has(&a, |a| matches!(a, Action::ApplyPolicy(_))));
    let a = step(&mut kk, Event::PolicyApplied, LATE);
    assert!(has(&a, |a| matches!(a, Action::ConfirmLatch)));
}

#[test]
fn notification_while_enforcing_confirms_the_latch_and_sleeps_the_rest() {
    let mut kk = latched();
    let a = step(&mut kk, Event::Notified, LATE + Duration::from_secs(4));
    assert!(has(&a, |a| matches!(a, Action::ConfirmLatch)));
    assert!(has(&a, |a| matches!(a, Action::ApplyPolicy(_))));
    assert_eq!(sleep_of(&a), Some(Duration::from_secs(11)));
    let a = step(&mut kk, Event::PolicyApplied, LATE + Duration::from_secs(4));
    assert!(a.is_empty());
    let a = step(&mut kk, Event::KeyUnknown, LATE + Duration::from_secs(5));
    assert!(
        matches!(a.as_slice(), [Action::FetchStatus]),
        "KEY_UNKNOWN polls at once"
    );
}

#[test]
fn conf_020_a_valid_local_key_is_used_without_acquire_or_attest() {
    let mut kk = Some(KeyKeeper::new(INTERVAL, None));
    step(&mut kk, Event::Start, LATE);
    step(&mut kk, Event::StatusReceived(v2_enforce(Some(G1))), LATE);
    let a = step(
        &mut kk,
        Event::LocalKeyChecked(LocalKey::Found(key(G1))),
        LATE + Duration::from_millis(7),
    );
    assert!(has(
        &a,
        |a| matches!(a, Action::PublishKey(Some(k)) if k.guid.as_str() == G1)
    ));
    assert!(
        messages(&a)
            .contains(&"Found key details from local and ready to use. - 1000007".to_owned())
    );
    assert!(!has(&a, |a| matches!(
        a,
        Action::AcquireKey | Action::AttestKey(_)
    )));
    assert!(has(
        &a,
        |a| matches!(a, Action::DeleteKeysExcept(keep) if keep.len() == 1)
    ));
    assert!(has(&a, |a| matches!(a, Action::ConfirmLatch)));
    let a = step(&mut kk, Event::PolicyApplied, LATE);
    assert!(has(
        &a,
        |a| matches!(a, Action::PersistStatus(g) if g.as_str() == G1)
    ));
    assert_eq!(sleep_of(&a), Some(INTERVAL));
}

#[test]
fn conf_021_refused_local_key_is_reported_then_acquired() {
    let mut kk = Some(KeyKeeper::new(INTERVAL, None));
    step(&mut kk, Event::Start, LATE);
    step(&mut kk, Event::StatusReceived(v2_enforce(Some(G1))), LATE);
    let a = step(
        &mut kk,
        Event::LocalKeyChecked(LocalKey::Refused("mode 644".into())),
        LATE,
    );
    assert_eq!(
        messages(&a),
        [format!(
            "Failed to check the key '{G1}' details saved locally: mode 644"
        )]
    );
    assert!(matches!(a.last(), Some(Action::AcquireKey)));
}

#[test]
fn conf_025_changed_guid_acquires_stores_attests_and_keeps_the_predecessor() {
    let mut kk = latched();
    step(&mut kk, Event::TimerFired, LATE);
    let a = step(&mut kk, Event::StatusReceived(v2_enforce(Some(G2))), LATE);
    assert!(has(
        &a,
        |a| matches!(a, Action::CheckLocalKey(g) if g.as_str() == G2)
    ));
    step(&mut kk, Event::LocalKeyChecked(LocalKey::Missing), LATE);
    let a = step(&mut kk, Event::KeyAcquired(key(G2)), LATE);
    assert!(matches!(a.as_slice(), [Action::StoreKey(k)] if k.guid == G2));
    let a = step(&mut kk, Event::KeyStored, LATE);
    assert!(matches!(a.as_slice(), [Action::AttestKey(k)] if k.guid == G2));
    assert_eq!(
        kk.as_ref().unwrap().key().unwrap().guid.as_str(),
        G1,
        "old key signs until the new one is ready"
    );
    let a = step(&mut kk, Event::KeyAttested, LATE);
    assert!(has(
        &a,
        |a| matches!(a, Action::PublishKey(Some(k)) if k.guid.as_str() == G2)
    ));
    assert!(has(&a, |a| matches!(a, Action::DeleteKeysExcept(keep)
        if keep.iter().map(KeyGuid::as_str).collect::<Vec<_>>() == [G2, G1])));
    assert!(messages(&a)[0].starts_with("Successfully attest the key and ready to use. - "));
    assert!(has(&a, |a| matches!(a, Action::ConfirmLatch)));
}

#[test]
fn conf_024_disabled_drops_the_key_even_when_the_policy_update_fails() {
    let mut kk = latched();
    step(&mut kk, Event::TimerFired, LATE);
    let a = step(&mut kk, Event::StatusReceived(disabled()), LATE);
    assert!(!has(&a, |a| matches!(
        a,
        Action::AcquireKey | Action::CheckLocalKey(_)
    )));
    let a = step(&mut kk, Event::PolicyFailed("busy".into()), LATE);
    assert!(has(&a, |a| matches!(a, Action::PublishKey(None))));
    assert!(has(&a, |a| matches!(a, Action::ForgetStatus)));
    assert!(kk.as_ref().unwrap().key().is_none());
}

#[test]
fn attestation_failure_keeps_the_old_key_and_counts_as_failed() {
    let mut kk = latched();
    step(&mut kk, Event::TimerFired, LATE);
    step(&mut kk, Event::StatusReceived(v2_enforce(Some(G2))), LATE);
    step(&mut kk, Event::LocalKeyChecked(LocalKey::Missing), LATE);
    step(&mut kk, Event::KeyAcquired(key(G2)), LATE);
    step(&mut kk, Event::KeyStored, LATE);
    let a = step(
        &mut kk,
        Event::AttestFailed("401 SIG_MISMATCH".into()),
        LATE,
    );
    assert_eq!(messages(&a), ["Failed to attest the key: 401 SIG_MISMATCH"]);
    assert_eq!(sleep_of(&a), Some(Duration::from_secs(30)));
    assert_eq!(kk.as_ref().unwrap().key().unwrap().guid.as_str(), G1);
    assert!(
        !has(&a, |a| matches!(a, Action::PersistStatus(_))),
        "never persisted with a foreign key"
    );
}

#[test]
fn null_guid_reacquired_twice_in_a_row_counts_as_failed() {
    let mut kk = Some(KeyKeeper::new(INTERVAL, None));
    step(&mut kk, Event::Start, LATE);
    let mut delays = Vec::new();
    for _ in 0..2 {
        let a = step(&mut kk, Event::StatusReceived(v2_enforce(None)), LATE);
        assert!(
            matches!(a.last(), Some(Action::AcquireKey)),
            "null guid: acquire directly"
        );
        step(&mut kk, Event::KeyAcquired(key(G1)), LATE);
        step(&mut kk, Event::KeyStored, LATE);
        step(&mut kk, Event::KeyAttested, LATE);
        let a = step(&mut kk, Event::PolicyApplied, LATE);
        delays.push(sleep_of(&a).unwrap().as_secs());
        step(&mut kk, Event::TimerFired, LATE);
    }
    assert_eq!(delays, [15, 30]);
}

#[test]
fn store_failure_is_reported_and_nothing_is_attested() {
    let mut kk = Some(KeyKeeper::new(INTERVAL, None));
    step(&mut kk, Event::Start, LATE);
    step(&mut kk, Event::StatusReceived(v2_enforce(None)), LATE);
    step(&mut kk, Event::KeyAcquired(key(G1)), LATE);
    let a = step(&mut kk, Event::StoreFailed("disk full".into()), LATE);
    assert_eq!(
        messages(&a),
        ["Failed to save key details to file: disk full"]
    );
    assert!(!has(&a, |a| matches!(a, Action::AttestKey(_))));
    assert!(has(&a, |a| matches!(a, Action::ApplyPolicy(_))));
}

#[test]
fn out_of_phase_events_are_ignored() {
    let mut kk = Some(KeyKeeper::new(INTERVAL, None));
    let a = step(&mut kk, Event::KeyAttested, LATE);
    assert!(matches!(a.as_slice(), [Action::Log(Level::Warn, _)]));
    let a = step(&mut kk, Event::Start, LATE);
    assert!(matches!(a.last(), Some(Action::FetchStatus)));
}

#[test]
fn a_successful_poll_after_failures_clears_the_failure_message() {
    let mut kk = latched();
    step(&mut kk, Event::TimerFired, LATE);
    let a = step(
        &mut kk,
        Event::StatusFailed("connection refused".into()),
        LATE,
    );
    assert_eq!(
        messages(&a),
        ["Failed to get key status - connection refused"]
    );
    step(&mut kk, Event::TimerFired, LATE);
    let a = step(&mut kk, Event::StatusReceived(v2_enforce(Some(G1))), LATE);
    assert_eq!(
        messages(&a),
        [format!(
            "Key status received again after failed polls. - {}",
            LATE.as_millis()
        )]
    );
    // Said once: the next healthy poll leaves the message alone.
    step(&mut kk, Event::TimerFired, LATE);
    let a = step(&mut kk, Event::StatusReceived(v2_enforce(Some(G1))), LATE);
    assert!(messages(&a).is_empty(), "{a:?}");
}
