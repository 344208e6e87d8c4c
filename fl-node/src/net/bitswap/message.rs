//! Bitswap 1.2.0 messages: the protobuf schema of go-bitswap's `message.proto`, written as
//! prost structs (no build script), with length-prefixed framing and the limits every
//! received message is held to.

use cid::Cid;
use fl_core::content::Block;
use prost::Message as _;

/// Largest message read or written (Kubo's limit is 4 MiB).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// Largest block accepted (Kubo refuses blocks over 2 MiB too).
pub const MAX_BLOCK_BYTES: usize = 2 << 20;
/// Most wantlist entries honoured in one message; the rest are dropped.
pub const MAX_WANTLIST_ENTRIES: usize = 1024;
/// Most wantlist entries one message may carry on the wire (decoding is refused past it, so
/// a 4 MiB frame of 2-byte entries cannot decode into hundreds of megabytes).
pub const MAX_WIRE_WANTS: usize = 16 * 1024;
/// Most HAVE / DONT_HAVE answers one message may carry.
pub const MAX_WIRE_PRESENCES: usize = 4 * 1024;
/// Most blocks one message may carry (answers hold about 1 MiB of 256 KiB chunks; empty
/// blocks must not come by the million).
pub const MAX_WIRE_BLOCKS: usize = 512;
/// Largest CID accepted in a want or presence, in bytes (boxo's `MaxCidSize`: version and codec
/// varints, then a multihash of at most 128 bytes of digest with its code and length).
pub const MAX_CID_BYTES: usize = 168;

/// The wire message (`bitswap.message.pb.Message`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
    /// What the sender wants, or no longer wants.
    #[prost(message, optional, tag = "1")]
    pub wantlist: Option<Wantlist>,
    /// Blocks of Bitswap 1.0.0 (bare bytes, CIDv0 implied).
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub blocks: Vec<Vec<u8>>,
    /// Blocks of Bitswap 1.1.0+, with their CID prefix.
    #[prost(message, repeated, tag = "3")]
    pub payload: Vec<PayloadBlock>,
    /// HAVE / DONT_HAVE answers of Bitswap 1.2.0.
    #[prost(message, repeated, tag = "4")]
    pub block_presences: Vec<BlockPresence>,
    /// Bytes the sender still has queued for us.
    #[prost(int32, tag = "5")]
    pub pending_bytes: i32,
}

/// A wantlist, whole (`full`) or as changes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Wantlist {
    /// The entries.
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
    /// Whether this replaces the previous wantlist.
    #[prost(bool, tag = "2")]
    pub full: bool,
}

/// One want, or the cancel of one.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    /// The CID's bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub block: Vec<u8>,
    /// Higher first.
    #[prost(int32, tag = "2")]
    pub priority: i32,
    /// Withdraws an earlier want.
    #[prost(bool, tag = "3")]
    pub cancel: bool,
    /// Block (0) or Have (1).
    #[prost(enumeration = "WantType", tag = "4")]
    pub want_type: i32,
    /// Answer DONT_HAVE rather than nothing.
    #[prost(bool, tag = "5")]
    pub send_dont_have: bool,
}

/// What a want asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum WantType {
    /// The block itself.
    Block = 0,
    /// Whether the peer has it.
    Have = 1,
}

/// A block with the prefix of its CID.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PayloadBlock {
    /// CID version, codec, multihash code and digest length, as varints.
    #[prost(bytes = "vec", tag = "1")]
    pub prefix: Vec<u8>,
    /// The block's bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

/// HAVE or DONT_HAVE for one CID.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BlockPresence {
    /// The CID's bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub cid: Vec<u8>,
    /// Have (0) or DontHave (1).
    #[prost(enumeration = "PresenceType", tag = "2")]
    pub r#type: i32,
}

/// A block presence's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PresenceType {
    /// The sender has the block.
    Have = 0,
    /// The sender does not have it.
    DontHave = 1,
}

/// Why a received message or one of its parts was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Not a valid protobuf message.
    #[error("malformed bitswap message: {0}")]
    Decode(String),
    /// More entries of one kind than a message may carry.
    #[error("a bitswap message with {count} {what}, more than {limit}")]
    TooMany {
        /// Wants, presences or blocks.
        what: &'static str,
        /// How many it carries.
        count: usize,
        /// The most allowed.
        limit: usize,
    },
    /// A CID field does not parse.
    #[error("malformed CID in a bitswap message")]
    Cid,
    /// A block prefix does not parse or names an unsupported hash.
    #[error("malformed block prefix in a bitswap message")]
    Prefix,
    /// A block is larger than [`MAX_BLOCK_BYTES`].
    #[error("block of {0} bytes exceeds the {MAX_BLOCK_BYTES}-byte limit")]
    BlockTooLarge(usize),
}

