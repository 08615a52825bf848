//! dispatch-milter: a policy milter for Postfix and Sendmail.
//!
//! The library holds everything: the configuration and its compiled policy,
//! the protocol-free engine that runs checks in parallel and modifiers in
//! order, and the offline commands. The binary only parses arguments.

#![warn(missing_docs)]

pub mod address;
pub mod auth;
pub mod auth_results;
pub mod checks;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dkim_canon;
pub mod dns;
pub mod edits;
pub mod engine;
pub mod esmtp;
pub mod files;
pub mod ip;
pub mod message;
pub mod milter;
pub mod modifiers;
pub mod policy;
pub mod reply;
pub mod server_config;
pub mod stage;
pub mod tables;
pub mod ttl_cache;
