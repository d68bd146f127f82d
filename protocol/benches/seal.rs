//! Sealed-bundle throughput against raw ring AES-256-GCM, in one run.
//!
//! `cargo bench -p protocol --bench seal [-- --quick]`
//!
//! One buffer (256 MiB, or 64 MiB with `--quick`) goes through each
//! measurement in turn; rounds are interleaved so machine drift hits all of
//! them alike, and each figure is the median round. Baselines are one-shot
//! `seal_in_place_separate_tag` / `open_in_place_separate_tag` over the
//! whole buffer with the same key. The sealed-bundle rows split the cost:
//! the chunked AES-GCM alone (`StreamSealer` / `StreamOpener`, in place, no
//! I/O, no hashing), SHA-256 alone, and the full `Read`/`Write` functions,
//! which add the plaintext hash(es), the sealed-bytes hash and the copies
//! through `Read`/`Write`. For those, a "ceiling" is printed: the speed if
//! the run cost exactly one raw AES-GCM pass plus its SHA-256 passes, each
//! at the speed measured for it in this run; the gap to it is copies, calls
//! and allocation.

use std::io::Cursor;
use std::time::{Duration, Instant};

use protocol::sealed::{
    self, BundleHeader, BundleMeta, DEFAULT_CHUNK_SIZE, ModelKey, PlaintextDigest, StreamOpener,
    StreamSealer,
};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use ring::digest::{SHA256, digest};

