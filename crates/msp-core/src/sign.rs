//! Request signing (spec §3.3, §3.4), the host date (§2.12) and the host's verification steps (§12.3).
//!
//! The signature input is streamed straight into the HMAC. Its sorted header index and query entries live on the
//! stack up to [`INLINE_FIELDS`] entries each, so the input of a request of ordinary size is computed without a
//! heap allocation (issue 8), and so is a verification: one pass finds the host headers, the key guid is held
//! inline, and the claims and date are read in place. This module never sees a clock: the caller passes the date
//! it wants to sign or the host time it verifies against. Key bytes live only in [`SigningKey`], which zeroes
//! itself and never prints.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use memchr::memchr;
use sha2::Sha256;
use smallvec::SmallVec;
use zeroize::Zeroizing;

use crate::Reason;

/// The only authorization scheme of MSP v1 (spec §2.3).
pub const SCHEME: &str = "Azure-HMAC-SHA256";
/// Carries `Azure-HMAC-SHA256 <keyGuid> <signature>` (spec §3.4); excluded from the signature input.
pub const AUTHORIZATION_HEADER: &str = "x-ms-azure-host-authorization";
/// Carries `{ "isRoot": "true"}` or `{ "isRoot": "false"}` (spec §3.2).
pub const CLAIMS_HEADER: &str = "x-ms-azure-host-claims";
/// Carries the host-synchronised date (spec §2.12).
pub const DATE_HEADER: &str = "x-ms-azure-host-date";
/// Every header in this family is removed from client requests; only the agent speaks in it (spec §3.2).
pub const HOST_HEADER_PREFIX: &str = "x-ms-azure-host-";
/// Default freshness window of the host, in seconds (spec §12.3).
pub const DEFAULT_FRESHNESS_WINDOW: Duration = Duration::from_secs(300);
/// Header fields, and query pairs, that the signature input sorts on the stack: a capacity, not a limit (more
/// spill to the heap).
pub const INLINE_FIELDS: usize = 16;
/// Length of a host date, `Www, DD Mmm YYYY HH:MM:SS GMT` (spec §2.12).
pub const HOST_DATE_LEN: usize = 29;
/// The last instant a host date can name: 9999-12-31 23:59:59 UTC (four-digit years).
const LAST_HOST_DATE: Duration = Duration::from_secs(253_402_300_799);

type HmacSha256 = Hmac<Sha256>;

type Result<T, E = SignError> = std::result::Result<T, E>;

/// Why a key, guid, header or date could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    #[error("key is not 64 hex digits (32 bytes)")]
    KeyNotHex,
    #[error("key guid {guid:?} is not 8-4-4-4-12 hex")]
    GuidMalformed { guid: String },
    #[error("authorization header is not `{SCHEME} <guid> <64 hex>`")]
    AuthorizationMalformed,
    #[error("date {date:?} is not in the form `Www, DD Mmm YYYY HH:MM:SS GMT`")]
    DateMalformed { date: String },
}

// === impl SigningKey ===

/// A 32-byte HMAC-SHA256 key. Zeroed on drop; `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Zeroizing<[u8; 32]>);

impl SigningKey {
    /// Decodes the hex of a `Key.key` (either case, exactly 32 bytes, spec §2.7).
    pub fn from_hex(hex_key: &str) -> Result<SigningKey> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(hex_key, bytes.as_mut_slice()).map_err(|_| SignError::KeyNotHex)?;
        Ok(SigningKey(bytes))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> SigningKey {
        SigningKey(Zeroizing::new(bytes))
    }

    /// Uppercase hex, as keys are delivered on the wire (spec §2.7). Secret: keep the result zeroizing.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode_upper(self.0.as_slice()))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn mac(&self) -> HmacSha256 {
        // A 32-byte key is always valid for HMAC; `new_from_slice` only fails for fixed-size-key MACs.
        <HmacSha256 as Mac>::new_from_slice(self.0.as_slice())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

// === impl KeyGuid ===

/// Length of a key guid, `8-4-4-4-12` hex digits with dashes (spec §2.7).
pub const KEY_GUID_LEN: usize = 36;

/// A key id: 8-4-4-4-12 hex digits, either case, kept as received (spec §2.7). Held inline, so parsing and
/// copying never allocate (the host parses one per signed request).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyGuid([u8; KEY_GUID_LEN]);

impl KeyGuid {
    pub fn parse(s: &str) -> Result<KeyGuid> {
        let shape_ok = |b: &[u8; KEY_GUID_LEN]| {
            b.iter().enumerate().all(|(i, &c)| match i {
                8 | 13 | 18 | 23 => c == b'-',
                _ => c.is_ascii_hexdigit(),
            })
        };
        match <[u8; KEY_GUID_LEN]>::try_from(s.as_bytes()) {
            Ok(bytes) if shape_ok(&bytes) => Ok(KeyGuid(bytes)),
            _ => Err(SignError::GuidMalformed { guid: s.to_owned() }),
        }
    }

