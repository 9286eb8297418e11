//! `GET /api/clients/{id}`: one tenant with its replica's files, what a restore can reach and the
//! commands that restore it. The file list comes from the engine's in-memory index of the
//! replica ([`Store::replica_files`]): this endpoint never sends a request to the replica.
//!
//! [`Store::replica_files`]: engine::store::Store::replica_files

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use app::{ClientDetail, LevelFiles, LtxFile, RestoreCommands, RestoreWindow};
use axum::http::StatusCode;
use engine::client::LtxInfo;
use engine::ltx::Txid;
use engine::watcher::{classify_name, NameKind};

use crate::http::{client_dto, ApiError, AppState};

/// How long the endpoint waits for a tenant's upload or maintenance step to release the index.
const INDEX_WAIT: Duration = Duration::from_secs(3);

pub async fn client_detail(state: &AppState, id: &str) -> Result<ClientDetail, ApiError> {
    // Registered ids are looked up as given (the legacy `-dsn` mode's ids are names); a UUID in
    // any case finds its lowercase tenant; anything else cannot be a tenant.
    let (id, status) = match state.store.status(id) {
        Some(s) => (id.to_string(), s),
        None => {
            let NameKind::Tenant(lower) = classify_name(&format!("{id}.db")) else {
                return Err(ApiError::bad_request(format!(
                    "{id:?} is not a client id (expected a UUID such as \
                     0b6f1c1e-6a7d-4c43-9a53-2f1f3c1c9e11)"
                )));
            };
            match state.store.status(&lower) {
                Some(s) => (lower, s),
                None => return Err(ApiError::not_found(format!("no client {id:?}"))),
            }
        }
    };
    let files = match tokio::time::timeout(INDEX_WAIT, state.store.replica_files(&id)).await {
        Ok(files) => files,
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!(
                    "the replica index of {id} is held by an upload or compaction for more \
                     than {INDEX_WAIT:?}; try again"
                ),
            ))
        }
    };
    let files = files.unwrap_or_default();
    let url = status.replica_url.clone();
    Ok(ClientDetail {
        client: client_dto(&status),
        restore_window: restore_window(&files),
        levels: levels(&files),
        restore_commands: restore_commands(&id, &url),
    })
}

