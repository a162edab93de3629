//! The proxy's request-head parser and chunked decoder (`gpa::proxy::head`, `gpa::proxy::chunked`; spec §8.1,
//! catalog A3, A4, A6, A8): never panic, every span in bounds, and never more lenient than a strict reference
//! parser (`httparse`): whatever the proxy accepts, `httparse` parses the same way. A head the proxy accepts
//! never carries both `Content-Length` and `Transfer-Encoding`, two `Content-Length`s, or a folded line.
#![no_main]

use gpa::proxy::chunked::ChunkedDecoder;
use gpa::proxy::head::{self, Framing};
use libfuzzer_sys::fuzz_target;

const MAX_FIELDS: usize = 256;

fuzz_target!(|data: &[u8]| {
    let _ = head::check_partial(data);
    let Some(end) = head::find_end(data, 0) else {
        return;
    };
    assert!(end <= data.len());
    let (raw, body) = data.split_at(end);
    let Ok(h) = head::parse(raw) else {
        return;
    };
    for span in [h.method, h.target]
        .into_iter()
        .chain(h.fields.iter().flat_map(|f| [f.name, f.value]))
    {
        assert!(span.range().end <= raw.len(), "span out of bounds");
    }
    let method = h.method.of(raw);
    assert!(!method.is_empty() && method.iter().all(|&b| head::is_tchar(b)));

    // Framing is unambiguous.
    let count = |name: &[u8]| {
        h.fields
            .iter()
            .filter(|f| f.name.of(raw).eq_ignore_ascii_case(name))
            .count()
    };
    let (cl, te) = (count(b"content-length"), count(b"transfer-encoding"));
    assert!(!(cl > 0 && te > 0), "CL and TE accepted together");
    if let Framing::Length(n) = h.framing {
        let values: Vec<&[u8]> = h
            .fields
            .iter()
            .filter(|f| f.name.of(raw).eq_ignore_ascii_case(b"content-length"))
            .map(|f| f.value.of(raw))
            .collect();
        assert!(
            values.iter().all(|v| head::parse_decimal(v) == Some(n)),
            "differing lengths accepted"
        );
    }

    // No more lenient than httparse: same method, same target (before a fragment), same fields. (A head with a
    // bad header value is refused later, at step 3 of spec §8.2, with its own reason code.)
    if h.bad_header_value {
        return;
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut reference = httparse::Request::new(&mut fields);
    match reference.parse(raw) {
        Ok(httparse::Status::Complete(n)) => {
            assert_eq!(n, raw.len());
            assert_eq!(reference.method.map(str::as_bytes), Some(method));
            let target = reference.path.unwrap_or_default().as_bytes();
            let no_fragment = target.split(|&b| b == b'#').next().unwrap_or_default();
            assert_eq!(h.target.of(raw), no_fragment);
            assert_eq!(reference.headers.len(), h.fields.len());
            for (ours, theirs) in h.fields.iter().zip(reference.headers.iter()) {
                assert_eq!(ours.name.of(raw), theirs.name.as_bytes());
            }
        }
        other => panic!("accepted a head httparse refuses: {other:?}"),
    }

    if h.framing == Framing::Chunked {
        let mut decoder = ChunkedDecoder::default();
        let mut at = 0;
        while at < body.len() && !decoder.is_done() {
            match decoder.decode(&body[at..]) {
                Ok(p) => {
                    assert!(p.consumed <= body.len() - at);
                    assert!(p.data.end <= body.len() - at);
                    if p.consumed == 0 {
                        break;
                    }
                    at += p.consumed;
                }
                Err(_) => break,
            }
        }
    }
});
