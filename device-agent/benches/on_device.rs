//! On-device inference through the agent against bare tract on the same
//! ONNX file, in one run.
//!
//! Start-up: (a) tract reads the file, optimises and plans it; (b) the agent
//! reads its sealed copy from the local store, decrypts and authenticates it
//! (AES-256-GCM), then does the same with tract. Per request: (a) a tract
//! run; (b) the agent's run (input check, tract, output policy).
//!
//! Run: `cargo bench -p device-agent --bench on_device -- [--requests N]`.
//! The several-MB model is `../shared/models/ch_PP-OCRv4_det_infer.onnx`
//! (input pinned to [1,3,640,640]); it is skipped if absent.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use attestation::platform::SealingKey;
use device_agent::store::{LocalStore, StoredModel};
use inference::{LoadedModel, apply};
use protocol::{OutputPolicy, SecretBytes, ServingPolicy, Tensor, TensorData};
use tract_onnx::prelude::*;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn p(mut v: Vec<Duration>, q: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3
}

fn main() {
    let requests = arg("--requests", 300);
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/models");
    let ocr = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/models/ch_PP-OCRv4_det_infer.onnx");
    let mut cases: Vec<(&str, PathBuf, Vec<usize>, usize)> = vec![(
        "digits_cnn",
        models.join("digits_cnn.onnx"),
        vec![1, 1, 8, 8],
        requests,
    )];
    if ocr.exists() {
        cases.push((
            "PP-OCRv4 det",
            ocr,
            vec![1, 3, 640, 640],
            (requests / 15).max(10),
        ));
    } else {
        eprintln!(
            "shared/models/ch_PP-OCRv4_det_infer.onnx not found: the several-MB case is skipped"
        );
    }
    let dir = std::env::temp_dir().join(format!("agent-bench-{}", std::process::id()));
    let store = LocalStore::open(&dir, &SealingKey::new([7; 32])).expect("store");

    println!(
        "| model | start-up (a) tract ms | start-up (b) agent ms | (b)/(a) | of which open sealed copy ms | request p50 (a) ms | request p50 (b) ms | (b)/(a) | request p99 (a) / (b) ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, file, shape, n) in cases {
        let onnx = std::fs::read(&file).expect("model");
        store
            .put_model(&StoredModel {
                model_id: name.into(),
                version: "1".into(),
                serving: ServingPolicy {
                    output: OutputPolicy::Scores,
                    budget: None,
                },
                input_shape: Some(shape.clone()),
                onnx: SecretBytes::new(onnx.clone()),
            })
            .expect("put");
        let elements: usize = shape.iter().product();
        let values: Vec<f32> = (0..elements).map(|i| (i % 17) as f32 / 16.0).collect();

        // Start-up, five times each.
        let (mut a_start, mut b_start, mut b_open) = (Vec::new(), Vec::new(), Vec::new());
        let mut plan = None;
        let mut loaded = None;
        for _ in 0..5 {
            let t = Instant::now();
            let mut m = tract_onnx::onnx().model_for_path(&file).expect("load");
            m.set_input_fact(0, f32::fact(&shape).into()).expect("pin");
            plan = Some(
                m.into_optimized()
                    .expect("opt")
                    .into_runnable()
                    .expect("plan"),
            );
            a_start.push(t.elapsed());

            let t = Instant::now();
            let stored = store.get_model(name).expect("get");
            b_open.push(t.elapsed());
            loaded = Some(
                LoadedModel::load(stored.onnx.expose(), stored.input_shape.as_deref())
                    .expect("agent load"),
            );
            b_start.push(t.elapsed());
        }
        let (plan, loaded) = (plan.expect("plan"), loaded.expect("loaded"));

        let input = tract_onnx::prelude::Tensor::from_shape(&shape, &values).expect("tensor");
        let sample = Tensor {
            shape: shape.iter().map(|&d| d as u64).collect(),
            data: TensorData::F32(values.clone()),
        };
        for _ in 0..3 {
            plan.run(tvec![input.clone().into()]).expect("warm");
            loaded.run(sample.clone()).expect("warm");
        }
        let (mut a_req, mut b_req) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            let t = Instant::now();
            let out = plan.run(tvec![input.clone().into()]).expect("run");
            let v: Vec<f32> = out[0]
                .to_plain_array_view::<f32>()
                .expect("f32")
                .iter()
                .copied()
                .collect();
            std::hint::black_box(v);
            a_req.push(t.elapsed());

            let t = Instant::now();
            let scores = loaded.run(sample.clone()).expect("run");
            std::hint::black_box(apply(OutputPolicy::Scores, scores).expect("policy"));
            b_req.push(t.elapsed());
        }
        let (sa, sb) = (median(a_start), median(b_start));
        let (ra, rb) = (p(a_req.clone(), 0.5), p(b_req.clone(), 0.5));
        println!(
            "| {name} ({} bytes) | {sa:.3} | {sb:.3} | {:.2}x | {:.3} | {ra:.4} | {rb:.4} | {:.2}x | {:.4} / {:.4} |",
            onnx.len(),
            sb / sa,
            median(b_open),
            rb / ra,
            p(a_req, 0.99),
            p(b_req, 0.99),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
