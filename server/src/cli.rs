//! Command line: the seed's flags, spelled as users already type them (`-watch-dir`), and the
//! `--double-dash` forms clap gives us.
//!
//! clap has no single-dash long options, so [`normalize_args`] rewrites `-name[=v]` to
//! `--name[=v]` for every long option the command knows, before clap parses.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "litestream-manager",
    version,
    about = "Backs up every tenant's SQLite database continuously, in Litestream's replica format.",
    long_about = "Backs up every tenant's SQLite database continuously, in Litestream 0.5's replica \
format, so the stock `litestream restore` can restore any of them.\n\n\
With no arguments it watches data/clients, replicates to data/replica and serves the dashboard on \
http://127.0.0.1:8080.",
    after_help = "Examples:\n  \
litestream-manager -watch-dir data/clients\n  \
litestream-manager -watch-dir data/clients,data/other -bucket my-backups -region eu-west-1\n  \
litestream-manager -dsn app.db -db-name \"Analytics Dashboard\"\n  \
litestream-manager restore -o restored.db file:///srv/data/replica/databases/<uuid>\n\n\
Single-dash long flags (-watch-dir) and double-dash ones (--watch-dir) both work."
)]
pub struct Cli {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Restore a database from a replica, at its latest state or at a point in time.
    #[command(after_help = "Examples:\n  \
litestream-manager restore -o out.db file:///abs/data/replica/databases/<uuid>\n  \
litestream-manager restore -o out.db -timestamp 2026-11-29T13:59:18Z data/replica/databases/<uuid>\n  \
litestream-manager restore -o out.db -txid 0000000000000007 data/replica/databases/<uuid>")]
    Restore(RestoreArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directories to watch for <uuid>.db|.sqlite|.sqlite3 files; comma-separated and/or
    /// repeated. Example: -watch-dir data/clients,data/archive [default: data/clients]
    #[arg(long = "watch-dir", value_name = "DIR[,DIR...]", value_delimiter = ',')]
    pub watch_dir: Vec<PathBuf>,

    /// S3 bucket for replicas (s3://BUCKET/PREFIX/<id>/). Without it, replicas go to -replica-dir.
    /// Example: -bucket my-backups
    #[arg(long, value_name = "NAME", env = "LITESTREAM_MANAGER_BUCKET")]
    pub bucket: Option<String>,

    /// HTTP port of the dashboard and API. Example: -port 9090
    #[arg(long, default_value_t = 8080)]
    pub port: u16,

    /// Address the HTTP server binds to; 0.0.0.0 exposes it to the network. Example: -bind 0.0.0.0
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,

    /// Legacy single-database mode: replicate this file whatever its name. Example: -dsn app.db
    #[arg(long, value_name = "FILE")]
    pub dsn: Option<PathBuf>,

    /// Replica name for -dsn (default: the file stem), sanitized like the seed:
    /// "Analytics Dashboard" -> analytics_dashboard. Example: -db-name analytics
    #[arg(long = "db-name", value_name = "NAME")]
    pub db_name: Option<String>,

    /// Local replica root, used when no -bucket is given. Example: -replica-dir /backups
    #[arg(
        long = "replica-dir",
        value_name = "DIR",
        default_value = "data/replica"
    )]
    pub replica_dir: PathBuf,

    /// Local state (staged LTX files); must not be a watched directory. Example: -state-dir /var/lib/lsm
    #[arg(long = "state-dir", value_name = "DIR", default_value = "data/state")]
    pub state_dir: PathBuf,

    /// S3-compatible endpoint (MinIO, R2, moto...), path-style. Also AWS_ENDPOINT_URL.
    /// Example: -endpoint http://127.0.0.1:9000
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,

    /// S3 region. Example: -region eu-west-1
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// Key prefix (or sub-directory) under which each tenant's replica lives. Example: -prefix prod/databases
    #[arg(long, default_value = "databases")]
    pub prefix: String,

    /// Log format. Example: -log-format json
    #[arg(long = "log-format", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Most replica operations in flight at once, across all tenants. Example: -max-uploads 100
    #[arg(long = "max-uploads", default_value_t = 50)]
    pub max_uploads: usize,

    /// How long a change waits before it is shipped, so that the commits that follow join the
    /// same LTX file (one S3 PUT); two syncs of one tenant start at least 1.25 windows apart.
    /// The default spaces them 1 s apart: no more files than Litestream's 1 s sync interval at
    /// any commit rate. Lower it for less lag at the cost of more requests.
    /// Example: -sync-window 200ms
    #[arg(long = "sync-window", value_name = "DURATION", default_value = "800ms", value_parser = parse_duration)]
    pub sync_window: std::time::Duration,
}

/// `500ms`, `3s`, `2m`, `1h`: a positive whole number and a unit.
pub fn parse_duration(v: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{v:?}: expected a duration such as 500ms, 3s, 2m"))?;
    let scaled = |per: u64| {
        n.checked_mul(per)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{v:?}: too long"))
    };
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => scaled(60)?,
        "h" => scaled(3600)?,
        _ => return Err(format!("{v:?}: the unit must be ms, s, m or h")),
    };
    if d.is_zero() {
        return Err(format!("{v:?}: must be positive"));
    }
    Ok(d)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Replica to restore: file:///abs/path/databases/<id>, a plain directory, or s3://...
    #[arg(value_name = "URL")]
    pub url: String,

    /// Output database file. Example: -o restored.db [default: <id>.db in the current directory]
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Restore the state as of this time (RFC 3339). Example: -timestamp 2026-11-29T13:59:18Z
    #[arg(long, value_name = "RFC3339")]
    pub timestamp: Option<String>,

    /// Restore up to this TXID (exactly 16 hex digits). Example: -txid 0000000000000007
    #[arg(long, value_name = "16HEX")]
    pub txid: Option<String>,

    /// Overwrite a non-empty output file.
    #[arg(long)]
    pub force: bool,
}

