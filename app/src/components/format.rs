//! How numbers and times read on the dashboard. Pure functions, tested on the host.

/// Placeholder for a value the server has not reported.
pub const NONE: &str = "—";

/// `0.25` → `"250 ms"`, `12.3` → `"12.3 s"`, `None` → `"—"`.
pub fn format_lag(lag_seconds: Option<f64>) -> String {
    match lag_seconds {
        None => NONE.into(),
        Some(s) if !s.is_finite() || s < 0.0 => NONE.into(),
        Some(s) if s < 1.0 => format!("{:.0} ms", s * 1000.0),
        Some(s) if s < 60.0 => format!("{s:.1} s"),
        Some(s) if s < 3600.0 => format!("{:.0} min", s / 60.0),
        Some(s) => format!("{:.1} h", s / 3600.0),
    }
}

/// Binary units, three significant figures: `0` → `"0 B"`, `1536` → `"1.50 KiB"`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let digits = if value < 10.0 {
        2
    } else if value < 100.0 {
        1
    } else {
        0
    };
    format!("{value:.digits$} {}", UNITS[unit])
}

/// `2026-11-29T13:59:18.123Z` → `"2026-11-29 13:59:18"` (UTC as the server sends it; the full
/// string stays in the cell's title). Anything else is shown as it came.
pub fn format_time(rfc3339: Option<&str>) -> String {
    let Some(t) = rfc3339 else {
        return NONE.into();
    };
    match (t.get(0..10), t.get(11..19)) {
        (Some(date), Some(time)) if t.len() >= 20 => format!("{date} {time}"),
        _ => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_shown_in_a_readable_unit() {
        assert_eq!(format_lag(None), "—");
        assert_eq!(format_lag(Some(0.25)), "250 ms");
        assert_eq!(format_lag(Some(12.34)), "12.3 s");
        assert_eq!(format_lag(Some(600.0)), "10 min");
        assert_eq!(format_lag(Some(7200.0)), "2.0 h");
        assert_eq!(format_lag(Some(f64::NAN)), "—");
    }

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1536), "1.50 KiB");
        assert_eq!(format_bytes(50 * 1024 * 1024), "50.0 MiB");
        assert_eq!(format_bytes(300 * 1024 * 1024 * 1024), "300 GiB");
    }

    #[test]
    fn times_drop_the_t_and_fraction() {
        assert_eq!(format_time(None), "—");
        assert_eq!(
            format_time(Some("2026-11-29T13:59:18.123Z")),
            "2026-11-29 13:59:18"
        );
        assert_eq!(format_time(Some("soon")), "soon");
    }
}
