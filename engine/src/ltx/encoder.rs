//! Streaming LTX writer. Invariant: bytes reach the writer in file order as pages arrive, and a
//! page is written only after it passed every ordering rule of Go's encoder (ascending, no
//! duplicates, <= commit, never the lock page, snapshots sequential from 1); the only state kept
//! is the page index (24 bytes per page) and one compression buffer.

use std::io::Write;

use super::decoder::max_compressed_page;
use super::{
    encode_frame_page, lock_page, Crc64Digest, Header, LtxError, PageIndexEntry, Result,
    CHECKSUM_FLAG, CRC64, HEADER_SIZE, PAGE_FLAG_SIZE, PAGE_HEADER_SIZE,
};

/// How page payloads are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PageEncoding {
    /// Page flags 0x0001, 4-byte size, raw LZ4 block: what Litestream 0.5.16+ writes and reads.
    #[default]
    Block,
    /// Page flags 0x0000, one LZ4 frame per page: what Litestream 0.5.0–0.5.15 write; readable
    /// by every 0.5.x release.
    Frame,
}

/// Writes one LTX file to `W`. Give it a buffered writer: it issues one small write per field.
pub struct Encoder<W: Write> {
    w: W,
    header: Header,
    encoding: PageEncoding,
    lock_pgno: u32,
    /// CRC-64 of the logical content written so far (pages hashed decompressed).
    digest: Crc64Digest,
    /// Bytes written so far == offset of the next byte.
    offset: u64,
    /// One entry per page written, in pgno order.
    index: Vec<PageIndexEntry>,
    /// Last page written; 0 before the first.
    prev_pgno: u32,
    compress_buf: Vec<u8>,
    /// Set once a write failed half-way: the output is then unusable.
    failed: bool,
}

impl<W: Write> Encoder<W> {
    /// Validates `header` and writes it, with block-encoded pages (Litestream 0.5.16+).
    pub fn new(w: W, header: Header) -> Result<Self> {
        Encoder::with_encoding(w, header, PageEncoding::Block)
    }

