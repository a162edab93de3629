use proptest::prelude::*;

use super::*;

fn ok(head: &[u8]) -> RequestHead {
    parse(head).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(head)))
}

fn err(head: &[u8]) -> HeadError {
    parse(head).expect_err(&String::from_utf8_lossy(head))
}

#[test]
fn parses_a_request_with_spans_into_the_head() {
    let raw = b"\r\nGET /metadata/instance?api-version=2021-02-01#frag HTTP/1.1\r\nHost: 169.254.169.254\r\n\
                Metadata:  true \r\nX-Empty:\r\n\r\n";
    let h = ok(raw);
    assert_eq!(h.method.of(raw), b"GET");
    assert_eq!(
        h.target.of(raw),
        b"/metadata/instance?api-version=2021-02-01",
        "the fragment is discarded (spec §8.1)"
    );
    assert_eq!(h.version, Version::Http11);
    assert_eq!(h.fields.len(), 3);
    assert_eq!(h.fields[1].name.of(raw), b"Metadata");
    assert_eq!(h.fields[1].value.of(raw), b"true");
    assert!(h.fields[2].value.of(raw).is_empty());
    assert_eq!(h.framing, Framing::None);
    assert_eq!(h.len, raw.len());
    assert_eq!(find_end(raw, 0), Some(raw.len()));
}

#[test]
fn find_end_is_incremental_and_sees_bare_lf_ends() {
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET";
    assert_eq!(find_end(&raw[..20], 0), None);
    assert_eq!(find_end(raw, 20), Some(27));
    for cut in 0..raw.len() {
        // Resuming from any earlier scan position finds the same end.
        assert_eq!(find_end(raw, cut.min(25)), Some(27), "from {cut}");
    }
    assert_eq!(find_end(b"GET / HTTP/1.1\nHost: a\n\n", 0), Some(24));
    assert_eq!(
        parse(b"GET / HTTP/1.1\nHost: a\n\n"),
        Err(HeadError::LineEnding)
    );
}

#[test]
fn conf_075_a6_framing_ambiguities_are_bad_requests() {
    let cases: [(&[u8], HeadError); 12] = [
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            HeadError::LengthAndChunked,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            HeadError::ContentLength,
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", HeadError::ContentLength),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", HeadError::ContentLength),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            HeadError::ContentLength,
        ),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n", HeadError::ObsFold),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            HeadError::TransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            HeadError::TransferEncoding,
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            HeadError::TransferEncoding,
        ),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", HeadError::FieldLine),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", HeadError::Host),
        (b"GET / HTTP/1.1\r\nHost: a\r\n", HeadError::FieldLine),
    ];
    for (raw, want) in cases {
        assert_eq!(err(raw), want, "{:?}", String::from_utf8_lossy(raw));
        assert_eq!(want.reason(), Reason::BadRequest);
    }
    // Repeated identical lengths are one length.
    let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n");
    assert_eq!(h.framing, Framing::Length(5));
    let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n");
    assert_eq!(h.framing, Framing::Chunked);
}