    pub fn as_str(&self) -> &str {
        // `parse` admitted only ASCII hex digits and dashes.
        std::str::from_utf8(&self.0).unwrap_or_else(|_| unreachable!("a key guid is ASCII"))
    }
}

impl fmt::Display for KeyGuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for KeyGuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyGuid").field(&self.as_str()).finish()
    }
}

/// Hashes as its text, as it did when it held a `String`.
impl std::hash::Hash for KeyGuid {
    fn hash<S: std::hash::Hasher>(&self, state: &mut S) {
        self.as_str().hash(state);
    }
}

// === impl Signature ===

/// An HMAC-SHA256 tag. Compared only through [`verify`], which is constant time.
#[derive(Clone, Copy)]
pub struct Signature([u8; 32]);

impl Signature {
    /// 64 lowercase hex characters (spec §3.4).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signature(***)")
    }
}

/// The bare primitive: `HMAC-SHA256(key, message)` (golden vector V0).
pub fn hmac(key: &SigningKey, message: &[u8]) -> Signature {
    let mut mac = key.mac();
    mac.update(message);
    Signature(mac.finalize().into_bytes().into())
}

/// The value of `x-ms-azure-host-authorization`: `Azure-HMAC-SHA256 <guid> <hex>` with single spaces (spec §3.4).
pub fn authorization_value(guid: &KeyGuid, signature: &Signature) -> String {
    let mut out = Vec::with_capacity(SCHEME.len() + KEY_GUID_LEN + 66);
    write_authorization_value(&mut out, guid, signature);
    String::from_utf8(out).unwrap_or_else(|_| unreachable!("scheme, guid and hex are ASCII"))
}

/// Appends [`authorization_value`] to `out` without an allocation of its own.
pub fn write_authorization_value(out: &mut Vec<u8>, guid: &KeyGuid, signature: &Signature) {
    let mut hex = [0u8; 64];
    // 32 bytes always fit 64 hex digits.
    let _ = hex::encode_to_slice(signature.0, &mut hex);
    out.extend_from_slice(SCHEME.as_bytes());
    out.push(b' ');
    out.extend_from_slice(&guid.0);
    out.push(b' ');
    out.extend_from_slice(&hex);
}

/// Parses `Azure-HMAC-SHA256 <guid> <64 hex>` exactly (hex in either case), spec §12.3 step 1: one space
/// between the parts, SP and HTAB allowed around the whole value.
pub fn parse_authorization(value: &[u8]) -> Result<(KeyGuid, Signature)> {
    // Fixed widths: the scheme, a guid of `KEY_GUID_LEN` bytes and 64 hex digits, each part checked in place.
    let parts = trim_ows(value)
        .strip_prefix(SCHEME.as_bytes())
        .and_then(|rest| rest.strip_prefix(b" "))
        .and_then(|rest| rest.split_at_checked(KEY_GUID_LEN))
        .and_then(|(guid, rest)| Some((guid, rest.strip_prefix(b" ")?)));
    let (guid, sig) = parts.ok_or(SignError::AuthorizationMalformed)?;
    let guid = std::str::from_utf8(guid)
        .ok()
        .and_then(|g| KeyGuid::parse(g).ok())
        .ok_or(SignError::AuthorizationMalformed)?;
    let mut tag = [0u8; 32];
    hex::decode_to_slice(sig, &mut tag).map_err(|_| SignError::AuthorizationMalformed)?;
    Ok((guid, Signature(tag)))
}

// === signature input (spec §3.3) ===

/// One request as the signer sees it: everything of the head after the header rewrite (spec §3.2 steps 1–4).
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a, H> {
    /// The method token as sent.
    pub method: &'a [u8],
    /// The request-target as received (origin or absolute form), without a fragment.
    pub target: &'a [u8],
    /// Header fields in received order; a repeated name contributes only its last value.
    pub headers: H,
    /// The raw body; empty when there is none.
    pub body: &'a [u8],
}

