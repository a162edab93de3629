use super::*;
use crate::{Endpoint, Reason};

fn imds() -> Destination {
    Destination::Endpoint(Endpoint::Imds)
}

fn canon(method: &str, target: &str) -> Result<String, CanonError> {
    canonicalize(
        method,
        target.as_bytes(),
        &imds(),
        &EndpointAddrs::default(),
    )
    .map(|c| c.render_target())
}

#[test]
fn steps_run_in_spec_order() {
    // Scheme before method, method before userinfo, userinfo before path.
    assert_eq!(
        canon("TRACE", "https://x/%zz"),
        Err(CanonError::SchemeNotHttp)
    );
    assert_eq!(
        canon("TRACE", "http://user@169.254.169.254/%zz"),
        Err(CanonError::MethodNotAllowed)
    );
    assert_eq!(
        canon("GET", "http://user@169.254.169.254/%zz"),
        Err(CanonError::UserinfoPresent)
    );
    assert_eq!(
        canon("GET", "http://169.254.169.254/%zz?a=%FF"),
        Err(CanonError::MalformedPercent)
    );
    assert_eq!(canon("GET", "/a?a=%FF"), Err(CanonError::InvalidUtf8));
}

#[test]
fn methods_are_exact() {
    for m in Method::ALL {
        assert_eq!(canon(m.as_str(), "/"), Ok("/".into()));
    }
    for bad in ["get", "CONNECT", "TRACE", "", "GET "] {
        assert_eq!(
            canon(bad, "/"),
            Err(CanonError::MethodNotAllowed),
            "{bad:?}"
        );
    }
}

#[test]
fn conf_062_absolute_form_must_match_the_connection() {
    assert_eq!(
        canon("GET", "http://169.254.169.254/metadata?A=1").unwrap(),
        "/metadata?a=1"
    );
    assert_eq!(canon("GET", "HTTP://0xa9fea9fe:80").unwrap(), "/");
    let err = canon("GET", "http://168.63.129.16/machine").unwrap_err();
    assert_eq!(err, CanonError::HostMismatch);
    assert_eq!(err.reason(), Reason::CanonHost);
    assert_eq!(
        canon("GET", "http://metadata.azure.internal/x"),
        Err(CanonError::HostMismatch)
    );
    assert_eq!(
        canon("GET", "http://169.254.169.254:8080/x"),
        Err(CanonError::HostMismatch)
    );
}

#[test]
fn fragments_are_never_matched() {
    assert_eq!(canon("GET", "/a/b#/../../c?x=1").unwrap(), "/a/b");
}

#[test]
fn every_error_maps_to_its_spec_code() {
    let table = [
        (CanonError::PathTraversal, "CANON_TRAVERSAL", 400),
        (CanonError::AmbiguousSegment, "CANON_SEGMENT", 400),
        (CanonError::SchemeNotHttp, "CANON_SCHEME", 405),
        (CanonError::MethodNotAllowed, "CANON_METHOD", 405),
        (CanonError::UserinfoPresent, "CANON_USERINFO", 400),
        (CanonError::MalformedPercent, "CANON_PCT", 400),
        (CanonError::OverlongUtf8, "CANON_OVERLONG", 400),
        (CanonError::InvalidUtf8, "CANON_UTF8", 400),
        (CanonError::NonAscii, "CANON_NON_ASCII", 400),
        (CanonError::ControlChar, "CANON_CTRL", 400),
        (CanonError::PathUnderflow, "CANON_UNDERFLOW", 400),
        (CanonError::EmbeddedQuery, "CANON_EMBQ", 400),
        (CanonError::BadHost, "CANON_HOST", 400),
        (CanonError::HostMismatch, "CANON_HOST", 400),
        (CanonError::BadPort, "CANON_PORT", 400),
    ];
    for (err, code, status) in table {
        assert_eq!(
            (err.reason().code(), err.reason().status()),
            (code, status),
            "{err:?}"
        );
    }
}
