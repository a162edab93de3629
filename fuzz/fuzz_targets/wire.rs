//! `KeyStatus` and `Key` (spec §2.3, §2.7): parse, validate, derive the channel state and its summary, and take
//! the signing parts of a key, for every byte string. Typed errors only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msp_core::wire::{Key, KeyStatus};

fuzz_target!(|data: &[u8]| {
    if let Ok(status) = KeyStatus::parse(data) {
        if status.validate().is_ok() {
            let derived = status.derive();
            let _ = status.summary(&derived);
            let _ = status.latched_guid();
            let _ = status.unknown_required_claims().count();
        }
    }
    if let Ok(key) = Key::parse(data) {
        if let Ok((guid, signing)) = key.signing_parts() {
            // A parsed guid renders back to a guid that parses the same.
            let again = msp_core::sign::KeyGuid::parse(guid.as_str()).expect("guid round-trips");
            assert_eq!(again.as_str(), guid.as_str());
            let _ = signing.to_hex();
        }
    }
});
