//! Crash points for the tests that kill the archive at each step.

/// A process killed at a step of the archive's (`MDREC_ARCHIVE_CRASH_AT` names it:
/// `staged`, `verified`, `published`, `recorded`, `deleting`): it aborts there as `kill -9`
/// would, for the tests that restart it. Unset, nothing happens.
pub fn crash_point(step: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT
        .get_or_init(|| std::env::var("MDREC_ARCHIVE_CRASH_AT").ok())
        .as_deref()
        == Some(step)
    {
        eprintln!("MDREC_ARCHIVE_CRASH_AT={step}: aborting");
        std::process::abort();
    }
}
