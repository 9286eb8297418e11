//! Reader for SQLite's `<db>-wal` file, read directly with positional reads while SQLite may be
//! writing it: header, frame headers, page images, the cumulative checksum chain, and scans for
//! committed frames. Invariant: a scan reports only frames SQLite itself would recover — same
//! salts as expected, page number non-zero, cumulative checksum valid from the seed, fully
//! present — and only up to the last commit frame among them; a torn, foreign-salted or
//! overwritten frame ends the scan, it is never an error and never skipped over.
//!
//! Format: 32-byte header (magic, version, page size, checkpoint seq, salt-1, salt-2,
//! checksum-1, checksum-2; all big-endian), then frames of a 24-byte header (pgno, commit size
//! or 0, salt-1, salt-2, cumulative checksum-1/2) and one page. The magic's low bit selects the
//! byte order in which the checksum reads the data (0: little-endian, 1: big-endian).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Size of the WAL header.
pub const WAL_HEADER_SIZE: u64 = 32;
/// Size of a frame header; a frame is this plus one page.
pub const WAL_FRAME_HEADER_SIZE: u64 = 24;
/// Magic of a WAL whose checksums read words little-endian.
pub const WAL_MAGIC_LE: u32 = 0x377f_0682;
/// Magic of a WAL whose checksums read words big-endian.
pub const WAL_MAGIC_BE: u32 = 0x377f_0683;
/// The only WAL format version SQLite has ever written (3.7.0).
pub const WAL_VERSION: u32 = 3_007_000;
/// Litestream's `max-sync-wal-bytes` default: one sync ships at most this much WAL (cut at a
/// commit boundary) and loops, bounding the size of one L0 and the time a sync holds locks.
pub const DEFAULT_MAX_SYNC_WAL_BYTES: u64 = 64 << 20;
/// Scans read this many bytes per positional read (rounded down to whole frames, at least one):
/// 256 frames of 4 KiB pages per syscall, while the buffer stays small.
const SCAN_READ_BYTES: u64 = 1 << 20;

pub type Result<T, E = WalError> = std::result::Result<T, E>;

/// What can go wrong reading a WAL. A WAL that is merely absent, short, torn or invalid is not
/// an error: that is `Ok(None)` or the end of a scan.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    #[error("WAL i/o error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("WAL i/o error: {0}")]
    Read(#[from] io::Error),
    #[error("unsupported WAL format version {0} (expected 3007000)")]
    UnsupportedVersion(u32),
    #[error("WAL offset {offset} is not a frame boundary for page size {page_size}")]
    UnalignedOffset { offset: u64, page_size: u32 },
    #[error("page buffer is {len} bytes, WAL page size is {page_size}")]
    PageBufferSize { len: usize, page_size: u32 },
}

impl WalError {
    /// True for I/O failures, which may succeed on another attempt.
    pub fn is_retryable(&self) -> bool {
        matches!(self, WalError::Io { .. } | WalError::Read(_))
    }

    /// The complement of [`WalError::is_retryable`].
    pub fn is_permanent(&self) -> bool {
        !self.is_retryable()
    }
}

/// The byte order in which the WAL checksum reads 32-bit words (chosen by the magic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteOrder {
    Little,
    Big,
}

