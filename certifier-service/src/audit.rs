//! Append-only audit log: one JSON object per line per admission decision.
//!
//! Each record is written with a single `write` of the whole line followed by
//! `fsync`, and only a record for which both succeeded counts as written: the
//! caller must not grant anything whose record did not make it (see
//! `handler.rs`). A failed or short write, or a failed fsync, is rolled back
//! by truncating the file to its length before the attempt; if even that
//! fails, the next append cuts the leftover tail first. If the process dies
//! mid-write, the file ends in a partial line; on the next open that tail is
//! cut off (and counted).
//!
//! Must never: append after a partial line (a record glued onto a torn one is
//! an unparseable line that survives restarts), or report a record as
//! written before it is on disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// One decision.
#[derive(Debug, Serialize)]
pub struct AuditRecord {
    /// Unix seconds.
    pub time: i64,
    /// Peer address.
    pub peer: String,
    /// Role asked for ("" for nonce requests).
    pub role: String,
    /// Measurement claimed by the evidence (hex; may be unverified on refusal).
    pub measurement: String,
    /// Platform instance id claimed by the evidence (hex), or "".
    pub platform: String,
    /// "admit" or "refuse".
    pub verdict: &'static str,
    /// Stable reason code.
    pub code: String,
    /// Human reason.
    pub reason: String,
    /// True when the evidence could have been forged: the INSECURE emulated
    /// platform, or public test material (see `insecure_reason`).
    pub insecure: bool,
    /// Why, as a stable code (`insecure-emulated-platform`,
    /// `insecure-test-key`, `insecure-test-material`) and the material's
    /// name; empty for hardware evidence.
    pub insecure_reason: String,
    /// `submitted_evidence_type` of the request ("cca-evidence",
    /// "vse-attestation-package").
    pub evidence: &'static str,
    /// "nonce" when the evidence answered a nonce this service issued;
    /// "no-freshness" when it carried none (framework evidence, admitted only
    /// where the policy allows it) — such evidence could have been replayed.
    pub freshness: &'static str,
}

impl AuditRecord {
    /// A refusal (until the decision says otherwise) of evidence of type
    /// `evidence` from `peer` at `time`.
    pub fn new(time: i64, peer: String, evidence: &'static str, freshness: &'static str) -> Self {
        Self {
            time,
            peer,
            role: String::new(),
            measurement: String::new(),
            platform: String::new(),
            verdict: "refuse",
            code: String::new(),
            reason: String::new(),
            insecure: false,
            insecure_reason: String::new(),
            evidence,
            freshness,
        }
    }
}

