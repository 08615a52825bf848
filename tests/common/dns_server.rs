//! A real DNS server inside the test process, for integration tests of the
//! DNS-based checks (DNSBL, reverse DNS, MX, SPF, DKIM, DMARC, ARC).
//!
//! It listens on loopback only (never any other address): on 127.0.0.1,
//! UDP and TCP on the same ephemeral port, or, for clients that cannot be
//! given a port, on port 53 of 127.53.N.1 ([`DnsServer::start_on_port_53`]).
//! It answers authoritatively from zone data loaded from master files (RFC
//! 1035 syntax, parsed by hickory-proto's zone parser) or added at run
//! time. Every message is parsed and built with
//! hickory-proto; nothing here reads or writes the wire format by hand
//! except the two-byte TCP length prefix and the deliberate garbage of
//! [`Failure::Garbage`].
//!
//! Answers:
//! - the records of the queried name and type (`ANY` returns every type);
//! - CNAMEs are chased within the loaded data (up to 8 hops);
//! - NXDOMAIN for a name that does not exist, NOERROR with no answer
//!   (NODATA) for a name that exists with other types only (or is an empty
//!   non-terminal such as `_domainkey.example.org`); both carry the SOA of
//!   the enclosing zone in the authority section when a zone is known;
//! - over UDP, a response larger than the limit (512 bytes by default, or
//!   the client's EDNS size when the limit is raised above 512) is sent
//!   truncated (TC set, no records) so the client retries over TCP.
//!
//! hickory-proto is used through hickory-resolver's re-export
//! (`hickory_resolver::proto`), so it is always the resolver's own version.
//! Its 0.26 zone lexer does not read quoted strings inside `( )`: write a
//! multi-string TXT record (a long DKIM key) on one line, as
//! `sel._domainkey IN TXT "v=DKIM1; k=rsa; " "p=MIIB..." "...AQAB"`; the
//! loader refuses the mangled records that the parenthesised form produces.
//!
//! Per-name behaviour (delays and failures) can be changed while the server
//! runs; each query is handled in its own task, so a delayed query does not
//! hold up others. The server stops when the [`DnsServer`] is dropped.
//!
//! Why not hickory-server (0.26.3, tried as a `RequestHandler` over this
//! state; it would replace only the socket loops at the end of this file):
//! it drops a datagram shorter than a DNS header before any handler sees it
//! (so [`DnsServer::malformed_queries`] cannot count it), a handler can only
//! send encoded messages (no [`Failure::Garbage`] over TCP), it answers the
//! queries of one TCP connection one after another, and its responses came
//! out larger (the 2048-bit key of `tests/zones`: 514 bytes against 484), so
//! that answer no longer fits 512 bytes of UDP. Its zone handlers refuse
//! names outside their zones, where the tests expect NXDOMAIN.
#![allow(dead_code)]

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, SOA, TXT};
use hickory_resolver::proto::rr::{LowerName, Name, RData, Record};
use hickory_resolver::proto::serialize::binary::BinEncodable;
use hickory_resolver::proto::serialize::txt::Parser;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

pub use hickory_resolver::proto::rr::RecordType;

/// TTL of records added at run time (zone files set their own).
pub const DEFAULT_TTL: u32 = 300;
/// Largest UDP response sent untruncated unless [`DnsServer::set_udp_limit`]
/// raises it (classic DNS without EDNS).
pub const DEFAULT_UDP_LIMIT: usize = 512;
/// Most CNAME hops followed within the data for one answer.
const MAX_CNAME_HOPS: usize = 8;
/// What [`Failure::Garbage`] sends after the query's two-byte ID: too short
/// for a DNS header, so the client fails to parse it.
const GARBAGE: &[u8] = b"\xffNOT";

/// The transport a query arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

