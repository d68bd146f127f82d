//! Property tests for the parsers: the frame decoder and message decoding.

use proptest::collection::vec;
use proptest::prelude::*;
use protocol::{
    ErrorCode, FlTaskTerms, FrameDecoder, HEADER_LEN, InferenceOutput, KeyUsage, Message,
    OutputPolicy, QueryBudget, SecretBytes, ServingPolicy, Tensor, TensorData, encode_frame,
};

/// Feed `chunks` to `decoder` the way a reader would; returns the frames and
/// whether decoding failed. Checks the buffering bound after every push.
fn feed(decoder: &mut FrameDecoder, chunks: &[Vec<u8>]) -> (Vec<Vec<u8>>, bool) {
    let bound = decoder.max_frame() + HEADER_LEN;
    let mut frames = Vec::new();
    for chunk in chunks {
        let mut rest = &chunk[..];
        loop {
            let used = decoder.push(rest);
            assert!(used <= rest.len());
            rest = &rest[used..];
            assert!(
                decoder.buffered() <= bound,
                "buffered {} > {bound}",
                decoder.buffered()
            );
            match decoder.next_frame() {
                Err(_) => return (frames, true),
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => {
                    // The decoder wants more: it must have taken everything.
                    assert!(rest.is_empty());
                    break;
                }
            }
        }
    }
    (frames, false)
}

fn finite() -> impl Strategy<Value = f32> {
    -1.0e6f32..1.0e6
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,24}"
}

