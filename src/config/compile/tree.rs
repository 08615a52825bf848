//! The dispatch tree of a pipeline: source blocks (who sends), destination
//! blocks (to whom), their selectors, duplicates and the branches they lead to.

use super::*;

/// Duplicate detection for one level of the tree.
#[derive(Default)]
pub(super) struct Level {
    pub(super) seen: HashMap<String, Range<usize>>,
}

/// A source level under construction.
pub(super) struct SourceLevel {
    pub(super) by_auth_user: HashMap<String, Arc<SourceNode>>,
    pub(super) any_auth_user: Option<Arc<SourceNode>>,
    pub(super) by_network: Vec<(IpNet, Arc<SourceNode>)>,
    pub(super) by_daemon_name: HashMap<String, Arc<SourceNode>>,
    pub(super) by_address: HashMap<String, Arc<SourceNode>>,
    pub(super) by_domain: HashMap<String, Arc<SourceNode>>,
    pub(super) tables: Vec<(Arc<Table>, Arc<SourceNode>)>,
}

/// The address side of a block's selectors.
#[derive(Default)]
pub(super) struct AddressSelectors {
    pub(super) addresses: Vec<String>,
    pub(super) domains: Vec<String>,
    pub(super) table: Option<Arc<Table>>,
}

pub(super) fn describe_selectors(block: &RawBlock, what: &str) -> String {
    let mut parts = Vec::new();
    if let Some(m) = &block.matches {
        parts.extend(m.get_ref().iter().map(|s| s.get_ref().clone()));
    }
    if let Some(t) = &block.table {
        parts.push(format!("table:{}", t.get_ref()));
    }
    if let Some(n) = &block.networks {
        parts.extend(n.get_ref().iter().map(|s| s.get_ref().clone()));
    }
    if let Some(u) = &block.auth_users {
        parts.extend(u.get_ref().iter().map(|s| format!("user:{}", s.get_ref())));
    }
    if let Some(d) = &block.daemon_names {
        parts.extend(
            d.get_ref()
                .iter()
                .map(|s| format!("daemon:{}", s.get_ref())),
        );
    }
    let mut shown = parts.iter().take(3).cloned().collect::<Vec<_>>().join(" ");
    if parts.len() > 3 {
        shown.push_str(" ...");
    }
    format!("{what} {shown}")
}

impl Compiler<'_, '_> {
    /// Record a selector key at a level, reporting a duplicate.
    pub(super) fn claim(
        &mut self,
        level: &mut Level,
        key: String,
        shown: &str,
        span: Range<usize>,
    ) -> bool {
        if let Some(first) = level.seen.get(&key) {
            let first = self.position_text(first);
            self.diag.error_hint(
                span,
                format!("{shown} is matched by two blocks at this level"),
                format!("it is first matched at {first}; each address, domain, network, user or table may appear once per level"),
            );
            return false;
        }
        level.seen.insert(key, span);
        true
    }

    pub(super) fn address_selectors(
        &mut self,
        block: &RawBlock,
        level: &mut Level,
    ) -> AddressSelectors {
        let mut sel = AddressSelectors::default();
        for m in block.matches.iter().flat_map(|l| l.get_ref()) {
            let text = m.get_ref().trim();
            let is_address =
                text.contains('@') || text == "<>" || text.eq_ignore_ascii_case("postmaster");
            if is_address {
                match Address::parse_config(text) {
                    Ok(addr) => {
                        let key = addr.key();
                        if self.claim(
                            level,
                            format!("a:{key}"),
                            &format!("address \"{text}\""),
                            m.span(),
                        ) {
                            sel.addresses.push(key);
                        }
                    }
                    Err(e) => self.diag.error_hint(
                        m.span(),
                        e.to_string(),
                        "write a full address (user@example.org), a domain (example.org), \"<>\" or \"postmaster\"",
                    ),
                }
            } else {
                match normalize_domain(text) {
                    Ok(d) => {
                        if self.claim(level, format!("d:{d}"), &format!("domain \"{text}\""), m.span()) {
                            sel.domains.push(d);
                        }
                    }
                    Err(e) => self.diag.error_hint(
                        m.span(),
                        e.to_string(),
                        "write a domain (example.org), an address (user@example.org), \"<>\" or \"postmaster\"",
                    ),
                }
            }
        }
        if let Some(t) = &block.table {
            match self.tables.get(t.get_ref()).cloned() {
                Some(table) => {
                    if self.claim(
                        level,
                        format!("t:{}", t.get_ref()),
                        &format!("table \"{}\"", t.get_ref()),
                        t.span(),
                    ) {
                        sel.table = Some(table);
                    }
                }
                None => {
                    let hint = did_you_mean(t.get_ref(), self.tables.keys().map(String::as_str))
                        .map(|s| format!("did you mean \"{s}\"?"))
                        .unwrap_or_else(|| "define it in a [tables.NAME] block".to_string());
                    self.diag.error_hint(
                        t.span(),
                        format!("unknown table \"{}\"", t.get_ref()),
                        hint,
                    );
                }
            }
        }
        sel
    }