/// A way for the server to fail a query instead of answering it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    /// No answer at all: the client times out.
    Drop,
    /// An answer with RCODE SERVFAIL and no records.
    ServFail,
    /// An answer with RCODE REFUSED and no records.
    Refused,
    /// A short datagram (TCP: a short framed message) that is not DNS: the
    /// query's ID followed by a few junk bytes, too short for a header, so the
    /// client takes it as a reply and fails to parse it.
    Garbage,
}

/// One query as the server received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedQuery {
    /// The query name in lower case, fully qualified (trailing dot).
    pub name: String,
    pub rtype: RecordType,
    pub transport: Transport,
    /// The delay applied before answering (zero if none).
    pub delay: Duration,
    /// The failure applied instead of an answer, if any.
    pub failure: Option<Failure>,
    /// When the query arrived.
    pub received: std::time::Instant,
}

/// A DNS server on a loopback address, UDP and TCP on one port; stops when
/// dropped.
pub struct DnsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    udp_task: JoinHandle<()>,
    tcp_task: JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    malformed: AtomicUsize,
}

struct State {
    /// Records by owner name, then by type.
    records: BTreeMap<LowerName, BTreeMap<RecordType, Vec<Record>>>,
    /// Zone apexes and their SOA records.
    zones: BTreeMap<LowerName, Record>,
    delays: HashMap<LowerName, Duration>,
    default_delay: Duration,
    failures: HashMap<LowerName, Failure>,
    default_failure: Option<Failure>,
    udp_limit: usize,
    log: Vec<LoggedQuery>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            records: BTreeMap::new(),
            zones: BTreeMap::new(),
            delays: HashMap::new(),
            default_delay: Duration::ZERO,
            failures: HashMap::new(),
            default_failure: None,
            udp_limit: DEFAULT_UDP_LIMIT,
            log: Vec::new(),
        }
    }
}

/// The folder of the shipped zone files, `tests/zones/`.
pub fn zones_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/zones")
}

/// Parses a name (absolute or not; made fully qualified). Panics if invalid.
pub fn dns_name(name: &str) -> Name {
    let mut parsed =
        Name::from_ascii(name).unwrap_or_else(|e| panic!("invalid DNS name {name:?}: {e}"));
    parsed.set_fqdn(true);
    parsed
}

fn key(name: &str) -> LowerName {
    LowerName::new(&dns_name(name))
}

/// The reverse-DNS name of an address, e.g. `10.2.0.192.in-addr.arpa.`.
pub fn reverse_name(ip: IpAddr) -> String {
    Name::from(ip).to_ascii()
}

/// The name a DNS blocklist zone is queried with for an address, e.g.
/// `dnsbl_name("192.0.2.10".parse()?, "zen.test")` is `10.2.0.192.zen.test.`
/// (IPv6: the 32 reversed nibbles).
pub fn dnsbl_name(ip: IpAddr, zone: &str) -> String {
    // The reverse name without its two-label suffix (in-addr.arpa, ip6.arpa).
    let reverse = Name::from(ip);
    let labels = reverse.iter().take(usize::from(reverse.num_labels()) - 2);
    Name::from_labels(labels)
        .and_then(|name| name.append_domain(&dns_name(zone)))
        .unwrap_or_else(|e| panic!("DNSBL name of {ip} in {zone:?}: {e}"))
        .to_ascii()
}

