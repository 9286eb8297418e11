//! Reading one replica file from outside, with the engine's verifying LTX decoder: the marker
//! value, if the file carries the marker table's page.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use anyhow::{Context, Result};
use engine::ltx::Decoder;

use crate::sqlite::marker_from_page;

pub struct LtxMarker {
    /// `None` if the file does not contain the marker page (e.g. Litestream's checkpoint files).
    pub marker: Option<i64>,
}

/// Reads `path`. Pages are sorted by pgno, so with `verify == false` reading stops right after the
/// marker page (cheap even for a 64 MiB L0); with `verify == true` the whole file is decoded and
/// its CRC-64 checked.
pub fn read_marker(path: &Path, marker_pgno: u32, verify: bool) -> Result<LtxMarker> {
    let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut dec = Decoder::new(BufReader::with_capacity(64 * 1024, f))
        .with_context(|| format!("{}: bad LTX header", path.display()))?;
    let mut buf = Vec::new();
    let mut marker = None;
    while let Some(pgno) = dec
        .next_page(&mut buf)
        .with_context(|| format!("{}: bad page", path.display()))?
    {
        if pgno == marker_pgno {
            marker = Some(
                marker_from_page(&buf, pgno)
                    .with_context(|| format!("{}: marker page", path.display()))?,
            );
        }
        if pgno >= marker_pgno && !verify {
            break;
        }
    }
    if verify {
        dec.finish()
            .with_context(|| format!("{}: LTX verification failed", path.display()))?;
    }
    Ok(LtxMarker { marker })
}