/// Rewrites single-dash long options (`-watch-dir x`, `-port=1`) into clap's `--` form.
/// Short options (`-o`) and values are left alone.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let cmd = Cli::command();
    let mut longs: Vec<String> = Vec::new();
    let mut collect = |c: &clap::Command| {
        for a in c.get_arguments() {
            if let Some(l) = a.get_long() {
                longs.push(l.to_string());
            }
        }
    };
    collect(&cmd);
    for sub in cmd.get_subcommands() {
        collect(sub);
    }
    longs.extend(["help".to_string(), "version".to_string()]);
    let mut out = Vec::new();
    let mut after_dashdash = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i == 0 || after_dashdash {
            out.push(arg);
            continue;
        }
        let Some(s) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            after_dashdash = true;
            out.push(arg);
            continue;
        }
        if let Some(rest) = s
            .strip_prefix('-')
            .filter(|r| !r.starts_with('-') && r.len() > 1)
        {
            let name = rest.split('=').next().unwrap_or(rest);
            if longs.iter().any(|l| l == name) {
                out.push(OsString::from(format!("-{s}")));
                continue;
            }
        }
        out.push(arg);
    }
    out
}

/// The seed's sanitizing of `-db-name`: lowercase, spaces and slashes become `_`, hyphens and dots
/// stay; empty → `default`. Anything that could still escape its prefix is refused.
pub fn sanitize_db_name(name: &str) -> Result<String, String> {
    let s: String = name
        .trim()
        .to_lowercase()
        .chars()
        .map(|c| {
            if c == ' ' || c == '/' || c == '\\' {
                '_'
            } else {
                c
            }
        })
        .collect();
    if s.is_empty() {
        return Ok("default".to_string());
    }
    if s == "." || s == ".." {
        return Err(format!(
            "invalid -db-name {name:?}: {s:?} would escape the replica prefix"
        ));
    }
    if let Some(bad) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(*c)))
    {
        return Err(format!(
            "invalid -db-name {name:?}: character {bad:?} is not allowed (use letters, digits, '.', '-', '_')"
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let v: Vec<OsString> = std::iter::once("litestream-manager")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        Cli::try_parse_from(normalize_args(v))
    }

    #[test]
    fn single_and_double_dash_long_flags_both_work() {
        for args in [
            ["-watch-dir", "data/clients", "-port", "9000"],
            ["--watch-dir", "data/clients", "--port", "9000"],
        ] {
            let cli = parse(&args).unwrap();
            assert_eq!(cli.serve.watch_dir, vec![PathBuf::from("data/clients")]);
            assert_eq!(cli.serve.port, 9000);
        }
        let cli = parse(&["-watch-dir=a,b", "-watch-dir", "c", "-bucket=bk"]).unwrap();
        assert_eq!(cli.serve.watch_dir, ["a", "b", "c"].map(PathBuf::from));
        assert_eq!(cli.serve.bucket.as_deref(), Some("bk"));
    }

    #[test]
    fn defaults_match_the_embedded_default() {
        let cli = parse(&[]).unwrap();
        assert!(cli.serve.watch_dir.is_empty());
        assert_eq!(cli.serve.port, 8080);
        assert_eq!(cli.serve.bind, "127.0.0.1");
        assert_eq!(cli.serve.replica_dir, PathBuf::from("data/replica"));
        assert_eq!(cli.serve.prefix, "databases");
        assert!(cli.command.is_none());
    }

    #[test]
    fn sync_window_takes_a_duration_with_a_unit() {
        let d = |args: &[&str]| parse(args).map(|c| c.serve.sync_window);
        assert_eq!(d(&[]).unwrap(), engine::tenant::DEFAULT_SYNC_WINDOW);
        assert_eq!(
            d(&["-sync-window", "200ms"]).unwrap(),
            std::time::Duration::from_millis(200)
        );
        assert_eq!(
            d(&["--sync-window", "2s"]).unwrap(),
            std::time::Duration::from_secs(2)
        );
        for bad in ["0s", "200", "fast", "1.5s"] {
            let err = d(&["-sync-window", bad]).unwrap_err().to_string();
            assert!(err.contains("sync-window"), "{bad}: {err}");
        }
    }

    #[test]
    fn restore_subcommand_takes_litestream_style_flags() {
        let cli = parse(&[
            "restore",
            "-o",
            "out.db",
            "-timestamp",
            "2026-11-29T13:59:18Z",
            "-force",
            "file:///x",
        ])
        .unwrap();
        let Some(Command::Restore(r)) = cli.command else {
            panic!("no restore")
        };
        assert_eq!(r.output, Some(PathBuf::from("out.db")));
        assert_eq!(r.timestamp.as_deref(), Some("2026-11-29T13:59:18Z"));
        assert!(r.force);
        assert_eq!(r.url, "file:///x");
    }

    #[test]
    fn unknown_flag_is_a_clap_error() {
        let err = parse(&["-nope"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn db_names_are_sanitized_like_the_seed() {
        assert_eq!(
            sanitize_db_name("Analytics Dashboard").unwrap(),
            "analytics_dashboard"
        );
        assert_eq!(
            sanitize_db_name("app/data/products").unwrap(),
            "app_data_products"
        );
        assert_eq!(sanitize_db_name("my-db.v2").unwrap(), "my-db.v2");
        assert_eq!(sanitize_db_name("").unwrap(), "default");
        assert!(sanitize_db_name("..").is_err());
        assert!(sanitize_db_name("a:b").is_err());
    }
}
