//! Runs after the other test binaries (cargo runs them in name order, hence the name) and
//! prints what this `cargo test` run did not test: each test that passed without its checks
//! because a server or tool is missing (see `common::not_tested`), with how to get it. A
//! skipped test's own output is hidden by the test runner; this is not (no harness).

mod common;

fn main() {
    let dir = common::not_tested_dir(std::os::unix::process::parent_id());
    println!("\n{}", common::not_tested_summary(&dir));
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
