//! LTX v3, the replica file format of Litestream 0.5.x: file names, TXIDs, header, trailer,
//! checksums, and (in submodules) the streaming [`Encoder`] and the verifying [`Decoder`].
//! Invariant: every file this module writes is accepted byte-for-byte by Litestream 0.5.16+
//! (`superfly/ltx` v0.5.2: NoChecksum flag, block-encoded or frame-encoded pages, page index,
//! CRC-64/GO-ISO file checksum), and the decoder hands out nothing it has not validated — a file
//! is only "good" once [`Decoder::finish`] has checked its page index, trailer and file checksum.
//!
//! Layout (all integers big-endian): header (100 B) | pages | 6 zero bytes | page index | trailer
//! (16 B). See `shared/docs/litestream-format.md` §2.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader};
use std::path::Path;
use std::str::FromStr;

use crc_fast::CrcAlgorithm;

mod decoder;
mod encoder;
mod lz4frame;

pub use decoder::{Decoder, RawPage};
pub use encoder::{Encoder, PageEncoding};
pub use lz4frame::encode_frame_page;

/// Size of the fixed LTX header.
pub const HEADER_SIZE: usize = 100;
/// Size of the trailer: post-apply checksum (8) and file checksum (8).
pub const TRAILER_SIZE: usize = 16;
/// Size of a page header: pgno (4) and page flags (2).
pub const PAGE_HEADER_SIZE: usize = 6;
/// Header flag meaning "no database checksums are tracked". Litestream 0.5.x sets it on every
/// file, and 0.5.17's restore fails on files without it (§2.5 "compatibility trap").
pub const HEADER_FLAG_NO_CHECKSUM: u32 = 2;
/// The only header flags format v3 allows.
pub const HEADER_FLAG_MASK: u32 = HEADER_FLAG_NO_CHECKSUM;
/// Page-header flag: a 4-byte compressed size follows and the payload is a raw LZ4 block
/// (Litestream 0.5.16+). Without it the payload is one complete LZ4 frame (0.5.0–0.5.15).
pub const PAGE_FLAG_SIZE: u16 = 1;
/// Bit 63 is forced on every stored checksum so that a valid checksum is never zero.
pub const CHECKSUM_FLAG: u64 = 1 << 63;
/// The 4-byte magic at the start of every LTX file.
pub const MAGIC: &[u8; 4] = b"LTX1";
/// Smallest SQLite page size.
pub const MIN_PAGE_SIZE: u32 = 512;
/// Largest SQLite page size.
pub const MAX_PAGE_SIZE: u32 = 65536;
/// Byte offset of SQLite's PENDING_BYTE (1 GiB); the page holding it is never stored.
pub const PENDING_BYTE: u32 = 0x4000_0000;

/// CRC-64/GO-ISO (Go's `hash/crc64` with the ISO table), the file checksum. It covers every
/// page byte written or read (decompressed), so it runs at memory speed: `crc_fast` folds with
/// carry-less multiplication (PCLMULQDQ / VPCLMULQDQ on x86_64, PMULL on aarch64, chosen at run
/// time, tables elsewhere), about ten times the slice-by-16 table walk, which was the largest
/// user-space cost of a sync.
pub(crate) static CRC64: Crc64 = Crc64;

/// See [`CRC64`].
pub(crate) struct Crc64;

impl Crc64 {
    pub(crate) fn digest(&self) -> Crc64Digest {
        Crc64Digest(crc_fast::Digest::new(CrcAlgorithm::Crc64GoIso))
    }

    #[cfg(test)]
    pub(crate) fn checksum(&self, bytes: &[u8]) -> u64 {
        crc_fast::checksum(CrcAlgorithm::Crc64GoIso, bytes)
    }
}

/// A running CRC-64/GO-ISO.
#[derive(Clone)]
pub(crate) struct Crc64Digest(crc_fast::Digest);

impl Crc64Digest {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The checksum of everything hashed so far (the digest stays usable).
    pub(crate) fn finalize(&self) -> u64 {
        self.0.finalize()
    }
}

pub type Result<T, E = LtxError> = std::result::Result<T, E>;

