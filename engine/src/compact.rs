//! Compaction, snapshots and retention of one tenant's replica, on Litestream's schedule.
//!
//! Level `L` (1..=3) merges every file of level `L-1` newer than its own last file into one file
//! `min-max`, when wall-clock time crosses a multiple of its interval. The snapshot level (9)
//! holds `1-N` files: the state at `N` with every page. Retention drops snapshots older than the
//! retention (always keeping the newest), then files no restore can use any more; the chain from
//! the oldest snapshot kept to the newest file always stays contiguous.
//!
//! All work is scheduled by the store for tenants that changed; an idle tenant costs nothing.

use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::client::{LtxInfo, SNAPSHOT_LEVEL};
use crate::ltx::{self, Decoder, Encoder, Header, Txid};

/// Litestream's defaults.
pub const DEFAULT_LEVEL_INTERVALS: [Duration; 3] = [
    Duration::from_secs(30),
    Duration::from_secs(5 * 60),
    Duration::from_secs(60 * 60),
];
pub const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);
pub const DEFAULT_SNAPSHOT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// L0 files stay this long after an L1 file covers them (readers may still be fetching them).
pub const DEFAULT_L0_RETENTION: Duration = Duration::from_secs(5 * 60);
/// L0 deletions are batched on this grid (one DeleteObjects per tick, not one per file).
pub const DEFAULT_L0_RETENTION_CHECK: Duration = Duration::from_secs(15);
/// A hot tenant's upload folds its batch into a due L1 (see [`Index::fold_l1`]) only while the
/// L1's inputs are this small: merging them then delays that batch by milliseconds, not by the
/// seconds a merge of hundreds of MiB takes. Larger ones are maintenance's, as when cold.
pub const FOLD_MAX_BYTES: u64 = 8 << 20;

#[derive(Clone, Debug)]
pub struct CompactionConfig {
    /// Intervals of levels 1, 2, 3, ...: at most 8 levels.
    pub level_intervals: Vec<Duration>,
    pub snapshot_interval: Duration,
    pub snapshot_retention: Duration,
    pub l0_retention: Duration,
    pub l0_retention_check: Duration,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            level_intervals: DEFAULT_LEVEL_INTERVALS.to_vec(),
            snapshot_interval: DEFAULT_SNAPSHOT_INTERVAL,
            snapshot_retention: DEFAULT_SNAPSHOT_RETENTION,
            l0_retention: DEFAULT_L0_RETENTION,
            l0_retention_check: DEFAULT_L0_RETENTION_CHECK,
        }
    }
}

impl CompactionConfig {
    pub fn max_level(&self) -> u8 {
        self.level_intervals.len() as u8
    }

    fn interval(&self, level: u8) -> Duration {
        self.level_intervals[level as usize - 1]
    }
}

/// The replica's files as the engine knows them (from the start-up listing and its own writes),
/// so that scheduling needs no LIST request. One per tenant, so kept small: a sorted vector (an
/// idle tenant has a handful of files).
#[derive(Clone, Debug, Default)]
pub struct Index {
    /// Sorted by (level, min, max), unique: snapshots all start at TXID 1.
    files: Vec<LtxInfo>,
    /// When this process last wrote a compaction into each level (wall clock). A file's
    /// `created_at` is the timestamp of its newest transaction, usually before the boundary
    /// that triggered the compaction, so it cannot tell whether the level already ran.
    compacted_at: Vec<(u8, SystemTime)>,
    /// Files whose write failed without a clear answer (a lost response): they may exist in
    /// the replica without being listed here. Removed before the next planning, so that a
    /// retry over a wider range never leaves two overlapping files at one level.
    uncertain: Vec<LtxInfo>,
    /// The tenant's hot task runs: level 1 is its uploads' to write (see [`Index::fold_l1`]),
    /// so [`plan`] leaves it out.
    pub hot: bool,
    /// Maintenance planned a level-1 compaction that is not recorded yet: until it is, the hot
    /// task must not write an L1 file (two overlapping files at one level).
    pub l1_in_flight: bool,
}

fn key(f: &LtxInfo) -> (u8, Txid, Txid) {
    (f.level, f.min, f.max)
}

impl Index {
    pub fn from_listing(files: impl IntoIterator<Item = LtxInfo>) -> Self {
        let mut files: Vec<LtxInfo> = files.into_iter().collect();
        files.sort_by_key(key);
        // Last one wins, as repeated inserts would.
        files.reverse();
        files.dedup_by_key(|f| key(f));
        files.reverse();
        // Room for what the next busy period adds (L0s, an L1, a snapshot), so that thousands
        // of tenants compacting at one boundary update their indexes in place instead of
        // reallocating them between the wave's temporary buffers.
        files.reserve_exact(4);
        Index {
            files,
            compacted_at: Vec::with_capacity(3),
            uncertain: Vec::new(),
            hot: false,
            l1_in_flight: false,
        }
    }

    pub fn insert(&mut self, f: LtxInfo) {
        match self.files.binary_search_by_key(&key(&f), key) {
            Ok(i) => self.files[i] = f,
            Err(i) => self.files.insert(i, f),
        }
    }