/// SQLite's `walChecksumBytes`: for each 8-byte chunk read as two u32 `x0, x1` in `order`,
/// `s1 += x0 + s2; s2 += x1 + s1` (wrapping), starting from `seed`. `data.len()` must be a
/// multiple of 8 (SQLite asserts it; every caller passes 24, 8 or a page); a shorter tail is
/// ignored.
pub fn checksum(order: ByteOrder, seed: (u32, u32), data: &[u8]) -> (u32, u32) {
    let (mut s1, mut s2) = seed;
    let word = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        match order {
            ByteOrder::Little => u32::from_le_bytes(a),
            ByteOrder::Big => u32::from_be_bytes(a),
        }
    };
    for c in data.chunks_exact(8) {
        s1 = s1.wrapping_add(word(&c[..4])).wrapping_add(s2);
        s2 = s2.wrapping_add(word(&c[4..])).wrapping_add(s1);
    }
    (s1, s2)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads into `buf` at `offset` until it is full or the file ends; returns the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The 32-byte WAL header of a valid WAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalHeader {
    /// [`WAL_MAGIC_LE`] or [`WAL_MAGIC_BE`].
    pub magic: u32,
    /// Always [`WAL_VERSION`].
    pub version: u32,
    /// Power of two in 512..=65536, stored literally (65536 is 0x00010000 in the WAL; the
    /// "1 means 65536" encoding is the db header's and the shm's, not the WAL's).
    pub page_size: u32,
    pub checkpoint_seq: u32,
    /// Salts of this WAL generation; on a restart SQLite adds 1 to salt-1 and randomises salt-2.
    pub salt1: u32,
    pub salt2: u32,
    /// Checksum of the first 24 header bytes: the seed of the first frame's checksum.
    pub checksum1: u32,
    pub checksum2: u32,
}

impl WalHeader {
    /// Reads the header of `file`. `None` means "no valid WAL", exactly when SQLite would
    /// recover no frames: file shorter than 32 bytes, unknown magic, header checksum mismatch
    /// (e.g. a header half-written during a restart) or an impossible page size.
    pub fn read(file: &File) -> Result<Option<WalHeader>> {
        let mut b = [0u8; WAL_HEADER_SIZE as usize];
        let n = read_full_at(file, &mut b, 0)?;
        WalHeader::parse(&b[..n])
    }

    /// [`WalHeader::read`] on bytes. A wrong version with a valid checksum is an error: SQLite
    /// refuses to open such a WAL (SQLITE_CANTOPEN) rather than ignoring it.
    pub fn parse(b: &[u8]) -> Result<Option<WalHeader>> {
        if b.len() < WAL_HEADER_SIZE as usize {
            return Ok(None);
        }
        let magic = be32(b, 0);
        let order = match magic {
            WAL_MAGIC_LE => ByteOrder::Little,
            WAL_MAGIC_BE => ByteOrder::Big,
            _ => return Ok(None),
        };
        let h = WalHeader {
            magic,
            version: be32(b, 4),
            page_size: be32(b, 8),
            checkpoint_seq: be32(b, 12),
            salt1: be32(b, 16),
            salt2: be32(b, 20),
            checksum1: be32(b, 24),
            checksum2: be32(b, 28),
        };
        if checksum(order, (0, 0), &b[..24]) != h.checksum() {
            return Ok(None);
        }
        if h.version != WAL_VERSION {
            return Err(WalError::UnsupportedVersion(h.version));
        }
        if !h.page_size.is_power_of_two() || !(512..=65536).contains(&h.page_size) {
            return Ok(None);
        }
        Ok(Some(h))
    }

    /// Serialises the header with the checksum fields as stored (see [`WalHeader::with_checksum`]).
    pub fn encode(&self) -> [u8; WAL_HEADER_SIZE as usize] {
        let mut b = [0u8; WAL_HEADER_SIZE as usize];
        for (i, v) in [
            self.magic,
            self.version,
            self.page_size,
            self.checkpoint_seq,
            self.salt1,
            self.salt2,
            self.checksum1,
            self.checksum2,
        ]
        .into_iter()
        .enumerate()
        {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
        }
        b
    }

    /// This header with its checksum fields recomputed from the other fields.
    pub fn with_checksum(mut self) -> WalHeader {
        let b = self.encode();
        (self.checksum1, self.checksum2) = checksum(self.byte_order(), (0, 0), &b[..24]);
        self
    }

    pub fn byte_order(&self) -> ByteOrder {
        if self.magic & 1 == 1 {
            ByteOrder::Big
        } else {
            ByteOrder::Little
        }
    }