/// Everything that can go wrong reading or writing an LTX file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LtxError {
    #[error("LTX i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("truncated LTX file: unexpected end of file while reading the {section}")]
    Truncated { section: &'static str },
    #[error("not an LTX file: bad magic {found:02x?}, expected \"LTX1\"")]
    BadMagic { found: [u8; 4] },
    #[error("LTX header needs {HEADER_SIZE} bytes, got {len}")]
    ShortHeader { len: usize },
    #[error("invalid LTX header flags 0x{0:08x}: only 0x00000002 (no checksum) is allowed")]
    InvalidFlags(u32),
    #[error("invalid LTX page size {0}: must be a power of two in 512..=65536")]
    InvalidPageSize(u32),
    #[error("invalid LTX header: minimum transaction id is 0")]
    MinTxidZero,
    #[error("invalid LTX header: maximum transaction id is 0")]
    MaxTxidZero,
    #[error("invalid LTX header: transaction ids out of order ({min} > {max})")]
    TxidOrder { min: Txid, max: Txid },
    #[error("invalid LTX header: negative WAL offset {0}")]
    NegativeWalOffset(i64),
    #[error("invalid LTX header: negative WAL size {0}")]
    NegativeWalSize(i64),
    #[error("invalid LTX header: WAL salt set but WAL offset is 0")]
    WalOffsetRequiredForSalt,
    #[error("invalid LTX header: WAL size set but WAL offset is 0")]
    WalOffsetRequiredForSize,
    #[error("invalid LTX header: pre-apply checksum {0:#018x} on a snapshot (must be 0)")]
    PreApplyChecksumOnSnapshot(u64),
    #[error(
        "invalid LTX header: pre-apply checksum {0:#018x} with the no-checksum flag (must be 0)"
    )]
    PreApplyChecksumNotAllowed(u64),
    #[error("invalid LTX header: pre-apply checksum required on non-snapshot files")]
    PreApplyChecksumRequired,
    #[error("invalid LTX header: pre-apply checksum {0:#018x} lacks bit 63")]
    InvalidPreApplyChecksumFormat(u64),
    #[error("cannot encode LTX with database checksums: set HEADER_FLAG_NO_CHECKSUM (Litestream 0.5.17 cannot restore such files)")]
    ChecksumTrackingUnsupported,
    #[error("cannot encode an LTX file with commit 0 (empty database)")]
    EmptyDatabase,
    #[error("page {pgno}: data is {len} bytes, page size is {page_size}")]
    PageSizeMismatch {
        pgno: u32,
        len: usize,
        page_size: u32,
    },
    #[error("page header with page number 0 and flags 0x{flags:04x}")]
    ZeroPgno { flags: u16 },
    #[error("page {pgno}: invalid page header flags 0x{flags:04x}")]
    InvalidPageFlags { pgno: u32, flags: u16 },
    #[error("page {pgno} out of order: follows page {prev} (pages must be strictly ascending)")]
    PageOutOfOrder { prev: u32, pgno: u32 },
    #[error("page {pgno} is beyond the commit size of {commit} pages")]
    PageBeyondCommit { pgno: u32, commit: u32 },
    #[error("page {pgno} is the lock page and must never be stored")]
    LockPage { pgno: u32 },
    #[error("snapshot pages must be sequential: expected page {expected}, got {pgno}")]
    SnapshotSequence { expected: u32, pgno: u32 },
    #[error("snapshot incomplete: last page {last}, commit is {commit} pages")]
    SnapshotIncomplete { last: u32, commit: u32 },
    #[error("page {pgno}: compressed size {size} exceeds the limit of {max} bytes")]
    CompressedSizeTooLarge { pgno: u32, size: u64, max: u64 },
    #[error("page {pgno}: LZ4 block compression failed: {source}")]
    BlockCompress {
        pgno: u32,
        source: lz4_flex::block::CompressError,
    },
    #[error("page {pgno}: LZ4 block does not decompress: {source}")]
    BlockDecompress {
        pgno: u32,
        source: lz4_flex::block::DecompressError,
    },
    #[error("page {pgno}: decompressed to {len} bytes, page size is {page_size}")]
    DecompressedSizeMismatch {
        pgno: u32,
        len: usize,
        page_size: u32,
    },
    #[error("page {pgno}: invalid LZ4 frame: {reason}")]
    InvalidLz4Frame { pgno: u32, reason: &'static str },
    #[error("page {pgno}: LZ4 frame does not decompress: {source}")]
    FrameDecompress { pgno: u32, source: io::Error },
    #[error("LZ4 frame encoding failed: {0}")]
    FrameCompress(lz4_flex::frame::Error),
    #[error("page index entry {entry}: malformed varint")]
    IndexVarint { entry: usize },
    #[error("page index entry {entry}: expected {expected}, found {found}")]
    IndexEntryMismatch {
        entry: usize,
        expected: PageIndexEntry,
        found: PageIndexEntry,
    },
    #[error("page index ends after {entry} entries, expected an entry for {expected}")]
    IndexMissingEntry {
        entry: usize,
        expected: PageIndexEntry,
    },
    #[error("page index has an entry for page {pgno} that is not in the file")]
    IndexExtraEntry { pgno: u64 },
    #[error("page index length field says {stored} bytes, index is {actual} bytes")]
    IndexSizeMismatch { stored: u64, actual: u64 },
    #[error(
        "invalid LTX trailer: post-apply checksum {0:#018x} with the no-checksum flag (must be 0)"
    )]
    PostApplyChecksumNotAllowed(u64),
    #[error("invalid LTX trailer: post-apply checksum required")]
    PostApplyChecksumRequired,
    #[error("invalid LTX trailer: post-apply checksum {0:#018x} lacks bit 63")]
    InvalidPostApplyChecksumFormat(u64),
    #[error("invalid LTX trailer: file checksum {0:#018x} lacks bit 63")]
    InvalidFileChecksumFormat(u64),
    #[error("LTX file checksum mismatch: trailer says {expected:#018x}, content hashes to {actual:#018x}")]
    ChecksumMismatch { expected: u64, actual: u64 },
    #[error("snapshot post-apply checksum mismatch: trailer says {expected:#018x}, pages hash to {actual:#018x}")]
    PostApplyChecksumMismatch { expected: u64, actual: u64 },
    #[error("unexpected data after the LTX trailer")]
    TrailingData,
    #[error("the encoder failed earlier and cannot continue")]
    EncoderFailed,
    #[error("invalid LTX file name {0:?}: expected <16 hex>-<16 hex>.ltx with min <= max")]
    InvalidFileName(String),
    #[error("invalid TXID {0:?}: expected exactly 16 hex digits")]
    InvalidTxid(String),
    /// An inconsistency found by a caller between a file and what it should be (e.g. its name
    /// and its header disagree).
    #[error("invalid LTX file: {0}")]
    Invalid(String),
}

