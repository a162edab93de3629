//! SECURITY.md is the index of the security suite: its catalog table has one row per catalog ID, each naming
//! the tests that cover it. This test keeps that index true: every ID has a row, every named test exists in
//! the workspace, and every test whose name starts with a catalog ID is listed under that ID.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The catalog's IDs (spec/security-catalog.md; IDs are stable).
const IDS: &[(&str, u32)] = &[
    ("A", 10),
    ("B", 8),
    ("C", 9),
    ("D", 7),
    ("E", 6),
    ("F", 2),
    ("G", 3),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn all_ids() -> Vec<String> {
    IDS.iter()
        .flat_map(|(letter, n)| (1..=*n).map(move |i| format!("{letter}{i}")))
        .collect()
}

/// `fn <name>` of every Rust file under `crates/`.
fn workspace_fns() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    walk(&path, out);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for rest in text.split("fn ").skip(1) {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        out.insert(name);
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&root().join("crates"), &mut out);
    out
}

/// The catalog table of SECURITY.md (the one headed `| ID | expected (catalog) |`, up to the first line that is
/// not a table row): ID → the test names (in backticks) of its row. Other tables may name IDs too.
fn table() -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(root().join("SECURITY.md")).expect("SECURITY.md");
    let catalog = text
        .lines()
        .skip_while(|l| !l.starts_with("| ID | expected (catalog) |"))
        .take_while(|l| l.starts_with('|'));
    let mut rows = BTreeMap::new();
    for line in catalog {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(id) = cells.get(1) else { continue };
        if !all_ids().iter().any(|i| i == id) {
            continue;
        }
        let tests = cells
            .get(3)
            .unwrap_or(&"")
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        assert!(
            rows.insert((*id).to_owned(), tests).is_none(),
            "SECURITY.md: two rows for {id}"
        );
    }
    rows
}

#[test]
fn every_catalog_row_names_existing_tests() {
    let rows = table();
    let fns = workspace_fns();
    for id in all_ids() {
        let tests = rows
            .get(&id)
            .unwrap_or_else(|| panic!("SECURITY.md: no row for {id}"));
        assert!(!tests.is_empty(), "SECURITY.md: {id} names no test");
        for t in tests {
            assert!(
                fns.contains(t),
                "SECURITY.md: {id} names `{t}`, which is not a test in crates/"
            );
        }
    }
}

#[test]
fn every_test_named_after_a_row_is_listed_under_it() {
    let rows = table();
    for f in workspace_fns() {
        let Some(token) = f.split('_').next() else {
            continue;
        };
        let id = token.to_ascii_uppercase();
        if !all_ids().contains(&id) || !f.contains('_') {
            continue;
        }
        let listed = rows.get(&id).is_some_and(|tests| tests.contains(&f));
        assert!(
            listed,
            "`{f}` is named after {id} but SECURITY.md does not list it there"
        );
    }
}
