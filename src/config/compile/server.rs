//! `[server]` (listeners, limits, logging) and `[dns]`.

use super::*;

pub(super) fn dns_settings(
    raw: Option<Spanned<RawDns>>,
    registry: &Registry,
    diag: &mut Diagnostics,
) -> crate::dns::DnsSettings {
    let mut s = crate::dns::DnsSettings::default();
    if let Some(raw) = raw {
        let raw = raw.into_inner();
        if let Some(list) = raw.nameservers {
            let mut servers = Vec::new();
            for n in list.get_ref() {
                // A bare address means the standard port.
                let parsed = n.get_ref().parse::<std::net::SocketAddr>().or_else(|_| {
                    n.get_ref()
                        .parse::<std::net::IpAddr>()
                        .map(|ip| (ip, 53).into())
                });
                match parsed {
                    Ok(a) => servers.push(a),
                    Err(_) => diag.error_hint(
                        n.span(),
                        format!("invalid name server \"{}\"", n.get_ref()),
                        "write IP or IP:PORT, such as 127.0.0.1 or 127.0.0.1:5353 or [::1]:53",
                    ),
                }
            }
            if servers.is_empty() {
                diag.error(
                    list.span(),
                    "`nameservers` is empty; remove it to use /etc/resolv.conf",
                );
            }
            s.nameservers = Some(servers);
        }
        if let Some(t) = raw.timeout {
            match humantime::parse_duration(t.get_ref()) {
                Ok(d) if !d.is_zero() => s.timeout = d,
                _ => diag.error(
                    t.span(),
                    format!(
                        "`timeout` must be a duration such as \"5s\", found \"{}\"",
                        t.get_ref()
                    ),
                ),
            }
        }
        if let Some(a) = raw.attempts {
            match usize::try_from(*a.get_ref()) {
                Ok(n) if (1..=10).contains(&n) => s.attempts = n,
                _ => diag.error(a.span(), "`attempts` must be between 1 and 10"),
            }
        }
        if let Some(c) = raw.cache_size {
            match u64::try_from(*c.get_ref()) {
                Ok(n) => s.cache_size = n,
                Err(_) => diag.error(c.span(), "`cache_size` must not be negative"),
            }
        }
    }
    if let Some(servers) = &registry.nameservers {
        s.nameservers = Some(servers.clone());
    }
    s
}

