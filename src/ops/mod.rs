//! Operating the daemon: service-manager integration (metrics and health come later).

pub mod systemd;
