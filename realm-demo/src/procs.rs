//! The demo's processes: finding (or building) the other binaries, starting
//! servers on OS-chosen loopback ports, and running commands.
//!
//! Must never: leave a server running after the demo (every child is killed
//! when its handle drops).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};

use anyhow::{Context, Result, bail};

/// The workspace binaries the demo drives.
pub const BINARIES: [&str; 5] = [
    "attest",
    "certifier-service",
    "model-provider",
    "realm-runtime",
    "device-agent",
];

/// Where the binaries are: next to this one. Under `cargo run` they are
/// built when missing or older than the workspace's sources, so the demo
/// never drives stale binaries; run directly, they must already be there.
pub fn binaries() -> Result<PathBuf> {
    let me = std::env::current_exe().context("locating the demo binary")?;
    let dir = me
        .parent()
        .context("the demo binary has no directory")?
        .to_path_buf();
    let oldest = BINARIES
        .iter()
        .map(|b| modified(&dir.join(b)))
        .min()
        .flatten();
    let newest_source = newest_source(Path::new(env!("CARGO_MANIFEST_DIR")).parent());
    let stale = match (oldest, newest_source) {
        (None, _) => true,
        (Some(built), Some(source)) => source > built,
        (Some(_), None) => false,
    };
    if !stale {
        return Ok(dir);
    }
    let Some(cargo) = std::env::var_os("CARGO") else {
        bail!(
            "the binaries next to {} are missing or older than the sources: build them with `cargo build --release`",
            me.display()
        );
    };
    let release = dir.ends_with("release");
    eprintln!(
        "building the programs the demo starts (cargo build{}; minutes the first time)...",
        if release { " --release" } else { "" }
    );
    let mut c = Command::new(cargo);
    c.args(["build", "--quiet"]);
    // Only the programs the demo starts, never the demo itself: rebuilding
    // the running binary would replace it mid-run.
    for b in BINARIES {
        c.args(["--bin", b]);
    }
    if release {
        c.arg("--release");
    }
    let status = c.status().context("running cargo")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    Ok(dir)
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest modification time of the workspace's Rust sources and
/// manifests (`target/` and hidden directories skipped), or `None` when the
/// sources are not there (an installed demo).
fn newest_source(root: Option<&Path>) -> Option<std::time::SystemTime> {
    let mut newest = None;
    let mut dirs = vec![root?.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name == "target" {
                continue;
            }
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                dirs.push(path);
            } else if name.ends_with(".rs") || name == "Cargo.toml" || name == "Cargo.lock" {
                newest = newest.max(modified(&path));
            }
        }
    }
    newest
}

/// A child process, killed on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    _stdout: Option<BufReader<ChildStdout>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a server whose stdout's first line ends with "listening on ADDR";
/// its log goes to `log`. Returns the process and the address.
pub fn serve(mut cmd: Command, log: &Path) -> Result<(Proc, String)> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let mut out = child.stdout.take().map(BufReader::new);
    let mut line = String::new();
    if let Some(o) = out.as_mut() {
        o.read_line(&mut line)?;
    }
    let proc = Proc {
        child,
        _stdout: out,
    };
    match line.trim().rsplit_once("listening on ") {
        Some((_, addr)) => Ok((proc, addr.to_string())),
        None => bail!(
            "{cmd:?} did not start (see {}): {}",
            log.display(),
            line.trim()
        ),
    }
}

/// Run to completion.
pub fn run(bin: &Path, args: &[&str]) -> Result<Output> {
    Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))
}

/// Run, require success, return stdout.
pub fn ok(bin: &Path, args: &[&str]) -> Result<String> {
    let out = run(bin, args)?;
    if !out.status.success() {
        bail!(
            "{} {} failed: {}",
            bin.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// The last non-empty line of a command's stderr (its error, usually).
pub fn last_error(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .rev()
        .find(|l| l.starts_with("error"))
        .unwrap_or("")
        .trim()
        .to_string()
}
