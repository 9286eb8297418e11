//! Streaming, verifying LTX reader. Invariant: nothing is trusted before it is checked — the
//! header is validated before the first page, every length read from the file is bounded before
//! it sizes an allocation, pages are checked for order and bounds as they stream by, and
//! [`Decoder::finish`] accepts the file only if the page index describes exactly the pages seen,
//! the trailer is well-formed, no byte follows it and the CRC-64 file checksum matches.

use std::io::Read;

use super::encoder::{check_order, last_snapshot_page};
use super::lz4frame::read_frame_page;
use super::{
    lock_page, page_checksum, read_err, Crc64Digest, Header, LtxError, PageIndexEntry, Result,
    Trailer, CHECKSUM_FLAG, CRC64, HEADER_SIZE, PAGE_FLAG_SIZE, PAGE_HEADER_SIZE, TRAILER_SIZE,
};

/// A block-encoded payload is at most LZ4's worst case for one page (`n + n/255 + 16`); this
/// bound is looser so that no legal encoder is refused, yet stops a corrupt size field from
/// sizing a multi-gigabyte allocation.
const MAX_COMPRESSED_PAGE_FACTOR: u64 = 2;
const MAX_COMPRESSED_PAGE_SLACK: u64 = 64;
/// The largest block payload accepted for one page (see the constants above).
pub(super) fn max_compressed_page(page_size: u32) -> u64 {
    MAX_COMPRESSED_PAGE_FACTOR * u64::from(page_size) + MAX_COMPRESSED_PAGE_SLACK
}

/// Go's `binary.MaxVarintLen64`.
const MAX_VARINT_LEN: usize = 10;

/// A page read by [`Decoder::next_page_raw`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawPage {
    pub pgno: u32,
    /// True for a block-encoded frame (page flags 0x0001, Litestream 0.5.16+ and this crate),
    /// which [`super::Encoder::encode_raw_page`] can copy; false for the LZ4-frame encoding of
    /// Litestream 0.5.0–0.5.15, which must be encoded again.
    pub block: bool,
}

/// Reads one LTX file from `R`. Give it a buffered reader: the page index is read byte by byte.
pub struct Decoder<R: Read> {
    r: R,
    header: Header,
    lock_pgno: u32,
    /// CRC-64 of the logical content read so far (pages hashed decompressed).
    digest: Crc64Digest,
    /// Bytes consumed so far == offset of the next byte.
    offset: u64,
    /// Pages seen, in order, for checking the page index.
    seen: Vec<PageIndexEntry>,
    /// Last page seen; 0 before the first.
    prev_pgno: u32,
    /// True once the zero page header ending the page block has been read.
    pages_done: bool,
    /// XOR of page checksums, tracked only for snapshots with database checksums.
    db_checksum: Option<u64>,
    scratch: Vec<u8>,
}

