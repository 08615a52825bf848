//! The integration tests: one test binary (linking one is most of a test
//! build), one module per subject. Tests that need a tool the machine may
//! lack are `#[ignore = "needs ..."]`; `cargo test -- --include-ignored`
//! runs them too (.ci/run does, after installing every tool).

#[path = "../common/mod.rs"]
mod common;

mod accept_errors;
mod address_canonical;
mod arc_rfc8617;
mod architecture;
mod cli;
mod config_errors;
mod connection_limits;
mod contrib;
mod dispatch_tree;
mod dkim_rfc6376;
mod dkim_signing;
mod dmarc_rfc9989;
mod dns_checks_auth;
mod dns_checks_dnsbl;
mod dns_hosts_file;
mod dns_prefetch;
mod dns_queries;
mod dns_server;
mod engine_body;
mod engine_edits;
mod engine_runner;
mod fuzz_regressions;
mod header_limits;
mod load_generator;
mod milter_codec;
mod milter_daemon;
mod milter_dns;
mod milter_dns_matrix;
mod milter_noreply;
mod milter_quit_nc;
mod milter_transport;
mod miltertest;
mod postfix_e2e;
mod reload_guard;
mod serve_binary;
mod spf_rfc7208;
mod table_files;
