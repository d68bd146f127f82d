//! Inference latency and throughput through the whole runtime, against bare
//! tract on the same model file in the same run.
//!
//! For each model: (a) tract in-process, one thread; (b) one device over
//! attested TLS to a real `realm-runtime` process (warm: the model is loaded);
//! (c) several devices at once. Plus a plain-TCP loopback round trip carrying
//! the same request and response sizes, because the goal for (b) is "within
//! 1.2x of (a) plus one loopback round trip".
//!
//! Run: `cargo build --release -p certifier-service -p model-provider &&
//!       cargo bench -p realm-runtime --bench runtime -- [--requests N] [--clients C]`
//! The several-MB model is `../shared/models/ch_PP-OCRv4_det_infer.onnx`
//! (PP-OCRv4 det, 4.7 MB, input pinned to [1,3,640,640]); it is skipped if absent.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use attestation::certifier::policy::Role;
use protocol::{Framed, InferenceOutput, Message, Tensor, TensorData};
use testkit::{Certifier, TestDir, sibling_bin, spawn_server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tract_onnx::prelude::*;

const RUNTIME: &str = env!("CARGO_BIN_EXE_realm-runtime");

struct Case {
    id: &'static str,
    file: PathBuf,
    shape: Vec<usize>,
    input: Vec<f32>,
    requests: usize,
}

#[derive(Clone, Copy)]
struct Stats {
    p50: f64,
    p99: f64,
    per_sec: f64,
}

fn stats(mut lat: Vec<Duration>, wall: Duration) -> Stats {
    lat.sort();
    let at = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    Stats {
        p50: at(0.5),
        p99: at(0.99),
        per_sec: lat.len() as f64 / wall.as_secs_f64(),
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn digits_row() -> Vec<f32> {
    let csv = std::fs::read_to_string(testkit::model_file("digits_test.csv"))
        .expect("testdata/models/digits_test.csv");
    let first = csv.lines().next().expect("a row");
    first
        .split(',')
        .take(64)
        .map(|x| x.parse().expect("a number"))
        .collect()
}

/// The synthetic page from shared/models/expected.json: stripes of "ink".
fn ocr_input() -> Vec<f32> {
    let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
    let mut v = Vec::with_capacity(3 * 640 * 640);
    for c in 0..3 {
        for y in 0..640usize {
            for x in 0..640usize {
                let ink = (4..20).contains(&(y % 40)) && (7 * x + 3 * y) % 13 < 3;
                let px = if ink { 0.0 } else { 1.0 };
                v.push((px - mean[c]) / std[c]);
            }
        }
    }
    v
}

/// (a): bare tract on the same file.
fn bare_tract(case: &Case) -> Stats {
    let mut model = tract_onnx::onnx()
        .model_for_path(&case.file)
        .expect("model loads");
    model
        .set_input_fact(0, f32::fact(&case.shape).into())
        .expect("pin input");
    let plan = model
        .into_optimized()
        .expect("optimise")
        .into_runnable()
        .expect("plan");
    let input = tract_onnx::prelude::Tensor::from_shape(&case.shape, &case.input).expect("tensor");
    for _ in 0..3 {
        plan.run(tvec![input.clone().into()]).expect("run");
    }
    let start = Instant::now();
    let mut lat = Vec::with_capacity(case.requests);
    for _ in 0..case.requests {
        let t = Instant::now();
        let out = plan.run(tvec![input.clone().into()]).expect("run");
        // Read the scores out, as the runtime does.
        let n = out
            .iter()
            .filter_map(|o| o.to_plain_array_view::<f32>().ok())
            .map(|v| v.iter().copied().collect::<Vec<f32>>().len())
            .next();
        std::hint::black_box(n);
        lat.push(t.elapsed());
    }
    stats(lat, start.elapsed())
}

/// A plain TCP round trip with `req` bytes out and `resp` bytes back.
async fn loopback(req: usize, resp: usize, n: usize) -> Stats {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        s.set_nodelay(true).expect("nodelay");
        let mut buf = vec![0u8; req];
        let out = vec![1u8; resp];
        while s.read_exact(&mut buf).await.is_ok() {
            if s.write_all(&out).await.is_err() {
                break;
            }
        }
    });
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.set_nodelay(true).expect("nodelay");
    let (out, mut back) = (vec![2u8; req], vec![0u8; resp]);
    for _ in 0..20 {
        c.write_all(&out).await.expect("write");
        c.read_exact(&mut back).await.expect("read");
    }
    let start = Instant::now();
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        c.write_all(&out).await.expect("write");
        c.read_exact(&mut back).await.expect("read");
        lat.push(t.elapsed());
    }
    stats(lat, start.elapsed())
}

type Conn = Framed<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn request(c: &mut Conn, case: &Case) -> (usize, usize) {
    let shape: Vec<u64> = case.shape.iter().map(|&d| d as u64).collect();
    let m = Message::InferenceRequest {
        request_id: 1,
        model_id: case.id.into(),
        input: Tensor {
            shape,
            data: TensorData::F32(case.input.clone()),
        },
    };
    let sent = m.encode().expect("encode").len();
    c.send(&m).await.expect("send");
    let reply = c.recv().await.expect("recv");
    match &reply {
        Message::InferenceResponse {
            output: InferenceOutput::Scores(s),
            ..
        } => (sent, s.len() * 4),
        other => panic!("{}: unexpected {other:?}", case.id),
    }
}

async fn one_client(c: &mut Conn, case: &Case) -> Stats {
    let start = Instant::now();
    let mut lat = Vec::with_capacity(case.requests);
    for _ in 0..case.requests {
        let t = Instant::now();
        request(c, case).await;
        lat.push(t.elapsed());
    }
    stats(lat, start.elapsed())
}

