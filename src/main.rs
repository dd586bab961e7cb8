//! Command line of mdrec. Exit codes: 0 clean stop, 2 bad config or usage, 1 other failure.
//! Each command is carried out in `commands/`; here: the command line, logging, the runtime
//! and the exit code.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use commands::record::{CheckArgs, ConfigArg};
use mdrec::config::{Config, ConfigError, LogFormat, UsageError};

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
    Run(ConfigArg),
    /// Offline showcase: record the built-in simulator into a local SQLite file.
    Demo(commands::simulate::DemoArgs),
    /// Run the exchange simulator as a standalone server (websocket + REST).
    Simulate(commands::simulate::SimulateArgs),
    /// Apply database migrations and exit.
    Migrate(ConfigArg),
    /// Trades, bars, books, book changes, tickers or holes of one or several symbols over a
    /// time range, to CSV or typed Parquet, every digit as the exchange sent it. Streams:
    /// memory stays bounded whatever the range.
    Export(commands::export::Args),
    /// Closed periods of every market-data table (and the gaps and sessions) as zstd Parquet
    /// into a directory or S3-compatible storage, each part read back and compared before it
    /// counts; idempotent. The daemon does the same with [archive] url.
    Archive(commands::archive::Args),
    /// The order book of a symbol as it stood at a time, rebuilt from stored snapshots and
    /// deltas.
    Book(commands::book::Args),
    /// Validate a configuration and print it resolved (defaults filled, secrets masked);
    /// exit 2 naming the key when it is invalid, or naming symbols the venue does not list.
    CheckConfig(CheckArgs),
    /// Print a shell completion script (bash: `mdrec completions bash >
    /// /usr/share/bash-completion/completions/mdrec`).
    Completions {
        #[arg(value_enum)]
        shell: commands::docs::ShellArg,
    },
    /// Print the man page (roff); with --dir, write mdrec.1 and one page per subcommand there.
    Man {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Per symbol and stream: first and last time, rows, holes by status with bounds, and the
    /// share of the window a socket was live.
    Coverage(commands::coverage::Args),
}

fn main() -> ExitCode {
    // One TLS crypto provider, installed before anything can open a TLS connection.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let config = match &cli.cmd {
        Cmd::Run(ConfigArg { config })
        | Cmd::Migrate(ConfigArg { config })
        | Cmd::CheckConfig(CheckArgs { config, .. }) => {
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
    // PostgreSQL's notices (`relation "_sqlx_migrations" already exists, skipping` at every
    // start) are the server talking to itself: warnings and worse are kept
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("sqlx")) {
        for quiet in ["sqlx::query=error", "sqlx::postgres::notice=warn"] {
            if let Ok(d) = quiet.parse() {
                filter = filter.add_directive(d);
            }
        }
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

/// Carries out the command; `config`: the one it names, loaded and checked.
async fn run(cmd: Cmd, config: Option<Config>) -> anyhow::Result<()> {
    let config = || config.context("no configuration");
    match cmd {
        Cmd::Run(a) => commands::record::run(a.config, config()?).await,
        Cmd::Migrate(_) => commands::record::migrate(config()?).await,
        Cmd::CheckConfig(a) => commands::record::check_config(a, config()?).await,
        Cmd::Export(a) => commands::export::run(a).await,
        Cmd::Archive(a) => commands::archive::run(a).await,
        Cmd::Book(a) => commands::book::run(a).await,
        Cmd::Coverage(a) => commands::coverage::run(a).await,
        Cmd::Completions { shell } => commands::docs::completions(shell, Cli::command()),
        Cmd::Man { dir } => commands::docs::man(dir, Cli::command()),
        Cmd::Demo(a) => commands::simulate::demo(a).await,
        Cmd::Simulate(a) => commands::simulate::simulate(a).await,
    }
}
