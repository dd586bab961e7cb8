//! The simulator's commands: `mdrec demo` (it recorded into SQLite) and `mdrec simulate`
//! (it alone, as a server).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;

use mdrec::sim::{self, Compression, DepthMode, NumberStyle, SimConfig};

use super::shutdown_on_signals;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// The venue the simulator speaks: cdc-exchange (today's Crypto.com Exchange), cdc-v2
    /// (its v2 dialect) or cdc-v1 (the kline-api protocol).
    #[arg(long, default_value = "cdc-exchange")]
    venue: String,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// SQLite file to record into (created if missing).
    #[arg(long, default_value = "mdrec-demo.db")]
    db: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum WireNumbers {
    Numbers,
    Strings,
    Mixed,
}

#[derive(clap::Args)]
pub struct SimulateArgs {
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
    /// Simulated seconds per wall second (1: real time, what a recorder's clock checks
    /// accept; a faster clock runs the exchange times ahead of the wall clock, and a
    /// recorder drops them past its `max_time_ahead_s`).
    #[arg(long, default_value_t = 1)]
    speed: u32,
    #[arg(long, default_value_t = 5)]
    ping_interval_s: u64,
}

pub async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let (stop, _) = shutdown_on_signals(None)?;
    let report = mdrec::demo::run(&args.venue, args.seconds, &args.db, stop).await?;
    print!("{report}");
    Ok(())
}

/// Serves the simulator until SIGTERM or SIGINT.
pub async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let Some(base) = SimConfig::for_venue(&args.venue) else {
        anyhow::bail!(
            "--venue: the simulator does not speak {:?}; one of {}",
            args.venue,
            sim::venues()
        );
    };
    let symbols = if args.symbols.is_empty() {
        base.symbols.clone()
    } else {
        args.symbols
    };
    let (stop, _) = shutdown_on_signals(None)?;
    let handle = sim::start(SimConfig {
        seed: args.seed,
        symbols,
        numbers: match args.numbers {
            WireNumbers::Numbers => NumberStyle::Numbers,
            WireNumbers::Strings => NumberStyle::Strings,
            WireNumbers::Mixed => NumberStyle::Mixed,
        },
        upper_sides: !args.lower_sides,
        acks: !args.no_acks,
        depth_mode: if args.incremental_depth {
            DepthMode::Incremental
        } else {
            DepthMode::Full
        },
        compression: if args.plain {
            Compression::None
        } else {
            Compression::Gzip
        },
        speed: args.speed,
        ping_interval: Duration::from_secs(args.ping_interval_s.max(1)),
        ws_addr: args.ws_listen,
        rest_addr: args.rest_listen,
        ..base
    })
    .await
    .context("starting the simulator")?;
    println!("websocket {}  REST {}", handle.ws_url(), handle.rest_url());
    stop.cancelled().await;
    handle.shutdown().await;
    Ok(())
}