impl LtxError {
    /// True for failures of the underlying reader/writer that may succeed on another attempt.
    /// Everything else describes the bytes themselves (or a caller bug) and will not heal.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LtxError::Io(e) if e.kind() != io::ErrorKind::UnexpectedEof)
    }

    /// The complement of [`LtxError::is_retryable`].
    pub fn is_permanent(&self) -> bool {
        !self.is_retryable()
    }
}

/// Maps a read error to [`LtxError::Truncated`] when the input simply ended.
pub(crate) fn read_err(section: &'static str) -> impl FnOnce(io::Error) -> LtxError {
    move |e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            LtxError::Truncated { section }
        } else {
            LtxError::Io(e)
        }
    }
}

/// A Litestream transaction ID: one sync, not one SQLite transaction. Starts at 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Txid(pub u64);

impl Txid {
    /// The following TXID. Saturates at `u64::MAX` (unreachable at one sync per second).
    pub fn next(self) -> Txid {
        Txid(self.0.saturating_add(1))
    }
}

impl fmt::Display for Txid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for Txid {
    type Err = LtxError;

    /// Exactly 16 hex digits, like Go's `ltx.ParseTXID` (so `litestream restore -txid`).
    fn from_str(s: &str) -> Result<Self> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(LtxError::InvalidTxid(s.to_owned()));
        }
        u64::from_str_radix(s, 16)
            .map(Txid)
            .map_err(|_| LtxError::InvalidTxid(s.to_owned()))
    }
}