    pub fn salts(&self) -> (u32, u32) {
        (self.salt1, self.salt2)
    }

    /// The header checksum: the seed for a scan from offset 32.
    pub fn checksum(&self) -> (u32, u32) {
        (self.checksum1, self.checksum2)
    }

    /// Bytes per frame: frame header plus one page.
    pub fn frame_size(&self) -> u64 {
        WAL_FRAME_HEADER_SIZE + u64::from(self.page_size)
    }

    /// Offset of the frame with 0-based index `n`.
    pub fn frame_offset(&self, n: u64) -> u64 {
        WAL_HEADER_SIZE + n * self.frame_size()
    }
}

/// The 24-byte header of one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub pgno: u32,
    /// Database size in pages after this commit; 0 for non-commit frames.
    pub commit: u32,
    pub salt1: u32,
    pub salt2: u32,
    /// Cumulative checksum over the header and all frames up to and including this one.
    pub checksum1: u32,
    pub checksum2: u32,
}

impl FrameHeader {
    pub fn parse(b: &[u8; WAL_FRAME_HEADER_SIZE as usize]) -> FrameHeader {
        FrameHeader {
            pgno: be32(b, 0),
            commit: be32(b, 4),
            salt1: be32(b, 8),
            salt2: be32(b, 12),
            checksum1: be32(b, 16),
            checksum2: be32(b, 20),
        }
    }

    pub fn is_commit(&self) -> bool {
        self.commit != 0
    }

    pub fn salts(&self) -> (u32, u32) {
        (self.salt1, self.salt2)
    }

    pub fn checksum(&self) -> (u32, u32) {
        (self.checksum1, self.checksum2)
    }
}

/// Reads the frame header at `offset`; `None` if the file ends before it is complete. Nothing is
/// verified: compare salts and checksum with what you expect.
pub fn read_frame_header(file: &File, offset: u64) -> Result<Option<FrameHeader>> {
    let mut b = [0u8; WAL_FRAME_HEADER_SIZE as usize];
    let n = read_full_at(file, &mut b, offset)?;
    Ok((n == b.len()).then(|| FrameHeader::parse(&b)))
}

/// Reads the frame at `offset` — header and page image in one positional read, into `page`
/// (whose length is the page size). `None` if the file ends before the frame is complete.
/// Nothing is verified: a page image is only trustworthy if the header's salts are the
/// expected ones and the WAL header was unchanged after the read (SQLite rewrites the header
/// before it overwrites any frame).
pub fn read_frame(file: &File, offset: u64, page: &mut [u8]) -> Result<Option<FrameHeader>> {
    let mut buf = vec![0u8; WAL_FRAME_HEADER_SIZE as usize + page.len()];
    let n = read_full_at(file, &mut buf, offset)?;
    if n < buf.len() {
        return Ok(None);
    }
    let (h, data) = buf.split_at(WAL_FRAME_HEADER_SIZE as usize);
    page.copy_from_slice(data);
    let mut hb = [0u8; WAL_FRAME_HEADER_SIZE as usize];
    hb.copy_from_slice(h);
    Ok(Some(FrameHeader::parse(&hb)))
}

/// The committed frames found by one scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameScan {
    /// Offset the scan started at (a frame boundary).
    pub start: u64,
    /// Offset just past the last commit frame accepted; `== start` if none. Always a frame
    /// boundary, `start <= end`.
    pub end: u64,
    /// Database size in pages at the last commit accepted.
    pub commit: Option<u32>,
    /// Cumulative checksum of the frame ending at `end` (the seed if no commit): store it with
    /// `end` to resume later.
    pub checksum: (u32, u32),
    /// Salts every accepted frame carried.
    pub salts: (u32, u32),
    /// Latest offset of each page among the accepted frames, pages beyond the final `commit`
    /// dropped (the database shrank). Frames after the last commit are not included.
    pub pages: BTreeMap<u32, u64>,
    /// Number of frames in `start..end`.
    pub frames: u64,
    /// False when the scan stopped because of `max_bytes` (more committed frames may follow);
    /// true when it stopped at the end of the valid frame chain.
    pub reached_end: bool,
}

