//! The shipped systemd unit passes `systemd-analyze verify` (where systemd-analyze exists).

mod common;

#[test]
fn systemd_unit_verifies() {
    let Ok(v) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        common::not_tested("no systemd-analyze", "apt-get install systemd");
        return;
    };
    assert!(v.status.success());
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/mdrec.service"
    ))
    .unwrap();
    // verify checks that ExecStart exists: point it at the binary under test
    let unit = unit.replace("/usr/local/bin/mdrec", env!("CARGO_BIN_EXE_mdrec"));
    let path = dir.path().join("mdrec.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "StateDirectory=mdrec",
        "NoNewPrivileges=yes",
        "Restart=on-failure",
        "EnvironmentFile=-/etc/mdrec/mdrec.env",
    ] {
        assert!(
            std::fs::read_to_string(&path).unwrap().contains(key),
            "unit lacks {key}"
        );
    }
}