/// The name of an LTX file, `<min>-<max>.ltx`; the one place that formats and parses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LtxFileName {
    /// Always: min <= max.
    pub min: Txid,
    pub max: Txid,
}

impl LtxFileName {
    /// Parses `^[0-9a-f]{16}-[0-9a-f]{16}\.ltx$` with min <= max; anything else (`*.ltx.tmp`,
    /// upper case, other files found in a listing) is `None`.
    pub fn parse(name: &str) -> Option<LtxFileName> {
        let b = name.as_bytes();
        if b.len() != 37 || b[16] != b'-' || &b[33..] != b".ltx" {
            return None;
        }
        let lower_hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        if !lower_hex(&b[..16]) || !lower_hex(&b[17..33]) {
            return None;
        }
        let min = u64::from_str_radix(name.get(..16)?, 16).ok()?;
        let max = u64::from_str_radix(name.get(17..33)?, 16).ok()?;
        (min <= max).then_some(LtxFileName {
            min: Txid(min),
            max: Txid(max),
        })
    }
}

impl fmt::Display for LtxFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}.ltx", self.min, self.max)
    }
}

impl FromStr for LtxFileName {
    type Err = LtxError;

    fn from_str(s: &str) -> Result<Self> {
        LtxFileName::parse(s).ok_or_else(|| LtxError::InvalidFileName(s.to_owned()))
    }
}

/// The page containing SQLite's PENDING_BYTE; it never holds data and is never stored in LTX.
pub fn lock_page(page_size: u32) -> u32 {
    PENDING_BYTE / page_size.max(1) + 1
}

/// True for the page sizes SQLite supports: powers of two in 512..=65536.
pub fn is_valid_page_size(page_size: u32) -> bool {
    page_size.is_power_of_two() && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size)
}

/// The database-checksum contribution of one page: `FLAG | crc64(pgno BE ‖ data)`. The database
/// checksum is the XOR of these over all pages except the lock page, OR the flag.
pub fn page_checksum(pgno: u32, data: &[u8]) -> u64 {
    let mut d = CRC64.digest();
    d.update(&pgno.to_be_bytes());
    d.update(data);
    CHECKSUM_FLAG | d.finalize()
}

/// The 100-byte LTX header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Only [`HEADER_FLAG_NO_CHECKSUM`] is valid; Litestream 0.5.x always sets it.
    pub flags: u32,
    /// Power of two in 512..=65536.
    pub page_size: u32,
    /// Database size in pages after applying this file.
    pub commit: u32,
    /// Always: 0 < min_txid <= max_txid. min_txid == 1 makes the file a snapshot.
    pub min_txid: Txid,
    pub max_txid: Txid,
    /// Milliseconds since the Unix epoch when the file was produced.
    pub timestamp_ms: i64,
    /// 0 for snapshots and NoChecksum files; otherwise bit 63 set.
    pub pre_apply_checksum: u64,
    /// Offset in the WAL of the first frame covered; 0 for compactions. Always >= 0.
    pub wal_offset: i64,
    /// Bytes of WAL covered; non-zero only with a non-zero `wal_offset`.
    pub wal_size: i64,
    /// WAL salts of the generation read; non-zero only with a non-zero `wal_offset`.
    pub wal_salt1: u32,
    pub wal_salt2: u32,
    /// 0 in Litestream 0.5.x.
    pub node_id: u64,
}

impl Header {
    /// True when the file must contain every page of the database (min TXID 1).
    pub fn is_snapshot(&self) -> bool {
        self.min_txid == Txid(1)
    }

    /// True when database checksums are not tracked (pre/post-apply checksums are 0).
    pub fn no_checksum(&self) -> bool {
        self.flags & HEADER_FLAG_NO_CHECKSUM != 0
    }

    /// The lock page for this header's page size.
    pub fn lock_page(&self) -> u32 {
        lock_page(self.page_size)
    }

    /// The file name for this header's TXID range.
    pub fn file_name(&self) -> LtxFileName {
        LtxFileName {
            min: self.min_txid,
            max: self.max_txid,
        }
    }

