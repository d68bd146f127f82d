//! The certifier with its service directory on a real, tiny, full
//! filesystem (a 256 KiB tmpfs): no admission is granted without its audit
//! record on disk, refusals stay refusals, the log is never corrupted
//! mid-file, and the service grants again once the disk has room — also
//! after a restart.
//!
//! Mounting a tmpfs needs root (CI and the project's machines run tests as
//! root). If `mount` fails this test fails, loudly: it does not skip.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use attestation::cca::Curve;
use attestation::certifier::client::{Client, ClientError};
use attestation::certifier::keys::{PublicKey, SigningKey};
use attestation::certifier::policy::Role;
use attestation::platform::danger::{InsecureEmulatedPlatform, generate_platform_key_pem};
use testkit::{Proc, TestDir, ok, run, spawn_server};

const BIN: &str = env!("CARGO_BIN_EXE_certifier-service");

/// A tmpfs mounted on a directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "this test needs a small real filesystem that can fill up: `mount -t tmpfs` failed ({}); run it as root (CI does)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fill the filesystem holding `path` with the file `path`: write ever
/// smaller pieces until not even one byte fits.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let mut piece = 64 * 1024;
    while piece > 0 {
        match f.write(&vec![0xa5; piece]) {
            Ok(n) if n == piece => {}
            Ok(_) | Err(_) => piece /= 2,
        }
    }
    let _ = f.sync_all();
}

fn start(svc: &Path) -> (Proc, String) {
    let mut c = Command::new(BIN);
    c.args(["serve", "--dir"])
        .arg(svc)
        .args(["--listen", "127.0.0.1:0"]);
    spawn_server(c)
}

fn auth_key() -> PublicKey {
    SigningKey::generate_p256().unwrap().0.public_key()
}

fn code_of(r: &Result<Vec<u8>, ClientError>) -> Option<String> {
    match r {
        Ok(_) => None,
        Err(ClientError::Refused { code, .. }) => Some(code.clone()),
        Err(e) => panic!("expected a certificate or a refusal, got {e}"),
    }
}

/// The log's records; panics on a torn tail or any unparseable line.
fn records(log: &Path) -> Vec<serde_json::Value> {
    let bytes = std::fs::read(log).unwrap();
    assert!(bytes.ends_with(b"\n"), "the audit log ends in a torn line");
    std::str::from_utf8(&bytes)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("unparseable audit line (glued record?) {l:?}: {e}"))
        })
        .collect()
}

fn admits(records: &[serde_json::Value]) -> usize {
    records.iter().filter(|r| r["verdict"] == "admit").count()
}

#[test]
fn a_full_disk_refuses_admissions_keeps_the_log_whole_and_recovers() {
    let dir = TestDir::new("certsvc", "full-disk");
    let (pem, _) = generate_platform_key_pem(Curve::P384).unwrap();
    let platform_key = dir.path().join("platform.key.pem");
    std::fs::write(&platform_key, pem).unwrap();
    let runtime_bin = dir.image("realm-runtime", b"runtime v1");

    let mnt = Tmpfs::mount(&dir.path().join("mnt"), "256k");
    let svc = mnt.0.join("svc");
    let svc_s = svc.display().to_string();
    ok(run(
        Path::new(BIN),
        &[
            "init",
            "--dir",
            &svc_s,
            "--insecure-emulated-platform",
            platform_key.to_str().unwrap(),
        ],
    ));
    ok(run(
        Path::new(BIN),
        &[
            "policy",
            "trust",
            "--dir",
            &svc_s,
            "--role",
            "runtime",
            "--binary",
            &runtime_bin,
        ],
    ));
    let party = InsecureEmulatedPlatform::from_key_file(&platform_key)
        .unwrap()
        .measuring(Path::new(&runtime_bin))
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let log = svc.join("audit.log");

    let (mut server, addr) = start(&svc);
    let c = Client::new(&addr, Duration::from_secs(10));
    let admit = |role: Role| rt.block_on(c.admit(&party, &auth_key(), &role));
    assert_eq!(
        code_of(&admit(Role::runtime())),
        None,
        "room on disk: admitted"
    );

    // Fill the disk. The log's last page may still hold a few records, so
    // admissions go on until the first one whose record does not fit; that
    // one (and every grant after it) must be refused with the audit code.
    let filler = mnt.0.join("filler");
    fill(&filler);
    let mut granted = 1;
    let mut refused = 0;
    for _ in 0..64 {
        match code_of(&admit(Role::runtime())) {
            None => granted += 1,
            Some(code) => {
                assert_eq!(code, "audit-unavailable");
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
        }
    }
    assert_eq!(
        refused, 3,
        "with the disk full the service kept granting admissions ({granted} granted) it could not record"
    );
    // A refusal stays a refusal for its own reason, recorded or not.
    assert_eq!(
        code_of(&admit(Role::device())).as_deref(),
        Some("measurement-wrong-role")
    );
    // Every grant so far is on disk, and nothing torn or glued is.
    assert_eq!(admits(&records(&log)), granted);

    // Room again: the next admission is granted and recorded.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(code_of(&admit(Role::runtime())), None, "granted again");
    granted += 1;
    let before = records(&log);
    assert_eq!(admits(&before), granted);

    // A restart reads the same log (nothing to cut) and appends to it.
    server.kill();
    let (_server, addr) = start(&svc);
    let c = Client::new(&addr, Duration::from_secs(10));
    rt.block_on(c.admit(&party, &auth_key(), &Role::runtime()))
        .expect("admitted after restart");
    let after = records(&log);
    assert_eq!(after.len(), before.len() + 1);
    assert_eq!(&after[..before.len()], &before[..]);
    assert_eq!(admits(&after), granted + 1);
}
