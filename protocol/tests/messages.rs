//! Encoding of every `Message` variant: round trips, trailing bytes,
//! truncation, and forged lengths.

use protocol::{
    ErrorCode, FlTaskTerms, InferenceOutput, KeyUsage, Message, OutputPolicy, PROTOCOL_VERSION,
    ProtocolError, QueryBudget, SecretBytes, ServingPolicy, Tensor, TensorData,
};

/// One value of every variant (and every inner enum variant).
fn samples() -> Vec<Message> {
    vec![
        Message::Hello {
            protocol_version: PROTOCOL_VERSION,
            role: "device".into(),
            software: "device-agent 0.1.0".into(),
        },
        Message::HelloAck {
            protocol_version: PROTOCOL_VERSION,
        },
        Message::ModelKeyRequest {
            model_id: "digits".into(),
            bundle_hash: [0x11; 32],
            usage: KeyUsage::RemoteInference,
        },
        Message::ModelKeyRequest {
            model_id: "digits".into(),
            bundle_hash: [0x12; 32],
            usage: KeyUsage::OnDevice,
        },
        Message::ModelKeyRequest {
            model_id: String::new(),
            bundle_hash: [0; 32],
            usage: KeyUsage::FederatedRound,
        },
        Message::ModelKeyRelease {
            model_id: "digits".into(),
            key_id: [7; 16],
            key: SecretBytes::new((0..32).collect()),
            serving: ServingPolicy {
                output: OutputPolicy::TopK(3),
                budget: Some(QueryBudget {
                    queries: 100,
                    window_secs: 60,
                }),
            },
        },
        Message::SealedModelAnnouncement {
            model_id: "digits".into(),
            version: "1.2.3".into(),
            bundle_hash: [0xAB; 32],
            size: u64::MAX,
        },
        Message::InferenceRequest {
            request_id: 1,
            model_id: "digits".into(),
            input: Tensor {
                shape: vec![1, 4],
                data: TensorData::F32(vec![0.0, -1.5, 2.25, f32::MAX]),
            },
        },
        Message::InferenceRequest {
            request_id: 2,
            model_id: "lm".into(),
            input: Tensor {
                shape: vec![3],
                data: TensorData::I64(vec![i64::MIN, 0, i64::MAX]),
            },
        },
        Message::InferenceRequest {
            request_id: u64::MAX,
            model_id: "img".into(),
            input: Tensor {
                shape: vec![2, 2],
                data: TensorData::U8(vec![0, 1, 254, 255]),
            },
        },
        Message::InferenceResponse {
            request_id: 1,
            output: InferenceOutput::Scores(vec![0.1, 0.9]),
        },
        Message::InferenceResponse {
            request_id: 2,
            output: InferenceOutput::TopK(vec![(3, 0.7), (8, 0.2)]),
        },
        Message::InferenceResponse {
            request_id: 3,
            output: InferenceOutput::Label(7),
        },
        Message::RoundAnnouncement {
            round: 4,
            model_hash: [0x44; 32],
            deadline_secs: 600,
            min_clients: 3,
        },
        Message::ModelUpdate {
            round: 4,
            num_samples: 1000,
            delta: vec![0.5; 100],
        },
        Message::RoundResult {
            round: 4,
            accepted: true,
            new_model_hash: Some([0x45; 32]),
            reason: None,
        },
        Message::RoundResult {
            round: 5,
            accepted: false,
            new_model_hash: None,
            reason: Some("update norm above clip bound".into()),
        },
        Message::FreshNonce { nonce: [0x5A; 32] },
        Message::FreshEvidence {
            token: vec![0xD2; 700],
        },
        Message::Chunk {
            stream_id: 9,
            seq: 2,
            last: true,
            bytes: vec![1, 2, 3],
        },
        Message::Chunk {
            stream_id: 0,
            seq: 0,
            last: false,
            bytes: Vec::new(),
        },
        Message::Error {
            code: ErrorCode::VersionMismatch,
            message: "peer speaks protocol v2; this side speaks v1".into(),
        },
        Message::error(ErrorCode::Busy, "try later"),
        Message::error(ErrorCode::NotAdmitted, ""),
        Message::error(ErrorCode::Refused, "policy"),
        Message::error(ErrorCode::NotFound, "no such model"),
        Message::error(ErrorCode::BadRequest, "expected Hello"),
        Message::error(ErrorCode::BudgetExceeded, "query budget"),
        Message::error(ErrorCode::Internal, "oops"),
        Message::RoundOutcomeQuery {
            task: "digits".into(),
            round: 3,
        },
        Message::RoundOutcome {
            round: 3,
            aggregated: false,
            updates: 1,
            min_clients: 2,
        },
        Message::FlTaskQuery {
            task: "digits-fl".into(),
        },
        Message::FlTaskTerms {
            terms: FlTaskTerms {
                task: "digits-fl".into(),
                arch: "softmax".into(),
                rule: "trimmed-mean:0.2".into(),
                clip_norm: 2.0,
                noise_multiplier: 0.8,
                min_clients: 2,
                max_clients: 10,
                rounds: 5,
                devices: vec![vec![9; 32]],
                allow_insecure_devices: true,
            },
        },
    ]
}