impl Compiler<'_, '_> {
    pub(super) fn server(
        &mut self,
        raw: Option<Spanned<RawServer>>,
        pipelines: &[String],
    ) -> ServerSettings {
        let mut settings = ServerSettings::default();
        let Some(raw) = raw else {
            return settings;
        };
        let raw = raw.into_inner();
        if !raw.listen.is_empty() {
            settings.listeners.clear();
        }
        let mut seen: HashMap<String, Range<usize>> = HashMap::new();
        for l in raw.listen {
            let l = l.into_inner();
            let address = match ListenAddress::parse(l.address.get_ref()) {
                Ok(a) => a,
                Err(e) => {
                    self.diag.error(l.address.span(), e.to_string());
                    continue;
                }
            };
            // Port 0 asks for any free port: two of them never clash.
            let any_port = matches!(&address, ListenAddress::Inet(a) if a.port() == 0);
            if !any_port && let Some(first) = seen.get(&address.to_string()) {
                let first = self.position_text(first);
                self.diag.error(
                    l.address.span(),
                    format!("\"{address}\" is listed twice (first at {first})"),
                );
                continue;
            }
            seen.insert(address.to_string(), l.address.span());
            if let Some(p) = &l.pipeline
                && !pipelines.contains(p.get_ref())
            {
                let hint = did_you_mean(p.get_ref(), pipelines.iter().map(String::as_str))
                    .map(|s| format!("did you mean \"{s}\"?"))
                    .unwrap_or_else(|| format!("pipelines: {}", pipelines.join(", ")));
                self.diag
                    .error_hint(p.span(), format!("no pipeline \"{}\"", p.get_ref()), hint);
            }
            let is_unix = matches!(address, ListenAddress::Unix(_));
            for (key, v) in [
                ("socket_mode", &l.socket_mode),
                ("socket_owner", &l.socket_owner),
                ("socket_group", &l.socket_group),
            ] {
                if let Some(v) = v
                    && !is_unix
                {
                    self.diag
                        .error(v.span(), format!("`{key}` only applies to unix: sockets"));
                }
            }
            let socket_mode = l.socket_mode.as_ref().and_then(|m| {
                match u32::from_str_radix(m.get_ref().trim_start_matches("0o"), 8) {
                    Ok(v) if v <= 0o777 => Some(v),
                    _ => {
                        self.diag.error(m.span(), format!("invalid `socket_mode` \"{}\": write an octal mode such as \"0660\"", m.get_ref()));
                        None
                    }
                }
            });
            settings.listeners.push(ListenerSettings {
                address,
                pipeline: l.pipeline.map(Spanned::into_inner),
                socket_mode,
                socket_owner: l.socket_owner.map(Spanned::into_inner),
                socket_group: l.socket_group.map(Spanned::into_inner),
            });
        }
        if let Some(m) = raw.max_connections {
            // Each connection needs a file descriptor; past a million the
            // number is a typo, and the milter library would refuse it.
            match usize::try_from(*m.get_ref()) {
                Ok(v) if (1..=1_000_000).contains(&v) => settings.max_connections = v,
                _ => self
                    .diag
                    .error(m.span(), "`max_connections` must be between 1 and 1000000"),
            }
        }
        if let Some(w) = raw.worker_threads {
            match usize::try_from(*w.get_ref()) {
                Ok(v) if (1..=1024).contains(&v) => settings.worker_threads = Some(v),
                _ => self.diag.error(
                    w.span(),
                    "`worker_threads` must be between 1 and 1024; leave it out for half the CPUs",
                ),
            }
        }
        if let Some(g) = raw.shutdown_grace {
            match humantime::parse_duration(g.get_ref()) {
                Ok(d) => settings.shutdown_grace = d,
                Err(_) => self.diag.error(
                    g.span(),
                    format!(
                        "`shutdown_grace` must be a duration such as \"30s\", found \"{}\"",
                        g.get_ref()
                    ),
                ),
            }
        }
        if let Some(t) = raw.connection_timeout {
            // Under a second cuts off every MTA that pauses to think; past a
            // day the number is a typo (the MTA's own timeouts end far
            // sooner).
            match humantime::parse_duration(t.get_ref()) {
                Ok(d) if (std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(86_400)).contains(&d) => {
                    settings.connection_timeout = d
                }
                _ => self.diag.error(
                    t.span(),
                    format!(
                        "`connection_timeout` must be a duration from \"1s\" to \"1day\", such as \"10min\", found \"{}\"",
                        t.get_ref()
                    ),
                ),
            }
        }
        if let Some(f) = raw.log_format {
            match f.get_ref().as_str() {
                "text" => settings.log_format = LogFormat::Text,
                "json" => settings.log_format = LogFormat::Json,
                other => self.diag.error(
                    f.span(),
                    format!("invalid `log_format` \"{other}\": use \"text\" or \"json\""),
                ),
            }
        }
        if let Some(l) = raw.log_level {
            match check_log_filter(l.get_ref()) {
                Ok(()) => settings.log_level = l.into_inner(),
                Err(why) => self.diag.error_hint(
                    l.span(),
                    format!("invalid `log_level` \"{}\": {why}", l.get_ref().escape_debug()),
                    "use error, warn, info, debug, trace or off, or a filter such as \"info,dispatch_milter::message=warn\"",
                ),
            }
        }
        if let Some(m) = raw.metrics_listen {
            match m.get_ref().parse::<std::net::SocketAddr>() {
                Ok(a) => settings.metrics_listen = Some(a),
                Err(_) => self.diag.error(
                    m.span(),
                    format!(
                        "invalid `metrics_listen` \"{}\": write IP:PORT, such as 127.0.0.1:9357",
                        m.get_ref()
                    ),
                ),
            }
        }
        settings
    }
}