fn pattern(len: usize) -> Vec<u8> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        out.extend_from_slice(&s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

struct Row {
    name: &'static str,
    what: &'static str,
    baseline: Option<usize>,
    /// SHA-256 passes over the data this row makes (for the ceiling).
    hashes: u32,
    times: Vec<Duration>,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let size: usize = if quick { 64 << 20 } else { 256 << 20 };
    let rounds = if quick { 3 } else { 7 };

    let data = pattern(size);
    let key = ModelKey::generate().expect("rng");
    let raw = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.expose()).expect("key"));
    let meta = BundleMeta {
        model_id: "bench".into(),
        version: "1".into(),
        created: 0,
    };
    let digest_of_data = PlaintextDigest::of_bytes(&data);
    let header =
        BundleHeader::new(&meta, &digest_of_data, DEFAULT_CHUNK_SIZE, key.key_id()).expect("hdr");
    let header_64k =
        BundleHeader::new(&meta, &digest_of_data, 64 << 10, key.key_id()).expect("hdr");
    let bundle = sealed::seal_bytes(&data, &key, &meta, DEFAULT_CHUNK_SIZE).expect("seal");
    let bundle_header = sealed::read_header(&bundle[..]).expect("header");
    let body = &bundle[bundle_header.as_bytes().len()..];

    // Raw one-shot ciphertext + tag, for the raw open baseline.
    let raw_nonce = || Nonce::assume_unique_for_key([7; 12]);
    let mut raw_ct = data.clone();
    let raw_tag = raw
        .seal_in_place_separate_tag(raw_nonce(), Aad::from([0u8; 32]), &mut raw_ct)
        .expect("raw seal");

    let mut work = vec![0u8; size.max(body.len())];
    let mut out = Vec::with_capacity(bundle.len());
    let mut rows: Vec<Row> = Vec::new();
    let mut row = |name, what, baseline, hashes| {
        rows.push(Row {
            name,
            what,
            baseline,
            hashes,
            times: Vec::new(),
        });
        rows.len() - 1
    };
    let raw_seal = row("raw seal", "ring AES-256-GCM, one shot, in place", None, 0);
    let raw_open = row("raw open", "ring AES-256-GCM, one shot, in place", None, 0);
    let sha_only = row(
        "SHA-256",
        "ring SHA-256 of the plaintext, one pass",
        None,
        0,
    );
    let enc_only = row(
        "seal (encrypt only)",
        "StreamSealer, 1 MiB chunks, in place",
        Some(raw_seal),
        0,
    );
    let enc_64k = row(
        "seal (encrypt only, 64 KiB chunks)",
        "StreamSealer, 64 KiB chunks, in place",
        Some(raw_seal),
        0,
    );
    let dec_only = row(
        "open (decrypt only)",
        "StreamOpener, 1 MiB chunks, in place",
        Some(raw_open),
        0,
    );
    let seal_pre = row(
        "seal_prehashed (hash + encrypt)",
        "1 pass: encrypt, SHA-256 of plaintext and of output, Read/Write copies",
        Some(raw_seal),
        2,
    );
    let seal_full = row(
        "seal (hash + encrypt)",
        "2 passes: hash, then seal_prehashed",
        Some(raw_seal),
        3,
    );
    let open_full = row(
        "open (decrypt + hash)",
        "Cursor -> Vec: authenticate, SHA-256 of plaintext, copies",
        Some(raw_open),
        1,
    );
    let open_vec = row(
        "open_to_vec (decrypt + hash)",
        "same, into a fresh Vec (allocated and faulted in each run)",
        Some(raw_open),
        1,
    );

    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed()
    };

    for _ in 0..rounds {
        work[..size].copy_from_slice(&data);
        let t = time(&mut || {
            let tag = raw
                .seal_in_place_separate_tag(raw_nonce(), Aad::from([0u8; 32]), &mut work[..size])
                .expect("raw seal");
            let _ = std::hint::black_box(tag);
        });
        rows[raw_seal].times.push(t);

        work[..size].copy_from_slice(&raw_ct);
        let t = time(&mut || {
            raw.open_in_place_separate_tag(
                raw_nonce(),
                Aad::from([0u8; 32]),
                Tag::from(<[u8; 16]>::try_from(raw_tag.as_ref()).expect("tag")),
                &mut work[..size],
                0..,
            )
            .expect("raw open");
        });
        rows[raw_open].times.push(t);

        let t = time(&mut || {
            std::hint::black_box(digest(&SHA256, &data));
        });
        rows[sha_only].times.push(t);

        for (index, header) in [(enc_only, &header), (enc_64k, &header_64k)] {
            work[..size].copy_from_slice(&data);
            let t = time(&mut || {
                let mut sealer = StreamSealer::new(&key, header).expect("sealer");
                let mut rest = &mut work[..size];
                while let Some(len) = sealer.next_chunk_len() {
                    let (chunk, tail) = rest.split_at_mut(len);
                    std::hint::black_box(sealer.encrypt_chunk(chunk).expect("encrypt"));
                    rest = tail;
                }
            });
            rows[index].times.push(t);
        }

        work[..body.len()].copy_from_slice(body);
        let t = time(&mut || {
            let mut opener = StreamOpener::new(&key, &bundle_header).expect("opener");
            let mut rest = &mut work[..body.len()];
            while let Some(len) = opener.next_chunk_len() {
                let (chunk, tail) = rest.split_at_mut(len);
                std::hint::black_box(opener.decrypt_chunk(chunk).expect("decrypt"));
                rest = tail;
            }
            assert!(opener.is_finished());
        });
        rows[dec_only].times.push(t);

        out.clear();
        let t = time(&mut || {
            sealed::seal_prehashed(
                &data[..],
                &mut out,
                &key,
                &meta,
                DEFAULT_CHUNK_SIZE,
                &digest_of_data,
            )
            .expect("seal_prehashed");
        });
        rows[seal_pre].times.push(t);

        out.clear();
        let t = time(&mut || {
            sealed::seal(
                Cursor::new(&data),
                &mut out,
                &key,
                &meta,
                DEFAULT_CHUNK_SIZE,
            )
            .expect("seal");
        });
        rows[seal_full].times.push(t);
        assert_eq!(out.len(), bundle.len());

        out.clear();
        let t = time(&mut || {
            sealed::open(&bundle[..], &mut out, &key).expect("open");
        });
        rows[open_full].times.push(t);
        assert!(out == data);

        let t = time(&mut || {
            let (pt, _) = sealed::open_to_vec(&bundle[..], &key, u64::MAX).expect("open_to_vec");
            std::hint::black_box(pt);
        });
        rows[open_vec].times.push(t);
    }

    let mbps = |d: Duration| size as f64 / 1e6 / d.as_secs_f64();
    let median = |r: &Row| {
        let mut t = r.times.clone();
        t.sort();
        t[t.len() / 2]
    };
    println!(
        "sealed bundle vs raw ring AES-256-GCM: {} MiB buffer, median of {rounds} interleaved rounds",
        size >> 20
    );
    println!("| measurement | what runs | MB/s | vs raw | hash-bound ceiling | of ceiling |");
    println!("|---|---|---|---|---|---|");
    let sha_secs = median(&rows[sha_only]).as_secs_f64();
    for r in &rows {
        let speed = mbps(median(r));
        let (ratio, ceiling, of_ceiling) = match r.baseline {
            Some(b) => {
                let raw_secs = median(&rows[b]).as_secs_f64();
                let ceiling = size as f64 / 1e6 / (raw_secs + f64::from(r.hashes) * sha_secs);
                (
                    format!("{:.2}×", speed / mbps(median(&rows[b]))),
                    format!("{ceiling:.0} ({}× SHA)", r.hashes),
                    format!("{:.2}", speed / ceiling),
                )
            }
            None => Default::default(),
        };
        println!(
            "| {} | {} | {:.0} | {ratio} | {ceiling} | {of_ceiling} |",
            r.name, r.what, speed
        );
    }
}