    /// Serialises the header; the 20 reserved bytes are zero.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&self.flags.to_be_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_be_bytes());
        b[12..16].copy_from_slice(&self.commit.to_be_bytes());
        b[16..24].copy_from_slice(&self.min_txid.0.to_be_bytes());
        b[24..32].copy_from_slice(&self.max_txid.0.to_be_bytes());
        b[32..40].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        b[40..48].copy_from_slice(&self.pre_apply_checksum.to_be_bytes());
        b[48..56].copy_from_slice(&self.wal_offset.to_be_bytes());
        b[56..64].copy_from_slice(&self.wal_size.to_be_bytes());
        b[64..68].copy_from_slice(&self.wal_salt1.to_be_bytes());
        b[68..72].copy_from_slice(&self.wal_salt2.to_be_bytes());
        b[72..80].copy_from_slice(&self.node_id.to_be_bytes());
        b
    }

    /// Parses the first 100 bytes of `b`. Checks the magic only; call [`Header::validate`].
    /// Reserved bytes are ignored, as in Go's `UnmarshalBinary` (they are still covered by the
    /// file checksum).
    pub fn decode(b: &[u8]) -> Result<Header> {
        let b: &[u8; HEADER_SIZE] = b
            .get(..HEADER_SIZE)
            .and_then(|s| s.try_into().ok())
            .ok_or(LtxError::ShortHeader { len: b.len() })?;
        if &b[0..4] != MAGIC {
            return Err(LtxError::BadMagic {
                found: [b[0], b[1], b[2], b[3]],
            });
        }
        let u32_at = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_be_bytes(a)
        };
        Ok(Header {
            flags: u32_at(4),
            page_size: u32_at(8),
            commit: u32_at(12),
            min_txid: Txid(u64_at(16)),
            max_txid: Txid(u64_at(24)),
            timestamp_ms: u64_at(32) as i64,
            pre_apply_checksum: u64_at(40),
            wal_offset: u64_at(48) as i64,
            wal_size: u64_at(56) as i64,
            wal_salt1: u32_at(64),
            wal_salt2: u32_at(68),
            node_id: u64_at(72),
        })
    }

    /// Every rule of Go's `Header.Validate` (ltx v0.5.2), in the same order.
    pub fn validate(&self) -> Result<()> {
        if self.flags & !HEADER_FLAG_MASK != 0 {
            return Err(LtxError::InvalidFlags(self.flags));
        }
        if !is_valid_page_size(self.page_size) {
            return Err(LtxError::InvalidPageSize(self.page_size));
        }
        if self.min_txid.0 == 0 {
            return Err(LtxError::MinTxidZero);
        }
        if self.max_txid.0 == 0 {
            return Err(LtxError::MaxTxidZero);
        }
        if self.min_txid > self.max_txid {
            return Err(LtxError::TxidOrder {
                min: self.min_txid,
                max: self.max_txid,
            });
        }
        if self.wal_offset < 0 {
            return Err(LtxError::NegativeWalOffset(self.wal_offset));
        }
        if self.wal_size < 0 {
            return Err(LtxError::NegativeWalSize(self.wal_size));
        }
        if (self.wal_salt1 != 0 || self.wal_salt2 != 0) && self.wal_offset == 0 {
            return Err(LtxError::WalOffsetRequiredForSalt);
        }
        if self.wal_offset == 0 && self.wal_size != 0 {
            return Err(LtxError::WalOffsetRequiredForSize);
        }
        if self.is_snapshot() {
            if self.pre_apply_checksum != 0 {
                return Err(LtxError::PreApplyChecksumOnSnapshot(
                    self.pre_apply_checksum,
                ));
            }
        } else if self.no_checksum() {
            if self.pre_apply_checksum != 0 {
                return Err(LtxError::PreApplyChecksumNotAllowed(
                    self.pre_apply_checksum,
                ));
            }
        } else if self.pre_apply_checksum == 0 {
            return Err(LtxError::PreApplyChecksumRequired);
        } else if self.pre_apply_checksum & CHECKSUM_FLAG == 0 {
            return Err(LtxError::InvalidPreApplyChecksumFormat(
                self.pre_apply_checksum,
            ));
        }
        Ok(())
    }
}

