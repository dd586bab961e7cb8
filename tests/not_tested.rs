//! A test that skips its checks for a missing server or tool is listed, with what was missing
//! and how to get it, in what the end of `cargo test` prints (`tests/zz_not_tested.rs`).

mod common;

#[test]
fn skipped_checks_are_listed_with_how_to_get_what_was_missing() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("run");
    assert!(
        common::not_tested_summary(&list).starts_with("not tested: nothing"),
        "an empty list says nothing was skipped"
    );
    common::not_tested_in(&list, "no promtool", "apt-get install prometheus");
    common::not_tested_in(&list, "no promtool", "apt-get install prometheus");
    common::not_tested_in(&list, "no PostgreSQL at x", "start one");
    let text = common::not_tested_summary(&list);
    assert!(text.starts_with("NOT TESTED: 3 test(s)"), "{text}");
    let this = "not_tested::skipped_checks_are_listed_with_how_to_get_what_was_missing";
    assert!(
        text.contains("  no promtool\n    to test it: apt-get install prometheus\n")
            && text.contains("  no PostgreSQL at x\n    to test it: start one\n")
            && text.matches(this).count() == 3,
        "{text}"
    );
}