/// Why a record was not durably written. Whatever the variant, the record
/// does not count: nothing it describes may be granted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The record could not be encoded.
    #[error("encoding the audit record: {0}")]
    Encode(#[from] serde_json::Error),
    /// A tail left by an earlier failed append could not be cut.
    #[error("cutting a partial audit record left by an earlier failed write: {0}")]
    Repair(#[source] io::Error),
    /// The file is shorter than the records this service wrote to it.
    #[error(
        "the audit log is {now} bytes but this service wrote {expected}: it was shortened by someone else; restart the service so it re-checks the file"
    )]
    Shrunk {
        /// Bytes written by this service.
        expected: u64,
        /// Bytes now in the file.
        now: u64,
    },
    /// The write failed (e.g. the disk is full).
    #[error("writing the audit log: {0}")]
    Write(#[source] io::Error),
    /// The write took only part of the record (e.g. the disk filled up).
    #[error("writing the audit log: only {written} of {len} bytes were written (disk full?)")]
    Short {
        /// Bytes the write took.
        written: usize,
        /// Bytes in the record.
        len: usize,
    },
    /// The fsync after the write failed.
    #[error("syncing the audit log: {0}")]
    Sync(#[source] io::Error),
}

/// What the log needs from its file, so tests can inject one that fails
/// mid-write.
pub trait LogFile {
    /// One `write` at the end of the file; may be short.
    fn write_once(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Make what was written durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Cut (or extend) the file to `len` bytes.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// The file's current length.
    fn len(&self) -> io::Result<u64>;
}

impl LogFile for File {
    fn write_once(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Opened with O_APPEND: the write lands at the end, which
        // `truncate` moves back on a rollback.
        self.write(buf)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

/// The open log.
#[derive(Debug)]
pub struct AuditLog<F: LogFile = File> {
    file: F,
    /// Length of the file up to the end of its last whole record.
    len: u64,
}

impl AuditLog<File> {
    /// Open (creating if needed) and repair a torn last line. Returns the log
    /// and how many bytes of a torn line were removed.
    pub fn open(path: &Path) -> Result<(Self, u64)> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .with_context(|| format!("opening audit log {}", path.display()))?;
        let len = file.metadata()?.len();
        let mut cut = 0;
        let mut keep = 0;
        if len > 0 {
            // Find the last newline by scanning back in blocks.
            let mut end = len;
            let mut buf = vec![0u8; 4096];
            'scan: while end > 0 {
                let start = end.saturating_sub(buf.len() as u64);
                let n = (end - start) as usize;
                file.seek(SeekFrom::Start(start))?;
                file.read_exact(&mut buf[..n])?;
                if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
                    keep = start + i as u64 + 1;
                    break 'scan;
                }
                end = start;
            }
            if keep < len {
                cut = len - keep;
                file.set_len(keep)?;
                file.sync_all()?;
            }
        }
        Ok((Self { file, len: keep }, cut))
    }
}

impl<F: LogFile> AuditLog<F> {
    /// A log over `file`, whose first `len` bytes are whole records.
    #[cfg(test)]
    fn over(file: F, len: u64) -> Self {
        Self { file, len }
    }

    /// Append one record durably: `Ok` only when the whole line was written
    /// and synced. On any failure the file is cut back to the end of the
    /// previous record (or, if that fails too, before the next append).
    pub fn append(&mut self, record: &AuditRecord) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        self.cut_leftover()?;
        let written = match self.file.write_once(&line) {
            Ok(n) if n == line.len() => n,
            Ok(n) => {
                self.roll_back();
                return Err(AuditError::Short {
                    written: n,
                    len: line.len(),
                });
            }
            Err(e) => {
                self.roll_back();
                return Err(AuditError::Write(e));
            }
        };
        if let Err(e) = self.file.sync() {
            // Not durable, so not written: take it out again.
            self.roll_back();
            return Err(AuditError::Sync(e));
        }
        self.len += written as u64;
        Ok(())
    }

    /// Cut whatever an earlier failed append left after the last record.
    fn cut_leftover(&mut self) -> Result<(), AuditError> {
        let now = self.file.len().map_err(AuditError::Repair)?;
        if now < self.len {
            return Err(AuditError::Shrunk {
                expected: self.len,
                now,
            });
        }
        if now > self.len {
            self.file.truncate(self.len).map_err(AuditError::Repair)?;
            self.file.sync().map_err(AuditError::Repair)?;
        }
        Ok(())
    }

    /// Best effort: `cut_leftover` retries before the next append.
    fn roll_back(&mut self) {
        if self.file.truncate(self.len).is_ok() {
            let _ = self.file.sync();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: i64) -> AuditRecord {
        AuditRecord {
            time: n,
            peer: "127.0.0.1:1".into(),
            role: "runtime".into(),
            measurement: "00".into(),
            platform: String::new(),
            verdict: "admit",
            code: "admitted".into(),
            reason: String::new(),
            insecure: true,
            insecure_reason: "insecure-emulated-platform".into(),
            evidence: "cca-evidence",
            freshness: "nonce",
        }
    }

    /// An in-memory file whose next write, sync or truncate can be made to
    /// fail the way a full disk makes them fail.
    #[derive(Default)]
    struct FaultyFile {
        data: Vec<u8>,
        /// The next write takes only this many bytes ...
        take: Option<usize>,
        /// ... and then fails instead of returning the short count.
        then_fail: bool,
        fail_sync: bool,
        fail_truncate: bool,
    }

    fn enospc() -> io::Error {
        io::Error::from_raw_os_error(28)
    }

    impl LogFile for FaultyFile {
        fn write_once(&mut self, buf: &[u8]) -> io::Result<usize> {
            match self.take.take() {
                None => {
                    self.data.extend_from_slice(buf);
                    Ok(buf.len())
                }
                Some(n) => {
                    self.data.extend_from_slice(&buf[..n]);
                    if std::mem::take(&mut self.then_fail) {
                        Err(enospc())
                    } else {
                        Ok(n)
                    }
                }
            }
        }
        fn sync(&mut self) -> io::Result<()> {
            if std::mem::take(&mut self.fail_sync) {
                return Err(enospc());
            }
            Ok(())
        }
        fn truncate(&mut self, len: u64) -> io::Result<()> {
            if std::mem::take(&mut self.fail_truncate) {
                return Err(enospc());
            }
            self.data.truncate(len as usize);
            Ok(())
        }
        fn len(&self) -> io::Result<u64> {
            Ok(self.data.len() as u64)
        }
    }

    /// Every line parses and ends in a newline; the times in order.
    fn times(data: &[u8]) -> Vec<i64> {
        assert!(data.is_empty() || data.ends_with(b"\n"), "torn tail");
        std::str::from_utf8(data)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .unwrap_or_else(|e| panic!("unparseable line {l:?}: {e}"))["time"]
                    .as_i64()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn a_failed_write_is_rolled_back_and_never_glued_to_the_next_record() {
        let mut log = AuditLog::over(FaultyFile::default(), 0);
        log.append(&record(1)).unwrap();

        // A short write (the disk filled up after 10 bytes).
        log.file.take = Some(10);
        assert!(matches!(
            log.append(&record(2)),
            Err(AuditError::Short { written: 10, .. })
        ));
        assert_eq!(times(&log.file.data), vec![1]);

        // Part of the line written, then ENOSPC.
        log.file.take = Some(7);
        log.file.then_fail = true;
        assert!(matches!(log.append(&record(3)), Err(AuditError::Write(_))));
        assert_eq!(times(&log.file.data), vec![1]);

        // Written but not durable: not written.
        log.file.fail_sync = true;
        assert!(matches!(log.append(&record(4)), Err(AuditError::Sync(_))));
        assert_eq!(times(&log.file.data), vec![1]);

        log.append(&record(5)).unwrap();
        assert_eq!(times(&log.file.data), vec![1, 5]);
    }

    #[test]
    fn a_tail_that_could_not_be_rolled_back_is_cut_before_the_next_append() {
        let mut log = AuditLog::over(FaultyFile::default(), 0);
        log.append(&record(1)).unwrap();
        log.file.take = Some(12);
        log.file.fail_truncate = true;
        assert!(log.append(&record(2)).is_err());
        // The rollback failed: the partial record is still there ...
        assert!(!log.file.data.ends_with(b"\n"));
        // ... and is cut before anything else is appended.
        log.append(&record(3)).unwrap();
        assert_eq!(times(&log.file.data), vec![1, 3]);

        // If cutting fails, nothing is appended at all.
        log.file.take = Some(5);
        log.file.fail_truncate = true;
        assert!(log.append(&record(4)).is_err());
        log.file.fail_truncate = true;
        assert!(matches!(log.append(&record(5)), Err(AuditError::Repair(_))));
        log.append(&record(6)).unwrap();
        assert_eq!(times(&log.file.data), vec![1, 3, 6]);
    }

    #[test]
    fn a_log_shortened_by_someone_else_is_not_appended_to() {
        let mut log = AuditLog::over(FaultyFile::default(), 0);
        log.append(&record(1)).unwrap();
        log.file.data.truncate(3);
        assert!(matches!(
            log.append(&record(2)),
            Err(AuditError::Shrunk { now: 3, .. })
        ));
    }

    #[test]
    fn a_torn_last_line_is_cut_and_logging_continues() {
        let path = std::env::temp_dir().join(format!("audit-test-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        {
            let (mut log, cut) = AuditLog::open(&path).unwrap();
            assert_eq!(cut, 0);
            log.append(&record(1)).unwrap();
            log.append(&record(2)).unwrap();
        }
        // Simulate a crash in the middle of the third write.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"time\":3,\"pe")
            .unwrap();
        let (mut log, cut) = AuditLog::open(&path).unwrap();
        assert_eq!(cut, 13);
        log.append(&record(4)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let times: Vec<i64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["time"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(times, vec![1, 2, 4]);
        std::fs::remove_file(&path).unwrap();
    }
}
