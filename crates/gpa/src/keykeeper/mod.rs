//! The key keeper (spec §2.8–§2.12, §4.7–§4.9, §7.5).

pub mod machine;
pub mod rules_seam;