/// Scans forward from `from` (a frame boundary >= 32) for frames carrying `header`'s salts whose
/// checksum chain continues from `seed` (the header checksum when `from == 32`, else the
/// cumulative checksum of the frame before `from`). See [`scan_with_salts`].
pub fn scan(
    file: &File,
    header: &WalHeader,
    from: u64,
    seed: (u32, u32),
    max_bytes: u64,
) -> Result<FrameScan> {
    scan_with_salts(file, header, from, seed, header.salts(), max_bytes)
}

/// Scans forward from `from` for frames carrying `salts` whose checksum chain continues from
/// `seed`, stopping at the first frame that is incomplete, has other salts, has page number 0
/// or breaks the chain; or, once at least `max_bytes` (0 = unlimited) have been accepted, at the
/// next commit boundary — so a scan always makes progress even past one huge transaction.
/// Only frames up to the last commit frame reached are reported. `header` supplies page size and
/// byte order; `salts` may differ from its salts (reading an older generation's tail).
pub fn scan_with_salts(
    file: &File,
    header: &WalHeader,
    from: u64,
    seed: (u32, u32),
    salts: (u32, u32),
    max_bytes: u64,
) -> Result<FrameScan> {
    let frame_size = header.frame_size();
    if from < WAL_HEADER_SIZE || !(from - WAL_HEADER_SIZE).is_multiple_of(frame_size) {
        return Err(WalError::UnalignedOffset {
            offset: from,
            page_size: header.page_size,
        });
    }
    let order = header.byte_order();
    let fs = frame_size as usize;
    // Size the buffer for what is there now (usually a few frames), capped; frames appended
    // during the scan are still read, just in more reads.
    let present = file.metadata()?.len().saturating_sub(from) / frame_size;
    let per_read = present.clamp(1, (SCAN_READ_BYTES / frame_size).max(1)) as usize;
    let mut buf = vec![0u8; per_read * fs];

    let mut out = FrameScan {
        start: from,
        end: from,
        commit: None,
        checksum: seed,
        salts,
        pages: BTreeMap::new(),
        frames: 0,
        reached_end: true,
    };
    // Frames of the transaction in progress, in WAL order: published only when its commit frame
    // arrives, by inserting each (a later frame of a page replaces the earlier one). Not
    // `BTreeMap::append`: that rebuilds the whole map, once per commit, O(frames²) per scan.
    let mut txn: Vec<(u32, u64)> = Vec::new();
    let mut txn_frames = 0u64;
    let mut chain = seed;
    let mut offset = from;
    'read: loop {
        let n = read_full_at(file, &mut buf, offset)?;
        let whole = n / fs;
        for frame in buf.chunks_exact(fs).take(whole) {
            let mut hb = [0u8; WAL_FRAME_HEADER_SIZE as usize];
            hb.copy_from_slice(&frame[..WAL_FRAME_HEADER_SIZE as usize]);
            let fh = FrameHeader::parse(&hb);
            if fh.salts() != salts || fh.pgno == 0 {
                break 'read;
            }
            chain = checksum(order, chain, &frame[..8]);
            chain = checksum(order, chain, &frame[WAL_FRAME_HEADER_SIZE as usize..]);
            if chain != fh.checksum() {
                break 'read;
            }
            txn.push((fh.pgno, offset));
            txn_frames += 1;
            offset += frame_size;
            if fh.is_commit() {
                out.pages.extend(txn.drain(..));
                out.frames += txn_frames;
                txn_frames = 0;
                out.end = offset;
                out.commit = Some(fh.commit);
                out.checksum = chain;
                if max_bytes > 0 && out.end - out.start >= max_bytes {
                    out.reached_end = false;
                    break 'read;
                }
            }
        }
        if whole < per_read {
            break; // end of file, possibly inside a torn frame
        }
    }
    if let Some(commit) = out.commit {
        out.pages.retain(|&pgno, _| pgno <= commit);
    }
    Ok(out)
}

