//! Floods against the real `certifier-service` binary: idle connections and
//! nonce requests from one loopback source (127.0.0.2) while a party on
//! another (127.0.0.1) is still admitted, and the service keeps serving.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use attestation::certifier::client::ClientError;
use attestation::certifier::policy::Role;
use attestation::certifier::proto::{TrustRequestMessage, TrustResponseMessage};
use attestation::certifier::protocol::{EVIDENCE_TYPE_CCA, PURPOSE_NONCE, STATUS_SUCCEEDED};
use attestation::certifier::wire::{MAX_FRAME, read_frame, write_frame};
use prost::Message;
use testkit::flood::{self, FLOOD_SOURCE, Reconnecting};
use testkit::{Certifier, TestDir};
use tokio::net::TcpSocket;

const BIN: &str = env!("CARGO_BIN_EXE_certifier-service");

/// The most pre-auth connections one source may hold: half the server's
/// pre-auth pool (`protocol::ListenLimits`).
const PER_SOURCE: usize = 128;

fn start(name: &str) -> (TestDir, Certifier) {
    let dir = TestDir::new("certflood", name);
    let device = dir.image("device.img", b"device build");
    let certifier = Certifier::start(std::path::Path::new(BIN), &dir, &[("device", device)]);
    (dir, certifier)
}

async fn admit(c: &Certifier, dir: &TestDir) -> Result<(), ClientError> {
    c.try_admit(&dir.path().join("device.img"), Role::device())
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_source_do_not_keep_others_out() {
    let (dir, c) = start("idle");
    let addr = flood::socket_addr(&c.addr);
    let idle = flood::idle(addr, FLOOD_SOURCE, 3000).await;
    assert!(
        idle.len() > 2500,
        "only {} flood connections opened",
        idle.len()
    );

    // The legitimate party is admitted while the flood is held open...
    admit(&c, &dir)
        .await
        .expect("admitted during an idle flood");
    // ...and the service closed all but its per-source share of the flood
    // at once (before, each held a slot for 10 s and the rest queued).
    // Most were closed by the time the legitimate party was served (the
    // listeners used to hold every one for 5-10 s)...
    let now_open = flood::still_open(&idle);
    assert!(
        now_open < idle.len() / 2,
        "{now_open} idle connections held"
    );
    // ...and all but the source's pre-auth share soon after (the rest sat
    // in the kernel's queue).
    let open = flood::settle(&idle, PER_SOURCE, flood::SETTLE).await;
    assert!(open <= PER_SOURCE, "{open} idle connections still held");
    drop(idle);
    admit(&c, &dir)
        .await
        .expect("still serving after the flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_flood_does_not_keep_others_out() {
    let (dir, c) = start("reconnect");
    let addr = flood::socket_addr(&c.addr);
    let flood = Reconnecting::start(addr, FLOOD_SOURCE, 600, Duration::from_secs(20));
    // Let it fill whatever it can.
    flood::wait_for(&flood, 600, Duration::from_secs(5)).await;
    for _ in 0..3 {
        admit(&c, &dir)
            .await
            .expect("admitted during a reconnecting flood");
    }
    // The server closes what it will not hold at once, so the flood keeps
    // reconnecting (the listeners used to sit on its connections for 10 s).
    flood::wait_for(&flood, 1200, Duration::from_secs(5)).await;
    let made = flood.stop().await;
    assert!(made >= 1200, "the flood reconnected only {made} times");
    admit(&c, &dir)
        .await
        .expect("still serving after the flood");
}

/// One `nonce` request from `source`; the response's status and artifact.
async fn nonce_from(source: IpAddr, addr: SocketAddr) -> (String, Vec<u8>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let request = TrustRequestMessage {
        submitted_evidence_type: Some(EVIDENCE_TYPE_CCA.into()),
        purpose: Some(PURPOSE_NONCE.into()),
        ..Default::default()
    };
    let t = Duration::from_secs(10);
    write_frame(&mut s, &request.encode_to_vec(), t)
        .await
        .unwrap();
    let r =
        TrustResponseMessage::decode(&read_frame(&mut s, MAX_FRAME, t).await.unwrap()[..]).unwrap();
    (r.status.unwrap_or_default(), r.artifact.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_flood_from_one_source_does_not_drain_the_pool() {
    let (dir, c) = start("nonces");
    let addr = flood::socket_addr(&c.addr);
    // More requests than the whole pool (10,000 nonces), 8 at a time.
    let mut issued = 0;
    let mut refused = Vec::new();
    for _ in 0..10_100 / 8 {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..8 {
            set.spawn(nonce_from(FLOOD_SOURCE, addr));
        }
        while let Some(r) = set.join_next().await {
            let (status, artifact) = r.unwrap();
            if status == STATUS_SUCCEEDED {
                issued += 1;
            } else {
                refused.push(String::from_utf8_lossy(&artifact).into_owned());
            }
        }
    }
    assert_eq!(issued, 32, "the flooding source got its share (32) only");
    assert!(
        refused.iter().all(|r| r.starts_with("busy: ")),
        "refused with code busy: {:?}",
        refused.first()
    );
    // Another source is still admitted (it needs a nonce), twice.
    admit(&c, &dir)
        .await
        .expect("admitted during a nonce flood");
    admit(&c, &dir).await.expect("still serving");
    let (status, _) = nonce_from("127.0.0.3".parse().unwrap(), addr).await;
    assert_eq!(status, STATUS_SUCCEEDED, "a third source gets a nonce");
}
