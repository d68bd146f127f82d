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
/// (re)built first, so the demo never drives binaries older than the source;
/// otherwise they must already be there.
pub fn binaries() -> Result<PathBuf> {
    let me = std::env::current_exe().context("locating the demo binary")?;
    let dir = me
        .parent()
        .context("the demo binary has no directory")?
        .to_path_buf();
    let missing: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|b| !dir.join(b).exists())
        .collect();
    let Some(cargo) = std::env::var_os("CARGO") else {
        if missing.is_empty() {
            return Ok(dir);
        }
        bail!(
            "missing {} next to {}: build them with `cargo build --release`",
            missing.join(", "),
            me.display()
        );
    };
    let release = dir.ends_with("release");
    eprintln!(
        "bringing the other binaries up to date (cargo build{}; minutes the first time)...",
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