impl<'a, H> RequestParts<'a, H>
where
    H: IntoIterator<Item = (&'a [u8], &'a [u8])> + Clone,
{
    /// The exact bytes of the signature input, for tests and diagnostics (signing streams them instead).
    pub fn signature_input(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        self.write_input(&mut |chunk: &[u8]| out.extend_from_slice(chunk));
        out
    }

    /// Signs with `key`: `HMAC-SHA256(key, input)` (spec §3.4).
    pub fn sign(&self, key: &SigningKey) -> Signature {
        let mut mac = key.mac();
        self.write_input(&mut |chunk: &[u8]| mac.update(chunk));
        Signature(mac.finalize().into_bytes().into())
    }

    /// Constant-time check of `signature` over this request under `key` (spec §12.3 step 5).
    pub fn verify(&self, key: &SigningKey, signature: &Signature) -> bool {
        let mut mac = key.mac();
        self.write_input(&mut |chunk: &[u8]| mac.update(chunk));
        mac.verify_slice(&signature.0).is_ok()
    }

    fn write_input(&self, sink: &mut dyn FnMut(&[u8])) {
        sink(self.method);
        sink(b"\n");
        sink(self.body);
        sink(b"\n");
        for (name, value) in sorted_headers(self.headers.clone()) {
            sink_lowercase(name, sink);
            sink(b":");
            sink(trim_ows(value));
            sink(b"\n");
        }
        let (path, query) = split_target(self.target);
        sink(path);
        sink(b"\n");
        write_canonical_query(query, sink);
    }
}

/// Headers sorted by lowercase name, last value of each name kept, the authorization header left out.
fn sorted_headers<'a>(
    headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> SmallVec<[(&'a [u8], &'a [u8]); INLINE_FIELDS]> {
    let mut all: SmallVec<[(&[u8], &[u8]); INLINE_FIELDS]> = headers
        .into_iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case(AUTHORIZATION_HEADER.as_bytes()))
        .collect();
    // Stable sort keeps received order within a name, so the last of each run is the last received.
    all.sort_by(|(a, _), (b, _)| cmp_ignore_case(a, b));
    all.dedup_by(|later, kept| keep_later(later, kept, |a, b| a.0.eq_ignore_ascii_case(b.0)));
    all
}

/// For `dedup_by`: when `same` calls the neighbours equal, the later one replaces the kept one and is dropped, so
/// each run keeps its last element.
fn keep_later<T: Copy>(later: &mut T, kept: &mut T, same: impl Fn(&T, &T) -> bool) -> bool {
    let merge = same(later, kept);
    if merge {
        *kept = *later;
    }
    merge
}

/// A query entry as `lowercase key ++ raw value`, the order and identity of spec §3.3's pairs.
fn concat<'a>(&(key, value): &(&'a [u8], &'a [u8])) -> impl Iterator<Item = u8> + 'a {
    key.iter()
        .map(u8::to_ascii_lowercase)
        .chain(value.iter().copied())
}

/// Feeds `bytes` ASCII-lowercased to `sink`, through a stack buffer when any byte is uppercase.
fn sink_lowercase(bytes: &[u8], sink: &mut dyn FnMut(&[u8])) {
    if !bytes.iter().any(u8::is_ascii_uppercase) {
        return sink(bytes);
    }
    let mut lower = [0u8; 64];
    for piece in bytes.chunks(lower.len()) {
        for (to, from) in lower.iter_mut().zip(piece) {
            *to = from.to_ascii_lowercase();
        }
        sink(lower.get(..piece.len()).unwrap_or_default());
    }
}

fn cmp_ignore_case(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.iter()
        .map(u8::to_ascii_lowercase)
        .cmp(b.iter().map(u8::to_ascii_lowercase))
}

/// Strips leading and trailing SP and HTAB; inner whitespace stays (spec §3.3).
fn trim_ows(v: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !is_ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ows(b)).map_or(start, |i| i + 1);
    v.get(start..end).unwrap_or_default()
}

