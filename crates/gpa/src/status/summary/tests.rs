use super::*;

fn claims(user: &str) -> Claims {
    Claims {
        user_id: 1000,
        user_name: user.into(),
        user_groups: ["users".to_owned()].into(),
        process_id: 7,
        process_name: "curl".into(),
        process_full_path: "/usr/bin/curl".into(),
        process_cmd_line: "curl -H Metadata:true".into(),
        run_as_elevated: false,
        client_ip: "127.0.0.1".to_owned(),
        client_port: 40000,
    }
}

fn rec(user: &str, status: u16) -> RequestRecord {
    RequestRecord::new(
        1,
        "GET",
        "/metadata/instance?sig=secret",
        &claims(user),
        "169.254.169.254:80".parse().unwrap(),
        http::StatusCode::from_u16(status).unwrap(),
        3,
        "",
    )
}

const T0: u64 = 1_745_409_600_000; // 2025-04-23T12:00:00Z

#[test]
fn conf_082_exported_items_have_exactly_the_eight_fields() {
    let mut s = Summaries::default();
    assert!(s.record(SummaryKind::Connection, &rec("alice", 200), T0));
    let items = s.export(SummaryKind::Connection, T0);
    let json = serde_json::to_value(&items).unwrap();
    let obj = json[0].as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "count",
            "ip",
            "port",
            "processCmdLine",
            "processFullPath",
            "responseStatus",
            "userGroups",
            "userName"
        ]
    );
    assert_eq!(json[0]["responseStatus"], "200 OK");
    assert_eq!(json[0]["port"], 80);
}

#[test]
fn first_occurrence_per_bucket_and_counting() {
    let mut s = Summaries::default();
    assert!(s.record(SummaryKind::Connection, &rec("alice", 200), T0));
    assert!(!s.record(SummaryKind::Connection, &rec("alice", 200), T0 + 1000));
    assert!(
        s.record(SummaryKind::Connection, &rec("alice", 404), T0 + 1000),
        "status is part of the key"
    );
    assert!(
        s.record(SummaryKind::FailedAuth, &rec("alice", 200), T0),
        "lists are separate"
    );
    assert!(
        s.record(SummaryKind::Connection, &rec("alice", 200), T0 + BUCKET_MS),
        "new bucket"
    );
    let items = s.export(SummaryKind::Connection, T0 + BUCKET_MS);
    assert_eq!(items[0].count, 3, "buckets merge on export");
    assert_eq!(items[0].response_status, "200 OK");
    assert_eq!(items[1].count, 1);
}

#[test]
fn export_orders_by_count_then_key() {
    let mut s = Summaries::default();
    for (user, n) in [("carol", 1), ("bob", 2), ("alice", 1), ("dave", 2)] {
        for _ in 0..n {
            s.record(SummaryKind::Connection, &rec(user, 200), T0);
        }
    }
    let users: Vec<String> = s
        .export(SummaryKind::Connection, T0)
        .into_iter()
        .map(|i| i.user_name)
        .collect();
    assert_eq!(users, ["bob", "dave", "alice", "carol"]);
}

#[test]
fn buckets_expire_after_4_hours() {
    let mut s = Summaries::default();
    s.record(SummaryKind::Connection, &rec("alice", 200), T0);
    assert_eq!(
        s.export(SummaryKind::Connection, T0 + 15 * BUCKET_MS).len(),
        1
    );
    assert!(
        s.export(SummaryKind::Connection, T0 + 16 * BUCKET_MS)
            .is_empty()
    );
}

#[test]
fn bucket_keys_are_capped_with_one_overflow_entry() {
    let mut s = Summaries::default();
    for i in 0..MAX_KEYS_PER_BUCKET + 25 {
        s.record(
            SummaryKind::FailedAuth,
            &rec(&format!("user{i:05}"), 403),
            T0,
        );
    }
    let items = s.export(SummaryKind::FailedAuth, T0);
    assert_eq!(items.len(), MAX_KEYS_PER_BUCKET + 1);
    let overflow = items.iter().find(|i| i.user_name == "overflow").unwrap();
    assert_eq!(overflow.count, 25);
    assert_eq!(
        (
            overflow.port,
            overflow.ip.as_str(),
            overflow.user_groups.len()
        ),
        (0, "", 0)
    );
    assert_eq!(items[0].user_name, "overflow", "largest count first");
}

#[test]
fn records_are_redacted() {
    let r = rec("alice", 200);
    assert_eq!(r.url, "/metadata/instance?sig=***");
    assert_eq!(
        r.key(),
        "alice 127.0.0.1 169.254.169.254 80 /usr/bin/curl curl -H Metadata:true 200 OK"
    );
}

#[test]
fn counter_counts_repeats_lock_free_within_its_bucket() {
    let mut s = Summaries::default();
    let (first, counter) = s.record_counted(SummaryKind::Connection, &rec("alice", 200), T0);
    assert!(first);
    let counter = counter.expect("a counter for a stored key");
    assert!(counter.add(T0 + 1));
    assert!(counter.add(T0 + 2));
    let (first, _) = s.record_counted(SummaryKind::Connection, &rec("alice", 200), T0 + 3);
    assert!(!first, "the key is known");
    assert_eq!(s.export(SummaryKind::Connection, T0 + 4)[0].count, 4);
    // The next bucket needs a full record (and a first-occurrence event).
    assert!(!counter.add(T0 + BUCKET_MS));
    assert_eq!(
        s.export(SummaryKind::Connection, T0 + BUCKET_MS)[0].count,
        4
    );
    assert!(s.record(SummaryKind::Connection, &rec("alice", 200), T0 + BUCKET_MS));
}

#[test]
fn an_overflowing_bucket_hands_out_no_counter() {
    let mut s = Summaries::default();
    for i in 0..MAX_KEYS_PER_BUCKET {
        s.record(SummaryKind::FailedAuth, &rec(&format!("u{i}"), 403), T0);
    }
    let (first, counter) = s.record_counted(SummaryKind::FailedAuth, &rec("late", 403), T0);
    assert!(!first);
    assert!(counter.is_none());
}
