//! Round trips of every record, and the stored codes that must never change.

use super::entries::entry_kind_code;
use super::*;
use crate::{Entry, EntryKind, EventPosition, LargeGroupMembership};

fn entry(kind: EntryKind) -> Entry {
    Entry {
        seq: 7,
        conv_seq: 3,
        msg_id: 99,
        sender_id: 5,
        client_msg_id: "c".into(),
        text: "hi".into(),
        sent_at_ms: -1,
        members: vec![1, 2],
        ..Entry::new(kind, 11)
    }
}

/// Bytes written by the earlier encoding (a prost enum field), kept
/// here so a change to the records cannot pass unnoticed.
#[test]
fn records_keep_their_tags_and_codes() {
    let bytes = EntryEncoder::new(&entry(EntryKind::MembersAdded)).inbox(7);
    assert_eq!(
        bytes,
        [
            0x08, 7, 0x10, 3, 0x18, 11, 0x20, 3, 0x28, 99, 0x30, 5, 0x3a, 1, b'c', 0x42, 2, b'h',
            b'i', 0x48, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x52, 2, 1, 2
        ]
    );
    let codes = [
        (EntryKind::Message, 1),
        (EntryKind::ConversationCreated, 2),
        (EntryKind::MembersAdded, 3),
        (EntryKind::MembersRemoved, 4),
        (EntryKind::ReadMarker, 5),
    ];
    for (kind, code) in codes {
        assert_eq!(entry_kind_code(kind), code);
        let decoded = decode_entry(&EntryEncoder::new(&entry(kind)).inbox(7)).unwrap();
        assert_eq!(decoded, entry(kind));
    }
    for (kind, code) in [(ConversationKind::Direct, 1), (ConversationKind::Group, 2)] {
        assert_eq!(conversation_kind_code(kind), code);
    }
}

#[test]
fn unknown_codes_are_corrupt_not_a_panic() {
    for code in [0, 11, -1] {
        let record = EntryRecord {
            kind: code,
            ..Default::default()
        };
        let decoded = decode_entry(&record.encode_to_vec());
        assert!(matches!(decoded, Err(StoreError::Corrupt(_))), "{code}");
        let record = ConversationRecord {
            kind: code,
            ..Default::default()
        };
        let decoded = decode_conversation(&record.encode_to_vec());
        assert!(matches!(decoded, Err(StoreError::Corrupt(_))), "{code}");
    }
    assert!(matches!(
        decode_entry(&[0xff, 0xff]),
        Err(StoreError::Corrupt(_))
    ));
}

/// The priority mark is what the push lane orders by: it survives the
/// conversation entry and the inbox copies alike.
#[test]
fn priority_round_trips_in_both_forms() {
    let entry = Entry {
        conv_seq: 3,
        text: "announcement".into(),
        priority: true,
        read_fanout: true,
        ..Entry::new(EntryKind::Message, 7)
    };
    let mut encoder = EntryEncoder::new(&entry);
    assert!(decode_entry(&encoder.conversation()).unwrap().priority);
    let (copy, _) = decode_inbox_entry(&encoder.inbox(5)).unwrap();
    assert!(copy.priority);
    assert_eq!(copy.seq, 5);
    let plain = Entry::new(EntryKind::Message, 7);
    assert!(
        !decode_entry(&EntryEncoder::new(&plain).conversation())
            .unwrap()
            .priority
    );
}

#[test]
fn conversations_and_receipts_round_trip() {
    let conversation = Conversation {
        conversation_id: 4,
        kind: ConversationKind::Direct,
        members: vec![1, 2],
        member_count: 2,
        title: "t".into(),
        created_at_ms: 8,
        read_fanout: true,
    };
    let bytes = encode_conversation(&conversation);
    assert_eq!(decode_conversation(&bytes).unwrap(), conversation);
    let receipt = Receipt {
        conversation_id: 1,
        conv_seq: 2,
        msg_id: 3,
        sent_at_ms: 4,
        fingerprint: 5,
    };
    assert_eq!(decode_receipt(&encode_receipt(&receipt)).unwrap(), receipt);
    let left = LargeGroupMembership {
        conversation_id: 9,
        joined: EventPosition {
            inbox_seq: 1,
            conv_seq: 2,
        },
        left: Some(EventPosition {
            inbox_seq: 3,
            conv_seq: 4,
        }),
    };
    assert_eq!(
        decode_membership(9, &encode_membership(&left)).unwrap(),
        left
    );
    let legacy = decode_membership(9, &[]).unwrap();
    assert_eq!(
        (legacy.joined, legacy.left),
        (EventPosition::default(), None)
    );
}