    /// Records a write that failed and may still have landed (see `uncertain`).
    pub fn mark_uncertain(&mut self, f: LtxInfo) {
        if !self.uncertain.iter().any(|u| key(u) == key(&f)) {
            self.uncertain.push(f);
        }
    }

    /// The uncertain writes that are not (any more) files of the index: safe to delete.
    pub fn uncertain(&self) -> Vec<LtxInfo> {
        self.uncertain
            .iter()
            .filter(|u| self.files.binary_search_by_key(&key(u), key).is_err())
            .cloned()
            .collect()
    }

    /// Forgets uncertain writes once they were deleted.
    pub fn clear_uncertain(&mut self, done: &[LtxInfo]) {
        self.uncertain
            .retain(|u| !done.iter().any(|d| key(d) == key(u)));
    }

    /// Records that a compaction into `level` was written at `at` (wall clock).
    pub fn mark_compacted(&mut self, level: u8, at: SystemTime) {
        match self.compacted_at.iter_mut().find(|(l, _)| *l == level) {
            Some((_, t)) => *t = at,
            None => self.compacted_at.push((level, at)),
        }
    }

    fn compacted_at(&self, level: u8) -> Option<SystemTime> {
        self.compacted_at
            .iter()
            .find(|(l, _)| *l == level)
            .map(|(_, t)| *t)
    }

    pub fn remove(&mut self, f: &LtxInfo) {
        if let Ok(i) = self.files.binary_search_by_key(&key(f), key) {
            self.files.remove(i);
        }
    }

    pub fn level(&self, level: u8) -> impl DoubleEndedIterator<Item = &LtxInfo> {
        let start = self.files.partition_point(|f| f.level < level);
        let end = self.files.partition_point(|f| f.level <= level);
        self.files[start..end].iter()
    }

    pub fn last(&self, level: u8) -> Option<&LtxInfo> {
        self.level(level).next_back()
    }

    pub fn max_txid(&self) -> u64 {
        self.files.iter().map(|f| f.max.0).max().unwrap_or(0)
    }