    pub(super) fn source_block(
        &mut self,
        block: Spanned<RawBlock>,
        global_checks: &[CheckId],
        level: &mut Level,
        sources: &mut SourceLevel,
    ) {
        let span = block.span();
        let block = block.into_inner();
        if block.selector_span().is_none() {
            self.diag.error_hint(
                span.clone(),
                "a source block needs a selector",
                "add `match`, `table`, `networks`, `auth_users` or `daemon_names`; for everything else use default",
            );
            return;
        }
        let label = describe_selectors(&block, "source");
        let selectors = self.address_selectors(&block, level);
        let mut networks = Vec::new();
        for n in block.networks.iter().flat_map(|l| l.get_ref()) {
            let parsed = n
                .get_ref()
                .parse::<IpNet>()
                .or_else(|_| n.get_ref().parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => {
                    let net = net.trunc();
                    if self.claim(
                        level,
                        format!("n:{net}"),
                        &format!("network \"{}\"", n.get_ref()),
                        n.span(),
                    ) {
                        networks.push(net);
                    }
                }
                Err(_) => self.diag.error_hint(
                    n.span(),
                    format!("invalid network \"{}\"", n.get_ref()),
                    "write an address or a CIDR network such as 192.0.2.0/24 or 2001:db8::/32",
                ),
            }
        }
        let mut users = Vec::new();
        for u in block.auth_users.iter().flat_map(|l| l.get_ref()) {
            let key = normalize_key(u.get_ref());
            if key.is_empty() {
                self.diag.error(u.span(), "empty user name in `auth_users`");
            } else if self.claim(
                level,
                format!("u:{key}"),
                &format!("user \"{}\"", u.get_ref()),
                u.span(),
            ) {
                users.push(key);
            }
        }
        let mut daemons = Vec::new();
        for d in block.daemon_names.iter().flat_map(|l| l.get_ref()) {
            if self.claim(
                level,
                format!("m:{}", d.get_ref()),
                &format!("daemon name \"{}\"", d.get_ref()),
                d.span(),
            ) {
                daemons.push(d.get_ref().clone());
            }
        }
        let node = self.source_level(&block, &label, global_checks);
        for key in selectors.addresses {
            sources.by_address.insert(key, node.clone());
        }
        for d in selectors.domains {
            sources.by_domain.insert(d, node.clone());
        }
        if let Some(t) = selectors.table {
            sources.tables.push((t, node.clone()));
        }
        for net in networks {
            sources.by_network.push((net, node.clone()));
        }
        for u in users {
            if u == "*" {
                sources.any_auth_user = Some(node.clone());
            } else {
                sources.by_auth_user.insert(u, node.clone());
            }
        }
        for d in daemons {
            sources.by_daemon_name.insert(d, node.clone());
        }
    }

