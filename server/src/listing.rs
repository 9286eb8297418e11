//! The query of `GET /api/status`: parsing and validating [`app::StatusQuery`], then filtering,
//! sorting and paging engine statuses before any of them becomes a DTO, so that a page of 100
//! out of 10,000 tenants converts 100 rows. Invariant: `matched` counts the rows that pass the
//! filters, whatever the page.

use std::cmp::Ordering;
use std::time::SystemTime;

use app::StatusQuery;
use engine::tenant::TenantStatus;

use crate::http::{lag_at, STATES};

/// Largest `limit`: the most tenants one page may carry.
pub const MAX_LIMIT: u64 = 10_000;

/// Column of `sort`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortKey {
    #[default]
    Id,
    Lag,
    LastSync,
    /// Bytes uploaded since start.
    Size,
    Status,
}

impl SortKey {
    const NAMES: [(&'static str, SortKey); 5] = [
        ("id", SortKey::Id),
        ("lag", SortKey::Lag),
        ("lastSync", SortKey::LastSync),
        ("size", SortKey::Size),
        ("status", SortKey::Status),
    ];
}

/// A validated [`StatusQuery`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Listing {
    pub offset: usize,
    pub limit: Option<usize>,
    /// Lowercased; matched against the id and the database path.
    pub q: Option<String>,
    /// One of [`STATES`].
    pub status: Option<&'static str>,
    pub sort: SortKey,
    pub descending: bool,
}

impl Listing {
    /// From the query string's pairs. An empty value counts as absent (a form's blank field);
    /// a parameter given twice, an unknown name or a bad value is an error naming it.
    pub fn parse(pairs: &[(String, String)]) -> Result<Listing, String> {
        let mut q = StatusQuery::default();
        let mut seen: Vec<&str> = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            if !["offset", "limit", "q", "status", "sort"].contains(&k.as_str()) {
                return Err(format!(
                    "unknown parameter {k:?} (known: offset, limit, q, status, sort)"
                ));
            }
            if seen.contains(&k.as_str()) {
                return Err(format!("parameter {k:?} given twice"));
            }
            seen.push(k);
            if v.is_empty() {
                continue;
            }
            let number = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("{k} must be a whole number, got {v:?}"))
            };
            match k.as_str() {
                "offset" => q.offset = Some(number(v)?),
                "limit" => q.limit = Some(number(v)?),
                "q" => q.q = Some(v.clone()),
                "status" => q.status = Some(v.clone()),
                _ => q.sort = Some(v.clone()),
            }
        }
        Listing::from_query(&q)
    }

    pub fn from_query(q: &StatusQuery) -> Result<Listing, String> {
        let mut l = Listing {
            offset: usize::try_from(q.offset.unwrap_or(0)).unwrap_or(usize::MAX),
            ..Listing::default()
        };
        if let Some(limit) = q.limit {
            if !(1..=MAX_LIMIT).contains(&limit) {
                return Err(format!("limit must be 1..={MAX_LIMIT}, got {limit}"));
            }
            l.limit = Some(limit as usize);
        }
        l.q =
            q.q.as_deref()
                .filter(|s| !s.is_empty())
                .map(str::to_lowercase);
        if let Some(status) = q.status.as_deref().filter(|s| !s.is_empty()) {
            l.status = Some(
                STATES
                    .iter()
                    .copied()
                    .find(|n| n.eq_ignore_ascii_case(status))
                    .ok_or_else(|| {
                        format!("unknown status {status:?} (known: {})", STATES.join(", "))
                    })?,
            );
        }
        if let Some(sort) = q.sort.as_deref().filter(|s| !s.is_empty()) {
            let (desc, name) = match sort.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, sort),
            };
            l.sort = SortKey::NAMES
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, k)| *k)
                .ok_or_else(|| {
                    format!(
                        "unknown sort {sort:?} (known: id, lag, lastSync, size, status; \
                         a leading - reverses)"
                    )
                })?;
            l.descending = desc;
        }
        Ok(l)
    }

    fn matches(&self, s: &TenantStatus) -> bool {
        if self.status.is_some_and(|want| s.state.as_str() != want) {
            return false;
        }
        match &self.q {
            None => true,
            // Ids are lowercase already; paths are compared lowercased.
            Some(q) => {
                s.id.contains(q.as_str())
                    || s.db_path
                        .to_string_lossy()
                        .to_lowercase()
                        .contains(q.as_str())
            }
        }
    }

    /// Filters, sorts (ties by id, ascending) and pages `statuses` (sorted by id, as
    /// [`engine::store::Store::statuses`] returns them); returns the match count and the page.
    pub fn apply(&self, mut statuses: Vec<TenantStatus>) -> (usize, Vec<TenantStatus>) {
        statuses.retain(|s| self.matches(s));
        let matched = statuses.len();
        let now = SystemTime::now();
        let dir = |o: Ordering| if self.descending { o.reverse() } else { o };
        // Stable sorts: equal keys keep the id order.
        match self.sort {
            SortKey::Id => {
                if self.descending {
                    statuses.reverse();
                }
            }
            SortKey::Lag => {
                let mut keyed: Vec<_> =
                    statuses.into_iter().map(|s| (lag_at(&s, now), s)).collect();
                keyed.sort_by(|a, b| dir(a.0.cmp(&b.0)));
                statuses = keyed.into_iter().map(|(_, s)| s).collect();
            }
            SortKey::LastSync => statuses.sort_by(|a, b| dir(a.last_sync.cmp(&b.last_sync))),
            SortKey::Size => statuses.sort_by(|a, b| dir(a.bytes_uploaded.cmp(&b.bytes_uploaded))),
            SortKey::Status => statuses.sort_by(|a, b| dir(a.state.as_str().cmp(b.state.as_str()))),
        }
        let page: Vec<TenantStatus> = statuses
            .into_iter()
            .skip(self.offset)
            .take(self.limit.unwrap_or(usize::MAX))
            .collect();
        (matched, page)
    }
}
