//! `Framed` over real TCP sockets on 127.0.0.1:0.
//!
//! Timeouts are short (200 ms) so the suite stays fast; tests assert on
//! error variants, never on elapsed time. Every test runs under an outer
//! limit so a regression fails instead of hanging.

use std::future::Future;
use std::time::Duration;

use protocol::{
    ErrorCode, Framed, Limits, Message, PROTOCOL_VERSION, ProtocolError, SecretBytes,
    ServingPolicy, Tensor, TensorData,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const SHORT: Duration = Duration::from_millis(200);

/// Whether an error is the one a case expects.
type Check = fn(&ProtocolError) -> bool;

/// Fail (rather than hang) if a test takes far longer than it should.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(8), f)
        .await
        .expect("test did not finish in time")
}

/// A connected (client, server) pair of loopback sockets.
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.unwrap(), accepted.unwrap().0)
}

/// Limits with short timeouts, for tests that expect one to fire.
fn short_limits() -> Limits {
    Limits {
        read_timeout: SHORT,
        idle_timeout: SHORT,
        write_timeout: SHORT,
        ..Limits::default()
    }
}

#[tokio::test]
async fn send_and_recv_both_ways() {
    bounded(async {
        let (c, s) = tcp_pair().await;
        let (mut client, mut server) = (Framed::new(c), Framed::new(s));
        let request = Message::InferenceRequest {
            request_id: 42,
            model_id: "digits".into(),
            input: Tensor {
                shape: vec![1, 3],
                data: TensorData::F32(vec![0.1, 0.2, 0.3]),
            },
        };
        let key = Message::ModelKeyRelease {
            model_id: "digits".into(),
            key_id: [1; 16],
            key: SecretBytes::new(vec![9; 32]),
            serving: ServingPolicy::default(),
        };
        client.send(&request).await.unwrap();
        client.send(&key).await.unwrap();
        assert_eq!(server.recv().await.unwrap(), request);
        assert_eq!(server.recv().await.unwrap(), key);
        let reply = Message::error(ErrorCode::Busy, "later");
        server.send(&reply).await.unwrap();
        assert_eq!(client.recv().await.unwrap(), reply);

        drop(client);
        assert!(matches!(server.recv().await, Err(ProtocolError::Closed)));
    })
    .await;
}

fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn large_payload_round_trips_in_chunks() {
    bounded(async {
        let (c, s) = tcp_pair().await;
        let limits = Limits {
            chunk_size: 1 << 20,
            ..Limits::default()
        };
        let mut client = Framed::with_limits(c, limits);
        let mut server = Framed::with_limits(s, limits);
        let data = pattern(5 << 20);
        let expected = data.clone();
        let sender = tokio::spawn(async move {
            client.send_large(7, &data).await.unwrap();
            client
        });
        let received = server.recv_large(7).await.unwrap();
        assert_eq!(received.len(), expected.len());
        assert!(received == expected);
        let mut client = sender.await.unwrap();

        // An empty payload is one empty, final chunk.
        client.send_large(8, &[]).await.unwrap();
        assert_eq!(server.recv_large(8).await.unwrap(), Vec::<u8>::new());
    })
    .await;
}