async fn metric(addr: &str, name: &str) -> f64 {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("read");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() {
    let requests = arg("--requests", 300);
    let clients = arg("--clients", 8);
    let models = testkit::model_file("");
    let ocr = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/models/ch_PP-OCRv4_det_infer.onnx");
    let ocr = if ocr.exists() {
        Some(ocr)
    } else {
        let alt = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/models/ch_PP-OCRv4_det_infer.onnx");
        alt.exists().then_some(alt)
    };
    let mut cases = vec![
        Case {
            id: "logreg",
            file: models.join("digits_logreg.onnx"),
            shape: vec![1, 64],
            input: digits_row(),
            requests,
        },
        Case {
            id: "cnn",
            file: models.join("digits_cnn.onnx"),
            shape: vec![1, 1, 8, 8],
            input: digits_row(),
            requests,
        },
    ];
    match ocr {
        Some(file) => cases.push(Case {
            id: "ppocr",
            file,
            shape: vec![1, 3, 640, 640],
            input: ocr_input(),
            requests: (requests / 10).max(10),
        }),
        None => eprintln!(
            "shared/models/ch_PP-OCRv4_det_infer.onnx not found: the several-MB case is skipped"
        ),
    }

    // The deployment: certifier, provider with the models sealed, runtime.
    let dir = TestDir::new("runtime-bench", "bench");
    let provider_bin = sibling_bin(RUNTIME, "model-provider");
    let certifier_bin = sibling_bin(RUNTIME, "certifier-service");
    dir.image("device.img", b"bench device");
    let trusted = [
        ("provider", provider_bin.display().to_string()),
        ("runtime", RUNTIME.to_string()),
        ("device", dir.p("device.img")),
    ];
    let certifier = Certifier::start(&certifier_bin, &dir, &trusted);
    let mut runtime_args: Vec<String> = Vec::new();
    for case in &cases {
        let shape = case
            .shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let hash = testkit::seal(
            &provider_bin,
            &dir,
            case.id,
            &case.file.display().to_string(),
            &[
                "--allow-role",
                "runtime",
                "--use",
                "remote-inference",
                "--output",
                "scores",
                "--input-shape",
                &shape,
            ],
        );
        runtime_args.extend(["--model".into(), format!("{}={hash}", case.id)]);
        runtime_args.extend(["--input-shape".into(), format!("{}={shape}", case.id)]);
    }
    let (_provider, provider_addr) = testkit::start_provider(&provider_bin, &dir, &certifier);
    let mut rc = testkit::runtime_command(Path::new(RUNTIME), &dir, &certifier, &provider_addr);
    rc.args(&runtime_args);
    let (mut runtime, addr) = spawn_server(rc);
    let metrics = runtime
        .read_line()
        .trim()
        .trim_start_matches("realm-runtime metrics on http://")
        .trim_end_matches("/metrics")
        .to_string();
    let device = certifier
        .admit(&dir.path().join("device.img"), Role::device())
        .await;

    println!(
        "| model | (a) tract p50 / p99 ms | (b) 1 client p50 / p99 ms | (b)/(a) p50 | loopback RTT p50 ms | goal 1.2·(a)+RTT ms | met | (a) req/s | (b) req/s | ({clients} clients) req/s | ({clients} clients) p50 / p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for case in &cases {
        let a = bare_tract(case);
        let mut c: Conn = testkit::connect(
            &addr,
            certifier.anchor(),
            &device,
            Role::runtime(),
            32 << 20,
        )
        .await
        .expect("connect");
        // Warm up: the first request waits for the model to load.
        let (req_bytes, resp_bytes) = request(&mut c, case).await;
        for _ in 0..3 {
            request(&mut c, case).await;
        }
        let reads_before = metric(&metrics, "realm_runtime_store_reads_total").await;
        let b = one_client(&mut c, case).await;
        let rtt = loopback(req_bytes, resp_bytes, case.requests).await;

        // (c): `clients` connections, requests split between them.
        let mut conns = Vec::new();
        for _ in 0..clients {
            conns.push(
                testkit::connect(
                    &addr,
                    certifier.anchor(),
                    &device,
                    Role::runtime(),
                    32 << 20,
                )
                .await
                .expect("connect"),
            );
        }
        let per = (case.requests / clients).max(1);
        let start = Instant::now();
        let runs = conns.iter_mut().map(|c| async move {
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                request(c, case).await;
                lat.push(t.elapsed());
            }
            lat
        });
        let lat: Vec<Duration> = futures_util::future::join_all(runs)
            .await
            .into_iter()
            .flatten()
            .collect();
        let many = stats(lat, start.elapsed());
        let reads_after = metric(&metrics, "realm_runtime_store_reads_total").await;
        assert_eq!(reads_before, reads_after, "a warm request read the store");

        let goal = 1.2 * a.p50 + rtt.p50;
        println!(
            "| {} ({} B in, {} B out) | {:.3} / {:.3} | {:.3} / {:.3} | {:.2}x | {:.3} | {:.3} | {} | {:.0} | {:.0} | {:.0} | {:.3} / {:.3} |",
            case.id,
            req_bytes,
            resp_bytes,
            a.p50,
            a.p99,
            b.p50,
            b.p99,
            b.p50 / a.p50,
            rtt.p50,
            goal,
            if b.p50 <= goal { "yes" } else { "no" },
            a.per_sec,
            b.per_sec,
            many.per_sec,
            many.p50,
            many.p99,
        );
    }
    println!(
        "\nstore reads during the warm runs: 0 (checked with realm_runtime_store_reads_total); {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    runtime.kill();
}