/// Files per level, levels ascending, files by TXID.
pub fn levels(files: &[LtxInfo]) -> Vec<LevelFiles> {
    let mut by_level: BTreeMap<u8, Vec<&LtxInfo>> = BTreeMap::new();
    for f in files {
        by_level.entry(f.level).or_default().push(f);
    }
    by_level
        .into_iter()
        .map(|(level, mut fs)| {
            fs.sort_by_key(|f| (f.min, f.max));
            LevelFiles {
                level: level.into(),
                files: fs
                    .into_iter()
                    .map(|f| LtxFile {
                        min_txid: f.min.to_string(),
                        max_txid: f.max.to_string(),
                        size: f.size,
                        created_at: engine::restore::fmt_time(f.created_at),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// What `restore` can reach with these files, planned as `engine::restore` plans.
///
/// - latest: the end of the chain a plain restore takes (none if it fails, e.g. a TXID gap);
/// - earliest: a point-in-time restore needs a file starting at TXID 1 (a snapshot, or the
///   first L0/compacted file of a young replica) created *strictly before* the timestamp, so
///   the earliest `-timestamp` that restores is 1 ms after the oldest such file (file times
///   have millisecond precision: they are the LTX header's);
/// - min TXID: the smallest `-txid` that restores, the end of the shortest such file.
pub fn restore_window(files: &[LtxInfo]) -> Option<RestoreWindow> {
    let chain = engine::restore::plan(files, &Default::default(), "").ok()?;
    let max = chain.last()?.max;
    let latest = chain.iter().map(|f| f.created_at).max()?;
    let bases = || files.iter().filter(|f| f.min == Txid(1));
    let earliest = bases().map(|f| f.created_at).min()?;
    let min = bases().map(|f| f.max).min()?;
    Some(RestoreWindow {
        earliest_at: engine::restore::fmt_time(truncate_ms(earliest) + Duration::from_millis(1)),
        latest_at: engine::restore::fmt_time(latest),
        min_txid: min.to_string(),
        max_txid: max.to_string(),
    })
}

fn truncate_ms(t: SystemTime) -> SystemTime {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    UNIX_EPOCH + Duration::from_millis(since.as_millis() as u64)
}

/// Both restorers take the replica URL the engine shows (`file:///abs/...`, or
/// `s3://bucket/prefix/<id>` with `?endpoint=…&region=…` for a custom endpoint), which never
/// holds credentials: those come from the AWS chain of whoever runs the command.
pub fn restore_commands(id: &str, url: &str) -> RestoreCommands {
    let out = shell_quote(&format!("{id}.db"));
    let url = shell_quote(url);
    RestoreCommands {
        litestream: format!("litestream restore -o {out} {url}"),
        manager: format!("litestream-manager restore -o {out} {url}"),
    }
}

/// Quotes `s` for a POSIX shell when it holds anything but plainly safe characters (an S3 URL's
/// `?` and `&`, spaces in a path).
fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/:._-=,+@%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(level: u8, min: u64, max: u64, secs: u64) -> LtxInfo {
        LtxInfo {
            level,
            min: Txid(min),
            max: Txid(max),
            size: 100 * max,
            created_at: UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs),
        }
    }

    #[test]
    fn restore_window_starts_at_the_oldest_file_that_restores_alone() {
        // L0 1..=4 compacted into L1 1-3, a snapshot 1-4 later: the L0 file 1-1 is the oldest
        // base. L0 file 5 extends the chain.
        let files = vec![
            file(0, 1, 1, 10),
            file(0, 2, 2, 20),
            file(0, 3, 3, 30),
            file(0, 4, 4, 40),
            file(1, 1, 3, 31),
            file(9, 1, 4, 41),
            file(0, 5, 5, 50),
        ];
        let w = restore_window(&files).unwrap();
        assert_eq!(w.earliest_at, "2027-01-15T08:00:10.001Z");
        assert_eq!(w.latest_at, "2027-01-15T08:00:50Z");
        assert_eq!(w.min_txid, "0000000000000001");
        assert_eq!(w.max_txid, "0000000000000005");
    }

    #[test]
    fn after_retention_the_oldest_snapshot_is_the_earliest_point() {
        let files = vec![file(9, 1, 7, 100), file(9, 1, 9, 200), file(0, 10, 10, 210)];
        let w = restore_window(&files).unwrap();
        assert_eq!(w.earliest_at, "2027-01-15T08:01:40.001Z");
        assert_eq!(w.min_txid, "0000000000000007");
        assert_eq!(w.max_txid, "000000000000000a");
    }

    #[test]
    fn no_window_without_files_or_with_a_gap() {
        assert_eq!(restore_window(&[]), None);
        assert_eq!(restore_window(&[file(0, 2, 2, 1)]), None);
        assert_eq!(restore_window(&[file(0, 1, 1, 1), file(0, 3, 3, 2)]), None);
    }

    #[test]
    fn levels_group_and_order_files() {
        let files = vec![file(9, 1, 4, 41), file(0, 5, 5, 50), file(0, 4, 4, 40)];
        let l = levels(&files);
        assert_eq!(l.iter().map(|l| l.level).collect::<Vec<_>>(), [0, 9]);
        assert_eq!(l[0].files[0].min_txid, "0000000000000004");
        assert_eq!(l[0].files[1].size, 500);
    }

    #[test]
    fn restore_commands_quote_s3_urls_and_never_hold_secrets() {
        let id = "0b6f1c1e-6a7d-4c43-9a53-2f1f3c1c9e11";
        let c = restore_commands(id, &format!("file:///srv/replica/databases/{id}"));
        assert_eq!(
            c.litestream,
            format!("litestream restore -o {id}.db file:///srv/replica/databases/{id}")
        );
        assert_eq!(
            c.manager,
            format!("litestream-manager restore -o {id}.db file:///srv/replica/databases/{id}")
        );
        let c = restore_commands(
            id,
            &format!("s3://b/databases/{id}?endpoint=http://127.0.0.1:9000&region=us-east-1"),
        );
        assert_eq!(
            c.litestream,
            format!(
                "litestream restore -o {id}.db \
                 's3://b/databases/{id}?endpoint=http://127.0.0.1:9000&region=us-east-1'"
            )
        );
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }

    use crate::http::router;
    use crate::http::tests::{get, state};
    use axum::http::StatusCode;

    const ID: &str = "0b6f1c1e-6a7d-4c43-9a53-2f1f3c1c9e11";

    /// A real tenant replicated by the engine to a local replica: the detail lists its L0 files
    /// from memory, and a restore at the window's earliest time works.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn detail_lists_replica_files_and_its_earliest_time_restores() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        std::fs::create_dir_all(dir.path().join("replica")).unwrap();
        let db = dir.path().join(format!("{ID}.db"));
        {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.execute_batch(
                "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);",
            )
            .unwrap();
        }
        st.store.register(ID, &db).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while st.store.status(ID).unwrap().replicated_txid == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "not replicated: {:?}",
                st.store.status(ID)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (code, body) = get(router(st.clone()), &format!("/api/clients/{ID}")).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        // The ClientStatus fields stay at the top level.
        assert_eq!(body["clientId"], ID);
        assert!(body["replicatedTxid"].is_string(), "{body}");
        let detail: ClientDetail = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(detail.levels[0].level, 0, "{body}");
        assert_eq!(detail.levels[0].files[0].min_txid, "0000000000000001");
        assert!(detail.levels[0].files[0].size > 0);
        let w = detail.restore_window.clone().expect("a restore window");
        assert_eq!(w.min_txid, "0000000000000001");
        assert_eq!(
            Some(w.max_txid.clone()),
            detail.client.replicated_txid,
            "{body}"
        );
        let replica = std::path::absolute(dir.path().join("replica").join(ID)).unwrap();
        assert_eq!(
            detail.restore_commands.litestream,
            format!("litestream restore -o {ID}.db file://{}", replica.display())
        );
        assert_eq!(
            detail.restore_commands.manager,
            format!(
                "litestream-manager restore -o {ID}.db file://{}",
                replica.display()
            )
        );

        // The advertised earliest time restores; 2 ms before it does not.
        let at = |s: &str| -> SystemTime {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .unwrap()
                .into()
        };
        let replica = engine::client::Replica::Fs(engine::client::fs::FsReplica::new(replica));
        let earliest = at(&w.earliest_at);
        let restore = |ts: SystemTime, name: &str| {
            let out = dir.path().join(name);
            let replica = replica.clone();
            async move {
                let opts = engine::restore::RestoreOptions {
                    target: engine::restore::Target {
                        txid: None,
                        timestamp: Some(ts),
                    },
                    ..Default::default()
                };
                engine::restore::restore(
                    &replica,
                    &out,
                    &opts,
                    &tokio_util::sync::CancellationToken::new(),
                )
                .await
            }
        };
        restore(earliest, "at.db")
            .await
            .expect("restore at earliestAt");
        let too_early = restore(earliest - Duration::from_millis(2), "before.db").await;
        assert!(too_early.is_err(), "{too_early:?}");

        // Ids in upper case find the tenant.
        let (code, body) = get(router(st), &format!("/api/clients/{}", ID.to_uppercase())).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["clientId"], ID);
    }

    #[tokio::test]
    async fn detail_of_a_tenant_not_listed_yet_has_no_window() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        st.store
            .register_refused(ID, &dir.path().join("x.db"), "a directory");
        let (code, body) = get(router(st), &format!("/api/clients/{ID}")).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["restoreWindow"], serde_json::Value::Null);
        assert_eq!(body["levels"], serde_json::json!([]));
        assert_eq!(body["lastError"], "a directory");
        assert!(body["restoreCommands"]["litestream"]
            .as_str()
            .unwrap()
            .starts_with("litestream restore -o "));
    }
}