#[tokio::test]
async fn recv_large_rejects_bad_chunk_sequences() {
    bounded(async {
        let chunk = |stream_id, seq, last, bytes: &[u8]| Message::Chunk {
            stream_id,
            seq,
            last,
            bytes: bytes.to_vec(),
        };
        let cases: Vec<(Vec<Message>, Check)> = vec![
            (vec![chunk(2, 0, true, b"x")], |e| {
                matches!(
                    e,
                    ProtocolError::WrongStream {
                        expected: 1,
                        got: 2
                    }
                )
            }),
            (
                vec![chunk(1, 0, false, b"x"), chunk(1, 2, true, b"y")],
                |e| {
                    matches!(
                        e,
                        ProtocolError::OutOfOrderChunk {
                            expected: 1,
                            got: 2
                        }
                    )
                },
            ),
            (vec![chunk(1, 1, true, b"x")], |e| {
                matches!(
                    e,
                    ProtocolError::OutOfOrderChunk {
                        expected: 0,
                        got: 1
                    }
                )
            }),
            (
                vec![chunk(1, 0, false, &[0; 600]), chunk(1, 1, true, &[0; 600])],
                |e| {
                    matches!(
                        e,
                        ProtocolError::MessageTooLarge {
                            size: 1200,
                            max: 1000
                        }
                    )
                },
            ),
            (vec![chunk(1, 0, false, b"")], |e| {
                matches!(e, ProtocolError::EmptyChunk { seq: 0 })
            }),
            (
                vec![Message::error(ErrorCode::NotFound, "no stream")],
                |e| {
                    matches!(
                        e,
                        ProtocolError::Remote {
                            code: ErrorCode::NotFound,
                            ..
                        }
                    )
                },
            ),
            (
                vec![Message::HelloAck {
                    protocol_version: 1,
                }],
                |e| {
                    matches!(
                        e,
                        ProtocolError::UnexpectedMessage {
                            expected: "Chunk",
                            got: "HelloAck"
                        }
                    )
                },
            ),
        ];
        for (messages, check) in cases {
            let (c, s) = tcp_pair().await;
            let limits = Limits {
                max_message: 1000,
                ..short_limits()
            };
            let mut client = Framed::new(c);
            let mut server = Framed::with_limits(s, limits);
            for m in &messages {
                client.send(m).await.unwrap();
            }
            let err = server.recv_large(1).await.unwrap_err();
            assert!(check(&err), "{messages:?} gave {err:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn stall_mid_header_is_read_timeout() {
    bounded(async {
        let (mut raw, s) = tcp_pair().await;
        let mut server = Framed::with_limits(
            s,
            Limits {
                idle_timeout: Duration::from_secs(60),
                ..short_limits()
            },
        );
        raw.write_all(&[0, 0]).await.unwrap();
        let err = server.recv().await.unwrap_err();
        assert!(
            matches!(err, ProtocolError::ReadTimeout { after } if after == SHORT),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "peer stalled mid-frame for 0.2s");
        drop(raw);
    })
    .await;
}

#[tokio::test]
async fn stall_between_chunks_is_read_timeout() {
    bounded(async {
        let (c, s) = tcp_pair().await;
        let mut client = Framed::new(c);
        let mut server = Framed::with_limits(
            s,
            Limits {
                idle_timeout: Duration::from_secs(60),
                ..short_limits()
            },
        );
        client
            .send(&Message::Chunk {
                stream_id: 1,
                seq: 0,
                last: false,
                bytes: vec![1],
            })
            .await
            .unwrap();
        let err = server.recv_large(1).await.unwrap_err();
        assert!(matches!(err, ProtocolError::ReadTimeout { .. }), "{err:?}");
        drop(client);
    })
    .await;
}

#[tokio::test]
async fn silence_is_idle_timeout() {
    bounded(async {
        let (raw, s) = tcp_pair().await;
        let mut server = Framed::with_limits(
            s,
            Limits {
                read_timeout: Duration::from_secs(60),
                ..short_limits()
            },
        );
        let err = server.recv().await.unwrap_err();
        assert!(
            matches!(err, ProtocolError::IdleTimeout { after } if after == SHORT),
            "{err:?}"
        );
        drop(raw);
    })
    .await;
}

#[tokio::test]
async fn oversized_declared_length_is_refused_at_the_header() {
    bounded(async {
        let (mut raw, s) = tcp_pair().await;
        // Long timeouts: if the server waited for the payload, the outer
        // bound would fail the test.
        let limits = Limits {
            max_frame: 1024,
            read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        let mut server = Framed::with_limits(s, limits);
        raw.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
        let err = server.recv().await.unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::TooLarge {
                    declared: 0x4000_0000,
                    max: 1024
                }
            ),
            "{err:?}"
        );
        // The stream is out of sync: the error sticks.
        assert!(matches!(
            server.recv().await,
            Err(ProtocolError::TooLarge { .. })
        ));
        drop(raw);
    })
    .await;
}

#[tokio::test]
async fn outgoing_message_over_frame_limit_is_refused() {
    bounded(async {
        let (c, s) = tcp_pair().await;
        let mut client = Framed::with_limits(
            c,
            Limits {
                max_frame: 64,
                ..Limits::default()
            },
        );
        let err = client
            .send(&Message::FreshEvidence {
                token: vec![0; 100],
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProtocolError::OutgoingTooLarge { max: 64, .. }),
            "{err:?}"
        );
        drop(s);
    })
    .await;
}

#[tokio::test]
async fn eof_mid_frame_is_truncated() {
    bounded(async {
        for (bytes, received) in [(vec![0u8, 0], 2), (vec![0, 0, 0, 10, 1, 2, 3], 7)] {
            let (mut raw, s) = tcp_pair().await;
            let mut server = Framed::with_limits(s, short_limits());
            raw.write_all(&bytes).await.unwrap();
            raw.shutdown().await.unwrap();
            let err = server.recv().await.unwrap_err();
            assert!(
                matches!(err, ProtocolError::Truncated { received: r } if r == received),
                "{bytes:?} gave {err:?}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn malformed_frames_are_typed_errors() {
    bounded(async {
        let ok = Message::HelloAck {
            protocol_version: 1,
        }
        .encode()
        .unwrap();
        let mut trailing = ok.clone();
        trailing.push(0);
        let cases: Vec<(Vec<u8>, Check)> = vec![
            (vec![0, 0, 0, 1, 0xFF], |e| {
                matches!(e, ProtocolError::Decode(_))
            }),
            (
                [&[0, 0, 0, trailing.len() as u8][..], &trailing].concat(),
                |e| matches!(e, ProtocolError::TrailingBytes { extra: 1 }),
            ),
            (vec![0, 0, 0, 0], |e| matches!(e, ProtocolError::EmptyFrame)),
        ];
        for (bytes, check) in cases {
            let (mut raw, s) = tcp_pair().await;
            let mut server = Framed::with_limits(s, short_limits());
            raw.write_all(&bytes).await.unwrap();
            let err = server.recv().await.unwrap_err();
            assert!(check(&err), "{bytes:?} gave {err:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn peer_that_does_not_read_is_write_timeout() {
    bounded(async {
        let (c, s) = tcp_pair().await;
        let mut client = Framed::with_limits(c, short_limits());
        let big = Message::FreshEvidence {
            token: vec![0; 3 << 20],
        };
        // The server never reads; socket buffers fill and a send stalls.
        let err = loop {
            if let Err(err) = client.send(&big).await {
                break err;
            }
        };
        assert!(matches!(err, ProtocolError::WriteTimeout { .. }), "{err:?}");
        drop(s);
    })
    .await;
}

#[tokio::test]
async fn hello_succeeds_between_matching_versions() {
    bounded(async {
        let (c, s) = tcp_pair().await;
        let (mut client, mut server) = (Framed::new(c), Framed::new(s));
        let (client_result, server_result) = tokio::join!(
            client.client_hello("device", "device-agent 0.1.0"),
            server.server_hello()
        );
        client_result.unwrap();
        let peer = server_result.unwrap();
        assert_eq!(peer.protocol_version, PROTOCOL_VERSION);
        assert_eq!(peer.role, "device");
        assert_eq!(peer.software, "device-agent 0.1.0");
    })
    .await;
}

#[tokio::test]
async fn server_refuses_other_version() {
    bounded(async {
        let (c, s) = tcp_pair().await;
        let (mut peer, mut server) = (Framed::new(c), Framed::new(s));
        peer.send(&Message::Hello {
            protocol_version: 99,
            role: "device".into(),
            software: "future".into(),
        })
        .await
        .unwrap();
        let err = server.server_hello().await.unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::VersionMismatch {
                    ours: PROTOCOL_VERSION,
                    theirs: 99
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            peer.recv().await.unwrap(),
            Message::error(
                ErrorCode::VersionMismatch,
                "peer speaks protocol v99; this side speaks v1"
            )
        );
    })
    .await;
}

#[tokio::test]
async fn client_sees_version_refusal_and_other_acks() {
    bounded(async {
        // The server refuses our version with an Error message.
        let (c, s) = tcp_pair().await;
        let (mut client, mut peer) = (Framed::new(c), Framed::new(s));
        let refusal = Message::error(
            ErrorCode::VersionMismatch,
            "peer speaks protocol v1; this side speaks v2",
        );
        let (result, _) = tokio::join!(client.client_hello("device", "test"), async {
            assert!(matches!(peer.recv().await, Ok(Message::Hello { .. })));
            peer.send(&refusal).await.unwrap();
        });
        let err = result.unwrap_err();
        assert!(
            matches!(
                &err,
                ProtocolError::Remote {
                    code: ErrorCode::VersionMismatch,
                    message
                } if message == "peer speaks protocol v1; this side speaks v2"
            ),
            "{err:?}"
        );
        assert_eq!(err.wire_code(), ErrorCode::VersionMismatch);

        // The server acks a different version.
        let (c, s) = tcp_pair().await;
        let (mut client, mut peer) = (Framed::new(c), Framed::new(s));
        let (result, _) = tokio::join!(client.client_hello("device", "test"), async {
            assert!(matches!(peer.recv().await, Ok(Message::Hello { .. })));
            peer.send(&Message::HelloAck {
                protocol_version: 2,
            })
            .await
            .unwrap();
        });
        assert!(matches!(
            result,
            Err(ProtocolError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: 2
            })
        ));
    })
    .await;
}

#[tokio::test]
async fn server_answers_non_hello_with_bad_request() {
    bounded(async {
        let (c, s) = tcp_pair().await;
        let (mut peer, mut server) = (Framed::new(c), Framed::new(s));
        peer.send(&Message::FreshNonce { nonce: [0; 32] })
            .await
            .unwrap();
        let err = server.server_hello().await.unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::UnexpectedMessage {
                    expected: "Hello",
                    got: "FreshNonce"
                }
            ),
            "{err:?}"
        );
        assert!(matches!(
            peer.recv().await,
            Ok(Message::Error {
                code: ErrorCode::BadRequest,
                ..
            })
        ));
    })
    .await;
}

/// One server task, one task per connection: a client stalled mid-frame
/// does not hold up a good client, and its own connection ends in
/// `ReadTimeout`.
#[tokio::test]
async fn server_keeps_serving_while_a_client_stalls() {
    // Long enough that the good client's few round trips finish well inside it.
    const STALL: Duration = Duration::from_secs(1);
    bounded(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (outcomes_tx, mut outcomes) = tokio::sync::mpsc::channel(8);
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let outcomes_tx = outcomes_tx.clone();
                tokio::spawn(async move {
                    let mut conn = Framed::with_limits(
                        stream,
                        Limits {
                            idle_timeout: Duration::from_secs(60),
                            read_timeout: STALL,
                            ..short_limits()
                        },
                    );
                    let outcome: Result<(), ProtocolError> = async {
                        conn.server_hello().await?;
                        loop {
                            let msg = conn.recv().await?;
                            conn.send(&msg).await?;
                        }
                    }
                    .await;
                    let _ = outcomes_tx.send(outcome).await;
                });
            }
        });

        // The stalled client: hello, then half a frame header, then nothing.
        let mut stalled = Framed::new(TcpStream::connect(addr).await.unwrap());
        stalled.client_hello("device", "staller").await.unwrap();
        let mut stalled = stalled.into_inner();
        stalled.write_all(&[0, 0]).await.unwrap();

        // A good client is served meanwhile.
        let mut good = Framed::new(TcpStream::connect(addr).await.unwrap());
        good.client_hello("device", "good").await.unwrap();
        for i in 0..5 {
            let msg = Message::ModelUpdate {
                round: i,
                num_samples: 10,
                delta: vec![i as f32; 1000],
            };
            good.send(&msg).await.unwrap();
            assert_eq!(good.recv().await.unwrap(), msg);
        }
        drop(good);

        // The good connection ends first (closed by its client); a server
        // that handled connections one at a time would have finished the
        // stalled one (ReadTimeout, STALL later) before even accepting it.
        let first = outcomes.recv().await.unwrap().unwrap_err();
        assert!(matches!(first, ProtocolError::Closed), "{first:?}");
        let second = outcomes.recv().await.unwrap().unwrap_err();
        assert!(
            matches!(second, ProtocolError::ReadTimeout { after } if after == STALL),
            "{second:?}"
        );
        drop(stalled);
        server.abort();
    })
    .await;
}
