//! The per-page LZ4 frame encoding of Litestream 0.5.0–0.5.15 (page flags 0). Invariant: the
//! reader consumes exactly the bytes of one frame — it walks the frame structure (descriptor,
//! sized blocks, end mark, optional checksums) itself, with every length bounded before any
//! allocation — and only then lets `lz4_flex` decompress and checksum those bytes.

use std::io::{Cursor, Read};

use lz4_flex::frame::{BlockMode, BlockSize, FrameDecoder, FrameEncoder, FrameInfo};

use super::{read_err, LtxError, Result};

/// LZ4 frame magic number (little-endian on disk).
const LZ4_FRAME_MAGIC: u32 = 0x184D_2204;
const FLG_VERSION_MASK: u8 = 0b1100_0000;
const FLG_VERSION_01: u8 = 0b0100_0000;
const FLG_RESERVED: u8 = 0b0000_0010;
const FLG_BLOCK_CHECKSUM: u8 = 0b0001_0000;
const FLG_CONTENT_SIZE: u8 = 0b0000_1000;
const FLG_CONTENT_CHECKSUM: u8 = 0b0000_0100;
const FLG_DICT_ID: u8 = 0b0000_0001;
const BD_RESERVED: u8 = 0b1000_1111;
const BLOCK_UNCOMPRESSED: u32 = 0x8000_0000;
/// A page is at most 64 KiB and pierrec uses 64 KiB blocks, so real frames hold one data block.
/// A few more are tolerated for other encoders; the cap bounds work on hostile input.
const MAX_FRAME_BLOCKS: usize = 16;

/// Encodes one page as pierrec/lz4 v4 does for ltx v0.5.0/v0.5.1: FLG 0x64 (version 01,
/// independent blocks, content checksum), BD 0x40 (64 KiB blocks), one data block (stored
/// uncompressed when LZ4 does not shrink it), end mark, xxh32 content checksum.
pub fn encode_frame_page(page: &[u8]) -> Result<Vec<u8>> {
    let info = FrameInfo::new()
        .block_size(BlockSize::Max64KB)
        .block_mode(BlockMode::Independent)
        .content_checksum(true);
    let mut enc = FrameEncoder::with_frame_info(info, Vec::with_capacity(page.len() / 2 + 32));
    std::io::Write::write_all(&mut enc, page).map_err(|e| LtxError::FrameCompress(e.into()))?;
    enc.finish().map_err(LtxError::FrameCompress)
}