    /// Like [`Encoder::new`] with an explicit page encoding.
    ///
    /// Beyond [`Header::validate`], the header must carry the no-checksum flag (this encoder
    /// writes a zero post-apply checksum, which Go's trailer validation only allows then) and a
    /// non-zero commit (Go cannot encode an empty database without database checksums).
    pub fn with_encoding(mut w: W, header: Header, encoding: PageEncoding) -> Result<Self> {
        header.validate()?;
        if !header.no_checksum() {
            return Err(LtxError::ChecksumTrackingUnsupported);
        }
        if header.commit == 0 {
            return Err(LtxError::EmptyDatabase);
        }
        let bytes = header.encode();
        w.write_all(&bytes)?;
        let mut digest = CRC64.digest();
        digest.update(&bytes);
        let compress_buf = match encoding {
            PageEncoding::Block => {
                vec![0; lz4_flex::block::get_maximum_output_size(header.page_size as usize)]
            }
            PageEncoding::Frame => Vec::new(),
        };
        Ok(Encoder {
            w,
            lock_pgno: lock_page(header.page_size),
            header,
            encoding,
            digest,
            offset: HEADER_SIZE as u64,
            index: Vec::new(),
            prev_pgno: 0,
            compress_buf,
            failed: false,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Number of pages written so far.
    pub fn page_count(&self) -> usize {
        self.index.len()
    }

    /// Compresses and writes one page. Rejected pages leave the encoder usable; an I/O error
    /// does not.
    pub fn encode_page(&mut self, pgno: u32, data: &[u8]) -> Result<()> {
        if self.failed {
            return Err(LtxError::EncoderFailed);
        }
        self.check_page(pgno, data.len())?;
        let start = self.offset;
        let result = self.write_page(pgno, data);
        if result.is_err() {
            self.failed = true;
        }
        result?;
        self.index.push(PageIndexEntry {
            pgno: u64::from(pgno),
            offset: start,
            size: self.offset - start,
        });
        self.prev_pgno = pgno;
        Ok(())
    }

    /// Writes a block-encoded page frame copied from another LTX file (from
    /// [`super::Decoder::next_page_raw`]) without compressing the page again; `data` must be
    /// what the frame decompresses to (the decoder produced both). The page index entry and the
    /// file checksum (which hashes `data`, as for [`Encoder::encode_page`]) come out exactly as
    /// if the page had been encoded here, and so does every byte when the frame was written by
    /// this encoder. Only for block encoding: a frame-encoded page must go through
    /// `encode_page`. Rejected pages leave the encoder usable; an I/O error does not.
    pub fn encode_raw_page(&mut self, pgno: u32, frame: &[u8], data: &[u8]) -> Result<()> {
        if self.failed {
            return Err(LtxError::EncoderFailed);
        }
        self.check_page(pgno, data.len())?;
        check_raw_frame(pgno, frame, self.encoding, self.header.page_size)?;
        let start = self.offset;
        let (head, _) = frame.split_at(PAGE_HEADER_SIZE + 4);
        let result = self.w.write_all(frame);
        if let Err(e) = result {
            self.failed = true;
            return Err(e.into());
        }
        self.digest.update(head);
        self.digest.update(data);
        self.offset += frame.len() as u64;
        self.index.push(PageIndexEntry {
            pgno: u64::from(pgno),
            offset: start,
            size: self.offset - start,
        });
        self.prev_pgno = pgno;
        Ok(())
    }

    fn check_page(&self, pgno: u32, len: usize) -> Result<()> {
        let h = &self.header;
        if len != h.page_size as usize {
            return Err(LtxError::PageSizeMismatch {
                pgno,
                len,
                page_size: h.page_size,
            });
        }
        if pgno == 0 {
            return Err(LtxError::ZeroPgno { flags: 0 });
        }
        if pgno > h.commit {
            return Err(LtxError::PageBeyondCommit {
                pgno,
                commit: h.commit,
            });
        }
        if pgno == self.lock_pgno {
            return Err(LtxError::LockPage { pgno });
        }
        check_order(h.is_snapshot(), self.lock_pgno, self.prev_pgno, pgno)
    }

    fn write_page(&mut self, pgno: u32, data: &[u8]) -> Result<()> {
        let mut page_header = [0u8; PAGE_HEADER_SIZE];
        page_header[..4].copy_from_slice(&pgno.to_be_bytes());
        match self.encoding {
            PageEncoding::Block => {
                page_header[4..].copy_from_slice(&PAGE_FLAG_SIZE.to_be_bytes());
                let n = lz4_flex::block::compress_into(data, &mut self.compress_buf)
                    .map_err(|source| LtxError::BlockCompress { pgno, source })?;
                let payload = self.compress_buf.get(..n).ok_or(LtxError::EncoderFailed)?;
                let size = u32::try_from(n)
                    .map_err(|_| LtxError::EncoderFailed)?
                    .to_be_bytes();
                self.w.write_all(&page_header)?;
                self.w.write_all(&size)?;
                self.w.write_all(payload)?;
                self.digest.update(&page_header);
                self.digest.update(&size);
                self.offset += (PAGE_HEADER_SIZE + size.len() + n) as u64;
            }
            PageEncoding::Frame => {
                let frame = encode_frame_page(data)?;
                self.w.write_all(&page_header)?;
                self.w.write_all(&frame)?;
                self.digest.update(&page_header);
                self.offset += (PAGE_HEADER_SIZE + frame.len()) as u64;
            }
        }
        self.digest.update(data);
        Ok(())
    }

    /// Writes the end-of-pages marker, the page index and the trailer, flushes, and returns the
    /// writer and the file checksum (bit 63 set). A snapshot must have received every page.
    pub fn finish(mut self) -> Result<(W, u64)> {
        if self.failed {
            return Err(LtxError::EncoderFailed);
        }
        if self.header.is_snapshot() {
            let last = last_snapshot_page(self.header.commit, self.lock_pgno);
            if self.prev_pgno != last {
                return Err(LtxError::SnapshotIncomplete {
                    last: self.prev_pgno,
                    commit: self.header.commit,
                });
            }
        }

        // 1. End of the page block, page index, its length and the post-apply checksum (0):
        //    all hashed, written in one go (the index is small: a few bytes per page).
        let mut tail = vec![0u8; PAGE_HEADER_SIZE];
        let index_start = tail.len();
        for e in &self.index {
            put_uvarint(&mut tail, e.pgno);
            put_uvarint(&mut tail, e.offset);
            put_uvarint(&mut tail, e.size);
        }
        put_uvarint(&mut tail, 0);
        let index_len = (tail.len() - index_start) as u64;
        tail.extend_from_slice(&index_len.to_be_bytes());
        tail.extend_from_slice(&0u64.to_be_bytes());
        self.digest.update(&tail);

        // 2. The file checksum covers everything before itself.
        let checksum = CHECKSUM_FLAG | self.digest.finalize();
        tail.extend_from_slice(&checksum.to_be_bytes());
        self.w.write_all(&tail)?;
        self.w.flush()?;
        Ok((self.w, checksum))
    }
}

/// A frame handed to [`Encoder::encode_raw_page`] must be one whole block-encoded frame of page
/// `pgno`: header with that page number and flags 0x0001, a size field equal to the payload
/// length, and a payload within the decoder's bound for one page.
fn check_raw_frame(pgno: u32, frame: &[u8], encoding: PageEncoding, page_size: u32) -> Result<()> {
    let invalid = |why: &str| LtxError::Invalid(format!("raw frame of page {pgno}: {why}"));
    if encoding != PageEncoding::Block {
        return Err(invalid("the output uses the frame encoding"));
    }
    let Some((head, payload)) = frame.split_at_checked(PAGE_HEADER_SIZE + 4) else {
        return Err(invalid("shorter than a page header and size"));
    };
    let found = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let flags = u16::from_be_bytes([head[4], head[5]]);
    let size = u32::from_be_bytes([head[6], head[7], head[8], head[9]]);
    if found != pgno {
        return Err(invalid("page header names another page"));
    }
    if flags != PAGE_FLAG_SIZE {
        return Err(LtxError::InvalidPageFlags { pgno, flags });
    }
    if size as usize != payload.len() {
        return Err(invalid("size field does not match the payload"));
    }
    let max = max_compressed_page(page_size);
    if u64::from(size) > max {
        return Err(LtxError::CompressedSizeTooLarge {
            pgno,
            size: u64::from(size),
            max,
        });
    }
    Ok(())
}

/// The last page of a complete snapshot of `commit` pages (the lock page is never stored).
pub(super) fn last_snapshot_page(commit: u32, lock_pgno: u32) -> u32 {
    if commit == lock_pgno {
        commit - 1
    } else {
        commit
    }
}

/// Page ordering: strictly ascending; for snapshots exactly `prev + 1`, hopping the lock page.
pub(super) fn check_order(snapshot: bool, lock_pgno: u32, prev: u32, pgno: u32) -> Result<()> {
    if snapshot {
        let mut expected = prev.saturating_add(1);
        if expected == lock_pgno {
            expected = expected.saturating_add(1);
        }
        if pgno != expected {
            return Err(LtxError::SnapshotSequence { expected, pgno });
        }
    } else if pgno <= prev {
        return Err(LtxError::PageOutOfOrder { prev, pgno });
    }
    Ok(())
}

/// Unsigned LEB128, as Go's `binary.AppendUvarint`.
fn put_uvarint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ltx::{Txid, HEADER_FLAG_NO_CHECKSUM};

    fn header(min: u64, commit: u32) -> Header {
        Header {
            flags: HEADER_FLAG_NO_CHECKSUM,
            page_size: 512,
            commit,
            min_txid: Txid(min),
            max_txid: Txid(min),
            timestamp_ms: 0,
            pre_apply_checksum: 0,
            wal_offset: 0,
            wal_size: 0,
            wal_salt1: 0,
            wal_salt2: 0,
            node_id: 0,
        }
    }

    #[test]
    fn uvarint_matches_go() {
        let mut b = Vec::new();
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            put_uvarint(&mut b, v);
        }
        assert_eq!(
            b,
            [
                0, 1, 0x7f, 0x80, 0x01, 0xac, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                0xff, 0x01
            ]
        );
    }

    #[test]
    fn encoder_refuses_tracked_checksums_and_empty_db() {
        let mut h = header(2, 1);
        h.flags = 0;
        h.pre_apply_checksum = CHECKSUM_FLAG | 1;
        assert!(matches!(
            Encoder::new(Vec::new(), h),
            Err(LtxError::ChecksumTrackingUnsupported)
        ));
        assert!(matches!(
            Encoder::new(Vec::new(), header(2, 0)),
            Err(LtxError::EmptyDatabase)
        ));
        let mut bad = header(2, 1);
        bad.page_size = 513;
        assert!(matches!(
            Encoder::new(Vec::new(), bad),
            Err(LtxError::InvalidPageSize(513))
        ));
    }

    #[test]
    fn incremental_pages_must_ascend_within_commit() {
        let page = [0u8; 512];
        let mut enc = Encoder::new(Vec::new(), header(2, 10)).unwrap();
        enc.encode_page(3, &page).unwrap();
        assert!(matches!(
            enc.encode_page(3, &page),
            Err(LtxError::PageOutOfOrder { prev: 3, pgno: 3 })
        ));
        assert!(matches!(
            enc.encode_page(2, &page),
            Err(LtxError::PageOutOfOrder { prev: 3, pgno: 2 })
        ));
        assert!(matches!(
            enc.encode_page(11, &page),
            Err(LtxError::PageBeyondCommit {
                pgno: 11,
                commit: 10
            })
        ));
        assert!(matches!(
            enc.encode_page(0, &page),
            Err(LtxError::ZeroPgno { .. })
        ));
        assert!(matches!(
            enc.encode_page(5, &page[..100]),
            Err(LtxError::PageSizeMismatch { len: 100, .. })
        ));
        // Rejections leave the encoder usable.
        enc.encode_page(10, &page).unwrap();
        let (bytes, checksum) = enc.finish().unwrap();
        assert_eq!(checksum & CHECKSUM_FLAG, CHECKSUM_FLAG);
        assert_eq!(&bytes[bytes.len() - 8..], &checksum.to_be_bytes());
    }

    #[test]
    fn snapshot_pages_must_be_sequential_and_complete() {
        let page = [0u8; 512];
        let mut enc = Encoder::new(Vec::new(), header(1, 3)).unwrap();
        assert!(matches!(
            enc.encode_page(2, &page),
            Err(LtxError::SnapshotSequence {
                expected: 1,
                pgno: 2
            })
        ));
        enc.encode_page(1, &page).unwrap();
        assert!(matches!(
            enc.encode_page(3, &page),
            Err(LtxError::SnapshotSequence {
                expected: 2,
                pgno: 3
            })
        ));
        enc.encode_page(2, &page).unwrap();
        assert!(matches!(
            enc.finish(),
            Err(LtxError::SnapshotIncomplete { last: 2, commit: 3 })
        ));

        let empty = Encoder::new(Vec::new(), header(1, 1)).unwrap();
        assert!(matches!(
            empty.finish(),
            Err(LtxError::SnapshotIncomplete { last: 0, commit: 1 })
        ));
    }

    #[test]
    fn lock_page_is_refused_and_skipped_in_order_checks() {
        let lock = lock_page(512);
        assert!(check_order(true, lock, lock - 1, lock + 1).is_ok());
        assert!(matches!(
            check_order(true, lock, lock - 1, lock),
            Err(LtxError::SnapshotSequence { .. })
        ));
        assert_eq!(last_snapshot_page(lock, lock), lock - 1);
        assert_eq!(last_snapshot_page(lock + 1, lock), lock + 1);
        let mut enc = Encoder::new(Vec::new(), header(2, lock + 5)).unwrap();
        assert!(matches!(
            enc.encode_page(lock, &[0u8; 512]),
            Err(LtxError::LockPage { .. })
        ));
    }

    struct FailingWriter {
        budget: usize,
    }

    impl Write for FailingWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.budget < buf.len() {
                return Err(std::io::Error::other("disk full"));
            }
            self.budget -= buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn io_error_poisons_the_encoder() {
        let mut enc = Encoder::new(FailingWriter { budget: 110 }, header(2, 5)).unwrap();
        let err = enc.encode_page(1, &[7u8; 512]).unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert!(matches!(
            enc.encode_page(2, &[7u8; 512]),
            Err(LtxError::EncoderFailed)
        ));
        assert!(matches!(enc.finish(), Err(LtxError::EncoderFailed)));
    }
}