    pub fn all(&self) -> impl Iterator<Item = &LtxInfo> {
        self.files.iter()
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Some L0 file waits for a level-1 compaction (a lone `1-N` start file does not: see
    /// [`plan`]).
    pub fn l1_pending(&self) -> bool {
        let after = self.last(1).map(|f| f.max).unwrap_or(Txid(0));
        let mut new = self.level(0).filter(|f| f.min > after);
        match (new.next(), new.next()) {
            (Some(first), None) => first.min != Txid(1),
            (Some(_), Some(_)) => true,
            (None, _) => false,
        }
    }

    /// The L1 file a hot tenant's upload of `pending` (its next L0 files, in TXID order,
    /// following the replica) should write instead of them, when a level-1 compaction is due
    /// at `now`: the inputs, every L0 file after the last L1 and then `pending`. `None`: upload
    /// `pending` as L0 files.
    ///
    /// Why: a busy tenant uploads one L0 a second and, at each 30 s boundary, an L1 that merges
    /// them. Folding the batch that follows the boundary into that L1 makes the L1 carry it to
    /// the replica as soon as its L0 would have, one PUT instead of two: 58 PUTs a busy minute
    /// where Litestream sends at least 61. Restores are unaffected: a restore plan takes the
    /// furthest-reaching contiguous file at each step, and the L1 reaches past every L0 it
    /// covers (the batch has no L0 file; the next L0 continues right after the L1).
    pub fn fold_l1(
        &self,
        cfg: &CompactionConfig,
        pending: &[LtxInfo],
        now: SystemTime,
    ) -> Option<Vec<LtxInfo>> {
        if !self.hot || self.l1_in_flight || pending.is_empty() || cfg.max_level() == 0 {
            return None;
        }
        if !self.uncertain().is_empty() {
            // Maintenance deletes those first; a fold could recreate one of them.
            return None;
        }
        let after = self.last(1).map(|f| f.max).unwrap_or(Txid(0));
        let inputs: Vec<LtxInfo> = self
            .level(0)
            .filter(|f| f.min > after)
            .chain(pending)
            .cloned()
            .collect();
        if !foldable(&inputs) {
            return None;
        }
        match level_due(self, cfg, 1, &inputs, now) {
            Due::Now => Some(inputs),
            Due::At(_) | Due::Never => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// One unit of work the replica needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Job {
    /// Merge these files (all of level `level - 1`, contiguous) into one file at `level`.
    Compact { level: u8, inputs: Vec<LtxInfo> },
    /// Write a snapshot `1-N` from this restore plan.
    Snapshot { inputs: Vec<LtxInfo> },
    /// Delete these files.
    Delete(Vec<LtxInfo>),
}

/// Decides what is due at `now`, and when to look again (None: nothing pending).
pub fn plan(ix: &Index, cfg: &CompactionConfig, now: SystemTime) -> (Vec<Job>, Option<SystemTime>) {
    let mut jobs = Vec::new();
    let mut next: Option<SystemTime> = None;
    let mut consider = |t: SystemTime| next = Some(next.map_or(t, |n: SystemTime| n.min(t)));
    // Compactions, lowest level first (each consumes the level below as it stood before).
    for level in 1..=cfg.max_level() {
        let after = ix.last(level).map(|f| f.max).unwrap_or(Txid(0));
        let inputs: Vec<LtxInfo> = ix
            .level(level - 1)
            .filter(|f| f.min > after)
            .cloned()
            .collect();
        if level == 1 && ix.hot && foldable(&inputs) {
            // The hot task's next upload writes it (`Index::fold_l1`); when the task ends, the
            // store runs maintenance again.
            continue;
        }
        match level_due(ix, cfg, level, &inputs, now) {
            Due::Now => jobs.push(Job::Compact { level, inputs }),
            Due::At(t) => consider(t),
            Due::Never => {}
        }
    }
    // Snapshot: when none exists, or the newest is older than the interval and data changed.
    let newest_snap = ix.last(SNAPSHOT_LEVEL);
    let max = ix.max_txid();
    let snap_due = match newest_snap {
        None => max > 0,
        Some(s) => {
            s.max.0 < max
                && now.duration_since(s.created_at).unwrap_or_default() >= cfg.snapshot_interval
        }
    };
    if snap_due {
        if let Ok(inputs) = crate::restore::plan(
            &ix.all().cloned().collect::<Vec<_>>(),
            &Default::default(),
            "index",
        ) {
            jobs.push(Job::Snapshot { inputs });
        }
    } else if let Some(s) = newest_snap {
        if s.max.0 < max {
            consider(s.created_at + cfg.snapshot_interval);
        }
    }
    // Retention.
    let (deletes, later) = retention(ix, cfg, now);
    if !deletes.is_empty() {
        jobs.push(Job::Delete(deletes));
    }
    if let Some(t) = later {
        consider(t);
    }
    (jobs, next)
}

/// Small enough for a hot tenant's upload to merge (see [`FOLD_MAX_BYTES`]).
fn foldable(inputs: &[LtxInfo]) -> bool {
    inputs.iter().map(|f| f.size).sum::<u64>() <= FOLD_MAX_BYTES
}

enum Due {
    Now,
    At(SystemTime),
    Never,
}

/// Whether merging `inputs` (the files of level `level - 1` after the level's last file) into
/// `level` is due at `now`, or when it will be.
fn level_due(
    ix: &Index,
    cfg: &CompactionConfig,
    level: u8,
    inputs: &[LtxInfo],
    now: SystemTime,
) -> Due {
    let after = ix.last(level).map(|f| f.max).unwrap_or(Txid(0));
    if inputs.is_empty() || !contiguous(inputs, after) {
        return Due::Never;
    }
    if let [lone] = inputs {
        if lone.min == Txid(1) {
            // A level's first file would be a copy of one snapshot-shaped file (`1-N`: a new
            // tenant's first L0, or an L1 from its first busy period): no restore point, no
            // retention gained, one PUT and one merge per level lost. It is compacted along
            // with whatever follows it.
            return Due::Never;
        }
    }
    let interval = cfg.interval(level);
    let boundary = truncate(now, interval);
    // Litestream's rule: due once the clock crossed a boundary after the level's last file
    // was written, and after the oldest input was (Litestream only compacts at its boundary
    // ticks). So a new tenant does not pay one PUT per level at once, and a tenant busy again
    // after an idle spell does not compact its first new file at once: it waits for the next
    // boundary, like every later one. A `1-N` file in front of the inputs is the tenant's
    // start (left alone above while it was alone), not news: the oldest *new* input is the
    // one after it, or a tenant's second file would compact at once, off-boundary.
    let oldest_new = match inputs {
        [first, second, ..] if first.min == Txid(1) => second,
        _ => &inputs[0],
    };
    let since = ix
        .compacted_at(level)
        .or(ix.last(level).map(|f| f.created_at))
        .unwrap_or(oldest_new.created_at)
        .max(oldest_new.created_at);
    if since < boundary {
        Due::Now
    } else {
        Due::At(boundary + interval)
    }
}

/// The inputs follow each other without gap, and follow the level's last file if it has one (a
/// level's first file may start anywhere: a snapshot covers what came before).
fn contiguous(files: &[LtxInfo], after: Txid) -> bool {
    let Some(first) = files.first() else {
        return false;
    };
    if after.0 > 0 && first.min.0 != after.0 + 1 {
        return false;
    }
    files.windows(2).all(|w| w[1].min.0 == w[0].max.0 + 1)
}

/// Files no restore needs any more, and when the next file becomes deletable.
fn retention(
    ix: &Index,
    cfg: &CompactionConfig,
    now: SystemTime,
) -> (Vec<LtxInfo>, Option<SystemTime>) {
    let mut out = Vec::new();
    let mut later = None;
    // Snapshots older than the retention, except the newest.
    let snaps: Vec<&LtxInfo> = ix.level(SNAPSHOT_LEVEL).collect();
    let mut oldest_kept = None;
    for (i, s) in snaps.iter().enumerate() {
        let expired =
            now.duration_since(s.created_at).unwrap_or_default() >= cfg.snapshot_retention;
        if expired && i + 1 < snaps.len() {
            out.push((*s).clone());
        } else {
            oldest_kept.get_or_insert(s.max);
            // The newest snapshot is never deleted: its expiry is no reason to look again.
            if !expired && i + 1 < snaps.len() && later.is_none() {
                later = Some(s.created_at + cfg.snapshot_retention);
            }
        }
    }
    // Files wholly before the oldest snapshot kept are unusable: delete, keeping each level's last.
    if let Some(keep_from) = oldest_kept {
        for level in 0..=cfg.max_level() {
            let files: Vec<&LtxInfo> = ix.level(level).collect();
            for f in files.iter().take(files.len().saturating_sub(1)) {
                if f.max <= keep_from {
                    out.push((*f).clone());
                }
            }
        }
    }
    // L0 files covered by L1 and older than the L0 retention, in order, keeping the last.
    if let Some(l1) = ix.last(1) {
        let l0: Vec<&LtxInfo> = ix.level(0).collect();
        for f in l0.iter().take(l0.len().saturating_sub(1)) {
            if f.max > l1.max || out.iter().any(|o| o == *f) {
                continue;
            }
            let expires = f.created_at + cfg.l0_retention;
            if expires <= truncate(now, cfg.l0_retention_check) {
                out.push((*f).clone());
            } else {
                let t = truncate(expires, cfg.l0_retention_check) + cfg.l0_retention_check;
                later = Some(later.map_or(t, |l: SystemTime| l.min(t)));
                break;
            }
        }
    }
    (out, later)
}

/// `t` rounded down to a multiple of `interval` since the epoch.
fn truncate(t: SystemTime, interval: Duration) -> SystemTime {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let n = since.as_millis() / interval.as_millis().max(1);
    UNIX_EPOCH + Duration::from_millis((n * interval.as_millis()) as u64)
}

/// Merges LTX files (in TXID order, contiguous) into one: newest page wins, pages beyond the
/// final commit dropped. The result's header takes its commit and timestamp from the newest
/// input and carries no WAL fields, as Litestream's compactions do.
pub fn merge<W: std::io::Write>(
    inputs: Vec<Box<dyn Read + Send>>,
    out: W,
    snapshot: bool,
) -> Result<(W, Header), ltx::LtxError> {
    let mut decoders = Vec::with_capacity(inputs.len());
    for r in inputs {
        decoders.push(Decoder::new(r)?);
    }
    let (Some(first), Some(last)) = (decoders.first(), decoders.last()) else {
        return Err(ltx::LtxError::EmptyDatabase);
    };
    let page_size = first.header().page_size;
    if let Some(d) = decoders.iter().find(|d| d.header().page_size != page_size) {
        return Err(ltx::LtxError::PageSizeMismatch {
            pgno: 0,
            len: d.header().page_size as usize,
            page_size,
        });
    }
    let min = if snapshot {
        Txid(1)
    } else {
        first.header().min_txid
    };
    let header = Header {
        flags: ltx::HEADER_FLAG_NO_CHECKSUM,
        page_size,
        commit: last.header().commit,
        min_txid: min,
        max_txid: last.header().max_txid,
        timestamp_ms: if snapshot {
            now_ms()
        } else {
            last.header().timestamp_ms
        },
        pre_apply_checksum: 0,
        wal_offset: 0,
        wal_size: 0,
        wal_salt1: 0,
        wal_salt2: 0,
        node_id: 0,
    };
    let commit = header.commit;
    let mut enc = Encoder::new(out, header.clone())?;
    // Current page of each input (None: exhausted). Every page is still decompressed, because
    // each input's file checksum covers the decompressed bytes and is verified below; but a
    // winning block-encoded page is copied as stored instead of being compressed again (the
    // output is block-encoded too), which is most of a merge's CPU. Buffers are recycled.
    let mut heads: Vec<Option<Head>> = Vec::with_capacity(decoders.len());
    let mut spare: Vec<Head> = Vec::new();
    for d in decoders.iter_mut() {
        heads.push(Head::read(d, Head::default())?);
    }
    while let Some(pgno) = heads.iter().flatten().map(|h| h.page.pgno).min() {
        // The newest input holding this page wins; every input at this page advances.
        let mut winner: Option<Head> = None;
        for (i, slot) in heads.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|h| h.page.pgno == pgno) {
                if let Some(h) = slot.take() {
                    spare.extend(winner.replace(h));
                }
                let buffers = spare.pop().unwrap_or_default();
                *slot = Head::read(&mut decoders[i], buffers)?;
            }
        }
        if pgno <= commit {
            if let Some(w) = &winner {
                if w.page.block {
                    enc.encode_raw_page(pgno, &w.frame, &w.data)?;
                } else {
                    enc.encode_page(pgno, &w.data)?;
                }
            }
        }
        spare.extend(winner);
    }
    for d in decoders {
        d.finish()?;
    }
    let (w, _) = enc.finish()?;
    Ok((w, header))
}

/// The page an input of [`merge`] is at: decompressed, and its frame as stored.
#[derive(Default)]
struct Head {
    page: ltx::RawPage,
    data: Vec<u8>,
    frame: Vec<u8>,
}

impl Head {
    /// The next page of `d` in `buffers` (reused), or None at the end of its page block.
    fn read<R: Read>(d: &mut Decoder<R>, mut buffers: Head) -> Result<Option<Head>, ltx::LtxError> {
        Ok(d.next_page_raw(&mut buffers.data, &mut buffers.frame)?
            .map(|page| Head { page, ..buffers }))
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ltx::{LtxError, PageEncoding, HEADER_FLAG_NO_CHECKSUM};
    use std::collections::BTreeMap;

    fn f(level: u8, min: u64, max: u64, age_s: u64, now: SystemTime) -> LtxInfo {
        LtxInfo {
            level,
            min: Txid(min),
            max: Txid(max),
            size: 1,
            created_at: now - Duration::from_secs(age_s),
        }
    }

    #[test]
    fn l1_compaction_waits_for_its_boundary_and_takes_every_new_l0() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_015); // 25 s past a 30 s boundary
        let cfg = CompactionConfig::default();
        let ix = Index::from_listing([
            f(0, 1, 1, 100, now),
            f(0, 2, 2, 40, now),
            f(0, 3, 3, 5, now),
        ]);
        let (jobs, _) = plan(&ix, &cfg, now);
        assert!(jobs.contains(&Job::Compact {
            level: 1,
            inputs: vec![
                f(0, 1, 1, 100, now),
                f(0, 2, 2, 40, now),
                f(0, 3, 3, 5, now)
            ]
        }));
        // With an L1 created after the boundary, the next L1 waits for the next boundary.
        let ix = Index::from_listing([f(1, 1, 3, 1, now), f(0, 4, 4, 1, now)]);
        let (jobs, next) = plan(&ix, &cfg, now);
        assert!(!jobs
            .iter()
            .any(|j| matches!(j, Job::Compact { level: 1, .. })));
        assert_eq!(next, Some(UNIX_EPOCH + Duration::from_secs(1_000_000_020)));
    }

    #[test]
    fn a_hot_tenant_folds_the_batch_after_a_boundary_into_its_l1() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_015); // 25 s past a 30 s boundary
        let boundary = truncate(now, Duration::from_secs(30));
        let cfg = CompactionConfig::default();
        let mut ix = Index::from_listing([f(1, 1, 3, 40, now), f(0, 4, 4, 30, now)]);
        ix.mark_compacted(1, boundary - Duration::from_secs(30));
        let pending = [f(0, 5, 5, 0, now), f(0, 6, 6, 0, now)];
        // Cold (maintenance's level), or hot with maintenance's own L1 under way: no fold.
        assert_eq!(ix.fold_l1(&cfg, &pending, now), None);
        ix.hot = true;
        ix.l1_in_flight = true;
        assert_eq!(ix.fold_l1(&cfg, &pending, now), None);
        ix.l1_in_flight = false;
        // Hot: the L1 takes every L0 after the last L1, then the pending batch.
        let inputs = ix.fold_l1(&cfg, &pending, now).expect("due");
        let ranges: Vec<(u64, u64)> = inputs.iter().map(|f| (f.min.0, f.max.0)).collect();
        assert_eq!(ranges, [(4, 4), (5, 5), (6, 6)]);
        // ...and maintenance leaves level 1 to it, but still compacts the levels above.
        let (jobs, _) = plan(&ix, &cfg, now);
        assert!(
            !jobs
                .iter()
                .any(|j| matches!(j, Job::Compact { level: 1, .. })),
            "{jobs:?}"
        );
        // Once written, the next fold waits for the next boundary.
        ix.insert(f(1, 4, 6, 0, now));
        ix.mark_compacted(1, now);
        assert_eq!(ix.fold_l1(&cfg, &[f(0, 7, 7, 0, now)], now), None);
        let later = boundary + Duration::from_secs(31);
        let inputs = ix.fold_l1(&cfg, &[f(0, 7, 7, 0, now)], later).expect("due");
        assert_eq!(inputs.len(), 1);
        // Inputs too large to merge in the upload's path stay maintenance's, hot or not.
        let mut big = f(0, 7, 7, 0, now);
        big.size = FOLD_MAX_BYTES + 1;
        assert_eq!(ix.fold_l1(&cfg, &[big.clone()], later), None);
        ix.insert(big.clone());
        let (jobs, _) = plan(&ix, &cfg, later);
        assert!(jobs.contains(&Job::Compact {
            level: 1,
            inputs: vec![big.clone()]
        }));
        ix.remove(&big);
        // A write that may have landed blocks folds until maintenance deleted it.
        ix.mark_uncertain(f(1, 7, 9, 0, now));
        assert_eq!(ix.fold_l1(&cfg, &[f(0, 7, 7, 0, now)], later), None);
    }

    #[test]
    fn a_fold_never_jumps_a_gap_nor_its_boundary() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_015);
        let cfg = CompactionConfig::default();
        let mut ix = Index::from_listing([f(1, 1, 3, 40, now), f(0, 4, 4, 40, now)]);
        ix.hot = true;
        // A pending file that does not follow the replica is never folded.
        assert_eq!(ix.fold_l1(&cfg, &[f(0, 6, 6, 0, now)], now), None);
        // A tenant whose only file is its start (`1-1`): its first batch after the start is
        // news from now, so it waits for the next boundary, as an L0 upload would.
        let mut ix = Index::from_listing([f(0, 1, 1, 100, now)]);
        ix.hot = true;
        assert_eq!(ix.fold_l1(&cfg, &[f(0, 2, 2, 0, now)], now), None);
    }

    #[test]
    fn a_level_runs_once_per_boundary_even_though_its_file_carries_an_older_timestamp() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_015); // 25 s past a boundary
        let boundary = truncate(now, Duration::from_secs(30));
        let cfg = CompactionConfig::default();
        // The L1 file holds transactions from before the boundary (its created_at), but it was
        // written just after it; L0 4 was committed between the L1's cut and the boundary.
        let mut l0 = f(0, 4, 4, 0, now);
        l0.created_at = boundary - Duration::from_millis(200);
        let mut ix = Index::from_listing([f(1, 1, 3, 26, now), l0]);
        let (jobs, _) = plan(&ix, &cfg, now);
        assert!(jobs
            .iter()
            .any(|j| matches!(j, Job::Compact { level: 1, .. })));
        ix.mark_compacted(1, boundary + Duration::from_millis(300));
        let (jobs, next) = plan(&ix, &cfg, now);
        assert!(
            !jobs
                .iter()
                .any(|j| matches!(j, Job::Compact { level: 1, .. })),
            "{jobs:?}"
        );
        assert_eq!(next, Some(boundary + Duration::from_secs(30)));
        let (jobs, _) = plan(&ix, &cfg, boundary + Duration::from_secs(30));
        assert!(jobs
            .iter()
            .any(|j| matches!(j, Job::Compact { level: 1, .. })));
    }

    #[test]
    fn a_tenant_busy_again_after_an_idle_spell_compacts_at_the_next_boundary() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_015); // 25 s past a boundary
        let boundary = truncate(now, Duration::from_secs(30));
        let cfg = CompactionConfig::default();
        // Idle for 10 minutes since the last L1; one new L0, committed after the boundary.
        let mut ix = Index::from_listing([f(1, 1, 3, 600, now), f(0, 4, 4, 1, now)]);
        ix.mark_compacted(1, now - Duration::from_secs(600));
        let (jobs, next) = plan(&ix, &cfg, now);
        assert!(
            !jobs
                .iter()
                .any(|j| matches!(j, Job::Compact { level: 1, .. })),
            "{jobs:?}"
        );
        assert_eq!(next, Some(boundary + Duration::from_secs(30)));
        let (jobs, _) = plan(&ix, &cfg, boundary + Duration::from_secs(30));
        assert!(jobs.contains(&Job::Compact {
            level: 1,
            inputs: vec![f(0, 4, 4, 1, now)]
        }));
    }

    #[test]
    fn a_lone_snapshot_shaped_file_is_not_copied_into_the_next_level() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_015);
        let cfg = CompactionConfig::default();
        let compacts = |ix: &Index, at: SystemTime| {
            let (jobs, next) = plan(ix, &cfg, at);
            let levels: Vec<u8> = jobs
                .iter()
                .filter_map(|j| match j {
                    Job::Compact { level, .. } => Some(*level),
                    _ => None,
                })
                .collect();
            (levels, next)
        };
        // A new tenant that never wrote again: its first L0 and its start-up snapshot. Nothing
        // to compact, now or at any later boundary, and no timer.
        let idle = Index::from_listing([f(0, 1, 1, 3600, now), f(9, 1, 1, 3600, now)]);
        assert_eq!(compacts(&idle, now), (vec![], None));
        // An L1 `1-N` from its first busy period is not copied into L2 and L3 either.
        let ix = Index::from_listing([f(0, 1, 7, 3600, now), f(1, 1, 7, 3600, now)]);
        assert_eq!(compacts(&ix, now).0, Vec::<u8>::new());
        // Once more follows, the lone file is compacted with it.
        let ix = Index::from_listing([f(0, 1, 1, 3600, now), f(0, 2, 2, 600, now)]);
        let (jobs, _) = plan(&ix, &cfg, now);
        assert!(jobs.contains(&Job::Compact {
            level: 1,
            inputs: vec![f(0, 1, 1, 3600, now), f(0, 2, 2, 600, now)]
        }));
    }

    #[test]
    fn a_tenant_busy_after_its_start_compacts_at_the_next_boundary_not_at_once() {
        // 25 s past a 30 s boundary. The start-up L0 `1-1` is an hour old; the first new one
        // came 5 s ago, after the boundary: L1 waits for the next boundary (once, in 5 s).
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_015);
        let boundary = truncate(now, Duration::from_secs(30));
        assert_eq!(
            now.duration_since(boundary).unwrap(),
            Duration::from_secs(25)
        );
        let cfg = CompactionConfig::default();
        let ix = Index::from_listing([
            f(0, 1, 1, 3600, now),
            f(9, 1, 1, 3600, now),
            f(0, 2, 2, 5, now),
        ]);
        let compactions = |at: SystemTime| {
            let (jobs, next) = plan(&ix, &cfg, at);
            let jobs: Vec<Job> = jobs
                .into_iter()
                .filter(|j| matches!(j, Job::Compact { .. }))
                .collect();
            (jobs, next)
        };
        let (jobs, next) = compactions(now);
        assert_eq!(jobs, vec![], "compacted off-boundary");
        assert_eq!(next, Some(boundary + Duration::from_secs(30)));
        let (jobs, _) = compactions(boundary + Duration::from_secs(31));
        assert_eq!(
            jobs,
            vec![Job::Compact {
                level: 1,
                inputs: vec![f(0, 1, 1, 3600, now), f(0, 2, 2, 5, now)]
            }]
        );
    }

    #[test]
    fn the_index_keeps_files_ordered_by_level_and_txid() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let mut ix = Index::from_listing([
            f(9, 1, 5, 0, now),
            f(0, 7, 7, 0, now),
            f(1, 1, 5, 0, now),
            f(0, 6, 6, 0, now),
            f(0, 6, 6, 9, now), // a second listing of the same file: the last one wins
        ]);
        assert_eq!(ix.len(), 4);
        assert_eq!(
            ix.level(0).next().unwrap().created_at,
            now - Duration::from_secs(9)
        );
        ix.insert(f(0, 8, 8, 0, now));
        ix.insert(f(2, 1, 5, 0, now));
        ix.insert(f(0, 7, 7, 3, now)); // replaces
        let keys: Vec<_> = ix.all().map(|f| (f.level, f.min.0, f.max.0)).collect();
        assert_eq!(
            keys,
            [
                (0, 6, 6),
                (0, 7, 7),
                (0, 8, 8),
                (1, 1, 5),
                (2, 1, 5),
                (9, 1, 5)
            ]
        );
        assert_eq!(ix.last(0).unwrap().max, Txid(8));
        assert_eq!(
            ix.level(0).nth(1).unwrap().created_at,
            now - Duration::from_secs(3)
        );
        assert!(ix.last(3).is_none());
        ix.remove(&f(0, 7, 7, 0, now));
        ix.remove(&f(4, 1, 1, 0, now)); // absent: no-op
        assert_eq!(ix.level(0).count(), 2);
        assert_eq!(ix.max_txid(), 8);
    }

    #[test]
    fn uncertain_writes_are_offered_for_deletion_until_cleared() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let mut ix = Index::from_listing([f(0, 14, 14, 0, now), f(1, 1, 13, 0, now)]);
        ix.mark_uncertain(f(1, 14, 17, 0, now));
        ix.mark_uncertain(f(1, 14, 17, 5, now)); // same key: once
        ix.mark_uncertain(f(1, 1, 13, 0, now)); // a file the index knows is never offered
        let offered = ix.uncertain();
        assert_eq!(offered.len(), 1);
        assert_eq!(
            (offered[0].level, offered[0].min, offered[0].max),
            (1, Txid(14), Txid(17))
        );
        ix.clear_uncertain(&offered);
        assert!(ix.uncertain().is_empty());
    }

    #[test]
    fn a_gap_is_never_compacted_over() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_015);
        let ix = Index::from_listing([f(1, 1, 3, 100, now), f(0, 5, 5, 10, now)]);
        let (jobs, _) = plan(&ix, &CompactionConfig::default(), now);
        assert!(!jobs.iter().any(|j| matches!(j, Job::Compact { .. })));
    }

    #[test]
    fn retention_keeps_the_newest_snapshot_and_a_contiguous_chain() {
        let now = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let day = 24 * 3600;
        let ix = Index::from_listing([
            f(9, 1, 10, day + 100, now),
            f(9, 1, 20, 50, now),
            f(1, 1, 10, day + 90, now),
            f(1, 11, 20, 60, now),
            f(1, 21, 25, 10, now),
            f(0, 24, 24, 400, now),
            f(0, 25, 25, 10, now),
        ]);
        let (deletes, _) = retention(&ix, &CompactionConfig::default(), now);
        let names: Vec<(u8, u64, u64)> = deletes
            .iter()
            .map(|d| (d.level, d.min.0, d.max.0))
            .collect();
        assert!(names.contains(&(9, 1, 10)));
        assert!(names.contains(&(1, 1, 10)));
        assert!(names.contains(&(1, 11, 20)));
        assert!(names.contains(&(0, 24, 24)));
        assert!(!names.contains(&(9, 1, 20)));
        assert!(!names.contains(&(1, 21, 25)));
        assert!(!names.contains(&(0, 25, 25)));
    }

    fn ltx_header(txid: u64, commit: u32) -> Header {
        Header {
            flags: HEADER_FLAG_NO_CHECKSUM,
            page_size: 512,
            commit,
            min_txid: Txid(txid),
            max_txid: Txid(txid),
            timestamp_ms: 1_795_960_672_000 + txid as i64,
            pre_apply_checksum: 0,
            wal_offset: 0,
            wal_size: 0,
            wal_salt1: 0,
            wal_salt2: 0,
            node_id: 0,
        }
    }

    /// Page `pgno` as of `txid`: half noise (incompressible), half text.
    fn page_data(pgno: u32, txid: u64) -> Vec<u8> {
        let mut x = u64::from(pgno).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ txid;
        (0..512)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i < 256 {
                    x as u8
                } else {
                    b"litestream"[i % 10]
                }
            })
            .collect()
    }

    /// Three contiguous inputs (TXIDs 2..=4) that overwrite each other's pages, the last one
    /// shrinking the database, in the given page encodings.
    fn inputs(encodings: [PageEncoding; 3]) -> Vec<(Header, Vec<u32>, Vec<u8>)> {
        let layout: [(u32, &[u32]); 3] =
            [(12, &[1, 2, 5, 9, 12]), (12, &[2, 3, 9]), (10, &[3, 4, 10])];
        layout
            .iter()
            .zip(encodings)
            .enumerate()
            .map(|(i, ((commit, pgnos), enc))| {
                let h = ltx_header(2 + i as u64, *commit);
                let mut e = Encoder::with_encoding(Vec::new(), h.clone(), enc).unwrap();
                for &p in *pgnos {
                    e.encode_page(p, &page_data(p, h.min_txid.0)).unwrap();
                }
                (h, pgnos.to_vec(), e.finish().unwrap().0)
            })
            .collect()
    }

    fn readers(files: &[Vec<u8>]) -> Vec<Box<dyn Read + Send>> {
        files
            .iter()
            .map(|b| Box::new(std::io::Cursor::new(b.clone())) as Box<dyn Read + Send>)
            .collect()
    }

    /// What merge must produce: newest page wins, pages beyond the final commit dropped, every
    /// page compressed by the encoder.
    fn expected(ins: &[(Header, Vec<u32>, Vec<u8>)]) -> Vec<u8> {
        let mut pages = BTreeMap::new();
        for (h, pgnos, _) in ins {
            for &p in pgnos {
                pages.insert(p, page_data(p, h.min_txid.0));
            }
        }
        let last = &ins[ins.len() - 1].0;
        let mut h = ltx_header(2, last.commit);
        h.max_txid = last.max_txid;
        h.timestamp_ms = last.timestamp_ms;
        let mut e = Encoder::new(Vec::new(), h).unwrap();
        for (p, d) in pages.range(..=last.commit) {
            e.encode_page(*p, d).unwrap();
        }
        e.finish().unwrap().0
    }

    #[test]
    fn merge_copies_pages_byte_identical_to_encoding_them_again() {
        use PageEncoding::{Block, Frame};
        for encodings in [
            [Block; 3],
            [Frame; 3],
            [Frame, Block, Frame],
            [Block, Frame, Block],
        ] {
            let ins = inputs(encodings);
            let files: Vec<Vec<u8>> = ins.iter().map(|(_, _, b)| b.clone()).collect();
            let (out, h) = merge(readers(&files), Vec::new(), false).unwrap();
            assert_eq!(out, expected(&ins), "{encodings:?}");
            assert_eq!((h.min_txid, h.max_txid, h.commit), (Txid(2), Txid(4), 10));
            let mut d = Decoder::new(std::io::Cursor::new(&out)).unwrap();
            let mut buf = Vec::new();
            let mut got = Vec::new();
            while let Some(p) = d.next_page(&mut buf).unwrap() {
                got.push(p);
                let from = if [3, 4, 10].contains(&p) {
                    4
                } else if [2, 9].contains(&p) {
                    3
                } else {
                    2
                };
                assert_eq!(buf, page_data(p, from), "page {p}");
            }
            d.finish().unwrap();
            assert_eq!(got, [1, 2, 3, 4, 5, 9, 10]);
        }
    }

    #[test]
    fn merge_fails_on_a_corrupted_input_whether_its_page_wins_or_loses() {
        let ins = inputs([PageEncoding::Block; 3]);
        let files: Vec<Vec<u8>> = ins.iter().map(|(_, _, b)| b.clone()).collect();
        // Flip a literal byte of a page that wins (input 1 page 1, input 2 page 2: copied as
        // stored) and of one that loses (input 2 page 3, replaced by input 3's).
        for (input, pgno) in [(0usize, 1u32), (1, 3), (1, 2)] {
            let mut files = files.clone();
            let mut d = Decoder::new(std::io::Cursor::new(&files[input])).unwrap();
            let (mut data, mut frame) = (Vec::new(), Vec::new());
            let mut at = ltx::HEADER_SIZE;
            loop {
                let p = d.next_page_raw(&mut data, &mut frame).unwrap().unwrap();
                if p.pgno == pgno {
                    break;
                }
                at += frame.len();
            }
            // The payload starts with a token and literal bytes of the noise half.
            files[input][at + ltx::PAGE_HEADER_SIZE + 4 + 8] ^= 0x40;
            let err = merge(readers(&files), Vec::new(), false).unwrap_err();
            assert!(
                matches!(err, LtxError::ChecksumMismatch { .. }),
                "input {input} page {pgno}: {err:?}"
            );
        }
    }
}