/// Splits text into TXT character-strings of at most 255 bytes, at char
/// boundaries.
fn txt_chunks(text: &str) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if current.len() + c.len_utf8() > 255 {
            chunks.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    if !current.is_empty() || chunks.is_empty() {
        chunks.push(current);
    }
    chunks
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DnsServer {
    /// Binds 127.0.0.1 UDP on an ephemeral port and TCP on the same port, and
    /// starts serving (no zone data yet). Panics if no port can be bound.
    pub async fn start() -> DnsServer {
        let mut last_error = None;
        for _ in 0..50 {
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .expect("bind UDP on 127.0.0.1");
            let addr = udp.local_addr().expect("UDP local address");
            match TcpListener::bind(addr).await {
                Ok(tcp) => return DnsServer::serve(addr, udp, tcp),
                // The TCP port was taken: try another UDP port.
                Err(e) => last_error = Some(e),
            }
        }
        panic!("no port free for both UDP and TCP on 127.0.0.1: {last_error:?}");
    }

    /// Serves the zones on both sockets, bound to `addr`.
    fn serve(addr: SocketAddr, udp: UdpSocket, tcp: TcpListener) -> DnsServer {
        let shared = Arc::new(Shared::default());
        let udp_task = tokio::spawn(serve_udp(Arc::new(udp), shared.clone()));
        let tcp_task = tokio::spawn(serve_tcp(tcp, shared.clone()));
        DnsServer {
            addr,
            shared,
            udp_task,
            tcp_task,
        }
    }

    /// Binds UDP and TCP on port 53 of a loopback address of its own,
    /// 127.53.N.1 for the first N from 0 to 255 where both are free (not
    /// 127.0.0.1, where a local resolver may listen), and starts serving.
    /// For clients that cannot be given a port: the C library's stub
    /// resolver reads only `nameserver ADDRESS` from resolv.conf and always
    /// asks port 53 (the Postfix benchmark points its peers' resolv.conf
    /// here). Needs root (or CAP_NET_BIND_SERVICE); panics if no address
    /// can be bound.
    pub async fn start_on_port_53() -> DnsServer {
        let mut last_error = None;
        for n in 0..=255u8 {
            let addr = SocketAddr::from((Ipv4Addr::new(127, 53, n, 1), 53));
            let udp = match UdpSocket::bind(addr).await {
                Ok(udp) => udp,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            match TcpListener::bind(addr).await {
                Ok(tcp) => return DnsServer::serve(addr, udp, tcp),
                Err(e) => last_error = Some(e),
            }
        }
        panic!("no 127.53.N.1 free for both UDP and TCP on port 53: {last_error:?}");
    }

    /// [`DnsServer::start_on_port_53`], then loads every `*.zone` file of
    /// `tests/zones/`.
    pub async fn start_on_port_53_with_test_zones() -> DnsServer {
        let server = Self::start_on_port_53().await;
        server.load_zone_dir(zones_dir());
        server
    }

    /// [`DnsServer::start`], then loads every `*.zone` file of `tests/zones/`.
    pub async fn start_with_test_zones() -> DnsServer {
        let server = Self::start().await;
        server.load_zone_dir(zones_dir());
        server
    }

    /// [`DnsServer::start`], then loads every zone of `tests/zones/auth/`
    /// (the sender-authentication zones: SPF, DKIM keys, DMARC, ARC).
    pub async fn start_with_auth_zones() -> DnsServer {
        let server = Self::start().await;
        server.load_zone_dir(zones_dir().join("auth"));
        server
    }

    /// The address both transports listen on (127.0.0.1, ephemeral port;
    /// or 127.53.N.1, port 53).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    // ----- resolver configuration for clients -----

    /// A resolver configuration with this server as its only name server,
    /// over UDP with TCP fallback, no search domains.
    pub fn resolver_config(&self) -> ResolverConfig {
        self.name_server_config(NameServerConfig::udp_and_tcp(self.addr.ip()))
    }

    /// Like [`DnsServer::resolver_config`], over one transport only.
    pub fn resolver_config_over(&self, transport: Transport) -> ResolverConfig {
        self.name_server_config(match transport {
            Transport::Udp => NameServerConfig::udp(self.addr.ip()),
            Transport::Tcp => NameServerConfig::tcp(self.addr.ip()),
        })
    }

    fn name_server_config(&self, mut server: NameServerConfig) -> ResolverConfig {
        for connection in &mut server.connections {
            connection.port = self.addr.port();
        }
        ResolverConfig::from_parts(None, vec![], vec![server])
    }

    /// Resolver options for tests: the given timeout, one attempt, no hosts
    /// file, EDNS on (hickory's default).
    pub fn resolver_opts(&self, timeout: Duration) -> ResolverOpts {
        let mut opts = ResolverOpts::default();
        opts.timeout = timeout;
        opts.attempts = 1;
        opts.use_hosts_file = ResolveHosts::Never;
        opts
    }

    /// A hickory resolver that asks only this server (see
    /// [`DnsServer::resolver_config`] and [`DnsServer::resolver_opts`]).
    pub fn resolver(&self, timeout: Duration) -> TokioResolver {
        build_resolver(self.resolver_config(), self.resolver_opts(timeout))
    }

    /// Like [`DnsServer::resolver`], over one transport only.
    pub fn resolver_over(&self, transport: Transport, timeout: Duration) -> TokioResolver {
        build_resolver(
            self.resolver_config_over(transport),
            self.resolver_opts(timeout),
        )
    }

    // ----- zone data -----

    /// Loads a master file. `origin` is the zone's origin unless the file sets
    /// `$ORIGIN`; relative `$INCLUDE`s resolve against the file's folder. If
    /// the file has no SOA at the origin, one is made up. Returns how many
    /// records were loaded; panics with the parse error otherwise.
    pub fn load_zone_file(&self, path: impl AsRef<Path>, origin: &str) -> usize {
        let path = path.as_ref();
        self.try_load_zone_file(path, origin)
            .unwrap_or_else(|e| panic!("zone file {}: {e}", path.display()))
    }

    /// Like [`DnsServer::load_zone_file`], returning the error.
    pub fn try_load_zone_file(
        &self,
        path: impl AsRef<Path>,
        origin: &str,
    ) -> Result<usize, String> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        self.load_zone(&text, Some(path.to_path_buf()), origin)
    }

    /// Like [`DnsServer::load_zone_file`], from text.
    pub fn load_zone_str(&self, text: &str, origin: &str) -> usize {
        self.try_load_zone_str(text, origin)
            .unwrap_or_else(|e| panic!("zone text for {origin}: {e}"))
    }

    /// Like [`DnsServer::load_zone_str`], returning the error.
    pub fn try_load_zone_str(&self, text: &str, origin: &str) -> Result<usize, String> {
        self.load_zone(text, None, origin)
    }

    /// Loads every `*.zone` file of a folder, each with the origin its file
    /// name gives (`example.org.zone` is `example.org.`). Returns the number
    /// of records loaded.
    pub fn load_zone_dir(&self, dir: impl AsRef<Path>) -> usize {
        let dir = dir.as_ref();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read zone folder {}: {e}", dir.display()))
            .map(|entry| entry.expect("zone folder entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "zone"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|path| {
                let stem = path.file_stem().expect("zone file name").to_string_lossy();
                self.load_zone_file(path, &stem)
            })
            .sum()
    }

    fn load_zone(&self, text: &str, path: Option<PathBuf>, origin: &str) -> Result<usize, String> {
        let origin = dns_name(origin);
        let (origin, sets) = Parser::new(text, path, Some(origin.clone()))
            .parse()
            .map_err(|e| e.to_string())?;
        let records: Vec<Record> = sets
            .into_values()
            .flat_map(|set| set.records_without_rrsigs().cloned().collect::<Vec<_>>())
            .collect();
        // hickory-proto 0.26's lexer keeps the quotes (and takes `;` as a
        // comment) for quoted strings inside ( ): refuse such records rather
        // than serve mangled TXT data.
        for record in &records {
            if let RData::TXT(txt) = &record.data
                && txt
                    .txt_data
                    .iter()
                    .any(|s| s.starts_with(b"\"") || s.ends_with(b"\""))
            {
                return Err(format!(
                    "TXT record {} has quoted strings inside ( ), which hickory-proto's \
                     zone parser does not support: put the strings on one line",
                    record.name
                ));
            }
        }
        let count = records.len();
        let has_soa = records.iter().any(|r| {
            r.record_type() == RecordType::SOA && LowerName::new(&r.name) == LowerName::new(&origin)
        });
        let mut state = lock(&self.shared);
        for record in records {
            state.insert(record);
        }
        if !has_soa {
            state.insert(synthetic_soa(&origin));
        }
        Ok(count)
    }

    /// Makes `origin` a zone (with a made-up SOA) if it is not one, so that
    /// negative answers under it carry an SOA.
    pub fn add_zone(&self, origin: &str) {
        let origin = dns_name(origin);
        let mut state = lock(&self.shared);
        if !state.zones.contains_key(&LowerName::new(&origin)) {
            state.insert(synthetic_soa(&origin));
        }
    }

    /// Adds one record from its master-file text, e.g.
    /// `add_record("example.org", RecordType::MX, "10 mail.example.org.")`;
    /// names are taken as absolute. TTL [`DEFAULT_TTL`].
    pub fn add_record(&self, name: &str, rtype: RecordType, rdata: &str) {
        let owner = dns_name(name);
        let line = format!("{owner} {DEFAULT_TTL} IN {rtype} {rdata}\n");
        let (_, sets) = Parser::new(line.as_str(), None, Some(Name::root()))
            .parse()
            .unwrap_or_else(|e| panic!("record {line:?}: {e}"));
        let mut state = lock(&self.shared);
        for set in sets.into_values() {
            for record in set.records_without_rrsigs() {
                state.insert(record.clone());
            }
        }
    }

    /// Adds a record of any type from its data.
    pub fn add_rdata(&self, name: &str, rdata: RData) {
        lock(&self.shared).insert(Record::from_rdata(dns_name(name), DEFAULT_TTL, rdata));
    }

    /// Adds a record at an owner name given as a [`Name`], for names that
    /// are not host names (SPF targets may hold `:`, `/` or spaces).
    pub fn add_rdata_at(&self, owner: Name, rdata: RData) {
        lock(&self.shared).insert(Record::from_rdata(owner, DEFAULT_TTL, rdata));
    }

    pub fn add_a(&self, name: &str, ip: Ipv4Addr) {
        self.add_rdata(name, RData::A(A(ip)));
    }

    pub fn add_aaaa(&self, name: &str, ip: Ipv6Addr) {
        self.add_rdata(name, RData::AAAA(AAAA(ip)));
    }

    /// An MX record; `exchange` "." makes a null MX (RFC 7505).
    pub fn add_mx(&self, name: &str, preference: u16, exchange: &str) {
        self.add_rdata(name, RData::MX(MX::new(preference, dns_name(exchange))));
    }

    /// A TXT record; text longer than 255 bytes is split into several
    /// character-strings (as DKIM keys are), which clients join.
    pub fn add_txt(&self, name: &str, text: &str) {
        self.add_rdata(name, RData::TXT(TXT::new(txt_chunks(text))));
    }

    /// A TXT record made of exactly these character-strings (each at most
    /// 255 bytes).
    pub fn add_txt_strings(&self, name: &str, strings: &[&str]) {
        let strings = strings.iter().map(|s| s.to_string()).collect();
        self.add_rdata(name, RData::TXT(TXT::new(strings)));
    }

    pub fn add_ptr(&self, name: &str, target: &str) {
        self.add_rdata(name, RData::PTR(PTR(dns_name(target))));
    }

    /// A PTR record at the reverse name of `ip`.
    pub fn add_ptr_for(&self, ip: IpAddr, target: &str) {
        self.add_ptr(&reverse_name(ip), target);
    }

    pub fn add_cname(&self, name: &str, target: &str) {
        self.add_rdata(name, RData::CNAME(CNAME(dns_name(target))));
    }

    /// Removes the records of one type at a name (an SOA removal also ends
    /// the zone).
    pub fn remove_records(&self, name: &str, rtype: RecordType) {
        let key = key(name);
        let mut state = lock(&self.shared);
        if let Some(types) = state.records.get_mut(&key) {
            types.remove(&rtype);
            if types.is_empty() {
                state.records.remove(&key);
            }
        }
        if rtype == RecordType::SOA {
            state.zones.remove(&key);
        }
    }

    // ----- behaviour -----

    /// Delays answers for queries of this name (any type).
    pub fn set_delay(&self, name: &str, delay: Duration) {
        lock(&self.shared).delays.insert(key(name), delay);
    }

    pub fn clear_delay(&self, name: &str) {
        lock(&self.shared).delays.remove(&key(name));
    }

    /// Delays answers for names without a delay of their own.
    pub fn set_default_delay(&self, delay: Duration) {
        lock(&self.shared).default_delay = delay;
    }

    /// Fails queries of this name (any type), after any delay.
    pub fn set_failure(&self, name: &str, failure: Failure) {
        lock(&self.shared).failures.insert(key(name), failure);
    }

    pub fn clear_failure(&self, name: &str) {
        lock(&self.shared).failures.remove(&key(name));
    }

    /// Fails queries of names without a failure of their own (None: answer).
    pub fn set_default_failure(&self, failure: Option<Failure>) {
        lock(&self.shared).default_failure = failure;
    }

    /// Clears every per-name failure and the default failure.
    pub fn clear_failures(&self) {
        let mut state = lock(&self.shared);
        state.failures.clear();
        state.default_failure = None;
    }

    /// Largest UDP response sent whole; larger ones are truncated. Above 512
    /// it is further capped by the EDNS size the client advertises (512 for a
    /// client without EDNS).
    pub fn set_udp_limit(&self, bytes: usize) {
        lock(&self.shared).udp_limit = bytes;
    }

    // ----- observability -----

    /// Every query received (parsed ones), in arrival order.
    pub fn query_log(&self) -> Vec<LoggedQuery> {
        lock(&self.shared).log.clone()
    }

    pub fn queries(&self) -> usize {
        lock(&self.shared).log.len()
    }

    /// Queries for this name, any type and transport (case-insensitive).
    pub fn queries_for(&self, name: &str) -> usize {
        let name = key(name).to_string();
        lock(&self.shared)
            .log
            .iter()
            .filter(|q| q.name == name)
            .count()
    }

    pub fn queries_for_type(&self, name: &str, rtype: RecordType) -> usize {
        let name = key(name).to_string();
        lock(&self.shared)
            .log
            .iter()
            .filter(|q| q.name == name && q.rtype == rtype)
            .count()
    }

    pub fn udp_queries(&self) -> usize {
        self.transport_queries(Transport::Udp)
    }

    pub fn tcp_queries(&self) -> usize {
        self.transport_queries(Transport::Tcp)
    }

    fn transport_queries(&self, transport: Transport) -> usize {
        lock(&self.shared)
            .log
            .iter()
            .filter(|q| q.transport == transport)
            .count()
    }

    /// Messages received that did not parse as a DNS query.
    pub fn malformed_queries(&self) -> usize {
        self.shared.malformed.load(Ordering::SeqCst)
    }

    /// Queries being handled right now (received, not yet answered, dropped
    /// or failed; a delayed query counts for its whole delay).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The largest number of queries handled at once since the start (or the
    /// last [`DnsServer::reset_stats`]).
    pub fn peak_in_flight(&self) -> usize {
        self.shared.peak_in_flight.load(Ordering::SeqCst)
    }

    /// Empties the query log and resets the counters.
    pub fn reset_stats(&self) {
        lock(&self.shared).log.clear();
        self.shared.malformed.store(0, Ordering::SeqCst);
        self.shared.peak_in_flight.store(
            self.shared.in_flight.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        // Aborting the listener tasks drops their JoinSets, which aborts the
        // connection and per-query tasks they own.
        self.udp_task.abort();
        self.tcp_task.abort();
    }
}

/// A hickory resolver with this configuration and these options.
pub fn build_resolver(config: ResolverConfig, opts: ResolverOpts) -> TokioResolver {
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .expect("build the test resolver")
}

fn synthetic_soa(origin: &Name) -> Record {
    let mname = Name::from_ascii("ns1")
        .and_then(|n| n.append_domain(origin))
        .unwrap_or_else(|_| origin.clone());
    let rname = Name::from_ascii("hostmaster")
        .and_then(|n| n.append_domain(origin))
        .unwrap_or_else(|_| origin.clone());
    let soa = SOA::new(mname, rname, 1, 3600, 600, 86400, DEFAULT_TTL);
    Record::from_rdata(origin.clone(), DEFAULT_TTL, RData::SOA(soa))
}

impl State {
    fn insert(&mut self, mut record: Record) {
        record.name.set_fqdn(true);
        if let Err(e) = record.to_bytes() {
            panic!("record {record} cannot be encoded: {e}");
        }
        let key = LowerName::new(&record.name);
        let rtype = record.record_type();
        if rtype == RecordType::SOA {
            self.zones.insert(key.clone(), record.clone());
            // One SOA per zone: a new one replaces the old.
            if let Some(types) = self.records.get_mut(&key) {
                types.remove(&RecordType::SOA);
            }
        }
        let set = self
            .records
            .entry(key)
            .or_default()
            .entry(rtype)
            .or_default();
        if !set.iter().any(|r| r.data == record.data) {
            set.push(record);
        }
    }

    /// The innermost known zone containing `name`, with its SOA.
    fn zone_of(&self, name: &LowerName) -> Option<&Record> {
        self.zones
            .iter()
            .filter(|(apex, _)| apex.zone_of(name))
            .max_by_key(|(apex, _)| apex.num_labels())
            .map(|(_, soa)| soa)
    }

    /// True if a name exists only because names below it do.
    fn is_empty_non_terminal(&self, name: &LowerName) -> bool {
        self.records.keys().any(|k| k != name && name.zone_of(k))
    }

    /// The answer to one question: response code, answers, authorities.
    fn answer(&self, query: &Query) -> (ResponseCode, Vec<Record>, Vec<Record>) {
        let qtype = query.query_type();
        let mut answers = Vec::new();
        let mut rcode = ResponseCode::NoError;
        // The first hop answers with the query's own spelling of the name.
        let mut owner = query.name().clone();
        let mut found = false;
        for _ in 0..MAX_CNAME_HOPS {
            let key = LowerName::new(&owner);
            let Some(types) = self.records.get(&key) else {
                let in_zone = self.zone_of(&key).is_some();
                if !self.is_empty_non_terminal(&key) && (answers.is_empty() || in_zone) {
                    rcode = ResponseCode::NXDomain;
                }
                break;
            };
            let mut push = |records: &[Record]| {
                answers.extend(records.iter().map(|r| {
                    let mut r = r.clone();
                    r.name = owner.clone();
                    r
                }));
            };
            if qtype == RecordType::ANY {
                types.values().for_each(|records| push(records));
                found = true;
                break;
            }
            if let Some(records) = types.get(&qtype) {
                push(records);
                found = true;
                break;
            }
            match types.get(&RecordType::CNAME).and_then(|r| r.first()) {
                Some(cname) => {
                    push(std::slice::from_ref(cname));
                    let RData::CNAME(target) = &cname.data else {
                        break;
                    };
                    owner = target.0.clone();
                }
                // NODATA
                None => break,
            }
        }
        let mut authorities = Vec::new();
        if !found && let Some(soa) = self.zone_of(&LowerName::new(&owner)) {
            authorities.push(soa.clone());
        }
        (rcode, answers, authorities)
    }
}

/// Counts a query as in flight for as long as it lives.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Handles one message; returns the bytes to send back, if any.
async fn handle(shared: &Shared, bytes: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let _in_flight = InFlight::enter(shared);
    let request = match Message::from_vec(bytes) {
        Ok(request) if request.metadata.message_type == MessageType::Query => request,
        _ => {
            shared.malformed.fetch_add(1, Ordering::SeqCst);
            return None;
        }
    };
    let id = request.metadata.id;
    let op_code = request.metadata.op_code;
    if op_code != OpCode::Query {
        return encode(&Message::error_msg(id, op_code, ResponseCode::NotImp));
    }
    let [query] = request.queries.as_slice() else {
        return encode(&Message::error_msg(id, op_code, ResponseCode::FormErr));
    };
    let name = LowerName::new(query.name());
    let (delay, failure, udp_limit) = {
        let mut state = lock(shared);
        let delay = state
            .delays
            .get(&name)
            .copied()
            .unwrap_or(state.default_delay);
        let failure = state.failures.get(&name).copied().or(state.default_failure);
        state.log.push(LoggedQuery {
            name: name.to_string(),
            rtype: query.query_type(),
            transport,
            delay,
            failure,
            received: std::time::Instant::now(),
        });
        (delay, failure, state.udp_limit)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let mut response = Message::response(id, op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.checking_disabled = request.metadata.checking_disabled;
    response.add_query(query.clone());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(udp_limit.clamp(512, usize::from(u16::MAX)) as u16);
        response.set_edns(edns);
    }
    match failure {
        Some(Failure::Drop) => return None,
        Some(Failure::Garbage) => {
            let mut garbage = id.to_be_bytes().to_vec();
            garbage.extend_from_slice(GARBAGE);
            return Some(garbage);
        }
        Some(Failure::ServFail) => response.metadata.response_code = ResponseCode::ServFail,
        Some(Failure::Refused) => response.metadata.response_code = ResponseCode::Refused,
        None => {
            let (rcode, answers, authorities) = lock(shared).answer(query);
            response.metadata.authoritative = true;
            response.metadata.response_code = rcode;
            response.insert_answers(answers);
            response.insert_authorities(authorities);
        }
    }
    let bytes = match response.to_vec() {
        Ok(bytes) => bytes,
        Err(_) => return encode(&Message::error_msg(id, op_code, ResponseCode::ServFail)),
    };
    let limit = if udp_limit <= 512 {
        udp_limit
    } else {
        udp_limit.min(usize::from(request.max_payload()))
    };
    if transport == Transport::Udp && bytes.len() > limit {
        return encode(&response.truncate());
    }
    Some(bytes)
}

fn encode(message: &Message) -> Option<Vec<u8>> {
    message.to_vec().ok()
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut queries = JoinSet::new();
    let mut buf = vec![0u8; 65_535];
    loop {
        while queries.try_join_next().is_some() {}
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let bytes = buf[..len].to_vec();
        let socket = socket.clone();
        let shared = shared.clone();
        queries.spawn(async move {
            if let Some(reply) = handle(&shared, &bytes, Transport::Udp).await {
                let _ = socket.send_to(&reply, peer).await;
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, _)) => {
                connections.spawn(serve_tcp_connection(stream, shared.clone()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// Reads length-prefixed queries until the client closes; each is handled in
/// its own task and answered as soon as it is ready (in any order).
async fn serve_tcp_connection(stream: TcpStream, shared: Arc<Shared>) {
    let (mut reader, writer) = stream.into_split();
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    let mut queries = JoinSet::new();
    loop {
        let mut len = [0u8; 2];
        if reader.read_exact(&mut len).await.is_err() {
            break;
        }
        let mut bytes = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if reader.read_exact(&mut bytes).await.is_err() {
            break;
        }
        let (shared, writer) = (shared.clone(), writer.clone());
        queries.spawn(async move {
            if let Some(reply) = handle(&shared, &bytes, Transport::Tcp).await
                && let Ok(len) = u16::try_from(reply.len())
            {
                let framed = [&len.to_be_bytes()[..], &reply].concat();
                let _ = writer.lock().await.write_all(&framed).await;
            }
        });
    }
    // The client closed its side: finish the queries it sent, then close.
    while queries.join_next().await.is_some() {}
    let _ = writer.lock().await.shutdown().await;
}