/// Entries of each kind a message carries, counted without decoding them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    wants: usize,
    presences: usize,
    blocks: usize,
}

/// Counts a message's wants, presences and blocks by walking its protobuf fields (keys and
/// lengths only: nothing is allocated).
fn count_entries(mut buf: &[u8]) -> Result<Counts, WireError> {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    let bad = |e: prost::DecodeError| WireError::Decode(e.to_string());
    let mut counts = Counts::default();
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf).map_err(bad)?;
        match (tag, wire_type) {
            (1, WireType::LengthDelimited) => {
                let len = decode_varint(&mut buf).map_err(bad)?;
                let Some((mut list, rest)) = usize::try_from(len)
                    .ok()
                    .and_then(|len| buf.split_at_checked(len))
                else {
                    return Err(WireError::Decode("a wantlist past the frame's end".into()));
                };
                buf = rest;
                while !list.is_empty() {
                    let (tag, wire_type) = decode_key(&mut list).map_err(bad)?;
                    if tag == 1 {
                        counts.wants += 1;
                    }
                    skip_field(wire_type, tag, &mut list, DecodeContext::default()).map_err(bad)?;
                }
                continue;
            }
            (2 | 3, _) => counts.blocks += 1,
            (4, _) => counts.presences += 1,
            _ => {}
        }
        skip_field(wire_type, tag, &mut buf, DecodeContext::default()).map_err(bad)?;
    }
    Ok(counts)
}

/// A decoded want.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// The block wanted.
    pub cid: Cid,
    /// Block or Have.
    pub kind: WantType,
    /// Withdraws an earlier want.
    pub cancel: bool,
    /// Answer DONT_HAVE if missing.
    pub send_dont_have: bool,
}

impl Message {
    /// Decodes a frame's bytes, once its entries are counted on the wire and found within
    /// [`MAX_WIRE_WANTS`], [`MAX_WIRE_PRESENCES`] and [`MAX_WIRE_BLOCKS`].
    pub fn decode_frame(bytes: &[u8]) -> Result<Self, WireError> {
        let counts = count_entries(bytes)?;
        for (what, count, limit) in [
            ("wants", counts.wants, MAX_WIRE_WANTS),
            ("presences", counts.presences, MAX_WIRE_PRESENCES),
            ("blocks", counts.blocks, MAX_WIRE_BLOCKS),
        ] {
            if count > limit {
                return Err(WireError::TooMany { what, count, limit });
            }
        }
        Message::decode(bytes).map_err(|e| WireError::Decode(e.to_string()))
    }