/// The 16-byte LTX trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// 0 with [`HEADER_FLAG_NO_CHECKSUM`] (always, for Litestream 0.5.x).
    pub post_apply_checksum: u64,
    /// `CHECKSUM_FLAG | crc64(everything before these 8 bytes, pages decompressed)`.
    pub file_checksum: u64,
}

impl Trailer {
    pub fn encode(&self) -> [u8; TRAILER_SIZE] {
        let mut b = [0u8; TRAILER_SIZE];
        b[..8].copy_from_slice(&self.post_apply_checksum.to_be_bytes());
        b[8..].copy_from_slice(&self.file_checksum.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; TRAILER_SIZE]) -> Trailer {
        let mut post = [0u8; 8];
        let mut file = [0u8; 8];
        post.copy_from_slice(&b[..8]);
        file.copy_from_slice(&b[8..]);
        Trailer {
            post_apply_checksum: u64::from_be_bytes(post),
            file_checksum: u64::from_be_bytes(file),
        }
    }

    /// Go's `Trailer.Validate`: checksum presence and format, given the header's flags.
    pub fn validate(&self, header: &Header) -> Result<()> {
        if header.no_checksum() {
            if self.post_apply_checksum != 0 {
                return Err(LtxError::PostApplyChecksumNotAllowed(
                    self.post_apply_checksum,
                ));
            }
        } else if self.post_apply_checksum == 0 {
            return Err(LtxError::PostApplyChecksumRequired);
        } else if self.post_apply_checksum & CHECKSUM_FLAG == 0 {
            return Err(LtxError::InvalidPostApplyChecksumFormat(
                self.post_apply_checksum,
            ));
        }
        if self.file_checksum & CHECKSUM_FLAG == 0 {
            return Err(LtxError::InvalidFileChecksumFormat(self.file_checksum));
        }
        Ok(())
    }
}

/// One page-index entry: where a page's frame (page header, size field, payload) lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageIndexEntry {
    pub pgno: u64,
    /// Absolute offset of the page header from the start of the file.
    pub offset: u64,
    /// Length of the frame: 6 (+4 for block encoding) + payload.
    pub size: u64,
}

impl fmt::Display for PageIndexEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "(pgno {}, offset {}, size {})",
            self.pgno, self.offset, self.size
        )
    }
}