    /// A block at source level: it may hold destination blocks and a default;
    /// without them its own outcome is its default destination.
    pub(super) fn source_level(
        &mut self,
        block: &RawBlock,
        label: &str,
        global_checks: &[CheckId],
    ) -> Arc<SourceNode> {
        for s in &block.source {
            self.diag.error(
                s.span(),
                "a source block cannot contain source blocks; source blocks belong at the pipeline's top level",
            );
        }
        let mut checks = global_checks.to_vec();
        let own = self.resolve_checks(&block.checks);
        dedup_extend(&mut checks, &own);
        let modifiers = self.resolve_modifiers(&block.modify);

        let has_dispatch = !block.destination.is_empty() || block.default.is_some();
        if has_dispatch && let Some(span) = block.outcome_span() {
            self.diag.error_hint(
                span,
                "an outcome next to destination or default blocks",
                "move it into this block's default",
            );
        }
        let mut level = Level::default();
        let mut by_address = HashMap::new();
        let mut by_domain = HashMap::new();
        let mut tables = Vec::new();
        for dest in &block.destination {
            let dest_span = dest.span();
            let dest = dest.get_ref();
            self.reject_nested_dispatch(dest, "a destination block");
            for (field, span) in [
                ("networks", dest.networks.as_ref().map(Spanned::span)),
                ("auth_users", dest.auth_users.as_ref().map(Spanned::span)),
                (
                    "daemon_names",
                    dest.daemon_names.as_ref().map(Spanned::span),
                ),
            ] {
                if let Some(span) = span {
                    self.diag.error(
                        span,
                        format!("`{field}` can only select a source block, not a destination"),
                    );
                }
            }
            if dest.matches.is_none() && dest.table.is_none() {
                self.diag.error_hint(
                    dest_span,
                    "a destination block needs a selector",
                    "add `match` or `table`; for everything else use default",
                );
                continue;
            }
            let sel = self.address_selectors(dest, &mut level);
            let dest_label = describe_selectors(dest, "destination");
            let branch = self.leaf(dest, &format!("{label} > {dest_label}"), &checks);
            for key in sel.addresses {
                by_address.insert(key, branch.clone());
            }
            for d in sel.domains {
                by_domain.insert(d, branch.clone());
            }
            if let Some(t) = sel.table {
                tables.push((t, branch.clone()));
            }
        }
        let default = match &block.default {
            Some(d) => {
                let d_ref = d.get_ref();
                self.reject_nested_dispatch(d_ref, "the default of a destination level");
                if let Some(span) = d_ref.selector_span() {
                    self.diag.error(
                        span,
                        "a default block matches everything; remove the selector",
                    );
                }
                self.leaf(d_ref, &format!("{label} > default"), &checks)
            }
            None if has_dispatch => {
                self.leaf(&RawBlock::default(), &format!("{label} > default"), &checks)
            }
            None => {
                // The block reads as its own default: its outcome is the
                // default destination's; its checks and modifiers stay at
                // source level, which runs them in the same order.
                let outcome_only = RawBlock {
                    action: block.action.clone(),
                    reply: block.reply.clone(),
                    reason: block.reason.clone(),
                    redirect: block.redirect.clone(),
                    copy: block.copy.clone(),
                    ..RawBlock::default()
                };
                self.leaf(&outcome_only, &format!("{label} > default"), &checks)
            }
        };
        Arc::new(SourceNode {
            label: label.to_string(),
            checks,
            modifiers,
            destinations: Dispatch {
                by_address,
                by_domain,
                tables,
                default,
            },
        })
    }

    pub(super) fn reject_nested_dispatch(&mut self, block: &RawBlock, what: &str) {
        if let Some(s) = block.source.first() {
            self.diag.error_hint(
                s.span(),
                format!("a source block inside {what} is not allowed"),
                "nest destination blocks inside source blocks, not the other way round",
            );
        }
        if let Some(d) = block.destination.first() {
            self.diag.error(
                d.span(),
                format!("destination blocks cannot be nested inside {what}"),
            );
        }
        if let Some(d) = &block.default {
            self.diag.error(
                d.span(),
                format!("a default block cannot be nested inside {what}"),
            );
        }
    }