    /// Encodes for a frame.
    pub fn encode_frame(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// The wants, at most [`MAX_WANTLIST_ENTRIES`]; entries with a malformed CID, or one over
    /// [`MAX_CID_BYTES`], are skipped.
    pub fn wants(&self) -> Vec<Want> {
        let Some(list) = &self.wantlist else {
            return Vec::new();
        };
        list.entries
            .iter()
            .take(MAX_WANTLIST_ENTRIES)
            .filter(|e| e.block.len() <= MAX_CID_BYTES)
            .filter_map(|e| {
                Some(Want {
                    cid: Cid::try_from(e.block.as_slice()).ok()?,
                    kind: WantType::try_from(e.want_type).unwrap_or(WantType::Block),
                    cancel: e.cancel,
                    send_dont_have: e.send_dont_have,
                })
            })
            .collect()
    }

    /// The presences, with malformed ones (and CIDs over [`MAX_CID_BYTES`]) skipped.
    pub fn presences(&self) -> Vec<(Cid, PresenceType)> {
        self.block_presences
            .iter()
            .filter(|p| p.cid.len() <= MAX_CID_BYTES)
            .filter_map(|p| {
                Some((
                    Cid::try_from(p.cid.as_slice()).ok()?,
                    PresenceType::try_from(p.r#type).ok()?,
                ))
            })
            .collect()
    }

    /// Every block, named by the CID its bytes hash to under its prefix (so a block is its own
    /// proof; whether it was wanted is the receiver's check). A bad block is reported on its
    /// own so that it does not hide the good ones.
    pub fn blocks(&self) -> Vec<Result<Block, WireError>> {
        let v1 = self.payload.iter().map(|b| {
            if b.data.len() > MAX_BLOCK_BYTES {
                return Err(WireError::BlockTooLarge(b.data.len()));
            }
            block_from_prefix(&b.prefix, &b.data)
        });
        let v0 = self.blocks.iter().map(|data| {
            if data.len() > MAX_BLOCK_BYTES {
                return Err(WireError::BlockTooLarge(data.len()));
            }
            Ok(Block::hashed_v0(data.clone()))
        });
        v1.chain(v0).collect()
    }

    /// A message carrying wants.
    pub fn with_wants(wants: &[Want], full: bool) -> Self {
        Message {
            wantlist: Some(Wantlist {
                entries: wants
                    .iter()
                    .map(|w| Entry {
                        block: w.cid.to_bytes(),
                        priority: 1,
                        cancel: w.cancel,
                        want_type: w.kind as i32,
                        send_dont_have: w.send_dont_have,
                    })
                    .collect(),
                full,
            }),
            ..Message::default()
        }
    }

    /// Adds a block (1.1.0+ form).
    pub fn push_block(&mut self, block: &Block) {
        self.payload.push(PayloadBlock {
            prefix: prefix_of(block.cid()),
            data: block.data().to_vec(),
        });
    }

    /// Adds a HAVE or DONT_HAVE.
    pub fn push_presence(&mut self, cid: &Cid, kind: PresenceType) {
        self.block_presences.push(BlockPresence {
            cid: cid.to_bytes(),
            r#type: kind as i32,
        });
    }

    /// Whether the message carries nothing.
    pub fn is_empty(&self) -> bool {
        self.wantlist.as_ref().is_none_or(|w| w.entries.is_empty())
            && self.blocks.is_empty()
            && self.payload.is_empty()
            && self.block_presences.is_empty()
    }
}

const SHA2_256: u64 = 0x12;
const DAG_PB: u64 = 0x70;

/// The CID prefix of Bitswap 1.1.0: version, codec, multihash code, digest length.
pub fn prefix_of(cid: &Cid) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    let mut buf = unsigned_varint::encode::u64_buffer();
    for v in [
        cid.version() as u64,
        cid.codec(),
        cid.hash().code(),
        u64::from(cid.hash().size()),
    ] {
        out.extend_from_slice(unsigned_varint::encode::u64(v, &mut buf));
    }
    out
}

/// The block of `data` under `prefix` (only SHA2-256, the hash IPFS uses by default).
fn block_from_prefix(prefix: &[u8], data: &[u8]) -> Result<Block, WireError> {
    let mut rest = prefix;
    let mut next = || -> Result<u64, WireError> {
        let (v, r) = unsigned_varint::decode::u64(rest).map_err(|_| WireError::Prefix)?;
        rest = r;
        Ok(v)
    };
    let (version, codec, code, len) = (next()?, next()?, next()?, next()?);
    if code != SHA2_256 || len != 32 {
        return Err(WireError::Prefix);
    }
    match version {
        0 if codec == DAG_PB => Ok(Block::hashed_v0(data.to_vec())),
        1 => Ok(Block::hashed(codec, data.to_vec())),
        _ => Err(WireError::Prefix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame is refused by its counts before it is decoded: 4 MiB of empty blocks (two
    /// bytes each on the wire) would decode into about 50 MiB of vectors.
    #[test]
    fn entries_past_the_limits_are_refused_before_decoding() {
        let empty_blocks = [0x12u8, 0x00].repeat(MAX_MESSAGE_BYTES / 2);
        match Message::decode_frame(&empty_blocks) {
            Err(WireError::TooMany { what, count, .. }) => {
                assert_eq!((what, count), ("blocks", MAX_MESSAGE_BYTES / 2))
            }
            other => panic!("{other:?}"),
        }
        // A wantlist of 20,000 empty entries: field 1 holding 20,000 times field 1, empty.
        let entries = [0x0au8, 0x00].repeat(20_000);
        let mut frame = vec![0x0a];
        let mut len = unsigned_varint::encode::usize_buffer();
        frame.extend_from_slice(unsigned_varint::encode::usize(entries.len(), &mut len));
        frame.extend_from_slice(&entries);
        assert!(matches!(
            Message::decode_frame(&frame),
            Err(WireError::TooMany {
                what: "wants",
                count: 20_000,
                ..
            })
        ));
        // A wantlist that claims more bytes than the frame has is malformed.
        assert!(matches!(
            Message::decode_frame(&[0x0a, 0x05, 0x0a]),
            Err(WireError::Decode(_))
        ));
    }

    /// What the node itself sends stays within the limits and decodes as it was.
    #[test]
    fn a_message_within_the_limits_decodes_whole() {
        let block = Block::hashed(0x55, &b"some bytes"[..]);
        let want = Want {
            cid: *block.cid(),
            kind: WantType::Have,
            cancel: false,
            send_dont_have: true,
        };
        let mut message = Message::with_wants(&[want.clone(), want.clone()], false);
        message.push_block(&block);
        message.push_presence(block.cid(), PresenceType::DontHave);
        let frame = message.encode_frame();
        assert_eq!(
            count_entries(&frame).unwrap(),
            Counts {
                wants: 2,
                presences: 1,
                blocks: 1
            }
        );
        let back = Message::decode_frame(&frame).unwrap();
        assert_eq!(back, message);
        assert_eq!(back.wants(), [want.clone(), want]);
    }
}
