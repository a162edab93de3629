//! Local rules files (spec §4.7): any bytes (BOM, bad UTF-8, bad JSON, a `mode`) merged into an opted-in host
//! item. Never panics, and the mode of the result is always the host's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msp_core::Mode;
use msp_core::rules::{self, LocalFile};

/// `{"id":"imds-rules-7","useLocalFileRules":true}` in base64: the host opts in (spec §4.7).
const HOST: &str = r#"{"defaultAccess":"deny","mode":"enforce","id":"eyJpZCI6ImltZHMtcnVsZXMtNyIsInVzZUxvY2FsRmlsZVJ1bGVzIjp0cnVlfQ==","rules":{"privileges":[{"name":"p","path":"/metadata/instance"}],"roles":[{"name":"r","privileges":["p"]}],"identities":[{"name":"i","userName":"root"}],"roleAssignments":[{"role":"r","identities":["i"]}]}}"#;

fuzz_target!(|data: &[u8]| {
    let _ = rules::parse_local_file(data);
    let built = rules::build_item(HOST, Some(LocalFile::Present(data)));
    assert!(built.host_error.is_none());
    assert_eq!(
        built.item.mode(),
        Mode::Enforce,
        "a local file changed the mode"
    );
});