/// Splits a request-target into the raw path (still encoded, `/` for an empty absolute-form path) and the raw
/// query (after the first `?`, empty when none).
pub fn split_target(target: &[u8]) -> (&[u8], &[u8]) {
    let (before_query, query) = match memchr(b'?', target) {
        Some(i) => (
            target.get(..i).unwrap_or_default(),
            target.get(i + 1..).unwrap_or_default(),
        ),
        None => (target, &[][..]),
    };
    let path = if before_query.first() == Some(&b'/') || before_query.is_empty() {
        before_query
    } else if let Some(i) = find(before_query, b"://") {
        // Absolute form: skip `scheme://authority`; the path starts at the next `/`.
        let after_scheme = before_query.get(i + 3..).unwrap_or_default();
        match after_scheme.iter().position(|&b| b == b'/') {
            Some(p) => after_scheme.get(p..).unwrap_or_default(),
            None => b"/",
        }
    } else {
        before_query
    };
    (path, query)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Writes `CANON_QUERY` (spec §3.3): pairs keyed by lowercase key + raw value, later duplicates replacing
/// earlier ones, emitted in byte order of that concatenation as `key=value`, or `key` when the value is empty.
fn write_canonical_query(query: &[u8], sink: &mut dyn FnMut(&[u8])) {
    // Each entry is the raw key and value; it compares as `lowercase key ++ value` without building it.
    let mut entries: SmallVec<[(&[u8], &[u8]); INLINE_FIELDS]> = query
        .split(|&b| b == b'&')
        .map(|piece| match piece.iter().position(|&b| b == b'=') {
            Some(i) => (
                piece.get(..i).unwrap_or_default(),
                piece.get(i + 1..).unwrap_or_default(),
            ),
            None => (piece, &[][..]),
        })
        .filter(|(key, _)| !key.is_empty())
        .collect();
    // A stable sort keeps received order among equal concatenations; keeping the last of each run is
    // "a later pair with the same concatenation replaces the earlier one".
    entries.sort_by(|a, b| concat(a).cmp(concat(b)));
    entries.dedup_by(|later, kept| keep_later(later, kept, |a, b| concat(a).eq(concat(b))));
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 {
            sink(b"&");
        }
        sink_lowercase(key, sink);
        if !value.is_empty() {
            sink(b"=");
            sink(value);
        }
    }
}

// === host date (spec §2.12) ===

/// Formats a time as `Www, DD Mmm YYYY HH:MM:SS GMT`, truncated to whole seconds; times before 1970 or after
/// year 9999 are clamped to the nearest one that has this form.
pub fn format_host_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(clamp_host_date(t))
}

/// [`format_host_date`] into `buf`, without an allocation; returns the text (all of `buf`).
pub fn format_host_date_into(t: SystemTime, buf: &mut [u8; HOST_DATE_LEN]) -> &[u8] {
    let date = httpdate::HttpDate::from(clamp_host_date(t));
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // Every date in range is exactly `HOST_DATE_LEN` bytes; a failed write would leave a short text, never a panic.
    let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{date}"));
    let written = usize::try_from(cursor.position()).unwrap_or(0);
    buf.get(..written).unwrap_or_default()
}

/// The last host date [`format_host_date_into`] wrote, so that the requests of one second format it once: a
/// formatted date changes only with the whole second (issue 8). Kept by the caller (the agent: one per thread).
#[derive(Debug, Clone, Copy)]
pub struct HostDateCache {
    /// The whole second since 1970 that `text` shows; `None` before the first date.
    second: Option<u64>,
    text: [u8; HOST_DATE_LEN],
    len: usize,
}

impl HostDateCache {
    /// A cache that holds no date yet.
    pub const fn new() -> HostDateCache {
        HostDateCache {
            second: None,
            text: [0; HOST_DATE_LEN],
            len: 0,
        }
    }

    /// [`format_host_date_into`] of `t`, formatted again only when its whole second differs from the last one.
    pub fn format(&mut self, t: SystemTime) -> &[u8] {
        let t = clamp_host_date(t);
        let second = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if self.second != Some(second) {
            self.len = format_host_date_into(t, &mut self.text).len();
            self.second = Some(second);
        }
        self.text.get(..self.len).unwrap_or_default()
    }
}

impl Default for HostDateCache {
    fn default() -> Self {
        HostDateCache::new()
    }
}

/// httpdate panics outside 1970..=9999; a host clock anchored near either end must not take the agent down.
fn clamp_host_date(t: SystemTime) -> SystemTime {
    t.clamp(UNIX_EPOCH, UNIX_EPOCH + LAST_HOST_DATE)
}

