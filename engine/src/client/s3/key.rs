//! S3 object keys and metadata values, exactly as Litestream's S3 client writes them: the one
//! place that formats and parses them (keys relative to a replica's prefix, `litestream-timestamp`).

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use crate::client::SNAPSHOT_LEVEL;
use crate::ltx::LtxFileName;

/// Where one LTX file lives relative to a replica's prefix: `<level as %04x>/<min>-<max>.ltx`.
/// The one place that formats and parses S3 object keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectKey {
    /// 0..=9 ([`SNAPSHOT_LEVEL`]).
    pub level: u8,
    pub name: LtxFileName,
}

#[derive(Debug, thiserror::Error)]
#[error("not an LTX object key (<%04x level>/<min>-<max>.ltx): {0:?}")]
pub struct InvalidKey(String);

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}/{}", self.level, self.name)
    }
}

impl FromStr for ObjectKey {
    type Err = InvalidKey;

    fn from_str(s: &str) -> Result<Self, InvalidKey> {
        let bad = || InvalidKey(s.to_string());
        let (level, name) = s.split_once('/').ok_or_else(bad)?;
        if level.len() != 4
            || !level
                .bytes()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(bad());
        }
        let level = u8::from_str_radix(level, 16).map_err(|_| bad())?;
        if level > SNAPSHOT_LEVEL {
            return Err(bad());
        }
        let name = LtxFileName::parse(name).ok_or_else(bad)?;
        Ok(ObjectKey { level, name })
    }
}

/// Formats like Go's `time.RFC3339Nano` in UTC: fraction with trailing zeros trimmed, `Z`
/// (`2026-11-29T13:59:18.75Z`, `2026-11-29T13:59:18Z`).
pub fn format_timestamp(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t).to_offset(time::UtcOffset::UTC);
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    let nanos = dt.nanosecond();
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Parses an RFC 3339 timestamp (any offset, any fraction).
pub fn parse_timestamp(s: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

pub(super) fn clean_prefix(prefix: &str) -> String {
    prefix
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// `prefix/`, or the bucket root for an empty prefix.
pub(super) fn dir_of(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ltx::Txid;
    use std::time::Duration;

    fn name(min: u64, max: u64) -> LtxFileName {
        LtxFileName {
            min: Txid(min),
            max: Txid(max),
        }
    }

    #[test]
    fn object_key_roundtrips() {
        for level in 0..=SNAPSHOT_LEVEL {
            let k = ObjectKey {
                level,
                name: name(1, 0x2a),
            };
            let s = k.to_string();
            assert_eq!(
                s,
                format!("000{level}/0000000000000001-000000000000002a.ltx")
            );
            assert_eq!(s.parse::<ObjectKey>().unwrap(), k);
        }
    }

    #[test]
    fn object_key_rejects_junk() {
        for junk in [
            "0000/0000000000000001-0000000000000001.ltx.tmp",
            "0/0000000000000001-0000000000000001.ltx",
            "000a/0000000000000001-0000000000000001.ltx",
            "000A/0000000000000001-0000000000000001.ltx",
            "ltx/0/0000000000000001-0000000000000001.ltx",
            "0000/sub/0000000000000001-0000000000000001.ltx",
            "0000/0000000000000002-0000000000000001.ltx",
            "lock.json",
            "generations/abc/wal/x.wal.lz4",
            "0000/",
        ] {
            assert!(junk.parse::<ObjectKey>().is_err(), "{junk}");
        }
    }

    #[test]
    fn timestamps_format_like_go_rfc3339nano() {
        let t = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        // 2026-11-29T13:59:18Z = 1795960758 s.
        assert_eq!(
            format_timestamp(t(1_795_960_758_750)),
            "2026-11-29T13:59:18.75Z"
        );
        assert_eq!(
            format_timestamp(t(1_795_960_757_749)),
            "2026-11-29T13:59:17.749Z"
        );
        assert_eq!(
            format_timestamp(t(1_795_960_758_000)),
            "2026-11-29T13:59:18Z"
        );
        assert_eq!(
            format_timestamp(t(1_795_960_758_100)),
            "2026-11-29T13:59:18.1Z"
        );
        let ns = SystemTime::UNIX_EPOCH + Duration::new(1_795_960_758, 123_456_789);
        assert_eq!(format_timestamp(ns), "2026-11-29T13:59:18.123456789Z");
        for ms in [0, 1, 1_795_960_758_750, 1_795_960_757_749] {
            assert_eq!(parse_timestamp(&format_timestamp(t(ms))), Some(t(ms)));
        }
    }

    #[test]
    fn prefixes_are_cleaned_like_litestream_paths() {
        assert_eq!(clean_prefix("//x/./databases/"), "x/databases");
        assert_eq!(dir_of(""), "");
        assert_eq!(dir_of("a/b"), "a/b/");
    }
}
