//! The documentation names what the workspace holds.

use std::collections::BTreeSet;

fn read(path: &str) -> String {
    std::fs::read_to_string(vatic_testkit::root().join(path)).expect(path)
}

/// The crates of the workspace: the folder names of `members` in the root Cargo.toml.
fn workspace_crates() -> BTreeSet<String> {
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml");
    manifest["workspace"]["members"]
        .as_array()
        .expect("workspace members")
        .iter()
        .map(|m| {
            let path = m.as_str().expect("a member path");
            path.strip_prefix("crates/").unwrap_or(path).to_string()
        })
        .collect()
}

/// The first column of the crate table of docs/architecture.md.
fn documented_crates() -> BTreeSet<String> {
    crate::helpers::doc_table("docs/architecture.md", "## Crates")
        .into_iter()
        .map(|cells| cells[0].clone())
        .collect()
}

#[test]
fn the_architecture_page_has_a_row_for_every_crate_and_only_for_them() {
    let (workspace, documented) = (workspace_crates(), documented_crates());
    assert!(workspace.contains("server"), "{workspace:?}");
    let missing: Vec<_> = workspace.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md's crate table lacks {missing:?}"
    );
    let stale: Vec<_> = documented.difference(&workspace).collect();
    assert!(
        stale.is_empty(),
        "docs/architecture.md's crate table names {stale:?}, which the workspace does not have"
    );
}
