//! The measured defences of docs/federated.md: the digits training data split
//! across simulated devices (IID and non-IID), federated training of the
//! global model for a number of rounds, with 0–3 poisoning devices, under
//! each aggregation rule; and FedAvg accuracy against the Gaussian noise
//! multiplier with its privacy figure. In-process: this measures the
//! aggregation rules, not the network (the real-process tests do that).
//!
//! Run: `cargo run --release -p fl --bin fl-experiment -- [--rounds 20] [--arch softmax|mlp]`
//! Prints markdown tables. Deterministic for a given `--seed`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use fl::aggregate::{Aggregator, Rule, Update};
use fl::privacy::epsilon;
use fl::train::{Arch, Optimizer, Params, TrainConfig, accuracy, init, train};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_pcg::Pcg64;

type Data = (Vec<Vec<f32>>, Vec<u32>);

/// Federated learning on the digits data under every aggregation rule, with
/// and without poisoning devices, and FedAvg against the noise multiplier.
/// Prints the markdown tables of docs/federated.md.
#[derive(clap::Parser, Debug)]
#[command(name = "fl-experiment", version)]
struct Args {
    /// Federated rounds per run.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Seed of the data split, initialisation and training (runs are deterministic per seed).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// L2 clipping norm C for the clipped rules.
    #[arg(long, default_value_t = 2.0)]
    clip: f32,
    /// Model architecture.
    #[arg(long, value_enum, default_value = "softmax")]
    arch: ArchArg,
    /// Directory with digits_train.csv and digits_test.csv (default: the repository's testdata/models).
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ArchArg {
    /// Softmax regression 64→10.
    Softmax,
    /// MLP 64→32→10.
    Mlp,
}

fn load(path: &Path) -> Result<Data, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Vec<f32> = line
            .split(',')
            .map(|c| c.trim().parse::<f32>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("{} row {}: not numbers", path.display(), i + 1))?;
        if v.len() != 65 {
            return Err(format!(
                "{} row {}: expected 65 columns",
                path.display(),
                i + 1
            ));
        }
        x.push(v[..64].to_vec());
        y.push(v[64] as u32);
    }
    Ok((x, y))
}

/// IID: shuffle, deal out evenly. Non-IID: sort by label, cut into
/// 2·devices shards, give each device two random shards (McMahan et al.).
fn split(data: &Data, devices: usize, iid: bool, seed: u64) -> Vec<Data> {
    let mut rng = Pcg64::seed_from_u64(seed);
    let mut idx: Vec<usize> = (0..data.0.len()).collect();
    if iid {
        idx.shuffle(&mut rng);
        let mut parts = vec![(Vec::new(), Vec::new()); devices];
        for (k, i) in idx.into_iter().enumerate() {
            parts[k % devices].0.push(data.0[i].clone());
            parts[k % devices].1.push(data.1[i]);
        }
        return parts;
    }
    idx.sort_by_key(|&i| data.1[i]);
    let shards = 2 * devices;
    let size = idx.len().div_ceil(shards);
    let mut order: Vec<usize> = (0..shards).collect();
    order.shuffle(&mut rng);
    (0..devices)
        .map(|d| {
            let mut part = (Vec::new(), Vec::new());
            for &s in &order[2 * d..2 * d + 2] {
                for &i in idx.iter().skip(s * size).take(size) {
                    part.0.push(data.0[i].clone());
                    part.1.push(data.1[i]);
                }
            }
            part
        })
        .collect()
}

struct Setup<'a> {
    arch: Arch,
    parts: &'a [Data],
    test: &'a Data,
    rounds: usize,
    seed: u64,
}

