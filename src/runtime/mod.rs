//! Runtime helpers several layers share: the reconnect/retry backoff policy, the shutdown
//! deadline, the shared connect rate, the TLS trust, and a mutex lock that survives a panicked holder.

pub mod backoff;
pub mod deadline;
pub mod stagger;
pub mod tls;

/// Locks a mutex, taking the data even if a holder panicked (counters and small maps only:
/// their state stays meaningful).
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