/// A WAL file opened for reading, with the header it had when opened.
#[derive(Debug)]
pub struct WalReader {
    path: PathBuf,
    file: File,
    header: WalHeader,
}

impl WalReader {
    /// Opens `path`; `None` if it does not exist or holds no valid WAL (see [`WalHeader::read`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Option<WalReader>> {
        let path = path.as_ref();
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(WalError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        Ok(WalHeader::read(&file)?.map(|header| WalReader {
            path: path.to_owned(),
            file,
            header,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// The header as read by [`WalReader::open`].
    pub fn header(&self) -> &WalHeader {
        &self.header
    }

    /// Re-reads the header now. Compare with [`WalReader::header`] after reading page images:
    /// unchanged salts mean no frame was overwritten meanwhile.
    pub fn current_header(&self) -> Result<Option<WalHeader>> {
        WalHeader::read(&self.file)
    }

    /// Current length of the file.
    pub fn len(&self) -> Result<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|source| WalError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// True when the file holds no bytes at all.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Scans the whole generation from offset 32, seeded with the header checksum.
    pub fn scan_from_start(&self, max_bytes: u64) -> Result<FrameScan> {
        scan(
            &self.file,
            &self.header,
            WAL_HEADER_SIZE,
            self.header.checksum(),
            max_bytes,
        )
    }

    /// Resumes at `from` with the stored cumulative checksum of the frame before it and the
    /// salts the caller expects (those of its last scan).
    pub fn scan_from(
        &self,
        from: u64,
        seed: (u32, u32),
        salts: (u32, u32),
        max_bytes: u64,
    ) -> Result<FrameScan> {
        scan_with_salts(&self.file, &self.header, from, seed, salts, max_bytes)
    }

    pub fn read_frame_header(&self, offset: u64) -> Result<Option<FrameHeader>> {
        read_frame_header(&self.file, offset)
    }

    /// Reads the frame at `offset` into `page` (exactly one page long).
    pub fn read_frame(&self, offset: u64, page: &mut [u8]) -> Result<Option<FrameHeader>> {
        if page.len() != self.header.page_size as usize {
            return Err(WalError::PageBufferSize {
                len: page.len(),
                page_size: self.header.page_size,
            });
        }
        read_frame(&self.file, offset, page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(magic: u32, page_size: u32) -> WalHeader {
        WalHeader {
            magic,
            version: WAL_VERSION,
            page_size,
            checkpoint_seq: 3,
            salt1: 0x8e08_88b4,
            salt2: 0x1234_5678,
            checksum1: 0,
            checksum2: 0,
        }
        .with_checksum()
    }

    #[test]
    fn checksum_reads_words_in_magic_order() {
        let data: Vec<u8> = (1..=16).collect();
        // Little-endian words: 0x04030201, 0x08070605, 0x0c0b0a09, 0x100f0e0d.
        let (a1, a2) = (0x0403_0201u32, 0x0807_0605u32.wrapping_add(0x0403_0201));
        let b1 = a1.wrapping_add(0x0c0b_0a09).wrapping_add(a2);
        let b2 = a2.wrapping_add(0x100f_0e0d).wrapping_add(b1);
        assert_eq!(checksum(ByteOrder::Little, (0, 0), &data), (b1, b2));
        // Big-endian is the same over byte-swapped words.
        let swapped: Vec<u8> = data
            .chunks(4)
            .flat_map(|c| c.iter().rev().copied())
            .collect();
        assert_eq!(checksum(ByteOrder::Big, (0, 0), &swapped), (b1, b2));
        // Wrapping arithmetic and seeding.
        let ff = [0xffu8; 8];
        assert_eq!(
            checksum(ByteOrder::Big, (1, 1), &ff),
            (0xffff_ffffu32.wrapping_add(2), {
                let s1 = 0xffff_ffffu32.wrapping_add(2);
                1u32.wrapping_add(0xffff_ffff).wrapping_add(s1)
            })
        );
        // A chunked computation equals a one-shot one (this is what makes resuming work).
        let big: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 256) as u8).collect();
        let once = checksum(ByteOrder::Big, (7, 9), &big);
        let twice = checksum(
            ByteOrder::Big,
            checksum(ByteOrder::Big, (7, 9), &big[..1024]),
            &big[1024..],
        );
        assert_eq!(once, twice);
    }

    #[test]
    fn big_endian_header_computed_by_hand_is_accepted() {
        let h = header(WAL_MAGIC_BE, 4096);
        let b = h.encode();
        assert_eq!(&b[..4], &[0x37, 0x7f, 0x06, 0x83]);
        let parsed = WalHeader::parse(&b).unwrap().unwrap();
        assert_eq!(parsed, h);
        assert_eq!(parsed.byte_order(), ByteOrder::Big);
        // The same fields under the other magic give a different checksum.
        let le = header(WAL_MAGIC_LE, 4096);
        assert_ne!(le.checksum(), h.checksum());
        assert_eq!(
            WalHeader::parse(&le.encode())
                .unwrap()
                .unwrap()
                .byte_order(),
            ByteOrder::Little
        );
    }

    #[test]
    fn invalid_headers_mean_no_wal() {
        let good = header(WAL_MAGIC_LE, 4096).encode();
        assert_eq!(WalHeader::parse(&good[..31]).unwrap(), None);
        let mut b = good;
        b[3] = 0x84; // unknown magic
        assert_eq!(WalHeader::parse(&b).unwrap(), None);
        let mut b = good;
        b[20] ^= 1; // salt changed, checksum stale: a half-written header
        assert_eq!(WalHeader::parse(&b).unwrap(), None);
        // Page size 1 is the db header's encoding of 65536, not the WAL's: SQLite ignores it.
        let one = header(WAL_MAGIC_LE, 1).encode();
        assert_eq!(WalHeader::parse(&one).unwrap(), None);
        let odd = header(WAL_MAGIC_LE, 1000).encode();
        assert_eq!(WalHeader::parse(&odd).unwrap(), None);
        let mut v = header(WAL_MAGIC_LE, 4096);
        v.version = 3_007_001;
        assert!(matches!(
            WalHeader::parse(&v.with_checksum().encode()),
            Err(WalError::UnsupportedVersion(3_007_001))
        ));
        assert_eq!(header(WAL_MAGIC_LE, 65536).page_size, 65536);
    }

    #[test]
    fn frame_header_fields() {
        let mut b = [0u8; 24];
        b[..4].copy_from_slice(&7u32.to_be_bytes());
        b[4..8].copy_from_slice(&9u32.to_be_bytes());
        b[8..12].copy_from_slice(&1u32.to_be_bytes());
        b[12..16].copy_from_slice(&2u32.to_be_bytes());
        b[16..20].copy_from_slice(&3u32.to_be_bytes());
        b[20..24].copy_from_slice(&4u32.to_be_bytes());
        let fh = FrameHeader::parse(&b);
        assert_eq!(
            (fh.pgno, fh.commit, fh.salts(), fh.checksum()),
            (7, 9, (1, 2), (3, 4))
        );
        assert!(fh.is_commit());
    }

    #[test]
    fn errors_classify() {
        assert!(WalError::Read(io::Error::other("x")).is_retryable());
        assert!(WalError::UnsupportedVersion(1).is_permanent());
    }
}