/// Train federated for `rounds`; the first `attackers` devices poison.
/// Returns the global model's test accuracy and the median honest update norm.
fn federate(s: &Setup, agg: &Aggregator, attackers: usize) -> Result<(f64, f64), String> {
    let mut global = init(&s.arch, s.seed).map_err(|e| e.to_string())?;
    let mut rng = Pcg64::seed_from_u64(s.seed ^ 0xA66);
    let cfg = |round: usize, device: usize| TrainConfig {
        epochs: 2,
        batch_size: 32,
        learning_rate: match s.arch {
            Arch::SoftmaxRegression => 0.5,
            Arch::Mlp { .. } => 0.1,
        },
        optimizer: Optimizer::Sgd,
        seed: s.seed ^ ((round as u64) << 16) ^ device as u64,
    };
    let mut norms = Vec::new();
    for round in 0..s.rounds {
        let mut updates = Vec::with_capacity(s.parts.len());
        for (d, (x, y)) in s.parts.iter().enumerate() {
            let mut local: Params = global.clone();
            train(&s.arch, &mut local, x, y, &cfg(round, d)).map_err(|e| e.to_string())?;
            let delta = local.delta_from(&global).map_err(|e| e.to_string())?;
            let n = x.len() as u64;
            if d < attackers {
                // A trusted-but-compromised device: its honest step, flipped and
                // scaled by 10, claiming 10x its samples (counts are unverifiable).
                updates.push(Update {
                    delta: delta.iter().map(|v| -10.0 * v).collect(),
                    num_samples: 10 * n,
                });
            } else {
                if round == 0 {
                    norms.push(
                        delta
                            .iter()
                            .map(|v| f64::from(*v).powi(2))
                            .sum::<f64>()
                            .sqrt(),
                    );
                }
                updates.push(Update {
                    delta,
                    num_samples: n,
                });
            }
        }
        let len = global.len();
        let out = agg.run(updates, len, &mut rng).map_err(|e| e.to_string())?;
        global.apply_delta(&out.delta).map_err(|e| e.to_string())?;
    }
    norms.sort_by(f64::total_cmp);
    let acc = accuracy(&s.arch, &global, &s.test.0, &s.test.1).map_err(|e| e.to_string())?;
    Ok((acc, norms.get(norms.len() / 2).copied().unwrap_or(0.0)))
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn run() -> Result<(), String> {
    let args = <Args as clap::Parser>::parse();
    let (rounds, seed, clip) = (args.rounds, args.seed, args.clip);
    let arch = match args.arch {
        ArchArg::Softmax => Arch::SoftmaxRegression,
        ArchArg::Mlp => Arch::Mlp { hidden: 32 },
    };
    let dir: PathBuf = args
        .data
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/models"));
    let train_data = load(&dir.join("digits_train.csv"))?;
    let test = load(&dir.join("digits_test.csv"))?;
    let devices = 10;
    println!(
        "{rounds} rounds, {devices} devices, {arch:?}, 2 local epochs of SGD, clip C = {clip}, seed {seed}; \
         attackers send -10x their honest update and claim 10x their samples\n"
    );
    let rules: Vec<(&str, Aggregator)> = vec![
        (
            "FedAvg (no clipping)",
            Aggregator {
                rule: Rule::FedAvg,
                clip_norm: None,
                noise_multiplier: None,
            },
        ),
        (
            "FedAvg + clip",
            Aggregator {
                rule: Rule::FedAvg,
                clip_norm: Some(clip),
                noise_multiplier: None,
            },
        ),
        (
            "median + clip",
            Aggregator {
                rule: Rule::Median,
                clip_norm: Some(clip),
                noise_multiplier: None,
            },
        ),
        (
            "trimmed mean β=0.3 + clip",
            Aggregator {
                rule: Rule::TrimmedMean { beta: 0.3 },
                clip_norm: Some(clip),
                noise_multiplier: None,
            },
        ),
        (
            "Krum f=3 + clip",
            Aggregator {
                rule: Rule::Krum { f: 3 },
                clip_norm: Some(clip),
                noise_multiplier: None,
            },
        ),
        (
            "multi-Krum f=3 m=7 + clip",
            Aggregator {
                rule: Rule::MultiKrum { f: 3, m: 7 },
                clip_norm: Some(clip),
                noise_multiplier: None,
            },
        ),
    ];
    for iid in [true, false] {
        let parts = split(&train_data, devices, iid, seed);
        let setup = Setup {
            arch,
            parts: &parts,
            test: &test,
            rounds,
            seed,
        };
        println!(
            "### {} split: test accuracy after {rounds} rounds\n",
            if iid {
                "IID"
            } else {
                "non-IID (2 label shards per device)"
            }
        );
        println!("| rule | 0 attackers | 1 | 2 | 3 |\n|---|---|---|---|---|");
        let mut norm = 0.0;
        for (name, agg) in &rules {
            let mut row = format!("| {name} |");
            for f in 0..=3 {
                let (acc, n) = federate(&setup, agg, f)?;
                norm = n;
                row.push_str(&format!(" {acc:.3} |"));
            }
            println!("{row}");
        }
        println!("\n(median honest update L2 norm in round 1: {norm:.2})\n");
    }
    println!("### FedAvg + clip C = {clip} + Gaussian noise, IID, no attackers\n");
    println!(
        "| noise multiplier z | noise std per coordinate (z·C/n) | test accuracy | ε after {rounds} rounds (δ = 1e-5) |\n|---|---|---|---|"
    );
    let parts = split(&train_data, devices, true, seed);
    let setup = Setup {
        arch,
        parts: &parts,
        test: &test,
        rounds,
        seed,
    };
    for z in [0.0, 0.5, 1.0, 2.0, 4.0, 8.0] {
        let agg = Aggregator {
            rule: Rule::FedAvg,
            clip_norm: Some(clip),
            noise_multiplier: (z > 0.0).then_some(z),
        };
        let (acc, _) = federate(&setup, &agg, 0)?;
        let eps = if z > 0.0 {
            format!(
                "{:.2}",
                epsilon(z, rounds as u64, 1e-5).map_err(|e| e.to_string())?
            )
        } else {
            "∞ (no noise)".into()
        };
        println!(
            "| {z} | {:.3} | {acc:.3} | {eps} |",
            f64::from(clip) * z / devices as f64
        );
    }
    Ok(())
}