/// Decodes the whole file at `path`, checking every page, the page index, the trailer and the
/// file checksum. Returns the header of a file that passed.
pub fn verify_file(path: impl AsRef<Path>) -> Result<Header> {
    let file = File::open(path.as_ref())?;
    let mut dec = Decoder::new(BufReader::new(file))?;
    let mut buf = Vec::new();
    while dec.next_page(&mut buf)?.is_some() {}
    let header = dec.header().clone();
    dec.finish()?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn header(min: u64, max: u64, page_size: u32, commit: u32) -> Header {
        Header {
            flags: HEADER_FLAG_NO_CHECKSUM,
            page_size,
            commit,
            min_txid: Txid(min),
            max_txid: Txid(max),
            timestamp_ms: 1_795_960_672_892,
            pre_apply_checksum: 0,
            wal_offset: 0,
            wal_size: 0,
            wal_salt1: 0,
            wal_salt2: 0,
            node_id: 0,
        }
    }

    #[test]
    fn txid_display_and_parse_roundtrip() {
        assert_eq!(Txid(0x2a).to_string(), "000000000000002a");
        assert_eq!("000000000000002a".parse::<Txid>().unwrap(), Txid(42));
        assert_eq!("FFFFFFFFFFFFFFFF".parse::<Txid>().unwrap(), Txid(u64::MAX));
        for bad in [
            "2a",
            "+00000000000002a",
            "000000000000002g",
            "0000000000000002a",
            "",
        ] {
            assert!(bad.parse::<Txid>().is_err(), "{bad:?} must be rejected");
        }
        assert_eq!(Txid(1).next(), Txid(2));
        assert_eq!(Txid(u64::MAX).next(), Txid(u64::MAX));
    }

    #[test]
    fn file_name_roundtrip() {
        for (min, max) in [(1, 1), (2, 6), (0xabc, 0xdef), (u64::MAX, u64::MAX)] {
            let n = LtxFileName {
                min: Txid(min),
                max: Txid(max),
            };
            let s = n.to_string();
            assert_eq!(s.len(), 37);
            assert_eq!(LtxFileName::parse(&s), Some(n));
            assert_eq!(s.parse::<LtxFileName>().unwrap(), n);
        }
        assert_eq!(
            LtxFileName {
                min: Txid(2),
                max: Txid(6)
            }
            .to_string(),
            "0000000000000002-0000000000000006.ltx"
        );
    }

    #[test]
    fn file_name_rejects_everything_else() {
        for bad in [
            "0000000000000001-0000000000000001.ltx.tmp",
            "0000000000000002-0000000000000001.ltx",
            "000000000000000A-000000000000000a.ltx",
            "0000000000000001-0000000000000001.LTX",
            "000000000000001-0000000000000001.ltx",
            "0000000000000001_0000000000000001.ltx",
            "+000000000000001-0000000000000001.ltx",
            "0000000000000001-0000000000000001",
            "lock.json",
            "",
            "é000000000000001-0000000000000001.lt",
        ] {
            assert_eq!(LtxFileName::parse(bad), None, "{bad:?}");
            assert!(bad.parse::<LtxFileName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lock_page_numbers() {
        assert_eq!(lock_page(512), 2_097_153);
        assert_eq!(lock_page(4096), 262_145);
        assert_eq!(lock_page(65536), 16_385);
    }

    #[test]
    fn header_encode_decode_roundtrip() {
        let mut h = header(2, 2, 4096, 10);
        h.wal_offset = 16512;
        h.wal_size = 32960;
        h.wal_salt1 = 0x58a8_b51b;
        h.wal_salt2 = 0x984f_4139;
        h.node_id = 7;
        h.timestamp_ms = -5;
        let b = h.encode();
        assert_eq!(&b[..4], b"LTX1");
        assert_eq!(Header::decode(&b).unwrap(), h);
        h.validate().unwrap();
    }

    #[test]
    fn header_decode_rejects_bad_magic_and_short_input() {
        let mut b = header(1, 1, 4096, 1).encode();
        assert!(matches!(
            Header::decode(&b[..99]),
            Err(LtxError::ShortHeader { len: 99 })
        ));
        b[3] = b'2';
        assert!(matches!(Header::decode(&b), Err(LtxError::BadMagic { .. })));
    }

    #[test]
    fn header_validation_rules() {
        let ok = header(2, 3, 4096, 1);
        ok.validate().unwrap();
        let check = |f: &dyn Fn(&mut Header), want: &dyn Fn(&LtxError) -> bool| {
            let mut h = ok.clone();
            f(&mut h);
            let err = h.validate().expect_err("must be invalid");
            assert!(want(&err), "unexpected error {err:?}");
        };
        check(&|h| h.flags = 1, &|e| {
            matches!(e, LtxError::InvalidFlags(1))
        });
        check(&|h| h.flags = 3, &|e| {
            matches!(e, LtxError::InvalidFlags(3))
        });
        check(&|h| h.page_size = 1000, &|e| {
            matches!(e, LtxError::InvalidPageSize(1000))
        });
        check(&|h| h.page_size = 256, &|e| {
            matches!(e, LtxError::InvalidPageSize(256))
        });
        check(&|h| h.page_size = 131072, &|e| {
            matches!(e, LtxError::InvalidPageSize(_))
        });
        check(&|h| h.min_txid = Txid(0), &|e| {
            matches!(e, LtxError::MinTxidZero)
        });
        check(&|h| h.max_txid = Txid(0), &|e| {
            matches!(e, LtxError::MaxTxidZero)
        });
        check(&|h| h.min_txid = Txid(4), &|e| {
            matches!(e, LtxError::TxidOrder { .. })
        });
        check(&|h| h.wal_offset = -1, &|e| {
            matches!(e, LtxError::NegativeWalOffset(-1))
        });
        check(
            &|h| {
                h.wal_offset = 32;
                h.wal_size = -1
            },
            &|e| matches!(e, LtxError::NegativeWalSize(-1)),
        );
        check(&|h| h.wal_salt2 = 9, &|e| {
            matches!(e, LtxError::WalOffsetRequiredForSalt)
        });
        check(&|h| h.wal_size = 4120, &|e| {
            matches!(e, LtxError::WalOffsetRequiredForSize)
        });
        check(&|h| h.pre_apply_checksum = CHECKSUM_FLAG | 5, &|e| {
            matches!(e, LtxError::PreApplyChecksumNotAllowed(_))
        });
        check(
            &|h| {
                h.min_txid = Txid(1);
                h.pre_apply_checksum = CHECKSUM_FLAG | 5
            },
            &|e| matches!(e, LtxError::PreApplyChecksumOnSnapshot(_)),
        );
        check(&|h| h.flags = 0, &|e| {
            matches!(e, LtxError::PreApplyChecksumRequired)
        });
        check(
            &|h| {
                h.flags = 0;
                h.pre_apply_checksum = 5
            },
            &|e| matches!(e, LtxError::InvalidPreApplyChecksumFormat(5)),
        );
        // Tracked checksums are valid in the format (the encoder refuses them, see encoder).
        let mut tracked = ok.clone();
        tracked.flags = 0;
        tracked.pre_apply_checksum = CHECKSUM_FLAG | 5;
        tracked.validate().unwrap();
        // WAL fields all set, or all zero, are both fine.
        let mut wal = ok.clone();
        wal.wal_offset = 32;
        wal.wal_size = 4120;
        wal.wal_salt1 = 1;
        wal.validate().unwrap();
    }

    #[test]
    fn trailer_validation_rules() {
        let h = header(1, 1, 4096, 1);
        let t = |post, file| Trailer {
            post_apply_checksum: post,
            file_checksum: file,
        };
        t(0, CHECKSUM_FLAG | 1).validate(&h).unwrap();
        assert!(matches!(
            t(CHECKSUM_FLAG, CHECKSUM_FLAG).validate(&h),
            Err(LtxError::PostApplyChecksumNotAllowed(_))
        ));
        assert!(matches!(
            t(0, 1).validate(&h),
            Err(LtxError::InvalidFileChecksumFormat(1))
        ));
        let mut tracked = h.clone();
        tracked.flags = 0;
        assert!(matches!(
            t(0, CHECKSUM_FLAG).validate(&tracked),
            Err(LtxError::PostApplyChecksumRequired)
        ));
        assert!(matches!(
            t(3, CHECKSUM_FLAG).validate(&tracked),
            Err(LtxError::InvalidPostApplyChecksumFormat(3))
        ));
        let tr = t(0, CHECKSUM_FLAG | 0x1234);
        assert_eq!(Trailer::decode(&tr.encode()), tr);
    }

    #[test]
    fn crc64_is_go_iso() {
        // Go: crc64.Checksum([]byte("123456789"), crc64.MakeTable(crc64.ISO)) == 0xb90956c775a41001
        assert_eq!(CRC64.checksum(b"123456789"), 0xb909_56c7_75a4_1001);
    }

    #[test]
    fn crc64_matches_the_table_implementation_for_any_split() {
        // The `crc` crate's slice-by-16 table walk is the reference: same value for every length
        // (SIMD folding has 16/64/128-byte stages and tails) and however updates are split.
        let reference = crc::Crc::<u64, crc::Table<16>>::new(&crc::CRC_64_GO_ISO);
        let data: Vec<u8> = (0..20_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in (0..300).chain([4095, 4096, 4097, 8192 + 7, 20_000]) {
            let want = reference.checksum(&data[..len]);
            assert_eq!(CRC64.checksum(&data[..len]), want, "len {len}");
            for split in [1, 6, 10, 100, 4096] {
                let mut d = CRC64.digest();
                for chunk in data[..len].chunks(split) {
                    d.update(chunk);
                }
                assert_eq!(d.clone().finalize(), want, "len {len} split {split}");
                assert_eq!(d.finalize(), want, "len {len} split {split}");
            }
        }
    }

    #[test]
    fn errors_are_permanent_except_io() {
        assert!(LtxError::Io(io::Error::other("disk")).is_retryable());
        assert!(LtxError::Io(io::ErrorKind::UnexpectedEof.into()).is_permanent());
        assert!(LtxError::ChecksumMismatch {
            expected: 1,
            actual: 2
        }
        .is_permanent());
    }
}