#[test]
fn a3_a4_request_lines_that_are_not_http_1_are_bad_requests() {
    let cases: [(&[u8], HeadError); 9] = [
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", HeadError::Version),
        (b"GET / HTTP/9.9\r\nHost: a\r\n\r\n", HeadError::Version),
        (b"GET / http/1.1\r\nHost: a\r\n\r\n", HeadError::Version),
        (
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            HeadError::AsteriskForm,
        ),
        (
            b"GET host:443 HTTP/1.1\r\nHost: a\r\n\r\n",
            HeadError::AuthorityForm,
        ),
        (
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            HeadError::RequestLine,
        ),
        (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", HeadError::Method),
        (
            b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
            HeadError::Target,
        ),
        (b"GET / HTTP/1.1\r\n\r\n", HeadError::Host),
    ];
    for (raw, want) in cases {
        assert_eq!(err(raw), want, "{:?}", String::from_utf8_lossy(raw));
    }
    // Lowercase methods and unknown tokens parse: the 405 is spec §8.2 step 2's.
    assert_eq!(ok(b"get / HTTP/1.1\r\nHost: a\r\n\r\n").method.len(), 3);
    assert_eq!(ok(b"TRACE / HTTP/1.0\r\n\r\n").version, Version::Http10);
    // CONNECT's own authority-form parses, so step 2 answers it with 405 (conf 74).
    assert_eq!(
        ok(b"CONNECT host:443 HTTP/1.1\r\nHost: host:443\r\n\r\n")
            .target
            .len(),
        8
    );
    let h = ok(b"GET http://169.254.169.254/x HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(h.target.len(), "http://169.254.169.254/x".len());
}

#[test]
fn conf_079_limits_are_414_and_431() {
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: a\r\n\r\n",
        "a".repeat(MAX_TARGET)
    );
    assert_eq!(err(long.as_bytes()), HeadError::UriTooLong);
    assert_eq!(HeadError::UriTooLong.reason().status(), 414);
    let at_limit = format!(
        "GET /{} HTTP/1.1\r\nHost: a\r\n\r\n",
        "a".repeat(MAX_TARGET - 1)
    );
    ok(at_limit.as_bytes());

    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..MAX_FIELDS {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(err(many.as_bytes()), HeadError::HeadersTooLarge);
    assert_eq!(HeadError::HeadersTooLarge.reason().status(), 431);

    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "v".repeat(MAX_HEAD_BYTES)
    );
    assert_eq!(err(big.as_bytes()), HeadError::HeadersTooLarge);
}

#[test]
fn check_partial_refuses_hopeless_heads_early() {
    assert_eq!(check_partial(b"GET /meta"), Ok(()));
    assert_eq!(
        check_partial(b"\x16\x03\x01\x02\x00"),
        Err(HeadError::Method)
    );
    let long_target = format!("GET /{}", "a".repeat(MAX_TARGET));
    assert_eq!(
        check_partial(long_target.as_bytes()),
        Err(HeadError::UriTooLong)
    );
    let big = format!("GET / HTTP/1.1\r\nX: {}", "v".repeat(MAX_HEAD_BYTES));
    assert_eq!(
        check_partial(big.as_bytes()),
        Err(HeadError::HeadersTooLarge)
    );
}

#[test]
fn flags_for_step_3_do_not_fail_the_parse() {
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Name: caf\xc3\xa9\r\nUpgrade: h2c\r\n\
                Connection: Upgrade, x-ms-azure-host-claims, close, X-Custom\r\nExpect: 100-continue\r\n\r\n";
    let h = ok(raw);
    assert!(h.bad_header_value && h.upgrade && h.protected_connection && h.close);
    assert!(h.expect_continue);
    let names: Vec<&[u8]> = h.connection_names.iter().map(|s| s.of(raw)).collect();
    assert_eq!(
        names,
        [&b"Upgrade"[..], b"x-ms-azure-host-claims", b"X-Custom"]
    );
    assert!(h.is_hop_by_hop(raw, b"x-custom") && h.is_hop_by_hop(raw, b"TE"));
    assert!(!h.is_hop_by_hop(raw, b"host"));
    let h = ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\n\r\n");
    assert!(h.protected_connection);
    let h = ok(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n");
    assert!(h.bad_header_value);
    let h = ok(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n");
    assert!(
        h.bad_header_value,
        "a CR inside a value is a bad value byte"
    );
}

#[test]
fn byte_classes_hold_at_every_byte() {
    // RFC 9110 §5.6.2, spelled out independently of the parser's table.
    for b in 0..=255u8 {
        let token = b.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".as_bytes().contains(&b);
        assert_eq!(is_tchar(b), token, "tchar {b:#04x}");
        // A method byte, a field-name byte (a colon ends the name).
        let method = [b'G', b, b'T'];
        let line = [&method[..], b" / HTTP/1.1\r\nHost: a\r\n\r\n"].concat();
        assert_eq!(parse(&line).is_ok(), token, "method byte {b:#04x}");
        if b != b':' {
            let name = [&b"GET / HTTP/1.1\r\nHost: a\r\nX"[..], &[b], b": v\r\n\r\n"].concat();
            assert_eq!(parse(&name).is_ok(), token, "field-name byte {b:#04x}");
        }
        // A target byte: 0x21-0x7E (SP ends the target; CR and LF end the line).
        if ![b' ', b'\r', b'\n', b'#'].contains(&b) {
            let target = [&b"GET /a"[..], &[b], b" HTTP/1.1\r\nHost: a\r\n\r\n"].concat();
            let visible = (0x21..=0x7e).contains(&b);
            assert_eq!(parse(&target).is_ok(), visible, "target byte {b:#04x}");
        }
        // A value byte, inside the value, next to the OWS trimmed around it, first and last: HTAB, SP, 0x21-0x7E.
        if ![b'\r', b'\n'].contains(&b) {
            let value_byte = b == b'\t' || (0x20..=0x7e).contains(&b);
            for value in [
                [b'a', b, b'z'],
                [b' ', b, b' '],
                [b, b'\t', b'a'],
                [b'a', b'z', b],
            ] {
                let raw = [&b"GET / HTTP/1.1\r\nHost: a\r\nX:"[..], &value, b"\r\n\r\n"].concat();
                assert_eq!(
                    ok(&raw).bad_header_value,
                    !value_byte,
                    "value byte {b:#04x} in {value:?}"
                );
            }
        }
    }
}

proptest! {
    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&bytes);
        let _ = check_partial(&bytes);
        let _ = find_end(&bytes, 0);
    }

    #[test]
    fn parse_never_panics_on_head_like_bytes(
        line in "[A-Za-z]{1,8} [ -~]{1,40} HTTP/1\\.[01]",
        fields in proptest::collection::vec("[!-~]{0,12}:[\t -~\u{80}-\u{ff}]{0,20}", 0..8),
    ) {
        let mut raw = line.into_bytes();
        raw.extend_from_slice(b"\r\n");
        for f in fields {
            raw.extend_from_slice(f.as_bytes());
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        if let Ok(h) = parse(&raw) {
            // Every span lies inside the head.
            prop_assert!(h.target.range().end <= raw.len());
            for f in &h.fields {
                prop_assert!(f.name.range().end <= f.value.range().start.max(f.name.range().end));
                prop_assert!(f.value.range().end <= raw.len());
            }
        }
    }
}