fn tensor() -> impl Strategy<Value = Tensor> {
    let data = prop_oneof![
        vec(finite(), 0..16).prop_map(TensorData::F32),
        vec(any::<i64>(), 0..16).prop_map(TensorData::I64),
        vec(any::<u8>(), 0..16).prop_map(TensorData::U8),
    ];
    (vec(any::<u64>(), 0..4), data).prop_map(|(shape, data)| Tensor { shape, data })
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::VersionMismatch),
        Just(ErrorCode::Busy),
        Just(ErrorCode::NotAdmitted),
        Just(ErrorCode::Refused),
        Just(ErrorCode::NotFound),
        Just(ErrorCode::BadRequest),
        Just(ErrorCode::BudgetExceeded),
        Just(ErrorCode::Internal),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    let usage = prop_oneof![
        Just(KeyUsage::RemoteInference),
        Just(KeyUsage::OnDevice),
        Just(KeyUsage::FederatedRound),
    ];
    let output = prop_oneof![
        vec(finite(), 0..8).prop_map(InferenceOutput::Scores),
        vec((any::<u32>(), finite()), 0..8).prop_map(InferenceOutput::TopK),
        any::<u32>().prop_map(InferenceOutput::Label),
    ];
    prop_oneof![
        (any::<u16>(), text(), text()).prop_map(|(protocol_version, role, software)| {
            Message::Hello {
                protocol_version,
                role,
                software,
            }
        }),
        any::<u16>().prop_map(|protocol_version| Message::HelloAck { protocol_version }),
        (text(), any::<[u8; 32]>(), usage.clone()).prop_map(|(model_id, bundle_hash, usage)| {
            Message::ModelKeyRequest {
                model_id,
                bundle_hash,
                usage,
            }
        }),
        (
            text(),
            any::<[u8; 16]>(),
            vec(any::<u8>(), 0..48),
            any::<u32>(),
            proptest::option::of((any::<u32>(), any::<u32>()))
        )
            .prop_map(|(model_id, key_id, key, k, budget)| {
                Message::ModelKeyRelease {
                    model_id,
                    key_id,
                    key: SecretBytes::new(key),
                    serving: ServingPolicy {
                        output: match k % 3 {
                            0 => OutputPolicy::Scores,
                            1 => OutputPolicy::Label,
                            _ => OutputPolicy::TopK(k),
                        },
                        budget: budget.map(|(queries, window_secs)| QueryBudget {
                            queries,
                            window_secs,
                        }),
                    },
                }
            }),
        (text(), text(), any::<[u8; 32]>(), any::<u64>()).prop_map(
            |(model_id, version, bundle_hash, size)| Message::SealedModelAnnouncement {
                model_id,
                version,
                bundle_hash,
                size,
            }
        ),
        (any::<u64>(), text(), tensor()).prop_map(|(request_id, model_id, input)| {
            Message::InferenceRequest {
                request_id,
                model_id,
                input,
            }
        }),
        (any::<u64>(), output)
            .prop_map(|(request_id, output)| Message::InferenceResponse { request_id, output }),
        (any::<u64>(), any::<[u8; 32]>(), any::<u32>(), any::<u32>()).prop_map(
            |(round, model_hash, deadline_secs, min_clients)| Message::RoundAnnouncement {
                round,
                model_hash,
                deadline_secs,
                min_clients,
            }
        ),
        (any::<u64>(), any::<u64>(), vec(finite(), 0..32)).prop_map(
            |(round, num_samples, delta)| Message::ModelUpdate {
                round,
                num_samples,
                delta,
            }
        ),
        (
            any::<u64>(),
            any::<bool>(),
            proptest::option::of(any::<[u8; 32]>()),
            proptest::option::of(text())
        )
            .prop_map(
                |(round, accepted, new_model_hash, reason)| Message::RoundResult {
                    round,
                    accepted,
                    new_model_hash,
                    reason,
                }
            ),
        any::<[u8; 32]>().prop_map(|nonce| Message::FreshNonce { nonce }),
        vec(any::<u8>(), 0..64).prop_map(|token| Message::FreshEvidence { token }),
        (
            any::<u64>(),
            any::<u32>(),
            any::<bool>(),
            vec(any::<u8>(), 0..64)
        )
            .prop_map(|(stream_id, seq, last, bytes)| Message::Chunk {
                stream_id,
                seq,
                last,
                bytes,
            }),
        (error_code(), text()).prop_map(|(code, message)| Message::Error { code, message }),
        (text(), usage).prop_map(|(model_id, usage)| Message::BundleQuery { model_id, usage }),
        text().prop_map(|task| Message::JoinRound { task }),
        (
            text(),
            text(),
            any::<[u8; 32]>(),
            any::<[u8; 16]>(),
            vec(any::<u8>(), 0..48)
        )
            .prop_map(|(model_id, version, bundle_hash, key_id, key)| {
                Message::ModelKeyDeposit {
                    model_id,
                    version,
                    bundle_hash,
                    key_id,
                    key: SecretBytes::new(key),
                }
            }),
        (text(), any::<u64>()).prop_map(|(task, round)| Message::RoundOutcomeQuery { task, round }),
        (any::<u64>(), any::<bool>(), any::<u32>(), any::<u32>()).prop_map(
            |(round, aggregated, updates, min_clients)| Message::RoundOutcome {
                round,
                aggregated,
                updates,
                min_clients,
            }
        ),
        text().prop_map(|task| Message::FlTaskQuery { task }),
        (
            text(),
            // Finite: NaN would not compare equal after the round trip.
            -1e6f32..1e6,
            -1e6f64..1e6,
            any::<(u32, u32, u64, bool)>(),
            vec(vec(any::<u8>(), 0..70), 0..4)
        )
            .prop_map(
                |(
                    task,
                    clip_norm,
                    noise_multiplier,
                    (min_clients, max_clients, rounds, allow_insecure_devices),
                    devices,
                )| {
                    Message::FlTaskTerms {
                        terms: FlTaskTerms {
                            task: task.clone(),
                            arch: task.clone(),
                            rule: task,
                            clip_norm,
                            noise_multiplier,
                            min_clients,
                            max_clients,
                            rounds,
                            devices,
                            allow_insecure_devices,
                        },
                    }
                }
            ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes in arbitrary pieces: no panic, bounded buffering.
    #[test]
    fn decoder_never_panics_and_stays_bounded(
        max_frame in 0usize..64,
        chunks in vec(vec(any::<u8>(), 0..100), 0..20),
    ) {
        let mut decoder = FrameDecoder::new(max_frame);
        let (frames, _) = feed(&mut decoder, &chunks);
        for frame in frames {
            prop_assert!(!frame.is_empty() && frame.len() <= max_frame);
        }
    }

    /// Headers with large declared lengths are refused at the header.
    #[test]
    fn decoder_refuses_oversized_headers(
        max_frame in 0usize..1024,
        declared in any::<u32>(),
        tail in vec(any::<u8>(), 0..64),
    ) {
        prop_assume!(declared as usize > max_frame);
        let mut input = declared.to_be_bytes().to_vec();
        input.extend(tail);
        let mut decoder = FrameDecoder::new(max_frame);
        prop_assert_eq!(decoder.push(&input), HEADER_LEN);
        prop_assert!(decoder.next_frame().is_err());
        prop_assert_eq!(decoder.push(&input[HEADER_LEN..]), 0);
    }

    /// Valid frames split at arbitrary boundaries come out unchanged.
    #[test]
    fn resplit_frames_are_preserved(
        payloads in vec(vec(any::<u8>(), 1..200), 0..10),
        cuts in vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let max = 200;
        let mut stream = Vec::new();
        for p in &payloads {
            stream.extend(encode_frame(p, max).unwrap());
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        let chunks: Vec<Vec<u8>> = points.windows(2).map(|w| stream[w[0]..w[1]].to_vec()).collect();
        let mut decoder = FrameDecoder::new(max);
        let (frames, failed) = feed(&mut decoder, &chunks);
        prop_assert!(!failed);
        prop_assert_eq!(frames, payloads);
        prop_assert!(decoder.is_between_frames());
    }

    /// Random bytes never panic the message decoder.
    #[test]
    fn decode_random_bytes_never_panics(bytes in vec(any::<u8>(), 0..512)) {
        let _ = Message::decode(&bytes);
    }

    /// decode(encode(m)) == m for arbitrary messages of every variant.
    #[test]
    fn messages_round_trip(msg in message()) {
        let bytes = msg.encode().unwrap();
        prop_assert_eq!(Message::decode(&bytes).unwrap(), msg);
    }

    /// A valid encoding with one byte changed never panics the decoder.
    /// (Re-encoding need not give the same bytes: postcard accepts
    /// non-canonical varints, e.g. `80 00` for 0.)
    #[test]
    fn mutated_messages_never_panic(
        msg in message(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = msg.encode().unwrap();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        if let Ok(decoded) = Message::decode(&bytes) {
            prop_assert!(decoded.encode().is_ok());
        }
    }
}
