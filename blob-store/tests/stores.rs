//! Both stores, for real: the local directory, and an S3-compatible server
//! (moto in server mode, from PyPI; `.ci/run` installs it) started on an
//! OS-chosen loopback port.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use blob_store::{AnyStore, BlobId, BlobStore, LocalStore, S3Store, StoreError};
use object_store::aws::AmazonS3Builder;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("blobstore-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A file of `len` pseudo-random bytes.
fn sample(dir: &Path, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ len as u64;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let p = dir.join(name);
    std::fs::write(&p, &bytes).unwrap();
    (p, bytes)
}

/// The behaviour every store must have.
async fn exercise(store: &impl BlobStore, dir: &Path) {
    let (small, small_bytes) = sample(dir, "small", 1000);
    let (big, big_bytes) = sample(dir, "big", 12 << 20);
    let id = store.put_file(&small).await.unwrap();
    assert_eq!(id, BlobId::of(&small_bytes), "content-addressed");
    assert_eq!(store.put_file(&small).await.unwrap(), id, "idempotent");
    let big_id = store.put_file(&big).await.unwrap();

    assert_eq!(store.get_bytes(&id, 1000).await.unwrap(), small_bytes);
    assert!(matches!(
        store.get_bytes(&id, 999).await,
        Err(StoreError::TooLarge { .. })
    ));
    let out = dir.join("out.bin");
    assert_eq!(
        store.get_to_file(&big_id, &out).await.unwrap(),
        big_bytes.len() as u64
    );
    assert_eq!(std::fs::read(&out).unwrap(), big_bytes);

    let missing = BlobId([7; 32]);
    assert!(matches!(
        store.get_bytes(&missing, 10).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.get_to_file(&missing, &dir.join("never")).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(!dir.join("never").exists());

    let listed = store.list().await.unwrap();
    let ids: Vec<BlobId> = listed.iter().map(|b| b.id).collect();
    assert!(ids.contains(&id) && ids.contains(&big_id), "{listed:?}");
    assert_eq!(
        listed.iter().find(|b| b.id == big_id).unwrap().size,
        big_bytes.len() as u64
    );
}

#[tokio::test]
async fn local_store_is_content_addressed_and_verifies_reads() {
    let dir = scratch("local");
    let store = LocalStore::open(&dir.join("blobs")).unwrap();
    exercise(&store, &dir).await;

    // A blob altered on disk is reported corrupt, never returned.
    let (p, bytes) = sample(&dir, "victim", 4096);
    let id = store.put_file(&p).await.unwrap();
    let on_disk = dir.join("blobs").join(id.to_hex());
    let mut tampered = bytes.clone();
    tampered[100] ^= 1;
    std::fs::write(&on_disk, &tampered).unwrap();
    assert!(matches!(
        store.get_bytes(&id, 1 << 20).await,
        Err(StoreError::Corrupt { .. })
    ));
    let dest = dir.join("victim.out");
    assert!(matches!(
        store.get_to_file(&id, &dest).await,
        Err(StoreError::Corrupt { .. })
    ));
    assert!(!dest.exists(), "nothing left under the destination name");

    // Leftover temp files (a crash mid-write) are not blobs.
    std::fs::write(dir.join("blobs").join(".tmp-1-1"), b"half a bundle").unwrap();
    assert!(
        store
            .list()
            .await
            .unwrap()
            .iter()
            .all(|b| b.id != BlobId::of(b"half a bundle"))
    );

    // URL selection.
    let url = format!("file://{}", dir.join("blobs").display());
    assert!(matches!(AnyStore::open(&url).unwrap(), AnyStore::Local(_)));
    for bad in ["blobs", "file://relative/path", "s3://", "ftp://x"] {
        assert!(
            matches!(AnyStore::open(bad), Err(StoreError::BadUrl(_))),
            "{bad}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    let mut moto = Moto { child, port };
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return moto;
        }
        if let Ok(Some(status)) = moto.child.try_wait() {
            panic!("moto server exited ({status}); install it with: pip install 'moto[server]'");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("moto server did not start on port {}", moto.port);
}

fn create_bucket(port: u16, bucket: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[tokio::test]
async fn s3_store_against_a_real_s3_compatible_server() {
    let moto = start_moto();
    create_bucket(moto.port, "models");
    let builder = AmazonS3Builder::new()
        .with_endpoint(format!("http://127.0.0.1:{}", moto.port))
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_bucket_name("models");
    let store = S3Store::with_builder(builder, "sealed/v1").unwrap();
    let dir = scratch("s3");
    exercise(&store, &dir).await;
    std::fs::remove_dir_all(&dir).unwrap();
}
