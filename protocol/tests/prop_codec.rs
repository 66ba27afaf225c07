//! Property tests: every frame round-trips; no byte string makes the decoder panic;
//! the duplicate filter behaves like its specification.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tern_protocol::dedup::{DedupConfig, DuplicateFilter};
use tern_protocol::frame::{self, DEFAULT_MAX_FRAME_BODY, Decoded, Frame, FrameKind};
use tern_protocol::pb;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z0-9_]{1,12}", any::<String>()]
}

fn blob() -> impl Strategy<Value = bytes::Bytes> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(bytes::Bytes::from)
}

fn stored() -> impl Strategy<Value = pb::StoredMessage> {
    (
        any::<u64>(),
        blob(),
        text(),
        text(),
        0..3i32,
        any::<u32>(),
        blob(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(
                server_msg_id,
                client_msg_id,
                sender,
                recipient,
                kind,
                content_type,
                body,
                client_ts_ms,
                server_ts_ms,
            )| {
                pb::StoredMessage {
                    server_msg_id,
                    client_msg_id,
                    sender,
                    recipient,
                    kind,
                    content_type,
                    body,
                    client_ts_ms,
                    server_ts_ms,
                    recalled: server_ts_ms % 7 == 0,
                }
            },
        )
}

fn entry() -> impl Strategy<Value = pb::TimelineEntry> {
    let receipt = (0..2i32, 0..3i32, text(), text(), any::<u64>(), any::<u64>()).prop_map(
        |(status, kind, conversation, by_user, up_to, seq)| pb::Receipt {
            status,
            kind,
            conversation,
            by_user,
            up_to_server_msg_id: up_to,
            up_to_seq: seq,
            unread: seq % 1000,
            ..Default::default()
        },
    );
    let recall = (any::<u64>(), 0..3i32, text(), text()).prop_map(
        |(server_msg_id, kind, conversation, by_user)| pb::Recall {
            server_msg_id,
            kind,
            conversation,
            by_user,
        },
    );
    let group = (
        0..4i32,
        text(),
        text(),
        proptest::collection::vec(text(), 0..4),
        text(),
    )
        .prop_map(|(t, group, by_user, members, name)| pb::GroupEvent {
            r#type: t,
            group,
            by_user,
            members,
            name,
            member_count: t as u32,
            ..Default::default()
        });
    (
        any::<u64>(),
        prop_oneof![
            Just(None),
            stored().prop_map(|m| Some(pb::timeline_entry::Body::Message(m))),
            receipt.prop_map(|r| Some(pb::timeline_entry::Body::Receipt(r))),
            recall.prop_map(|r| Some(pb::timeline_entry::Body::Recall(r))),
            group.prop_map(|g| Some(pb::timeline_entry::Body::Group(g))),
        ],
    )
        .prop_map(|(seq, body)| pb::TimelineEntry { seq, body })
}

fn any_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (text(), text(), text(), 0..5i32, text(), any::<u64>()).prop_map(|(u, t, d, p, v, c)| {
            Frame::Login(pb::Login {
                user_id: u,
                token: t,
                device_id: d,
                platform: p,
                client_version: v,
                inbox_cursor: c,
            })
        }),
        (
            0..60i32,
            text(),
            any::<u64>(),
            text(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>()
        )
            .prop_map(
                |(code, message, server_time_ms, session_id, hb, head, max)| Frame::LoginResult(
                    pb::LoginResult {
                        code,
                        message,
                        server_time_ms,
                        session_id,
                        heartbeat_timeout_ms: hb,
                        inbox_head_seq: head,
                        max_body_bytes: max,
                        send_rate_per_sec: hb.rotate_left(7),
                        send_burst: max.rotate_left(3),
                        next_send_seq: head.rotate_left(11),
                        store_generation: server_time_ms.rotate_left(5),
                        restored_seq: head / 2,
                    }
                )
            ),
        Just(Frame::Logout(pb::Logout {})),
        (0..6i32, text()).prop_map(|(reason, text)| Frame::Kickout(pb::Kickout { reason, text })),
        (any::<u32>(), any::<bool>()).prop_map(|(i, quiet)| Frame::Heartbeat(pb::Heartbeat {
            interval_ms: i,
            quiet
        })),
        (text(), any::<u64>(), any::<u64>()).prop_map(|(a, t, h)| Frame::HeartbeatReply(
            pb::HeartbeatReply {
                observed_addr: a,
                server_time_ms: t,
                inbox_head_seq: h,
            }
        )),
        (
            blob(),
            text(),
            text(),
            0..3i32,
            any::<u32>(),
            blob(),
            any::<u64>()
        )
            .prop_map(|(id, s, r, k, c, b, ts)| {
                Frame::Chat(pb::ChatMessage {
                    client_msg_id: id,
                    sender: s,
                    recipient: r,
                    kind: k,
                    content_type: c,
                    body: b,
                    client_ts_ms: ts,
                    send_seq: ts.rotate_left(17),
                })
            }),
        (blob(), 0..60i32, any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(id, code, sid, seq, ts)| {
                Frame::SendResult(pb::SendResult {
                    client_msg_id: id,
                    code,
                    server_msg_id: sid,
                    seq,
                    server_ts_ms: ts,
                    expected_send_seq: seq.rotate_left(9),
                    ..Default::default()
                })
            }
        ),
        entry().prop_map(|e| Frame::Push(pb::Push {
            entry: Some(e),
            ..Default::default()
        })),
        (any::<u64>(), proptest::collection::vec(any::<u64>(), 0..8)).prop_map(|(c, seqs)| {
            Frame::DeliveryAck(pb::DeliveryAck {
                cumulative_seq: c,
                seqs,
                ..Default::default()
            })
        }),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(r, a, u, l)| {
            Frame::SyncRequest(pb::SyncRequest {
                request_id: r,
                after_seq: a,
                until_seq: u,
                limit: l,
                ..Default::default()
            })
        }),
        (
            any::<u64>(),
            proptest::collection::vec(entry(), 0..4),
            any::<bool>(),
            any::<u64>()
        )
            .prop_map(|(request_id, entries, more, head_seq)| Frame::SyncResponse(
                pb::SyncResponse {
                    log: if more {
                        format!("g{head_seq}")
                    } else {
                        String::new()
                    },
                    request_id,
                    entries,
                    more,
                    head_seq,
                }
            )),
        (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(r, n, l)| Frame::SummariesRequest(
            pb::SummariesRequest {
                request_id: r,
                last_messages: n,
                limit: l
            }
        )),
        (
            any::<u64>(),
            proptest::collection::vec(
                (
                    0..3i32,
                    text(),
                    any::<u64>(),
                    any::<u64>(),
                    proptest::collection::vec(entry(), 0..3)
                )
                    .prop_map(|(kind, conversation, unread, latest_seq, last)| {
                        pb::ConversationSummary {
                            read_up_to: latest_seq / 2,
                            joined_at: latest_seq / 3,
                            restored_seq: latest_seq / 4,
                            log: if unread % 2 == 0 {
                                conversation.clone()
                            } else {
                                String::new()
                            },
                            kind,
                            conversation,
                            unread,
                            latest_seq,
                            last,
                        }
                    }),
                0..3
            ),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(
                |(request_id, conversations, head_seq, more)| Frame::Summaries(pb::Summaries {
                    request_id,
                    conversations,
                    head_seq,
                    more
                })
            ),
        (0..60i32, text(), any::<u64>()).prop_map(|(code, message, request_id)| Frame::Error(
            pb::Error {
                code,
                message,
                request_id
            }
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_frame_round_trips(f in any_frame(), flags in any::<u8>(), trailing in blob()) {
        let mut buf = f.to_bytes(flags).to_vec();
        let whole = buf.len();
        prop_assert_eq!(whole, f.encoded_len());
        buf.extend_from_slice(&trailing); // whatever follows on a stream is not consumed
        match frame::decode(&buf, DEFAULT_MAX_FRAME_BODY) {
            Ok(Decoded::Frame { header, frame, len }) => {
                prop_assert_eq!(frame, f);
                prop_assert_eq!(len, whole);
                prop_assert_eq!(header.flags, flags);
            }
            other => prop_assert!(false, "decode gave {:?}", other),
        }
        for cut in 0..whole {
            let partial = frame::decode(&buf[..cut], DEFAULT_MAX_FRAME_BODY);
            prop_assert!(matches!(partial, Ok(Decoded::Incomplete { .. })), "cut {}: {:?}", cut, partial);
        }
    }

    #[test]
    fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        match frame::decode(&bytes, 256) {
            Ok(Decoded::Frame { len, .. }) => prop_assert!(len <= bytes.len()),
            Ok(Decoded::Incomplete { needed }) => prop_assert!(needed.is_none_or(|n| n > bytes.len())),
            Err(e) => { let _ = e.code(); }
        }
    }

    #[test]
    fn valid_prefix_with_garbage_body_fails_cleanly(
        kind in proptest::sample::select(FrameKind::ALL),
        flags in any::<u8>(),
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut buf = vec![frame::WIRE_VERSION, kind as u8, flags];
        prost::encoding::encode_varint(body.len() as u64, &mut buf);
        buf.extend_from_slice(&body);
        match frame::decode(&buf, DEFAULT_MAX_FRAME_BODY) {
            Ok(Decoded::Frame { frame, len, .. }) => {
                prop_assert_eq!(frame.kind(), kind);
                prop_assert_eq!(len, buf.len());
            }
            Ok(Decoded::Incomplete { .. }) => prop_assert!(false, "a whole frame is never incomplete"),
            Err(e) => prop_assert_eq!(e.code(), pb::ErrorCode::MalformedFrame),
        }
    }

    /// With enough capacity the filter answers exactly like the specification: an id
    /// is new unless it was accepted less than `ttl` ago.
    #[test]
    fn dedup_matches_its_specification(ops in proptest::collection::vec((0u16..40, 0u64..4_000), 1..400)) {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut filter = DuplicateFilter::new(DedupConfig { capacity: 1_000, ttl });
        let mut accepted: HashMap<u16, Instant> = HashMap::new();
        let mut now = t0;
        for (id, advance_ms) in ops {
            now += Duration::from_millis(advance_ms);
            let expected = accepted.get(&id).is_none_or(|t| now - *t >= ttl);
            prop_assert_eq!(filter.insert(id, now), expected, "id {} at {:?}", id, now - t0);
            if expected {
                accepted.insert(id, now);
            }
        }
        prop_assert_eq!(filter.early_evictions(), 0);
    }

    /// Memory stays bounded whatever arrives, and the most recent ids are never forgotten.
    #[test]
    fn dedup_is_bounded(ids in proptest::collection::vec(any::<u32>(), 1..2_000), capacity in 1usize..64) {
        let now = Instant::now();
        let mut filter = DuplicateFilter::new(DedupConfig { capacity, ttl: Duration::from_secs(60) });
        for id in &ids {
            filter.insert(*id, now);
            prop_assert!(filter.len() <= capacity);
            prop_assert!(filter.contains(id));
        }
    }
}
