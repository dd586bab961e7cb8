//! The disk spool: batches the database could not take, one file each, replayed when it can.
//!
//! A file is written as `NNNNNNNNNNNN.tmp`, synced, then renamed to `.spool`, so a crash leaves
//! either a whole batch or a `.tmp` that is discarded. Files are replayed oldest first and
//! deleted only after the database committed them. Replay order does not matter for
//! correctness: every statement is idempotent by key.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Batch;
use crate::model::Event;

pub struct Spool {
    dir: PathBuf,
    next_seq: u64,
    bytes: u64,
    files: usize,
    /// The database its batches are for (see [`Spool::claim`]).
    owner: Option<String>,
}

/// The file in a spool directory naming the database its batches are for.
const OWNER_FILE: &str = "DATABASE";

impl Spool {
    /// Opens the directory (created on the first append) and counts what is pending.
    /// Read-only: unfinished `.tmp` files are left to [`Spool::discard_unfinished`].
    pub fn open(dir: &Path) -> std::io::Result<Spool> {
        let mut next_seq = 0;
        let mut bytes = 0;
        let mut files = 0;
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => Some(e),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        for entry in entries.into_iter().flatten() {
            let entry = entry?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) == Some("spool") {
                if let Some(seq) = seq_of(&path) {
                    next_seq = next_seq.max(seq + 1);
                }
                bytes += entry.metadata()?.len();
                files += 1;
            }
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            next_seq,
            bytes,
            files,
            owner: None,
        })
    }

    /// The database the batches in `dir` were spooled for, where the spool says.
    pub fn owner_of(dir: &Path) -> std::io::Result<Option<String>> {
        match std::fs::read_to_string(dir.join(OWNER_FILE)) {
            Ok(s) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Ties the spool to `database` (an identity without secrets): its batches go to that
    /// database only. `Some(other)`: batches are pending for another database, and nothing
    /// was changed. A spool with nothing pending is taken over; one pending without an owner
    /// (spooled before spools named theirs) is taken as this database's.
    pub fn claim(&mut self, database: &str) -> std::io::Result<Option<String>> {
        if let Some(other) = self.pending_for_other(database)? {
            return Ok(Some(other));
        }
        self.owner = Some(database.to_string());
        if self.dir.exists() && Spool::owner_of(&self.dir)?.as_deref() != Some(database) {
            self.write_owner()?;
        }
        Ok(None)
    }

    /// The database other than `database` that batches are pending for, if any.
    pub fn pending_for_other(&self, database: &str) -> std::io::Result<Option<String>> {
        if self.files == 0 {
            return Ok(None);
        }
        Ok(Spool::owner_of(&self.dir)?.filter(|o| o != database))
    }

    /// The directory counted again (after a file was set aside), still tied to its database.
    pub fn reopen(&self) -> std::io::Result<Spool> {
        let mut fresh = Spool::open(&self.dir)?;
        fresh.owner = self.owner.clone();
        Ok(fresh)
    }

    fn write_owner(&self) -> std::io::Result<()> {
        let Some(owner) = &self.owner else {
            return Ok(());
        };
        let path = self.dir.join(OWNER_FILE);
        // not `*.tmp`: those are unfinished batches another start may be discarding
        let tmp = self
            .dir
            .join(format!(".{OWNER_FILE}.{}.part", std::process::id()));
        let mut f = private_file(&tmp)?;
        writeln!(f, "{owner}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    }

    /// Deletes `.tmp` files a crashed writer left half-written (their batch was never complete).
    /// Only the owning writer may call this, at start-up.
    pub fn discard_unfinished(&self) -> std::io::Result<usize> {
        let mut n = 0;
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) == Some("tmp") {
                std::fs::remove_file(&path)?;
                n += 1;
            }
        }
        Ok(n)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_empty(&self) -> bool {
        self.files == 0
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn files(&self) -> usize {
        self.files
    }

    /// The number a spool file was written under (files are replayed in this order).
    pub fn seq(path: &Path) -> Option<u64> {
        seq_of(path)
    }

    /// The number the next file will get: files below it were written before now.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Pending files, oldest first.
    pub fn pending(&self) -> std::io::Result<Vec<PathBuf>> {
        if self.files == 0 {
            return Ok(Vec::new());
        }
        let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| seq_of(&p).map(|s| (s, p)))
            .collect();
        v.sort();
        Ok(v.into_iter().map(|(_, p)| p).collect())
    }

    /// Writes a batch durably as one file. A write that fails (a full disk) leaves nothing
    /// behind: the partial file would hold space that a smaller batch could use.
    pub fn append(&mut self, batch: &Batch) -> std::io::Result<()> {
        private_dir(&self.dir)?;
        if self.files == 0 && !self.dir.join(OWNER_FILE).exists() {
            self.write_owner()?;
        }
        let seq = self.next_seq;
        let tmp = self.dir.join(format!("{seq:012}.tmp"));
        let done = self.dir.join(format!("{seq:012}.spool"));
        let written = (|| {
            let file = private_file(&tmp)?;
            let mut w = BufWriter::new(file);
            for ev in batch.events() {
                serde_json::to_writer(&mut w, &ev)?;
                w.write_all(b"\n")?;
            }
            let file = w.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            let len = file.metadata()?.len();
            drop(file);
            std::fs::rename(&tmp, &done)?;
            Ok(len)
        })();
        let len = match written {
            Ok(len) => len,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        self.next_seq += 1;
        self.bytes += len;
        self.files += 1;
        Ok(())
    }

    /// Reads one spooled batch back.
    pub fn read(path: &Path) -> std::io::Result<Batch> {
        let mut batch = Batch::default();
        for (n, line) in BufReader::new(std::fs::File::open(path)?)
            .lines()
            .enumerate()
        {
            let line = line?;
            if line.is_empty() {
                continue;
            }
            // Value owns its data, so events can take their `&'static` venue names from it
            let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| bad(path, n, e))?;
            batch.push(Event::deserialize(v).map_err(|e| bad(path, n, e))?);
        }
        Ok(batch)
    }

    /// Deletes a replayed file.
    pub fn remove(&mut self, path: &Path) -> std::io::Result<()> {
        let len = std::fs::metadata(path)?.len();
        std::fs::remove_file(path)?;
        self.bytes = self.bytes.saturating_sub(len);
        self.files = self.files.saturating_sub(1);
        Ok(())
    }
}

/// Creates a directory readable by the owner only (spooled rows are the operator's data,
/// whatever the umask); its parent must be there.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    // the directory itself, yes; a deeper path missing is more likely a filesystem not
    // mounted yet, whose mount point must not be filled on the root filesystem
    if !dir
        .parent()
        .is_none_or(|p| p.as_os_str().is_empty() || p.is_dir())
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{} not created: its parent is missing too (a filesystem not mounted yet?)",
                dir.display()
            ),
        ));
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

