//! `deploy/install.sh` staged into a temporary DESTDIR: the expected tree (a binary without
//! debug information, the docs, man pages, shell completions, the monitoring files),
//! idempotent (the operator's config survives a second run), and the installed unit passes
//! `systemd-analyze verify` where that tool exists.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn install(destdir: &Path) -> String {
    let out = Command::new("sh")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/install.sh"))
        .env("DESTDIR", destdir)
        .env("PREFIX", "/usr/local")
        .env("MDREC_BIN", env!("CARGO_BIN_EXE_mdrec"))
        .output()
        .expect("run install.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "install.sh failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every file below `root`, relative, sorted.
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn install_script_stages_the_service_tree() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let first = install(root);
    assert!(first.contains("created /etc/mdrec/mdrec.toml"), "{first}");
    assert_eq!(
        tree(root),
        [
            "etc/mdrec/mdrec.env",
            "etc/mdrec/mdrec.toml",
            "etc/systemd/system/mdrec.service",
            "usr/local/bin/mdrec",
            "usr/local/share/bash-completion/completions/mdrec",
            "usr/local/share/doc/mdrec/ARCHITECTURE.md",
            "usr/local/share/doc/mdrec/BENCHMARKS.md",
            "usr/local/share/doc/mdrec/README.md",
            "usr/local/share/doc/mdrec/SCHEMA.md",
            "usr/local/share/doc/mdrec/mdrec.example.toml",
            "usr/local/share/doc/mdrec/monitoring/alerts.yml",
            "usr/local/share/doc/mdrec/monitoring/alerts_test.yml",
            "usr/local/share/doc/mdrec/monitoring/mdrec.json",
            "usr/local/share/doc/mdrec/postgres.md",
            "usr/local/share/fish/vendor_completions.d/mdrec.fish",
            "usr/local/share/man/man1/mdrec-archive.1",
            "usr/local/share/man/man1/mdrec-book.1",
            "usr/local/share/man/man1/mdrec-check-config.1",
            "usr/local/share/man/man1/mdrec-completions.1",
            "usr/local/share/man/man1/mdrec-coverage.1",
            "usr/local/share/man/man1/mdrec-demo.1",
            "usr/local/share/man/man1/mdrec-export.1",
            "usr/local/share/man/man1/mdrec-man.1",
            "usr/local/share/man/man1/mdrec-migrate.1",
            "usr/local/share/man/man1/mdrec-run.1",
            "usr/local/share/man/man1/mdrec-simulate.1",
            "usr/local/share/man/man1/mdrec.1",
            "usr/local/share/zsh/site-functions/_mdrec",
        ]
    );
    // stripped of its debug information (the build keeps line tables for profiles)
    let installed = root.join("usr/local/bin/mdrec");
    let size = std::fs::metadata(&installed).unwrap().len();
    let built = std::fs::metadata(env!("CARGO_BIN_EXE_mdrec"))
        .unwrap()
        .len();
    assert!(size < built, "{size} of {built} bytes");
    if let Ok(out) = Command::new("readelf").arg("-SW").arg(&installed).output() {
        let sections = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "readelf: {sections}");
        for s in [".debug_info", ".debug_line", ".debug_str"] {
            assert!(!sections.contains(s), "{s} left in the installed binary");
        }
    }
    // the man page renders and documents the reload; bash loads the completions
    let page = std::fs::read_to_string(root.join("usr/local/share/man/man1/mdrec-run.1")).unwrap();
    assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
    assert!(page.contains("SIGHUP"), "{page}");
    if let Ok(out) = Command::new("man")
        .arg("-l")
        .arg(root.join("usr/local/share/man/man1/mdrec.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("check-config"),
            "{text}"
        );
    }
    let completions = root.join("usr/local/share/bash-completion/completions/mdrec");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p mdrec",
            completions.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("_mdrec"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&root.join("usr/local/bin/mdrec")), 0o755);
    assert_eq!(
        mode(&root.join("etc/mdrec/mdrec.env")),
        0o600,
        "secrets file"
    );
    let env = std::fs::read_to_string(root.join("etc/mdrec/mdrec.env")).unwrap();
    assert!(env.contains("MDREC_DATABASE_URL="));
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/mdrec.example.toml"
    ))
    .unwrap();
    let conf = root.join("etc/mdrec/mdrec.toml");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), example);
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/mdrec.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/mdrec run -c /etc/mdrec/mdrec.toml"));
    assert!(unit.contains("EnvironmentFile=-/etc/mdrec/mdrec.env"));
    assert!(unit.contains("file:/usr/local/share/doc/mdrec/README.md"));

    // the installed binary accepts the installed config
    let out = Command::new(root.join("usr/local/bin/mdrec"))
        .args(["check-config", "--offline", "-c"])
        .arg(&conf)
        .env_remove("MDREC_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // idempotent: a second run upgrades binary and unit, keeps the operator's files
    std::fs::write(&conf, format!("{example}\n# edited by the operator\n")).unwrap();
    let second = install(root);
    assert!(second.contains("kept /etc/mdrec/mdrec.toml"), "{second}");
    assert!(second.contains("kept /etc/mdrec/mdrec.env"), "{second}");
    assert!(
        std::fs::read_to_string(&conf)
            .unwrap()
            .contains("edited by the operator")
    );
    assert_eq!(tree(root).len(), 28, "no stray files: {:?}", tree(root));

    // systemd checks the installed unit (its binary path pointed into the stage, since
    // verify requires ExecStart to exist)
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        common::not_tested("no systemd-analyze", "apt-get install systemd");
        return;
    }
    let staged = root.join("usr/local/bin/mdrec");
    let check = root.join("mdrec.service");
    std::fs::write(
        &check,
        unit.replace("/usr/local/bin/mdrec", &staged.display().to_string()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&check)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}
