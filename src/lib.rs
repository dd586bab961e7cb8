//! mdrec: a market-data recorder daemon.
//!
//! Data flows one way: venue frames -> [`venue`] decoding -> [`model::Event`]s -> bounded queue
//! -> [`store::writer`] (the only database user) -> SQLite or PostgreSQL. See ARCHITECTURE.md.

pub mod archive;
pub mod config;
pub mod coverage;
pub mod decimal;
pub mod demo;
pub mod export;
pub mod model;
pub mod ops;
pub mod recorder;
pub mod report;
pub mod runtime;
pub mod sim;
pub mod stats;
pub mod store;
pub mod venue;