/// Creates (truncating) a file only its owner can read and write.
pub fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn seq_of(p: &Path) -> Option<u64> {
    if p.extension().and_then(|e| e.to_str()) != Some("spool") {
        return None;
    }
    p.file_stem()?.to_str()?.parse().ok()
}

fn bad(path: &Path, line: usize, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{} line {}: {e}", path.display(), line + 1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decimal::Dec;
    use crate::model::{Kline, Session, Side, Source, Trade};
    use std::sync::Arc;

    fn sample() -> Batch {
        let d = |s: &str| Dec::parse(s).unwrap();
        let mut b = Batch::default();
        b.push(Event::Trade(Trade {
            venue: "cdc-v1",
            symbol: Arc::from("btcusdt"),
            trade_id: -42,
            side: Side::Sell,
            price: d("12345678.123456789012345678"),
            qty: d("0.001"),
            quote_qty: None,
            event_time_ms: 1,
            recv_time_us: 2,
            source: Source::Ws,
        }));
        b.push(Event::Kline(Kline {
            venue: "cdc-v1",
            symbol: Arc::from("btcusdt"),
            interval: Arc::from("1min"),
            open_time_ms: 60_000,
            open: d("1"),
            high: d("2"),
            low: d("0.5"),
            close: d("1.5"),
            volume: d("10"),
            quote_volume: Some(d("15")),
            closed: true,
            event_time_ms: 3,
            recv_time_us: 4,
            source: Source::Rest,
        }));
        b.push(Event::Session(Session {
            venue: "cdc-v1",
            symbol: Arc::from("btcusdt"),
            session_id: "abc".into(),
            connected_at_us: 5,
            disconnected_at_us: None,
            close_reason: None,
        }));
        b
    }

    #[test]
    fn round_trip_and_bookkeeping() {
        let root = tempfile::tempdir().unwrap();
        let dir_buf = root.path().join("spool");
        let dir = dir_buf.as_path();
        let mut s = Spool::open(dir).unwrap();
        assert!(s.is_empty());
        assert!(!dir.exists(), "created lazily");
        s.append(&sample()).unwrap();
        s.append(&sample()).unwrap();
        assert_eq!(s.files(), 2);
        assert!(s.bytes() > 0);
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(dir), 0o700);
            assert_eq!(mode(&s.pending().unwrap()[0]), 0o600);
        }
        let files = s.pending().unwrap();
        let back = Spool::read(&files[0]).unwrap();
        let want = sample();
        assert_eq!(back.trades, want.trades);
        assert_eq!(back.klines, want.klines);
        assert_eq!(back.sessions, want.sessions);
        // reopening continues the sequence and drops unfinished files
        std::fs::write(dir.join("000000000009.tmp"), b"partial").unwrap();
        let mut s2 = Spool::open(dir).unwrap();
        assert_eq!(s2.files(), 2);
        assert!(
            dir.join("000000000009.tmp").exists(),
            "open alone is read-only"
        );
        assert_eq!(s2.discard_unfinished().unwrap(), 1);
        assert!(!dir.join("000000000009.tmp").exists());
        s2.append(&sample()).unwrap();
        let names: Vec<String> = s2
            .pending()
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "000000000000.spool",
                "000000000001.spool",
                "000000000002.spool"
            ]
        );
        for p in s2.pending().unwrap() {
            s2.remove(&p).unwrap();
        }
        assert!(s2.is_empty());
        assert_eq!(s2.bytes(), 0);
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("000000000000.spool");
        std::fs::write(&p, br#"{"Trade":{"venue":"nope"}}"#).unwrap();
        assert!(Spool::read(&p).is_err());
    }
}
