//! Operating the daemon: metrics and health over HTTP, service-manager integration.

pub mod metrics;
pub mod systemd;