impl<R: Read> Decoder<R> {
    /// Reads and validates the header.
    pub fn new(mut r: R) -> Result<Self> {
        let mut b = [0u8; HEADER_SIZE];
        r.read_exact(&mut b).map_err(read_err("header"))?;
        let header = Header::decode(&b)?;
        header.validate()?;
        let mut digest = CRC64.digest();
        digest.update(&b);
        let db_checksum = (header.is_snapshot() && !header.no_checksum()).then_some(CHECKSUM_FLAG);
        Ok(Decoder {
            r,
            lock_pgno: lock_page(header.page_size),
            header,
            digest,
            offset: HEADER_SIZE as u64,
            seen: Vec::new(),
            prev_pgno: 0,
            pages_done: false,
            db_checksum,
            scratch: Vec::new(),
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Number of pages decoded so far.
    pub fn page_count(&self) -> usize {
        self.seen.len()
    }

    fn read_hashed(&mut self, buf: &mut [u8], section: &'static str) -> Result<()> {
        self.r.read_exact(buf).map_err(read_err(section))?;
        self.digest.update(buf);
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// Decodes the next page into `buf` (resized to the page size) and returns its number, or
    /// `None` at the end of the page block (and on every call after that).
    pub fn next_page(&mut self, buf: &mut Vec<u8>) -> Result<Option<u32>> {
        self.read_page(buf, None)
    }

    /// Like [`Decoder::next_page`], and also hands out the page's frame exactly as stored — page
    /// header, size field if present, compressed payload — in `frame` (replacing its contents),
    /// so that it can be copied into another file without compressing the page again (see
    /// [`super::Encoder::encode_raw_page`]). The page is still decompressed into `buf`, checked
    /// and hashed: the file checksum covers the decompressed bytes, so [`Decoder::finish`]
    /// verifies exactly what it verifies after `next_page`.
    pub fn next_page_raw(
        &mut self,
        buf: &mut Vec<u8>,
        frame: &mut Vec<u8>,
    ) -> Result<Option<RawPage>> {
        frame.clear();
        let Some(pgno) = self.read_page(buf, Some(frame))? else {
            return Ok(None);
        };
        let flags = u16::from_be_bytes([frame[4], frame[5]]);
        Ok(Some(RawPage {
            pgno,
            block: flags & PAGE_FLAG_SIZE != 0,
        }))
    }

    fn read_page(&mut self, buf: &mut Vec<u8>, raw: Option<&mut Vec<u8>>) -> Result<Option<u32>> {
        if self.pages_done {
            return Ok(None);
        }
        let start = self.offset;
        let mut ph = [0u8; PAGE_HEADER_SIZE];
        self.read_hashed(&mut ph, "page header")?;
        let pgno = u32::from_be_bytes([ph[0], ph[1], ph[2], ph[3]]);
        let flags = u16::from_be_bytes([ph[4], ph[5]]);
        if pgno == 0 && flags == 0 {
            self.pages_done = true;
            return Ok(None);
        }
        self.check_page(pgno, flags)?;

        let page_size = self.header.page_size as usize;
        buf.resize(page_size, 0);
        let mut size = [0u8; 4];
        if flags & PAGE_FLAG_SIZE != 0 {
            self.read_hashed(&mut size, "compressed page size")?;
            let size = u64::from(u32::from_be_bytes(size));
            let max = max_compressed_page(self.header.page_size);
            if size > max {
                return Err(LtxError::CompressedSizeTooLarge { pgno, size, max });
            }
            self.scratch.resize(size as usize, 0);
            self.r
                .read_exact(&mut self.scratch)
                .map_err(read_err("compressed page"))?;
            self.offset += size;
            let n = lz4_flex::block::decompress_into(&self.scratch, buf)
                .map_err(|source| LtxError::BlockDecompress { pgno, source })?;
            if n != page_size {
                return Err(LtxError::DecompressedSizeMismatch {
                    pgno,
                    len: n,
                    page_size: self.header.page_size,
                });
            }
        } else {
            self.offset += read_frame_page(&mut self.r, pgno, &mut self.scratch, buf)?;
        }
        if let Some(raw) = raw {
            // `scratch` holds the payload (block) or the whole LZ4 frame (frame encoding).
            raw.extend_from_slice(&ph);
            if flags & PAGE_FLAG_SIZE != 0 {
                raw.extend_from_slice(&size);
            }
            raw.extend_from_slice(&self.scratch);
        }
        self.digest.update(buf);
        if let Some(sum) = self.db_checksum.as_mut() {
            *sum = CHECKSUM_FLAG | (*sum ^ page_checksum(pgno, buf));
        }
        self.seen.push(PageIndexEntry {
            pgno: u64::from(pgno),
            offset: start,
            size: self.offset - start,
        });
        self.prev_pgno = pgno;
        Ok(Some(pgno))
    }

    fn check_page(&self, pgno: u32, flags: u16) -> Result<()> {
        if pgno == 0 {
            return Err(LtxError::ZeroPgno { flags });
        }
        if flags & !PAGE_FLAG_SIZE != 0 {
            return Err(LtxError::InvalidPageFlags { pgno, flags });
        }
        if pgno > self.header.commit {
            return Err(LtxError::PageBeyondCommit {
                pgno,
                commit: self.header.commit,
            });
        }
        if pgno == self.lock_pgno {
            return Err(LtxError::LockPage { pgno });
        }
        check_order(
            self.header.is_snapshot(),
            self.lock_pgno,
            self.prev_pgno,
            pgno,
        )
    }

    /// Reads (and checks) any pages not yet read, then the page index, the trailer and the end
    /// of input, and verifies the file checksum. Returns the trailer of a valid file.
    pub fn finish(mut self) -> Result<Trailer> {
        // 1. Drain the page block.
        let mut buf = Vec::new();
        while self.next_page(&mut buf)?.is_some() {}
        if self.header.is_snapshot() {
            let last = last_snapshot_page(self.header.commit, self.lock_pgno);
            if self.prev_pgno != last {
                return Err(LtxError::SnapshotIncomplete {
                    last: self.prev_pgno,
                    commit: self.header.commit,
                });
            }
        }

        // 2. The page index must list exactly the pages seen, then a 0, then its own length.
        let index_start = self.offset;
        let seen = std::mem::take(&mut self.seen);
        for (entry, expected) in seen.iter().enumerate() {
            let pgno = self.read_uvarint(entry)?;
            if pgno == 0 {
                return Err(LtxError::IndexMissingEntry {
                    entry,
                    expected: *expected,
                });
            }
            let found = PageIndexEntry {
                pgno,
                offset: self.read_uvarint(entry)?,
                size: self.read_uvarint(entry)?,
            };
            if found != *expected {
                return Err(LtxError::IndexEntryMismatch {
                    entry,
                    expected: *expected,
                    found,
                });
            }
        }
        let end = self.read_uvarint(seen.len())?;
        if end != 0 {
            return Err(LtxError::IndexExtraEntry { pgno: end });
        }
        let actual = self.offset - index_start;
        let mut len = [0u8; 8];
        self.read_hashed(&mut len, "page index length")?;
        let stored = u64::from_be_bytes(len);
        if stored != actual {
            return Err(LtxError::IndexSizeMismatch { stored, actual });
        }

        // 3. Trailer: the post-apply checksum is hashed, the file checksum is not.
        let mut tb = [0u8; TRAILER_SIZE];
        self.read_hashed(&mut tb[..8], "trailer")?;
        self.r
            .read_exact(&mut tb[8..])
            .map_err(read_err("trailer"))?;
        let trailer = Trailer::decode(&tb);
        let actual = CHECKSUM_FLAG | self.digest.clone().finalize();
        if trailer.file_checksum != actual {
            return Err(LtxError::ChecksumMismatch {
                expected: trailer.file_checksum,
                actual,
            });
        }
        trailer.validate(&self.header)?;
        let mut extra = [0u8; 1];
        loop {
            match self.r.read(&mut extra) {
                Ok(0) => break,
                Ok(_) => return Err(LtxError::TrailingData),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }

        // 4. Snapshots with database checksums carry the checksum of the pages.
        if let Some(sum) = self.db_checksum {
            if sum != trailer.post_apply_checksum {
                return Err(LtxError::PostApplyChecksumMismatch {
                    expected: trailer.post_apply_checksum,
                    actual: sum,
                });
            }
        }
        Ok(trailer)
    }

    /// Unsigned LEB128 with Go's `binary.ReadUvarint` limits (10 bytes, no overflow).
    fn read_uvarint(&mut self, entry: usize) -> Result<u64> {
        let mut x = 0u64;
        let mut shift = 0u32;
        for i in 0..MAX_VARINT_LEN {
            let mut b = [0u8; 1];
            self.read_hashed(&mut b, "page index")?;
            let b = b[0];
            if b < 0x80 {
                if i == MAX_VARINT_LEN - 1 && b > 1 {
                    return Err(LtxError::IndexVarint { entry });
                }
                return Ok(x | u64::from(b) << shift);
            }
            x |= u64::from(b & 0x7f) << shift;
            shift += 7;
        }
        Err(LtxError::IndexVarint { entry })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ltx::{Encoder, PageEncoding, Txid, HEADER_FLAG_NO_CHECKSUM};
    use std::io::Cursor;

    fn header(min: u64, page_size: u32, commit: u32) -> Header {
        Header {
            flags: HEADER_FLAG_NO_CHECKSUM,
            page_size,
            commit,
            min_txid: Txid(min),
            max_txid: Txid(min + 1),
            timestamp_ms: 1,
            pre_apply_checksum: 0,
            wal_offset: 0,
            wal_size: 0,
            wal_salt1: 0,
            wal_salt2: 0,
            node_id: 0,
        }
    }

    fn encode(h: Header, pages: &[(u32, Vec<u8>)], enc: PageEncoding) -> Vec<u8> {
        let mut e = Encoder::with_encoding(Vec::new(), h, enc).unwrap();
        for (pgno, data) in pages {
            e.encode_page(*pgno, data).unwrap();
        }
        e.finish().unwrap().0
    }

    type Decoded = (Header, Vec<(u32, Vec<u8>)>, Trailer);

    fn decode(bytes: &[u8]) -> Result<Decoded> {
        let mut d = Decoder::new(Cursor::new(bytes))?;
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(pgno) = d.next_page(&mut buf)? {
            out.push((pgno, buf.clone()));
        }
        let h = d.header().clone();
        Ok((h, out, d.finish()?))
    }

    fn pages(pgnos: &[u32], size: usize) -> Vec<(u32, Vec<u8>)> {
        pgnos
            .iter()
            .map(|&p| (p, (0..size).map(|i| (i as u32 * p % 251) as u8).collect()))
            .collect()
    }

    #[test]
    fn roundtrip_both_encodings() {
        for enc in [PageEncoding::Block, PageEncoding::Frame] {
            let p = pages(&[2, 5, 9], 1024);
            let bytes = encode(header(3, 1024, 9), &p, enc);
            let (h, got, trailer) = decode(&bytes).unwrap();
            assert_eq!(h, header(3, 1024, 9));
            assert_eq!(got, p);
            assert_eq!(trailer.post_apply_checksum, 0);
            assert_eq!(
                &bytes[bytes.len() - 8..],
                &trailer.file_checksum.to_be_bytes()
            );
        }
    }

    #[test]
    fn finish_drains_unread_pages() {
        let bytes = encode(
            header(1, 512, 3),
            &pages(&[1, 2, 3], 512),
            PageEncoding::Block,
        );
        let d = Decoder::new(Cursor::new(&bytes)).unwrap();
        d.finish().unwrap();
    }

    #[test]
    fn page_index_must_match_pages() {
        let bytes = encode(header(3, 512, 9), &pages(&[2, 5], 512), PageEncoding::Block);
        // The index sits between the zero page header and the 8-byte length + 16-byte trailer.
        let idx_len = u64::from_be_bytes(
            bytes[bytes.len() - 24..bytes.len() - 16]
                .try_into()
                .unwrap(),
        ) as usize;
        let idx_start = bytes.len() - 24 - idx_len;
        let mut b = bytes.clone();
        b[idx_start] = 3; // first entry's pgno 2 -> 3
        assert!(matches!(
            decode(&b),
            Err(LtxError::IndexEntryMismatch { entry: 0, .. })
        ));
        let mut b = bytes.clone();
        b[bytes.len() - 17] ^= 1; // index length
        assert!(matches!(
            decode(&b),
            Err(LtxError::IndexSizeMismatch { .. })
        ));
        let mut b = bytes.clone();
        b.push(0);
        assert!(matches!(decode(&b), Err(LtxError::TrailingData)));
    }

    #[test]
    fn decoder_rejects_bad_pages() {
        let good = encode(header(3, 512, 9), &pages(&[2, 5], 512), PageEncoding::Block);
        let first_page = HEADER_SIZE;
        let mut b = good.clone();
        b[first_page + 5] = 3; // page flags 0x0003
        assert!(matches!(
            decode(&b),
            Err(LtxError::InvalidPageFlags { pgno: 2, flags: 3 })
        ));
        let mut b = good.clone();
        b[first_page + 3] = 10; // pgno 10 > commit 9
        assert!(matches!(
            decode(&b),
            Err(LtxError::PageBeyondCommit {
                pgno: 10,
                commit: 9
            })
        ));
        let mut b = good.clone();
        b[first_page + 3] = 7; // pgno 7 then 5
        assert!(matches!(
            decode(&b),
            Err(LtxError::PageOutOfOrder { prev: 7, pgno: 5 })
        ));
        let mut b = good.clone();
        b[first_page + 6..first_page + 10].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode(&b),
            Err(LtxError::CompressedSizeTooLarge { .. })
        ));
        let mut b = good.clone();
        b[first_page..first_page + 4].copy_from_slice(&[0, 0, 0, 0]);
        assert!(matches!(decode(&b), Err(LtxError::ZeroPgno { flags: 1 })));
    }

    #[test]
    fn snapshot_with_database_checksum_is_verified() {
        // Files with database checksums cannot be encoded here; build one by patching flags and
        // trailer of a snapshot and recomputing the file checksum.
        let p = pages(&[1, 2], 512);
        let mut bytes = encode(header(1, 512, 2), &p, PageEncoding::Block);
        bytes[4..8].copy_from_slice(&0u32.to_be_bytes());
        let sum = p.iter().fold(CHECKSUM_FLAG, |acc, (pgno, d)| {
            CHECKSUM_FLAG | (acc ^ page_checksum(*pgno, d))
        });
        let n = bytes.len();
        bytes[n - 16..n - 8].copy_from_slice(&sum.to_be_bytes());
        let refresh = |bytes: &mut Vec<u8>| {
            let n = bytes.len();
            let mut d = Decoder::new(Cursor::new(&bytes[..])).unwrap();
            let mut buf = Vec::new();
            while d.next_page(&mut buf).unwrap().is_some() {}
            let mut digest = d.digest.clone();
            digest.update(&bytes[d.offset as usize..n - 8]);
            let fc = CHECKSUM_FLAG | digest.finalize();
            bytes[n - 8..].copy_from_slice(&fc.to_be_bytes());
        };
        refresh(&mut bytes);
        decode(&bytes).unwrap();
        bytes[n - 9] ^= 1;
        refresh(&mut bytes);
        assert!(matches!(
            decode(&bytes),
            Err(LtxError::PostApplyChecksumMismatch { .. })
        ));
    }

    #[test]
    fn varint_limits() {
        let mut over = vec![0xffu8; 9];
        over.push(0x02);
        let mut d = Decoder {
            r: Cursor::new(over),
            header: header(2, 512, 1),
            lock_pgno: lock_page(512),
            digest: CRC64.digest(),
            offset: 0,
            seen: Vec::new(),
            prev_pgno: 0,
            pages_done: true,
            db_checksum: None,
            scratch: Vec::new(),
        };
        assert!(matches!(
            d.read_uvarint(0),
            Err(LtxError::IndexVarint { entry: 0 })
        ));
        d.r = Cursor::new(vec![
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ]);
        assert_eq!(d.read_uvarint(0).unwrap(), u64::MAX);
    }
}
