//! Append-only audit log: one JSON object per line per admission decision.
//!
//! Each record is written with a single `write` of the whole line followed by
//! `fsync`. If the process dies mid-write, the file ends in a partial line; on
//! the next open that tail is cut off (and counted) so every remaining line
//! parses and new records start on a line of their own.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
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

/// The open log.
#[derive(Debug)]
pub struct AuditLog {
    file: File,
}

impl AuditLog {
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
        if len > 0 {
            // Find the last newline by scanning back in blocks.
            let mut end = len;
            let mut keep = 0;
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
        Ok((Self { file }, cut))
    }

    /// Append one record durably.
    pub fn append(&mut self, record: &AuditRecord) -> Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .context("writing the audit log")?;
        self.file.sync_data().context("syncing the audit log")?;
        Ok(())
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