#[test]
fn every_variant_round_trips() {
    let samples = samples();
    let kinds: std::collections::BTreeSet<_> = samples.iter().map(Message::kind).collect();
    assert_eq!(kinds.len(), 18, "a sample of every variant: {kinds:?}");
    for msg in samples {
        let bytes = msg.encode().unwrap();
        let back = Message::decode(&bytes).unwrap();
        assert_eq!(back, msg, "{}", msg.kind());
        assert_eq!(back.encode().unwrap(), bytes, "re-encoding is stable");
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    for msg in samples() {
        let mut bytes = msg.encode().unwrap();
        bytes.push(0);
        assert!(
            matches!(
                Message::decode(&bytes),
                Err(ProtocolError::TrailingBytes { extra: 1 })
            ),
            "{}",
            msg.kind()
        );
    }
}

#[test]
fn every_truncation_is_rejected() {
    for msg in samples() {
        let bytes = msg.encode().unwrap();
        for len in 0..bytes.len() {
            assert!(
                matches!(
                    Message::decode(&bytes[..len]),
                    Err(ProtocolError::Decode(_))
                ),
                "{} cut to {len} of {} bytes decoded",
                msg.kind(),
                bytes.len()
            );
        }
    }
}

#[test]
fn unknown_variant_is_rejected() {
    assert!(matches!(
        Message::decode(&[14]),
        Err(ProtocolError::Decode(_))
    ));
    assert!(matches!(
        Message::decode(&[0xFF, 0xFF, 0xFF, 0xFF, 0x0F]),
        Err(ProtocolError::Decode(_))
    ));
}

/// The wire format is variant order; pin the indices of the messages that
/// every version must understand.
#[test]
fn stable_variant_indices() {
    let hello = Message::Hello {
        protocol_version: 1,
        role: "r".into(),
        software: "s".into(),
    };
    assert_eq!(hello.encode().unwrap(), [0, 1, 1, b'r', 1, b's']);
    let ack = Message::HelloAck {
        protocol_version: 1,
    };
    assert_eq!(ack.encode().unwrap(), [1, 1]);
    assert_eq!(
        Message::error(ErrorCode::VersionMismatch, "x")
            .encode()
            .unwrap(),
        [13, 0, 1, b'x']
    );
    // Appended after ModelKeyDeposit (16): older peers' encodings unchanged.
    let query = Message::RoundOutcomeQuery {
        task: "t".into(),
        round: 1,
    };
    assert_eq!(query.encode().unwrap(), [17, 1, b't', 1]);
    let outcome = Message::RoundOutcome {
        round: 1,
        aggregated: true,
        updates: 2,
        min_clients: 2,
    };
    assert_eq!(outcome.encode().unwrap(), [18, 1, 1, 2, 2]);
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Forged element counts of 2^60 for every kind of variable-length field.
/// postcard compares a declared length against the input left before
/// taking bytes, and withholds the sequence size hint when the count is
/// larger than the remaining input, so serde never preallocates by it.
/// Were it to allocate, these would abort the process (capacity overflow or
/// out of memory) rather than return.
#[test]
fn huge_declared_lengths_fail_without_allocating() {
    let huge = 1u64 << 60;
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();

    // ModelUpdate { round: 0, num_samples: 0, delta: <2^60 f32s> }
    let mut b = vec![8, 0, 0];
    varint(huge, &mut b);
    b.extend_from_slice(&[0; 16]);
    cases.push(("ModelUpdate.delta (Vec<f32>)", b));

    // Chunk { stream_id: 0, seq: 0, last: false, bytes: <2^60 bytes> }
    let mut b = vec![12, 0, 0, 0];
    varint(huge, &mut b);
    b.extend_from_slice(&[0; 16]);
    cases.push(("Chunk.bytes (byte string)", b));

    // Hello { protocol_version: 1, role: <2^60-byte string> }
    let mut b = vec![0, 1];
    varint(huge, &mut b);
    b.extend_from_slice(b"abc");
    cases.push(("Hello.role (String)", b));

    // InferenceRequest { request_id: 0, model_id: "", input.shape: <2^60 u64s> }
    let mut b = vec![5, 0, 0];
    varint(huge, &mut b);
    b.extend_from_slice(&[1; 16]);
    cases.push(("InferenceRequest.input.shape (Vec<u64>)", b));

    // InferenceResponse { request_id: 0, output: TopK(<2^60 pairs>) }
    let mut b = vec![6, 0, 1];
    varint(huge, &mut b);
    cases.push(("InferenceResponse TopK (Vec<(u32, f32)>)", b));

    // ModelKeyRelease { model_id: "", key_id: [0; 16], key: <2^60 bytes> }
    let mut b = vec![3, 0];
    b.extend_from_slice(&[0; 16]);
    varint(huge, &mut b);
    cases.push(("ModelKeyRelease.key (SecretBytes)", b));

    // A declared length of u64::MAX, too.
    let mut b = vec![8, 0, 0];
    varint(u64::MAX, &mut b);
    cases.push(("ModelUpdate.delta = u64::MAX", b));

    for (name, bytes) in cases {
        match Message::decode(&bytes) {
            Err(ProtocolError::Decode(_)) => {}
            other => panic!("{name}: expected a decode error, got {other:?}"),
        }
    }
}

#[test]
fn secret_is_redacted_in_message_debug() {
    let msg = Message::ModelKeyRelease {
        model_id: "digits".into(),
        key_id: [0; 16],
        key: SecretBytes::new(vec![0x42; 32]),
        serving: ServingPolicy::default(),
    };
    let debug = format!("{msg:?}");
    assert!(
        debug.contains("SecretBytes(<32 bytes redacted>)"),
        "{debug}"
    );
    assert!(!debug.contains("66"), "{debug}");
}