/// Reads exactly one LZ4 frame from `r` into `frame` (replacing its contents), then
/// decompresses it into `page`, which must come out exactly `page.len()` bytes long.
pub(super) fn read_frame_page<R: Read>(
    r: &mut R,
    pgno: u32,
    frame: &mut Vec<u8>,
    page: &mut [u8],
) -> Result<u64> {
    let bad = |reason| LtxError::InvalidLz4Frame { pgno, reason };
    let section = "LZ4 frame of a page";
    frame.clear();
    let take = |r: &mut R, frame: &mut Vec<u8>, n: usize| -> Result<()> {
        let start = frame.len();
        frame.resize(start + n, 0);
        r.read_exact(&mut frame[start..]).map_err(read_err(section))
    };

    // 1. Magic, FLG, BD.
    take(r, frame, 6)?;
    if u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) != LZ4_FRAME_MAGIC {
        return Err(bad("bad magic"));
    }
    let (flg, bd) = (frame[4], frame[5]);
    if flg & FLG_VERSION_MASK != FLG_VERSION_01 {
        return Err(bad("unsupported frame version"));
    }
    if flg & FLG_RESERVED != 0 || bd & BD_RESERVED != 0 {
        return Err(bad("reserved bits set"));
    }
    if flg & FLG_DICT_ID != 0 {
        return Err(bad("dictionary id not supported"));
    }
    let max_block: usize = match (bd >> 4) & 0x7 {
        4 => 64 << 10,
        5 => 256 << 10,
        6 => 1 << 20,
        7 => 4 << 20,
        _ => return Err(bad("invalid block maximum size")),
    };
    // 2. Optional content size, header checksum (verified by lz4_flex below).
    let descriptor_rest = if flg & FLG_CONTENT_SIZE != 0 {
        8 + 1
    } else {
        1
    };
    take(r, frame, descriptor_rest)?;

    // 3. Data blocks until the end mark. A block can never need more than LZ4's worst-case
    //    expansion of a whole page.
    let block_limit = max_block.min(lz4_flex::block::get_maximum_output_size(page.len()));
    let block_checksum = if flg & FLG_BLOCK_CHECKSUM != 0 { 4 } else { 0 };
    let mut blocks = 0;
    loop {
        take(r, frame, 4)?;
        let n = frame.len();
        let word = u32::from_le_bytes([frame[n - 4], frame[n - 3], frame[n - 2], frame[n - 1]]);
        if word == 0 {
            break;
        }
        let len = (word & !BLOCK_UNCOMPRESSED) as usize;
        if len > block_limit {
            return Err(bad("block larger than the page allows"));
        }
        blocks += 1;
        if blocks > MAX_FRAME_BLOCKS {
            return Err(bad("too many blocks"));
        }
        take(r, frame, len + block_checksum)?;
    }
    // 4. Content checksum.
    if flg & FLG_CONTENT_CHECKSUM != 0 {
        take(r, frame, 4)?;
    }

    // 5. Decompress exactly one page; the frame must end right there (this also makes
    //    lz4_flex verify the content checksum).
    let mut dec = FrameDecoder::new(Cursor::new(frame.as_slice()));
    let mut filled = 0;
    while filled < page.len() {
        match dec.read(&mut page[filled..]) {
            Ok(0) => {
                return Err(LtxError::DecompressedSizeMismatch {
                    pgno,
                    len: filled,
                    page_size: page.len() as u32,
                })
            }
            Ok(n) => filled += n,
            Err(source) => return Err(LtxError::FrameDecompress { pgno, source }),
        }
    }
    let mut extra = [0u8; 1];
    match dec.read(&mut extra) {
        Ok(0) => {}
        Ok(_) => {
            return Err(LtxError::DecompressedSizeMismatch {
                pgno,
                len: page.len() + 1,
                page_size: page.len() as u32,
            })
        }
        Err(source) => return Err(LtxError::FrameDecompress { pgno, source }),
    }
    Ok(frame.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout_matches_pierrec() {
        let page: Vec<u8> = (0..4096u32).map(|i| (i % 7) as u8).collect();
        let f = encode_frame_page(&page).unwrap();
        assert_eq!(&f[..4], &[0x04, 0x22, 0x4d, 0x18]);
        assert_eq!(f[4], 0x64, "FLG");
        assert_eq!(f[5], 0x40, "BD");
        // ... one block, end mark, 4-byte content checksum.
        assert_eq!(&f[f.len() - 8..f.len() - 4], &[0, 0, 0, 0]);
    }

    #[test]
    fn incompressible_page_is_stored_uncompressed() {
        let mut x = 0x1234_5678u32;
        let page: Vec<u8> = (0..512)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let f = encode_frame_page(&page).unwrap();
        let word = u32::from_le_bytes([f[7], f[8], f[9], f[10]]);
        assert_eq!(word, BLOCK_UNCOMPRESSED | 512);
        let mut out = vec![0u8; 512];
        let mut frame = Vec::new();
        let mut r = Cursor::new(&f);
        read_frame_page(&mut r, 1, &mut frame, &mut out).unwrap();
        assert_eq!(out, page);
    }

    #[test]
    fn reader_stops_exactly_at_frame_end() {
        let page = vec![9u8; 1024];
        let mut bytes = encode_frame_page(&page).unwrap();
        let frame_len = bytes.len() as u64;
        bytes.extend_from_slice(b"NEXT");
        let mut r = Cursor::new(&bytes);
        let mut out = vec![0u8; 1024];
        let n = read_frame_page(&mut r, 1, &mut Vec::new(), &mut out).unwrap();
        assert_eq!(n, frame_len);
        assert_eq!(r.position(), frame_len);
        assert_eq!(out, page);
    }

    #[test]
    fn wrong_size_and_corruption_are_errors() {
        let f = encode_frame_page(&[1u8; 1024]).unwrap();
        let mut small = vec![0u8; 512];
        assert!(matches!(
            read_frame_page(&mut Cursor::new(&f), 1, &mut Vec::new(), &mut small),
            Err(LtxError::DecompressedSizeMismatch { .. })
        ));
        let mut big = vec![0u8; 2048];
        assert!(matches!(
            read_frame_page(&mut Cursor::new(&f), 1, &mut Vec::new(), &mut big),
            Err(LtxError::DecompressedSizeMismatch { .. })
        ));
        let mut out = vec![0u8; 1024];
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x10;
            // Every single-byte corruption is caught (header checksum, sizes, content checksum).
            assert!(
                read_frame_page(&mut Cursor::new(&g), 1, &mut Vec::new(), &mut out).is_err(),
                "flip at {i} accepted"
            );
        }
        for n in 0..f.len() {
            assert!(matches!(
                read_frame_page(&mut Cursor::new(&f[..n]), 1, &mut Vec::new(), &mut out),
                Err(LtxError::Truncated { .. })
            ));
        }
    }
}
