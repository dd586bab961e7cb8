//! Runs after the other test binaries (cargo runs them in name order, hence the name) and
//! prints what this `cargo test` run did not test: each test that passed without its checks
//! because a server or tool is missing (see `common::not_tested`), with how to get it. A
//! skipped test's own output is hidden by the test runner; this is not (no harness).

mod common;

use std::collections::BTreeMap;

fn main() {
    let run = std::os::unix::process::parent_id();
    let dir = common::not_tested_dir(run);
    let mut by_reason: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            for line in text.lines() {
                let mut f = line.splitn(3, '\t');
                let (Some(test), Some(what), Some(install)) = (f.next(), f.next(), f.next()) else {
                    continue;
                };
                by_reason
                    .entry((what.to_string(), install.to_string()))
                    .or_default()
                    .push(test.to_string());
            }
        }
    }
    if by_reason.is_empty() {
        println!(
            "\nnot tested: nothing (no test skipped its checks for a missing server or tool)\n"
        );
    } else {
        let n: usize = by_reason.values().map(Vec::len).sum();
        println!("\nNOT TESTED: {n} test(s) passed without running their checks:");
        for ((what, install), mut tests) in by_reason {
            tests.sort();
            println!("  {what}\n    to test it: {install}");
            for t in tests {
                println!("    {t}");
            }
        }
        println!();
    }
    // this run's list, and those of runs that ended without reaching here
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(parent) = dir.parent()
        && let Ok(entries) = std::fs::read_dir(parent)
    {
        for e in entries.flatten() {
            let pid = e.file_name();
            if !std::path::Path::new("/proc").join(&pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}
