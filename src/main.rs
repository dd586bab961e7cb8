//! Command line of mdrec. Exit codes: 0 clean stop, 2 bad config or usage, 1 other failure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use mdrec::config::{Config, ConfigError, LogFormat, UsageError};
use mdrec::sim::{self, Compression, DepthMode, NumberStyle, SimConfig};

#[derive(Parser)]
#[command(
    name = "mdrec",
    version,
    about = "Market-data recorder: exchange streams into SQLite or PostgreSQL"
)]
struct Cli {
    /// Log format; overrides `[log] format`.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Record: migrate the database, then run until SIGTERM/SIGINT (SIGHUP reloads the
    /// configuration: symbols added or removed start and stop).
    Run {
        #[arg(short, long, default_value = "/etc/mdrec/mdrec.toml")]
        config: PathBuf,
    },
    /// Offline showcase: record the built-in simulator into a local SQLite file.
    Demo {
        /// The venue the simulator speaks: cdc-exchange (today's Crypto.com Exchange), cdc-v2
        /// (its v2 dialect) or cdc-v1 (the kline-api protocol).
        #[arg(long, default_value = "cdc-exchange")]
        venue: String,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// SQLite file to record into (created if missing).
        #[arg(long, default_value = "mdrec-demo.db")]
        db: PathBuf,
    },
    /// Run the exchange simulator as a standalone server (websocket + REST).
    Simulate {
        /// The venue spoken: cdc-exchange, cdc-v2 or cdc-v1.
        #[arg(long, default_value = "cdc-exchange")]
        venue: String,
        #[arg(long, default_value = "127.0.0.1:9443")]
        ws_listen: std::net::SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9444")]
        rest_listen: std::net::SocketAddr,
        /// Default: the venue's demo symbols.
        #[arg(long, value_delimiter = ',')]
        symbols: Vec<String>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, value_enum, default_value_t = WireNumbers::Strings)]
        numbers: WireNumbers,
        /// Lowercase sides (`buy`) instead of live servers' `BUY`.
        #[arg(long)]
        lower_sides: bool,
        /// Send no subscription acks.
        #[arg(long)]
        no_acks: bool,
        /// Incremental depth frames instead of full books.
        #[arg(long)]
        incremental_depth: bool,
        /// Send plain text frames instead of gzip.
        #[arg(long)]
        plain: bool,
        /// Simulated seconds per wall second.
        #[arg(long, default_value_t = 60)]
        speed: u32,
        #[arg(long, default_value_t = 5)]
        ping_interval_s: u64,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[arg(short, long, default_value = "/etc/mdrec/mdrec.toml")]
        config: PathBuf,
    },
    /// One symbol's trades, bars, books or holes over a time range, to CSV or Parquet, with
    /// exact decimals (as strings). Streams: memory stays bounded whatever the range.
    Export {
        #[command(flatten)]
        source: Source,
        /// book: the stored full books, or with --every the book rebuilt on a time grid;
        /// book-deltas: the stored changes.
        #[arg(long, value_enum)]
        kind: mdrec::export::Kind,
        /// One or more symbols (repeat the flag or separate with commas); several need
        /// --layout hive.
        #[arg(long, required = true, value_delimiter = ',')]
        symbol: Vec<String>,
        /// Bar interval (klines only); default: the first of `[record] klines` with -c, else the
        /// one stored for the symbol.
        #[arg(long)]
        interval: Option<String>,
        /// Start (inclusive), exchange time: 2026-12-02, 2026-12-02 06:00, RFC 3339 (UTC unless an offset is given) or epoch ms (default: the beginning).
        #[arg(long, value_parser = mdrec::coverage::parse_time)]
        from: Option<i64>,
        /// End (exclusive), exchange time: 2026-12-02, 2026-12-02 06:00, RFC 3339 (UTC unless an offset is given) or epoch ms (default: everything).
        #[arg(long, value_parser = mdrec::coverage::parse_time)]
        to: Option<i64>,
        #[arg(long, value_enum)]
        format: mdrec::export::Format,
        /// file: one file, --out; hive: --out is a directory holding
        /// symbol=S/date=YYYY-MM-DD/part.<format>, one file per symbol and UTC day.
        /// Default: file for one symbol, hive for several.
        #[arg(long, value_enum)]
        layout: Option<mdrec::export::Layout>,
        #[arg(long)]
        out: PathBuf,
        /// Replace files that exist.
        #[arg(long)]
        force: bool,
        /// Books: rebuild the book at every multiple of this (500ms, 1s, 1m, ...) from the
        /// stored full books and changes.
        #[arg(long, value_parser = mdrec::export::parse_every)]
        every: Option<i64>,
        /// With --every: levels per side.
        #[arg(long, default_value_t = 10)]
        depth: usize,
        /// Books and changes: the book stream (v1's depth step, the exchange's depth).
        /// Default: every stored one (the grid: the only one).
        #[arg(long)]
        step: Option<i16>,
    },
    /// The order book of a symbol as it stood at a time, rebuilt from stored snapshots and
    /// deltas.
    Book {
        #[command(flatten)]
        source: Source,
        #[arg(long)]
        symbol: String,
        /// Exchange time: 2026-12-02, 2026-12-02 06:00, RFC 3339 (UTC unless an offset is given) or epoch ms (default: the newest book).
        #[arg(long, value_parser = mdrec::coverage::parse_time)]
        at: Option<i64>,
        /// Levels per side to print.
        #[arg(long, default_value_t = 10)]
        depth: usize,
        /// The book stream: v1's depth step (0 = full precision), the exchange's depth
        /// (10, 50, 150). Default: the one stored for the symbol.
        #[arg(long)]
        step: Option<i16>,
        /// JSON for scripts instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Validate a configuration and print it resolved (defaults filled, secrets masked);
    /// exit 2 naming the key when it is invalid, or naming symbols the venue does not list.
    CheckConfig {
        #[arg(short, long, default_value = "/etc/mdrec/mdrec.toml")]
        config: PathBuf,
        /// Do not ask the venue for its listing (the symbols are not checked).
        #[arg(long)]
        offline: bool,
    },
    /// Print a shell completion script (bash: `mdrec completions bash >
    /// /usr/share/bash-completion/completions/mdrec`).
    Completions {
        #[arg(value_enum)]
        shell: ShellArg,
    },
    /// Print the man page (roff); with --dir, write mdrec.1 and one page per subcommand there.
    Man {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Per symbol and stream: first and last time, rows, holes by status with bounds, and the
    /// share of the window a socket was live.
    Coverage {
        #[command(flatten)]
        source: Source,
        /// Only this symbol (repeat for several); default: every symbol in the database.
        #[arg(long)]
        symbol: Vec<String>,
        /// Window start: 2026-12-02, 2026-12-02 06:00, RFC 3339 (UTC unless an offset is given) or epoch ms (default: the first session).
        #[arg(long, value_parser = mdrec::coverage::parse_time)]
        from: Option<i64>,
        /// Window end: 2026-12-02, 2026-12-02 06:00, RFC 3339 (UTC unless an offset is given) or epoch ms (default: now).
        #[arg(long, value_parser = mdrec::coverage::parse_time)]
        to: Option<i64>,
        /// JSON for scripts instead of the table.
        #[arg(long)]
        json: bool,
        /// One verdict per stream and UTC hour or day: complete, holes filled, holes open,
        /// unrecoverable (with the minutes), partly down, recorder down.
        #[arg(long, value_enum)]
        by: Option<ByArg>,
        /// Also write a one-page HTML report here: a timeline per symbol (live green, filled
        /// holes amber, open or unrecoverable holes red) and the verdicts (per --by, else per
        /// hour, or per day over more than two days).
        #[arg(long)]
        html: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ByArg {
    Hour,
    Day,
}

/// Where the reading commands read: a database alone, or a recorder's configuration.
#[derive(clap::Args)]
struct Source {
    /// The database: sqlite://PATH or postgres://... (read only; nothing is created).
    #[arg(long, env = mdrec::config::DATABASE_URL_ENV, hide_env_values = true)]
    db: Option<String>,
    /// A recorder configuration to take the database (and venue) from, when --db and
    /// MDREC_DATABASE_URL are not given (default /etc/mdrec/mdrec.toml, if it exists).
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// The venue whose rows to read, when the database holds several.
    #[arg(long)]
    venue: Option<String>,
}

const DEFAULT_CONFIG: &str = "/etc/mdrec/mdrec.toml";

#[derive(Clone, Copy, ValueEnum)]
enum ShellArg {
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
}

#[derive(Clone, Copy, ValueEnum)]
enum WireNumbers {
    Numbers,
    Strings,
    Mixed,
}

fn main() -> ExitCode {
    // One TLS crypto provider, installed before anything can open a TLS connection.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let config = match &cli.cmd {
        Cmd::Run { config } | Cmd::Migrate { config } | Cmd::CheckConfig { config, .. } => {
            match mdrec::venue::registry::load_config(config) {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!("mdrec: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => None,
    };
    let format = match cli.log_format {
        Some(LogFormatArg::Text) => LogFormat::Text,
        Some(LogFormatArg::Json) => LogFormat::Json,
        None => config.as_ref().map(|c| c.log.format).unwrap_or_default(),
    };
    init_logging(format);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mdrec: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(run(cli.cmd, config));
    // do not wait on threads still blocked in a stuck database call
    rt.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.downcast_ref::<ConfigError>().is_some()
                || e.downcast_ref::<UsageError>().is_some() =>
        {
            eprintln!("mdrec: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("mdrec: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // sqlx reports each slow statement whole (kilobytes of SQL while a database is locked);
    // the writer summarises slow writes in one line instead. RUST_LOG naming sqlx keeps them.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("sqlx"))
        && let Ok(d) = "sqlx::query=error".parse()
    {
        filter = filter.add_directive(d);
    }
    // colour only for a person at a terminal: journald and files get plain text
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// What a reading command reads from.
struct Opened {
    store: mdrec::store::Store,
    /// The venue its rows are of.
    venue: &'static str,
    /// The recorder configuration, when one was used.
    config: Option<Config>,
    /// The database's URL, password masked (for what a command writes about its source).
    url: String,
}

/// The database a reading command reads (opened for reading, never created), the venue its
/// rows are of, and the configuration when one was used.
async fn open_source(src: &Source) -> anyhow::Result<Opened> {
    let config = match (&src.config, &src.db) {
        (Some(p), _) => Some(mdrec::venue::registry::load_config(p)?),
        (None, None) if std::path::Path::new(DEFAULT_CONFIG).exists() => Some(
            mdrec::venue::registry::load_config(std::path::Path::new(DEFAULT_CONFIG))?,
        ),
        _ => None,
    };
    let Some(url) = src
        .db
        .clone()
        .or_else(|| config.as_ref().map(|c| c.database.url.clone()))
    else {
        return Err(UsageError::new(
            "--db",
            "no database: give --db URL, set MDREC_DATABASE_URL, or -c CONFIG",
        )
        .into());
    };
    let store = mdrec::store::Store::open_read(&url)
        .await
        .with_context(|| format!("opening database {}", mdrec::config::redact_url(&url)))?;
    let stored = store.venues().await.context("reading the venues stored")?;
    let named = src
        .venue
        .clone()
        .or_else(|| config.as_ref().map(|c| c.venue.kind.clone()));
    let venue = match named {
        Some(v) => match mdrec::venue::registry::static_name(&v) {
            Some(n) => n,
            None => {
                return Err(UsageError::new(
                    "--venue",
                    format!(
                        "unknown venue {v:?}; one of {}",
                        mdrec::venue::registry::kinds()
                    ),
                )
                .into());
            }
        },
        None => match stored.as_slice() {
            [one] => mdrec::venue::registry::static_name(one)
                .with_context(|| format!("the database holds rows of an unknown venue {one:?}"))?,
            [] => anyhow::bail!("the database holds no recording yet"),
            many => {
                return Err(UsageError::new(
                    "--venue",
                    format!(
                        "the database holds several venues ({}): name one",
                        many.join(", ")
                    ),
                )
                .into());
            }
        },
    };
    Ok(Opened {
        store,
        venue,
        config,
        url: mdrec::config::redact_url(&url),
    })
}

/// Stop tokens: the first SIGTERM or SIGINT cancels `stop` (an orderly shutdown), a second
/// signal cancels `hurry` (a fast stop that still spools what is unwritten). SIGHUP asks
/// `reload` when given (the recorder reads its file again), else it stops like SIGTERM.
fn shutdown_on_signals(
    reload: Option<tokio::sync::mpsc::UnboundedSender<()>>,
) -> anyhow::Result<(CancellationToken, CancellationToken)> {
    use tokio::signal::unix::{SignalKind, signal};
    let (stop, hurry) = (CancellationToken::new(), CancellationToken::new());
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let (s, h) = (stop.clone(), hurry.clone());
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => "SIGHUP",
            };
            if name == "SIGHUP"
                && let Some(r) = &reload
            {
                if s.is_cancelled() {
                    tracing::info!(signal = name, "stopping: no reload");
                } else {
                    tracing::info!(signal = name, "reloading the configuration");
                    let _ = r.send(());
                }
                continue;
            }
            if n == 0 {
                tracing::info!(signal = name, "stopping (a second signal stops at once)");
                s.cancel();
            } else {
                tracing::warn!(signal = name, "second signal: fast stop");
                h.cancel();
            }
            n += 1;
        }
    });
    Ok((stop, hurry))
}

async fn run(cmd: Cmd, config: Option<Config>) -> anyhow::Result<()> {
    match cmd {
        Cmd::Run { config: path } => {
            let config = config.context("no configuration")?;
            let (reload, requests) = tokio::sync::mpsc::unbounded_channel();
            let (stop, hurry) = shutdown_on_signals(Some(reload))?;
            let venue = mdrec::venue::registry::configured(&config.venue)?;
            let reload = mdrec::recorder::reload::Reload { path, requests };
            mdrec::recorder::run_until(config, venue, stop, hurry, Some(reload)).await?;
            Ok(())
        }
        Cmd::Migrate { .. } => {
            let config = config.context("no configuration")?;
            let store = mdrec::store::Store::connect(&config.database.url).await?;
            store.migrate().await?;
            store.close().await;
            println!(
                "migrations applied to {}",
                mdrec::config::redact_url(&config.database.url)
            );
            Ok(())
        }
        Cmd::Export {
            kind,
            symbol,
            interval,
            from,
            to,
            format,
            layout,
            out,
            force,
            every,
            depth,
            step,
            source,
        } => {
            let Opened {
                store,
                venue,
                config,
                url,
            } = open_source(&source).await?;
            let interval = match interval {
                Some(i) => i,
                None if kind != mdrec::export::Kind::Klines => String::new(),
                // the configuration's first, else the one the data holds
                None => match config
                    .as_ref()
                    .and_then(|c| c.record.klines().first().cloned())
                {
                    Some(i) => i,
                    None => {
                        let stored = store.stored_intervals(venue, &symbol[0]).await?;
                        match stored.as_slice() {
                            [one] => one.clone(),
                            [] => String::new(),
                            many => {
                                return Err(UsageError::new(
                                    "--interval",
                                    format!(
                                        "{} has bars of several intervals ({}): name one",
                                        symbol[0],
                                        many.join(", ")
                                    ),
                                )
                                .into());
                            }
                        }
                    }
                },
            };
            let layout = layout.unwrap_or(if symbol.len() > 1 {
                mdrec::export::Layout::Hive
            } else {
                mdrec::export::Layout::File
            });
            let req = mdrec::export::Request {
                kind,
                symbols: symbol,
                interval,
                from_ms: from.unwrap_or(i64::MIN),
                to_ms: to.unwrap_or(i64::MAX),
                format,
                layout,
                out,
                force,
                step,
                every_ms: every,
                depth,
                source: url,
            };
            // refused before anything is counted or written
            let parts = mdrec::export::plan(&store, venue, &req).await?;
            let total = mdrec::export::count(&store, venue, &req, &parts).await?;
            // drawn only on a terminal
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(total),
                indicatif::ProgressDrawTarget::stderr(),
            );
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} rows {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let written =
                mdrec::export::export_parts(&store, venue, &req, &parts, |n| bar.set_position(n))
                    .await;
            bar.finish_and_clear();
            store.close().await;
            let written = written?;
            for w in &written {
                eprintln!("wrote {} rows to {}", w.rows, w.path.display());
            }
            if written.is_empty() {
                eprintln!("no rows in the window: nothing written");
            }
            Ok(())
        }
        Cmd::Book {
            symbol,
            at,
            depth,
            step,
            json,
            source,
        } => {
            let Opened { store, venue, .. } = open_source(&source).await?;
            mdrec::export::check_symbol(&store, venue, &symbol).await?;
            // the book stream the data holds for the symbol
            let step = match step {
                Some(s) => s,
                None => match store.stored_depth_steps(venue, &symbol).await?.as_slice() {
                    [one] => *one as i16,
                    [] => anyhow::bail!("no {symbol} book stored ({venue})"),
                    many => {
                        let list: Vec<String> = many.iter().map(|s| s.to_string()).collect();
                        return Err(UsageError::new(
                            "--step",
                            format!(
                                "{symbol} has several book streams (steps {}): name one",
                                list.join(", ")
                            ),
                        )
                        .into());
                    }
                },
            };
            let book = mdrec::coverage::book_at(&store, venue, &symbol, step, at).await?;
            let book = match book {
                mdrec::coverage::BookAt::Book(b) => b,
                mdrec::coverage::BookAt::Missing => {
                    let first = store.first_snapshot_time(venue, &symbol, step).await?;
                    store.close().await;
                    match first {
                        Some(f) => anyhow::bail!(
                            "no {symbol} book (step {step}) at or before that time: the earliest is at {} (--at {})",
                            mdrec::coverage::format_time(f),
                            mdrec::coverage::format_time(f)
                        ),
                        None => anyhow::bail!("no {symbol} book stored (step {step})"),
                    }
                }
                mdrec::coverage::BookAt::Broken {
                    snapshot_ms,
                    break_from_ms,
                    ..
                } => anyhow::bail!(
                    "the {symbol} book (step {step}) lost updates after {} (recorded in gaps), \
                     after its last full book at {}: it cannot be rebuilt at that time; the \
                     next full book after the break makes it whole again",
                    mdrec::coverage::format_time(break_from_ms),
                    mdrec::coverage::format_time(snapshot_ms)
                ),
            };
            let notes = mdrec::coverage::book_notes(&store, venue, &book, at).await?;
            store.close().await;
            if json {
                let mut v = mdrec::coverage::book_json(&book, depth);
                v["at_ms"] = notes.at_ms.into();
                v["age_ms"] = notes.age_ms.into();
                v["warnings"] = notes.warnings.clone().into();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", mdrec::coverage::render_book(&book, depth));
                println!(
                    "age at {}: {} since the book's last update",
                    mdrec::coverage::format_time(notes.at_ms),
                    mdrec::coverage::format_age(notes.age_ms)
                );
                for w in &notes.warnings {
                    println!("warning: {w}");
                }
            }
            Ok(())
        }
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            use clap_complete::Shell;
            let shell = match shell {
                ShellArg::Bash => Shell::Bash,
                ShellArg::Zsh => Shell::Zsh,
                ShellArg::Fish => Shell::Fish,
                ShellArg::Elvish => Shell::Elvish,
                ShellArg::Powershell => Shell::PowerShell,
            };
            clap_complete::generate(shell, &mut Cli::command(), "mdrec", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man { dir } => {
            use clap::CommandFactory;
            let cmd = Cli::command();
            match dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    clap_mangen::generate_to(cmd, &dir)
                        .with_context(|| format!("writing man pages into {}", dir.display()))?;
                }
                None => clap_mangen::Man::new(cmd)
                    .render(&mut std::io::stdout())
                    .context("printing the man page")?,
            }
            Ok(())
        }
        Cmd::CheckConfig {
            config: path,
            offline,
        } => {
            let config = config.context("no configuration")?;
            // the files the config names are read as the recorder will read them
            let tls = mdrec::runtime::tls::client_config(config.connection.ca_file.as_deref())?;
            // the symbols, as start-up checks them, when the venue answers
            let listed = if config.record.all {
                "# symbols: \"all\", from the venue's listing at start-up".to_string()
            } else if offline {
                "# symbols: not checked (--offline)".to_string()
            } else {
                let venue = mdrec::venue::registry::configured(&config.venue)?;
                let rest = mdrec::recorder::rest::RestClient::new(
                    &config.venue.rest_url,
                    &config.backfill,
                    &tls,
                )
                .map_err(|e| anyhow::anyhow!("REST client: {e}"))?;
                let wait = mdrec::recorder::LISTING_WAIT;
                match mdrec::recorder::markets::listing(&venue, &rest, wait).await {
                    Some(m) => {
                        mdrec::recorder::markets::check_listed(
                            &config.record.symbols,
                            &m,
                            config.record.allow_unlisted,
                        )?;
                        format!(
                            "# symbols: the venue lists {} markets, these among them",
                            m.len()
                        )
                    }
                    None => "# symbols: not checked (the venue's listing did not answer)".into(),
                }
            };
            let text = toml::to_string(&config).context("printing the configuration")?;
            println!("# {}: valid", path.display());
            println!("{listed}");
            if std::env::var_os(mdrec::config::DATABASE_URL_ENV).is_some() {
                println!(
                    "# [database] url comes from {}",
                    mdrec::config::DATABASE_URL_ENV
                );
            }
            println!("# spool directory: {}", config.spool_dir().display());
            print!("{text}");
            Ok(())
        }
        Cmd::Coverage {
            symbol,
            from,
            to,
            json,
            by,
            html,
            source,
        } => {
            if let Some(h) = html.as_ref().filter(|h| h.is_dir()) {
                return Err(UsageError::new(
                    "--html",
                    format!("{} is a directory: name the file to write", h.display()),
                )
                .into());
            }
            let Opened { store, venue, .. } = open_source(&source).await?;
            if let (Some(f), Some(t)) = (from, to)
                && f >= t
            {
                return Err(UsageError::new(
                    "--from",
                    "must be before --to (the window is [from, to))",
                )
                .into());
            }
            for s in &symbol {
                mdrec::export::check_symbol(&store, venue, s).await?;
            }
            let by = by.map(|b| match b {
                ByArg::Hour => 3_600_000,
                ByArg::Day => 86_400_000,
            });
            let c = mdrec::coverage::compute(&store, venue, &symbol, from, to, by).await?;
            if let Some(path) = html {
                // the page always has verdicts: per hour, or per day over a long window
                let mut page = c.clone();
                if by.is_none() {
                    let long = c.to_ms - c.from_ms > 2 * 86_400_000;
                    page.set_periods(if long { 86_400_000 } else { 3_600_000 });
                }
                mdrec::report::write(&path, &page)?;
                eprintln!("wrote the coverage report to {}", path.display());
            }
            store.close().await;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print!("{}", mdrec::coverage::render(&c));
            }
            Ok(())
        }
        Cmd::Demo { venue, seconds, db } => {
            let (stop, _) = shutdown_on_signals(None)?;
            let report = mdrec::demo::run(&venue, seconds, &db, stop).await?;
            print!("{report}");
            Ok(())
        }
        Cmd::Simulate {
            venue,
            ws_listen,
            rest_listen,
            symbols,
            seed,
            numbers,
            lower_sides,
            no_acks,
            incremental_depth,
            plain,
            speed,
            ping_interval_s,
        } => {
            let Some(base) = SimConfig::for_venue(&venue) else {
                anyhow::bail!(
                    "--venue: the simulator does not speak {venue:?}; one of {}",
                    sim::venues()
                );
            };
            let symbols = if symbols.is_empty() {
                base.symbols.clone()
            } else {
                symbols
            };
            let (stop, _) = shutdown_on_signals(None)?;
            let handle = sim::start(SimConfig {
                seed,
                symbols,
                numbers: match numbers {
                    WireNumbers::Numbers => NumberStyle::Numbers,
                    WireNumbers::Strings => NumberStyle::Strings,
                    WireNumbers::Mixed => NumberStyle::Mixed,
                },
                upper_sides: !lower_sides,
                acks: !no_acks,
                depth_mode: if incremental_depth {
                    DepthMode::Incremental
                } else {
                    DepthMode::Full
                },
                compression: if plain {
                    Compression::None
                } else {
                    Compression::Gzip
                },
                speed,
                ping_interval: Duration::from_secs(ping_interval_s.max(1)),
                ws_addr: ws_listen,
                rest_addr: rest_listen,
                ..base
            })
            .await
            .context("starting the simulator")?;
            println!("websocket {}  REST {}", handle.ws_url(), handle.rest_url());
            stop.cancelled().await;
            handle.shutdown().await;
            Ok(())
        }
    }
}