    /// A leaf: what happens to a recipient.
    pub(super) fn leaf(
        &mut self,
        block: &RawBlock,
        label: &str,
        inherited_checks: &[CheckId],
    ) -> Arc<Branch> {
        let mut checks = inherited_checks.to_vec();
        let own = self.resolve_checks(&block.checks);
        dedup_extend(&mut checks, &own);
        let modifiers = self.resolve_modifiers(&block.modify);
        // One message has one sender: a rewrite chosen per recipient cannot
        // apply, and silently doing nothing would surprise.
        for name in block.modify.iter().flat_map(|l| l.get_ref()) {
            let Some(&id) = self.modifier_ids.get(name.get_ref()) else {
                continue;
            };
            if self.modifiers[id].modifier.effects().sender {
                self.diag.error_hint(
                    name.span(),
                    format!(
                        "modifier \"{}\" rewrites the sender, which cannot depend on the recipient",
                        name.get_ref()
                    ),
                    "list it in the pipeline's or a source block's `modify`",
                );
            }
        }
        let action = block.action.as_ref();
        let action_name = action.map_or("accept", |a| a.get_ref().as_str());
        let reply_spec = block
            .reply
            .as_ref()
            .map(|r| r.get_ref().clone())
            .unwrap_or_default();
        let reply_span = block.reply.as_ref().map(Spanned::span);
        let reply_for =
            |class: ReplyClass, diag: &mut Diagnostics| match build_reply(&reply_spec, class) {
                Ok(r) => r,
                Err(e) => {
                    diag.error(
                        reply_span.clone().unwrap_or(0..0),
                        format!("invalid reply: {e}"),
                    );
                    Reply::default_reject()
                }
            };
        let outcome = match action_name {
            "accept" => Outcome::Accept,
            "reject" => Outcome::Reject(reply_for(ReplyClass::Permanent, &mut self.diag)),
            "tempfail" => Outcome::Tempfail(reply_for(ReplyClass::Temporary, &mut self.diag)),
            "quarantine" => Outcome::Quarantine(
                block
                    .reason
                    .as_ref()
                    .map(|r| crate::edits::sanitize_value(r.get_ref()))
                    .unwrap_or_else(|| defaults::QUARANTINE_REASON.to_string()),
            ),
            "discard" => Outcome::Discard,
            other => {
                if let Some(a) = action {
                    self.diag.error(
                        a.span(),
                        format!("invalid action \"{other}\": use \"accept\", \"reject\", \"tempfail\", \"quarantine\" or \"discard\""),
                    );
                }
                Outcome::Accept
            }
        };
        if let Some(span) = reply_span.clone()
            && !matches!(outcome, Outcome::Reject(_) | Outcome::Tempfail(_))
        {
            self.diag.error(
                span,
                "`reply` only goes with action \"reject\" or \"tempfail\"",
            );
        }
        if let Some(r) = &block.reason
            && !matches!(outcome, Outcome::Quarantine(_))
        {
            self.diag
                .error(r.span(), "`reason` only goes with action \"quarantine\"");
        }
        let delivers = matches!(outcome, Outcome::Accept | Outcome::Quarantine(_));
        let redirect = block.redirect.as_ref().and_then(|r| {
            if !delivers {
                self.diag.error(
                    r.span(),
                    format!("`redirect` cannot go with action \"{action_name}\""),
                );
            }
            self.delivery_address(r)
        });
        let copy = block
            .copy
            .iter()
            .flat_map(|l| l.get_ref())
            .filter_map(|c| {
                if !delivers {
                    self.diag.error(
                        c.span(),
                        format!("`copy` cannot go with action \"{action_name}\""),
                    );
                }
                self.delivery_address(c)
            })
            .collect();
        let branch = Arc::new(Branch {
            id: self.branches.len(),
            label: label.to_string(),
            checks,
            modifiers,
            outcome,
            redirect,
            copy,
        });
        self.branches.push(branch.clone());
        branch
    }

    pub(super) fn delivery_address(&mut self, s: &Spanned<String>) -> Option<Address> {
        match Address::parse_config(s.get_ref()) {
            Ok(a) if a.domain().is_some() => Some(a),
            Ok(_) => {
                self.diag.error(
                    s.span(),
                    format!("\"{}\" needs a domain: write user@example.org", s.get_ref()),
                );
                None
            }
            Err(e) => {
                self.diag.error(s.span(), e.to_string());
                None
            }
        }
    }
}