/// Parses exactly `Www, DD Mmm YYYY HH:MM:SS GMT` (no RFC 850 or asctime forms, no surrounding space).
pub fn parse_host_date(s: &str) -> Result<SystemTime> {
    let malformed = || SignError::DateMalformed {
        date: s.chars().take(64).collect(),
    };
    let t = httpdate::parse_http_date(s).map_err(|_| malformed())?;
    // httpdate also accepts obsolete forms; the profile allows only the IMF-fixdate spelling.
    let mut spelled = [0u8; HOST_DATE_LEN];
    if format_host_date_into(t, &mut spelled) == s.as_bytes() {
        Ok(t)
    } else {
        Err(malformed())
    }
}

/// |host time truncated to whole seconds − date| ≤ window, in either direction (spec §12.3 step 3).
pub fn is_fresh(host_now: SystemTime, date: SystemTime, window: Duration) -> bool {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    secs(host_now).abs_diff(secs(date)) <= window.as_secs()
}

// === host verification (spec §12.3 steps 1–5) ===

/// What a request proved: which key signed it and whether the caller was elevated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub key_guid: KeyGuid,
    pub is_root: bool,
}

/// Verifies a received request. `headers` are every received field (the authorization header included; it is
/// left out of the input). `key_for` returns the key latched for this VM under a guid, or `None` (spec §12.3
/// step 2: other VMs' keys and old keys are unknown alike). Step 6 (`NOT_ELEVATED`) is the caller's, since it
/// depends on the endpoint.
pub fn verify_request<'a, H>(
    parts: &RequestParts<'a, H>,
    key_for: impl FnOnce(&KeyGuid) -> Option<SigningKey>,
    host_now: SystemTime,
    window: Duration,
) -> std::result::Result<Verified, Reason>
where
    H: IntoIterator<Item = (&'a [u8], &'a [u8])> + Clone,
{
    let host = HostFields::find(parts.headers.clone());
    let auth = host.authorization.ok_or(Reason::AuthMissing)?;
    let (guid, signature) = parse_authorization(auth).map_err(|_| Reason::AuthMalformed)?;
    let key = key_for(&guid).ok_or(Reason::KeyUnknown)?;
    let date = host
        .date
        .and_then(|v| std::str::from_utf8(trim_ows(v)).ok())
        .and_then(|s| parse_host_date(s).ok())
        .ok_or(Reason::DateMissing)?;
    if !is_fresh(host_now, date, window) {
        return Err(Reason::DateSkew);
    }
    let is_root = host
        .claims
        .and_then(parse_is_root)
        .ok_or(Reason::ClaimsInvalid)?;
    if !parts.verify(&key, &signature) {
        return Err(Reason::SigMismatch);
    }
    Ok(Verified {
        key_guid: guid,
        is_root,
    })
}

/// The last value of each header verification reads, found in one pass over the fields.
#[derive(Default)]
struct HostFields<'a> {
    authorization: Option<&'a [u8]>,
    date: Option<&'a [u8]>,
    claims: Option<&'a [u8]>,
}

impl<'a> HostFields<'a> {
    fn find(headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> HostFields<'a> {
        let mut found = HostFields::default();
        for (name, value) in headers {
            let is = |wanted: &str| name.eq_ignore_ascii_case(wanted.as_bytes());
            let slot = if is(AUTHORIZATION_HEADER) {
                &mut found.authorization
            } else if is(DATE_HEADER) {
                &mut found.date
            } else if is(CLAIMS_HEADER) {
                &mut found.claims
            } else {
                continue;
            };
            *slot = Some(value);
        }
        found
    }
}

/// A claims header is a JSON object whose `isRoot` is the string `"true"` or `"false"` (spec §12.3 step 4).
/// JSON escapes count as what they decode to (`"tr\u0075e"` is `true`); only then is the string copied.
pub fn parse_is_root(value: &[u8]) -> Option<bool> {
    #[derive(serde::Deserialize)]
    struct HostClaims<'a> {
        #[serde(rename = "isRoot", borrow)]
        is_root: std::borrow::Cow<'a, str>,
    }
    // serde's derive also reads a struct from a JSON array (`["true"]`); only an object is a claims header.
    let first = value
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return None;
    }
    let claims: HostClaims<'_> = serde_json::from_slice(value).ok()?;
    match claims.is_root.as_ref() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
