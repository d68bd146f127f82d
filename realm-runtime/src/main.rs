//! `realm-runtime`: the cloud side of confidential ML. It runs in a CCA
//! realm, gets admitted as `runtime`, fetches sealed models from the blob
//! store and their keys from the model provider over attested TLS, and
//! serves inference to admitted devices.
//!
//! Must never: let a model's plaintext, a key, or a device's tensor leave
//! this process except a result to the device that asked, within the
//! output policy the provider set for the model.

mod budget;
mod cache;
mod config;
mod federated;
mod metrics;
mod models;
mod pool;
mod provider;
mod server;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ServeArgs};

const EXAMPLES: &str = "\
Example (a laptop, INSECURE emulated platform):
  realm-runtime serve --certifier 127.0.0.1:8123 --policy-cert svc/policy_cert.der \\
      --provider 127.0.0.1:8200 --store file:///var/lib/cca-ml/blobs \\
      --platform insecure-emulated --platform-key platform.key.pem --allow-insecure-peers \\
      --model digits=<BUNDLE_HASH> --listen 127.0.0.1:8300 --metrics 127.0.0.1:9300

The same as a file (realm-runtime serve --config runtime.toml):
  certifier = \"127.0.0.1:8123\"
  policy_cert = \"svc/policy_cert.der\"
  provider = \"127.0.0.1:8200\"
  store = \"file:///var/lib/cca-ml/blobs\"
  platform = \"tsm\"            # in a real realm
  listen = \"0.0.0.0:8300\"
  [[model]]
  id = \"digits\"
  bundle = \"<BUNDLE_HASH>\"
  [[model]]
  id = \"ocr\"
  bundle = \"<BUNDLE_HASH>\"
  input_shape = [1, 3, 640, 640]  # pin dimensions tract cannot infer

Scrape metrics with: curl http://127.0.0.1:9300/metrics";

#[derive(Parser, Debug)]
#[command(name = "realm-runtime", version, about = "Serve confidential inference to attested devices", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Get admitted as `runtime`, then serve inference over attested TLS.
    #[command(after_help = EXAMPLES)]
    Serve(ServeArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let Command::Serve(args) = Cli::parse().command;
    let config = match Config::load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(server::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
