//! The milter adapter: thin glue between indymilter's callbacks and the
//! protocol-free engine. It turns macros and commands into engine calls and
//! engine answers into milter statuses, replies and end-of-message actions.
//! Every stage but end of message answers CONTINUE (ACCEPT before EOM would
//! drop every edit); the edit list is sent at EOM as one batch. Headers and
//! body chunks never refuse, so where the MTA allows it their replies are
//! waived at negotiation (see `handle_negotiate`), and so are those of the
//! stages before end of message at which the policy never refuses; a
//! refusal met there anyway is answered at the next stage that replies
//! (`deferred`).

use super::deferred::StageReplies;
use super::logline;
use super::shared::{MessageGuard, Shared};
use crate::edits::Edit;
use crate::engine::{Decision, MessageOutcome, Session, StageReply};
use crate::message::{AuthInfo, ConnectionFacts, TlsInfo};
use crate::policy::{EditKinds, Policy, StageUse};
use crate::reply::Reply;
use crate::stage::Stage;
use indymilter::{
    Actions, Callbacks, Context, ContextActions, EomContext, MacroStage, Macros, NegotiateContext,
    ProtoOpts, SetErrorReply, SocketInfo, Status,
};
use std::ffi::{CStr, CString};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often EOM tells the MTA we are still working while checks run:
/// a quarter of the stage deadline, at most every 10 s. Postfix restarts its
/// content timeout (300 s) on every reply.
fn progress_interval(deadline: Duration) -> Duration {
    (deadline / 4).clamp(Duration::from_millis(100), Duration::from_secs(10))
}

/// The macros each stage needs (DESIGN §2). Postfix sends most by default;
/// asking makes Sendmail and tuned Postfix setups send them too.
const MACROS: [(MacroStage, &str); 6] = [
    (
        MacroStage::Connect,
        "j _ {daemon_name} {daemon_addr} {client_addr} {client_name}",
    ),
    (
        MacroStage::Helo,
        "{tls_version} {cipher} {cipher_bits} {cert_subject}",
    ),
    (
        MacroStage::Mail,
        "i {auth_type} {auth_authen} {auth_author} {mail_addr} {tls_version} {cipher}",
    ),
    (MacroStage::Rcpt, "i {rcpt_addr}"),
    (MacroStage::Data, "i"),
    (MacroStage::Eom, "i"),
];

/// Which pipeline a listener's connections use.
#[derive(Clone, Debug)]
pub(crate) struct Binding {
    /// A fixed pipeline, or `None` to choose by `{daemon_name}`.
    pub pipeline: Option<String>,
    /// For logs: the listener's address.
    pub listener: String,
}

/// Per connection: what was negotiated, and the engine session.
pub(crate) struct Connection {
    policy: Arc<Policy>,
    granted: Actions,
    leading_space: bool,
    /// The MTA does not wait for replies to headers / body chunks.
    noreply_header: bool,
    noreply_body: bool,
    /// Stages before end of message without reply, and a refusal met at
    /// one of them that is still to be answered.
    replies: StageReplies,
    /// The MTA does not send HELO (SMFIP_NO_HELO): nothing reads it.
    no_helo: bool,
    session: Option<Session>,
    message: Option<MessageGuard>,
    started: Instant,
    client: String,
    /// SMTP sessions begun on this connection (more than one after QUIT_NC).
    sessions: u32,
}

fn macro_value(macros: &Macros, name: &CStr) -> Option<String> {
    macros
        .get(name)
        .map(|v| v.to_string_lossy().into_owned())
        .filter(|v| !v.is_empty())
}

/// The `i` macro, borrowed: it comes with MAIL, RCPT and end of message
/// and is nearly always the same.
fn queue_id(macros: &Macros) -> Option<&str> {
    macros.get(c"i").and_then(|v| v.to_str().ok())
}

fn text(s: &CStr) -> String {
    s.to_string_lossy().into_owned()
}

/// The milter actions that a set of edit kinds needs.
pub(crate) fn actions_for(kinds: EditKinds) -> Actions {
    let mut a = Actions::empty();
    if kinds.add_header {
        a |= Actions::ADD_HEADER;
    }
    if kinds.change_header {
        a |= Actions::CHANGE_HEADER | Actions::ADD_HEADER;
    }
    if kinds.add_recipient {
        a |= Actions::ADD_RCPT;
    }
    if kinds.delete_recipient {
        a |= Actions::DELETE_RCPT;
    }
    if kinds.change_sender {
        a |= Actions::CHANGE_SENDER;
    }
    if kinds.quarantine {
        a |= Actions::QUARANTINE | Actions::ADD_HEADER;
    }
    a
}

/// The edit kinds a listener may need: its own pipeline's, or every
/// pipeline's when the pipeline is chosen per connection.
fn kinds_for(policy: &Policy, binding: &Binding) -> EditKinds {
    policy
        .pipelines
        .iter()
        .filter(|p| binding.pipeline.as_ref().is_none_or(|name| *name == p.name))
        .fold(EditKinds::default(), |acc, p| acc.union(p.edit_kinds))
}

/// The protocol options a policy lets a listener waive: no reply at a stage
/// where none of the listener's pipelines refuses, and no HELO at all where
/// nothing reads it.
fn stage_opts(stage_use: StageUse) -> ProtoOpts {
    let mut opts = ProtoOpts::empty();
    for (stage, noreply) in [
        (Stage::Connect, ProtoOpts::NOREPLY_CONNECT),
        (Stage::Helo, ProtoOpts::NOREPLY_HELO),
        (Stage::Mail, ProtoOpts::NOREPLY_MAIL),
        (Stage::Rcpt, ProtoOpts::NOREPLY_RCPT),
    ] {
        if !stage_use.refuses_at(stage) {
            opts |= noreply;
        }
    }
    // Only HELO can go unsent. Connect starts the session and chooses the
    // pipeline; MAIL FROM and RCPT TO make the envelope that dispatch, the
    // log line and the edits need; headers and body give the size, the
    // header limits and the Authentication-Results forgeries to delete,
    // which every pipeline uses. HELO brings the HELO name and the TLS
    // facts, read by checks (SPF's HELO identity, DNSBL HELO lists,
    // require_tls, command) and modifiers ({helo} in a header): only a
    // listener whose pipelines have no check and no modifier at all leaves
    // it unread.
    if !stage_use.reads_helo {
        opts |= ProtoOpts::NO_HELO;
    }
    opts
}

/// The status for a stage before end of message: what was decided, merged
/// with a refusal kept from a stage without reply; `Noreply` where the MTA
/// does not wait (a refusal is then kept for the next stage that replies).
fn answer(ctx: &mut Context<Connection>, stage: Stage, reply: StageReply) -> Status {
    let Some(conn) = ctx.data.as_mut() else {
        // Never negotiated, so every stage replies.
        return stage_status(ctx, reply);
    };
    match conn.replies.settle(stage, reply) {
        Some(reply) => stage_status(ctx, reply),
        None => Status::Noreply,
    }
}

/// What an internal failure before end of message answers.
fn failure() -> StageReply {
    StageReply::Tempfail(Reply::default_tempfail())
}

/// Set the SMTP reply for a refusal and return the matching status.
fn refuse(reply: &mut impl SetErrorReply, r: &Reply) -> Status {
    let status = if r.code >= 500 {
        Status::Reject
    } else {
        Status::Tempfail
    };
    let code = r.code.to_string();
    if let Err(e) = reply.set_error_reply(&code, Some(&r.status), [r.text.as_str()]) {
        // The reply was validated at load time; if the MTA side still
        // refuses it, the status alone still refuses correctly.
        tracing::error!(error = %e, reply = %r, "could not set the SMTP reply");
    }
    status
}

fn stage_status(ctx: &mut Context<Connection>, reply: StageReply) -> Status {
    match reply {
        StageReply::Continue => Status::Continue,
        StageReply::Reject(r) | StageReply::Tempfail(r) => refuse(&mut ctx.reply, &r),
    }
}

/// A header value as the MTA wants it: folded with LF (the MTA turns it into
/// CRLF) before white space when a line grows past 78 characters, and with
/// the leading space when LEADING_SPACE was negotiated. A fold goes before
/// the whole run of white space that precedes a word, never inside it: a
/// line of white space alone is forbidden (RFC 5322 §3.2.2), and some
/// readers take it for the end of the header block.
pub fn wire_header_value(name: &str, value: &str, leading_space: bool) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    if leading_space {
        out.push(' ');
    }
    // The first line also holds "Name: ".
    let mut line_len = name.len() + 2;
    let mut line_has_word = false;
    // White space read but not written yet: it goes with the next word.
    let mut pending = String::new();
    for (i, word) in value.split(' ').enumerate() {
        if i > 0 {
            pending.push(' ');
        }
        if word.trim_matches('\t').is_empty() {
            pending.push_str(word);
            continue;
        }
        if line_has_word && line_len + pending.len() + word.len() > 78 {
            out.push('\n');
            line_len = 0;
        }
        out.push_str(&pending);
        out.push_str(word);
        line_len += pending.len() + word.len();
        pending.clear();
        line_has_word = true;
    }
    out.push_str(&pending);
    out
}

pub(crate) fn callbacks(shared: Arc<Shared>, binding: Binding) -> Callbacks<Connection> {
    let (s1, s2, s3, s4, s5, s6, s7, s8, s9) = (
        shared.clone(),
        shared.clone(),
        shared.clone(),
        shared.clone(),
        shared.clone(),
        shared.clone(),
        shared.clone(),
        shared.clone(),
        shared,
    );
    let b1 = binding.clone();
    let b2 = binding;
    Callbacks::new()
        .on_negotiate(move |ctx, actions, opts| {
            let (shared, binding) = (s1.clone(), b1.clone());
            Box::pin(async move { handle_negotiate(&shared, &binding, ctx, actions, opts) })
        })
        .on_connect(move |ctx, host, info| {
            let (shared, binding) = (s2.clone(), b2.clone());
            Box::pin(async move { handle_connect(&shared, &binding, ctx, host, info).await })
        })
        .on_helo(move |ctx, helo| {
            Box::pin(async move { handle_helo(ctx, helo).await })
        })
        .on_mail(move |ctx, args| {
            let shared = s4.clone();
            Box::pin(async move { handle_mail(&shared, ctx, args).await })
        })
        .on_rcpt(move |ctx, args| {
            let _ = &s5;
            Box::pin(async move { handle_rcpt(ctx, args).await })
        })
        .on_header(move |ctx, name, value| {
            let _ = &s6;
            Box::pin(async move { handle_header(ctx, name, value) })
        })
        .on_body(move |ctx, chunk| {
            let _ = &s7;
            Box::pin(async move {
                let Some(conn) = ctx.data.as_mut() else {
                    return Status::Continue;
                };
                if let Some(session) = conn.session.as_mut() {
                    session.body(chunk);
                }
                if conn.noreply_body {
                    Status::Noreply
                } else {
                    Status::Continue
                }
            })
        })
        .on_eom(move |ctx| {
            let shared = s8.clone();
            Box::pin(async move { handle_eom(&shared, ctx).await })
        })
        .on_abort(move |ctx| {
            let shared = s3.clone();
            Box::pin(async move {
                if let Some(conn) = ctx.data.as_mut() {
                    conn.replies.end_transaction();
                    if let Some(session) = conn.session.as_mut() {
                        session.abort();
                    }
                    log_ended(&shared, conn);
                    conn.message = None;
                }
                Status::Continue
            })
        })
        .on_close(move |ctx| {
            let shared = s9.clone();
            Box::pin(async move {
                // QUIT, QUIT_NC, or the connection is gone. End the SMTP
                // session but keep what was negotiated: after QUIT_NC the MTA
                // starts a new session on this connection with CONNECT and
                // no new negotiation (libmilter's state table: QUIT_NC leads
                // to CONNECT). Dropping the session aborts its checks;
                // dropping the guard ends a message the client left
                // unfinished.
                if let Some(conn) = ctx.data.as_mut() {
                    conn.replies.end_session();
                }
                if let Some(conn) = ctx.data.as_mut()
                    && let Some(session) = conn.session.as_mut()
                {
                    session.abort();
                    if conn.message.is_some() {
                        tracing::info!(client = %conn.client, "connection closed in the middle of a message; its checks are cancelled");
                    }
                    log_ended(&shared, conn);
                    conn.message = None;
                    conn.session = None;
                }
                Status::Continue
            })
        })
}

fn handle_negotiate(
    shared: &Arc<Shared>,
    binding: &Binding,
    ctx: &mut NegotiateContext<Connection>,
    offered: Actions,
    opts: ProtoOpts,
) -> Status {
    let policy = shared.current();
    let wanted = actions_for(kinds_for(&policy, binding));
    let missing = wanted - offered;
    if !missing.is_empty() {
        tracing::error!(
            missing = ?missing,
            listener = %binding.listener,
            "the MTA does not offer milter actions this policy needs; messages needing them will be tempfailed. \
             Postfix: set milter_protocol = 6 in main.cf (the default since 2.6). Sendmail: use 8.14 or later"
        );
    }
    let mut granted = wanted & offered;
    // Recipients added in place of one that had NOTIFY or ORCPT keep them
    // (ADDRCPT_PAR); an MTA without it gets the address alone.
    if granted.contains(Actions::ADD_RCPT) && offered.contains(Actions::ADD_RCPT_EXT) {
        granted |= Actions::ADD_RCPT_EXT;
    }
    if offered.contains(Actions::REQUEST_MACROS) {
        granted |= Actions::REQUEST_MACROS;
        for (stage, names) in MACROS {
            if let Ok(c) = CString::new(names) {
                ctx.requested_macros.insert(stage, c);
            }
        }
    }
    ctx.requested_actions = granted;
    // Round trips are most of the cost of a message (each one wakes both
    // processes), so ask for as few as the MTA allows:
    // - indymilter's default asks not to be sent the stages we have no
    //   callback for (DATA, end of headers, unknown commands): keep that
    //   wherever the MTA offers it;
    // - headers and body chunks always answer CONTINUE (decisions wait for
    //   end of message), so the MTA need not wait for those replies
    //   (SMFIP_NR_HDR, SMFIP_NR_BODY: Postfix 2.6+, Sendmail 8.14+).
    // Asking for an option the MTA did not offer fails the negotiation,
    // hence every option only when offered.
    // - connect, HELO, MAIL FROM and RCPT TO answer CONTINUE wherever no
    //   pipeline the listener can choose refuses there (SMFIP_NR_CONN,
    //   NR_HELO, NR_MAIL, NR_RCPT): the pipeline is chosen at CONNECT, after
    //   this, so every candidate counts. A stage that refuses keeps its
    //   reply (a recipient table refuses each recipient at RCPT TO);
    // - HELO is not sent at all where nothing reads it (`stage_opts`).
    let unused_stages =
        ctx.requested_opts & (ProtoOpts::NO_DATA | ProtoOpts::NO_EOH | ProtoOpts::NO_UNKNOWN);
    let wanted_opts = unused_stages
        | ProtoOpts::LEADING_SPACE
        | ProtoOpts::NOREPLY_HEADER
        | ProtoOpts::NOREPLY_BODY
        | stage_opts(policy.stage_use(binding.pipeline.as_deref()));
    ctx.requested_opts = wanted_opts & opts;
    let leading_space = opts.contains(ProtoOpts::LEADING_SPACE);
    ctx.data = Some(Connection {
        policy,
        granted,
        leading_space,
        noreply_header: ctx.requested_opts.contains(ProtoOpts::NOREPLY_HEADER),
        noreply_body: ctx.requested_opts.contains(ProtoOpts::NOREPLY_BODY),
        replies: StageReplies::new(ctx.requested_opts),
        no_helo: ctx.requested_opts.contains(ProtoOpts::NO_HELO),
        session: None,
        message: None,
        started: Instant::now(),
        client: String::new(),
        sessions: 0,
    });
    Status::Continue
}

/// A new SMTP session on a connection that already carried one (after
/// QUIT_NC) is a new MTA connection in all but the socket, so it takes the
/// configuration loaded now, as a new connection would; unless that needs
/// milter actions this connection did not negotiate, or refuses at a stage
/// this connection negotiated without reply, or reads a HELO it is not sent:
/// none can be asked for again without a new negotiation.
fn renew_policy(shared: &Shared, binding: &Binding, conn: &mut Connection) {
    let current = shared.current();
    if Arc::ptr_eq(&current, &conn.policy) {
        return;
    }
    let needed = actions_for(kinds_for(&current, binding));
    if !conn.granted.contains(needed) {
        tracing::warn!(
            missing = ?(needed - conn.granted),
            listener = %binding.listener,
            "the reloaded configuration needs milter actions this connection did not negotiate; its next session keeps the configuration it negotiated with"
        );
        return;
    }
    let stage_use = current.stage_use(binding.pipeline.as_deref());
    let silent = conn.replies.conflicts(stage_use);
    if !silent.is_empty() {
        let stages: Vec<&str> = silent.iter().map(|s| s.as_str()).collect();
        tracing::warn!(
            stages = %stages.join(","),
            listener = %binding.listener,
            "the reloaded configuration refuses at stages this connection negotiated without reply; its next session keeps the configuration it negotiated with"
        );
        return;
    }
    if conn.no_helo && stage_use.reads_helo {
        tracing::warn!(
            listener = %binding.listener,
            "the reloaded configuration reads HELO, which this connection negotiated not to be sent; its next session keeps the configuration it negotiated with"
        );
        return;
    }
    conn.policy = current;
}

async fn handle_connect(
    shared: &Arc<Shared>,
    binding: &Binding,
    ctx: &mut Context<Connection>,
    host: CString,
    info: SocketInfo,
) -> Status {
    let daemon_name = macro_value(&ctx.macros, c"{daemon_name}");
    let Some(conn) = ctx.data.as_mut() else {
        tracing::error!("connect without negotiation; tempfailing the connection");
        return Status::Tempfail;
    };
    conn.replies.end_session();
    if conn.sessions > 0 {
        renew_policy(shared, binding, conn);
    }
    conn.sessions += 1;
    let client_ip = match info {
        SocketInfo::Inet(addr) => Some(addr.ip()),
        _ => None,
    };
    let host = text(&host);
    // Postfix passes "unknown" or "[address]" when the client has no name.
    let client_name =
        (!host.is_empty() && host != "unknown" && !host.starts_with('[')).then(|| host.clone());
    // Postfix's own form: name[address], "unknown" when there is no name.
    conn.client = match (&client_name, client_ip) {
        (Some(name), Some(ip)) => format!("{name}[{ip}]"),
        (None, Some(ip)) => format!("unknown[{ip}]"),
        (_, None) => host.clone(),
    };
    // The listener's pipeline, else by {daemon_name}, else the first; `None`
    // when the listener's pipeline is gone, which a reload refuses to let
    // happen (`reload_guard`): never another pipeline in its place.
    let Some(pipeline) = conn
        .policy
        .choose_pipeline(binding.pipeline.as_deref(), daemon_name.as_deref())
    else {
        tracing::error!(listener = %binding.listener, pipeline = ?binding.pipeline, "the listener's pipeline is missing from the configuration; tempfailing the connection");
        return answer(ctx, Stage::Connect, failure());
    };
    let facts = ConnectionFacts {
        client_ip,
        client_name,
        daemon_name,
        ..ConnectionFacts::default()
    };
    let mut session = Session::new(conn.policy.clone(), pipeline, facts);
    let reply = session.connect().await;
    conn.session = Some(session);
    answer(ctx, Stage::Connect, reply)
}

fn tls_from(macros: &Macros) -> Option<TlsInfo> {
    macro_value(macros, c"{tls_version}").map(|version| TlsInfo {
        version,
        cipher: macro_value(macros, c"{cipher}"),
    })
}

/// The engine has nothing to do at a stage when the session was refused
/// or the message ended at MAIL FROM at a stage without reply: the kept
/// refusal is the answer.
fn refused_before_message(ctx: &Context<Connection>) -> bool {
    ctx.data
        .as_ref()
        .and_then(|c| c.replies.deferred())
        .is_some_and(|d| d.before_message())
}

async fn handle_helo(ctx: &mut Context<Connection>, helo: CString) -> Status {
    if refused_before_message(ctx) {
        return answer(ctx, Stage::Helo, StageReply::Continue);
    }
    let tls = tls_from(&ctx.macros);
    let Some(session) = ctx.data.as_mut().and_then(|c| c.session.as_mut()) else {
        return answer(ctx, Stage::Helo, failure());
    };
    let reply = session.helo(&text(&helo), tls).await;
    answer(ctx, Stage::Helo, reply)
}

async fn handle_mail(
    shared: &Arc<Shared>,
    ctx: &mut Context<Connection>,
    args: Vec<CString>,
) -> Status {
    let tls = tls_from(&ctx.macros);
    let auth = macro_value(&ctx.macros, c"{auth_authen}").map(|user| AuthInfo {
        user,
        mechanism: macro_value(&ctx.macros, c"{auth_type}"),
    });
    let Some(conn) = ctx.data.as_mut() else {
        return Status::Tempfail;
    };
    // A new transaction: what refused the last one is over.
    conn.replies.end_transaction();
    if conn.replies.deferred().is_some() {
        // The session was refused at a stage without reply.
        if let Some(session) = conn.session.as_mut() {
            session.abort();
        }
        log_ended(shared, conn);
        conn.message = None;
        return answer(ctx, Stage::Mail, StageReply::Continue);
    }
    let Some(session) = conn.session.as_mut() else {
        return answer(ctx, Stage::Mail, failure());
    };
    let mut args = args.iter().map(|a| text(a));
    let sender = args.next().unwrap_or_default();
    let esmtp: Vec<String> = args.collect();
    session.set_tls(tls);
    session.set_queue_id(queue_id(&ctx.macros));
    let reply = session.mail(&sender, &esmtp, auth).await;
    log_ended(shared, conn);
    conn.message = reply.is_continue().then(|| shared.message_started());
    answer(ctx, Stage::Mail, reply)
}

async fn handle_rcpt(ctx: &mut Context<Connection>, args: Vec<CString>) -> Status {
    if refused_before_message(ctx) {
        return answer(ctx, Stage::Rcpt, StageReply::Continue);
    }
    let Some(session) = ctx.data.as_mut().and_then(|c| c.session.as_mut()) else {
        return answer(ctx, Stage::Rcpt, failure());
    };
    session.set_queue_id(queue_id(&ctx.macros));
    let mut args = args.iter().map(|a| text(a));
    let rcpt = args.next().unwrap_or_default();
    let esmtp: Vec<String> = args.collect();
    let reply = session.rcpt(&rcpt, &esmtp).await;
    answer(ctx, Stage::Rcpt, reply)
}

fn handle_header(ctx: &mut Context<Connection>, name: CString, value: CString) -> Status {
    let Some(conn) = ctx.data.as_mut() else {
        return Status::Continue;
    };
    if let Some(session) = conn.session.as_mut() {
        let mut value = value.into_bytes();
        // With LEADING_SPACE the MTA sends every byte after the colon as the
        // client sent it (" x", "x", "\tx", a fold): kept exactly, since
        // DKIM's simple header canonicalization hashes them. Without it the
        // MTA (Postfix before 2.9, Sendmail not offering it) has already
        // dropped the white space after the colon and what it was cannot be
        // known: the usual single space is the best guess, and a signature
        // over any other spelling with simple header canonicalization fails.
        if !conn.leading_space {
            value.insert(0, b' ');
        }
        // The engine keeps what it is given: the MTA's buffers become the
        // stored header without a copy.
        session.header_received(name.into_bytes(), value);
    }
    if conn.noreply_header {
        Status::Noreply
    } else {
        Status::Continue
    }
}

async fn handle_eom(shared: &Arc<Shared>, ctx: &mut EomContext<Connection>) -> Status {
    let queue_id = macro_value(&ctx.macros, c"i");
    let EomContext {
        data,
        actions,
        reply,
        ..
    } = ctx;
    let Some(conn) = data.as_mut() else {
        return Status::Tempfail;
    };
    // A refusal kept from a stage without reply: end of message always
    // replies, so this is where it is answered.
    let deferred = conn.replies.deferred().cloned();
    conn.replies.end_transaction();
    if let Some(d) = deferred.as_ref().filter(|d| d.before_message()) {
        // No message went on in the engine; the refusal was logged where
        // it was decided (the message's line, or the failure's error).
        let (StageReply::Reject(r) | StageReply::Tempfail(r)) = &d.reply else {
            return Status::Tempfail;
        };
        tracing::info!(client = %conn.client, queue_id = ?queue_id, stage = %d.stage, reply = %r, "message refused at end of message for a refusal at a stage without reply");
        conn.message = None;
        return refuse(reply, r);
    }
    let Some(session) = conn.session.as_mut() else {
        return Status::Tempfail;
    };
    session.set_queue_id(queue_id.as_deref());

    // Decide, telling the MTA we are alive while checks take their time.
    let interval = progress_interval(session.pipeline().settings.deadline);
    let outcome = {
        let decide = session.eom();
        tokio::pin!(decide);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                outcome = &mut decide => break outcome,
                _ = ticker.tick() => {
                    if let Err(e) = actions.progress().await {
                        tracing::info!(error = %e, "could not send PROGRESS; the MTA may have gone");
                    }
                }
            }
        }
    };
    let pipeline = session.pipeline().name.clone();
    let error_reply = match &session.pipeline().settings.error_action {
        crate::policy::ErrorAction::Tempfail(r) => r.clone(),
        // Edits that could not be sent are our failure, never the sender's:
        // tempfail even when the pipeline rejects on internal errors.
        crate::policy::ErrorAction::Reject(_) => Reply::default_tempfail(),
    };
    let message_guard = conn.message.take();
    let mut outcome = outcome;
    // A recipient refused at RCPT TO without reply (its address could not
    // be read, dispatch failed): the whole message is refused, as the
    // recipient could not be alone.
    if let Some(d) = deferred {
        outcome.decision.merge(d.decision());
        outcome.policy_decision.merge(d.decision());
    }

    // Dry run let through what the policy refused or held (before an edit
    // failure below turns the message into a tempfail).
    let dry_run_overrode = outcome.decision.verdict() != outcome.policy_decision.verdict();
    let status = match &outcome.decision {
        Decision::Reject { reply: r, .. } | Decision::Tempfail { reply: r, .. } => refuse(reply, r),
        Decision::Discard { .. } => Status::Discard,
        Decision::Accept | Decision::Quarantine { .. } => {
            match send_edits(actions, &outcome, conn.granted, conn.leading_space).await {
                Ok(()) => Status::Continue,
                Err(e) => {
                    tracing::error!(error = %e, queue_id = ?queue_id, "sending the edits failed; the message is tempfailed so no half-edited mail leaves");
                    let status = refuse(reply, &error_reply);
                    outcome.decision = Decision::Tempfail {
                        reply: error_reply,
                        reason: Some(format!("edits not sent: {e}")),
                    };
                    status
                }
            }
        }
    };
    let verdict = outcome.decision.verdict().as_str();
    record(shared, &pipeline, verdict, &outcome);
    logline::log_message(
        &conn.client,
        verdict,
        &outcome,
        dry_run_overrode,
        conn.started,
    );
    drop(message_guard);
    status
}

/// Log (and count) the messages that ended before end of message.
fn log_ended(shared: &Shared, conn: &mut Connection) {
    let Some(session) = conn.session.as_mut() else {
        return;
    };
    for report in session.take_ended() {
        let verdict = report.ended_verdict();
        shared.metrics.message(&report.pipeline, verdict);
        logline::log_ended(&conn.client, verdict, &report, conn.started);
    }
}

fn record(shared: &Shared, pipeline: &str, verdict: &str, outcome: &MessageOutcome) {
    shared.metrics.message(pipeline, verdict);
    for c in &outcome.report.checks {
        shared.metrics.check(
            &c.name,
            c.result,
            Duration::try_from_secs_f64(c.elapsed_ms / 1000.0).unwrap_or_default(),
        );
    }
}

/// Why the edit list could not be sent whole.
#[derive(Debug, thiserror::Error)]
enum SendEditsError {
    /// The MTA did not grant the milter action an edit of this kind needs.
    #[error("the MTA did not grant the milter action needed for \"{kind}\"")]
    NotGranted { kind: &'static str },
    /// The MTA connection refused or failed an edit of this kind.
    #[error("{kind}: {source}")]
    Action {
        kind: &'static str,
        #[source]
        source: indymilter::ActionError,
    },
}

/// Send the edit list in order. The first failure stops and is returned; the
/// caller then tempfails the message, so the MTA discards what was sent.
async fn send_edits(
    actions: &indymilter::EomActions,
    outcome: &MessageOutcome,
    granted: Actions,
    leading_space: bool,
) -> Result<(), SendEditsError> {
    for edit in &outcome.edits {
        let needed = match edit {
            Edit::AddHeader { .. } | Edit::InsertHeader { .. } => Actions::ADD_HEADER,
            Edit::ChangeHeader { .. } | Edit::DeleteHeader { .. } => Actions::CHANGE_HEADER,
            Edit::AddRecipient { .. } => Actions::ADD_RCPT,
            Edit::DeleteRecipient { .. } => Actions::DELETE_RCPT,
            Edit::ChangeSender { .. } => Actions::CHANGE_SENDER,
            Edit::Quarantine { .. } => Actions::QUARANTINE,
        };
        if !granted.contains(needed) {
            return Err(SendEditsError::NotGranted { kind: edit.kind() });
        }
        let result = match edit {
            Edit::AddHeader { name, value } => {
                actions
                    .add_header(name.as_str(), wire_header_value(name, value, leading_space))
                    .await
            }
            Edit::InsertHeader { index, name, value } => {
                let index = i32::try_from(*index).unwrap_or(i32::MAX);
                actions
                    .insert_header(
                        index,
                        name.as_str(),
                        wire_header_value(name, value, leading_space),
                    )
                    .await
            }
            Edit::ChangeHeader { name, index, value } => {
                let index = i32::try_from(*index).unwrap_or(i32::MAX);
                actions
                    .change_header(
                        name.as_str(),
                        index,
                        Some(wire_header_value(name, value, leading_space)),
                    )
                    .await
            }
            Edit::DeleteHeader { name, index } => {
                let index = i32::try_from(*index).unwrap_or(i32::MAX);
                actions
                    .change_header(name.as_str(), index, None::<CString>)
                    .await
            }
            Edit::AddRecipient {
                address,
                args: Some(a),
            } if granted.contains(Actions::ADD_RCPT_EXT) => {
                actions
                    .add_recipient_ext(format!("<{address}>"), Some(a.as_str()))
                    .await
            }
            Edit::AddRecipient { address, args } => {
                if let Some(args) = args {
                    tracing::warn!(
                        recipient = %address,
                        parameters = %args,
                        "the MTA does not take recipient parameters from a milter (ADDRCPT_PAR); the recipient is added without them"
                    );
                }
                actions.add_recipient(format!("<{address}>")).await
            }
            Edit::DeleteRecipient { address } => {
                actions.delete_recipient(format!("<{address}>")).await
            }
            Edit::ChangeSender { address, args } => {
                actions
                    .change_sender(format!("<{address}>"), args.as_deref())
                    .await
            }
            Edit::Quarantine { reason } => actions.quarantine(reason.as_str()).await,
        };
        result.map_err(|source| SendEditsError::Action {
            kind: edit.kind(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::wire_header_value;

    #[test]
    fn header_values_fold_with_lf_and_keep_the_leading_space() {
        assert_eq!(wire_header_value("X-A", "short", true), " short");
        assert_eq!(wire_header_value("X-A", "short", false), "short");
        let long = "word ".repeat(40);
        let folded = wire_header_value("X-Long", long.trim_end(), true);
        assert!(folded.starts_with(' '));
        assert!(!folded.contains('\r'));
        for (i, line) in folded.split('\n').enumerate() {
            let limit = if i == 0 {
                78 - "X-Long: ".len() + 1
            } else {
                78
            };
            assert!(line.len() <= limit, "line {i} too long: {line:?}");
            if i > 0 {
                assert!(
                    line.starts_with(' '),
                    "continuation starts with white space"
                );
            }
        }
        // Unfolding gives the value back.
        assert_eq!(folded.replace('\n', "").trim_start(), long.trim_end());
    }

    /// Found by the `header_value` fuzz target: a run of spaces after a
    /// full line was folded space by space, leaving lines of white space
    /// alone. The fold now goes before the run.
    #[test]
    fn runs_of_spaces_never_make_a_blank_line() {
        let value = format!("{}  \t   {}", "x".repeat(80), "y".repeat(80));
        let folded = wire_header_value("X-A", &value, false);
        assert_eq!(
            folded,
            format!("{}\n  \t   {}", "x".repeat(80), "y".repeat(80))
        );
        assert_eq!(folded.replace('\n', ""), value);
    }

    use crate::edits::sanitize_value;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any value an edit can carry folds into lines the MTA takes as
        /// they are: unfolding gives the value back, no line is longer than
        /// 78 characters unless one word alone is, and no line is white
        /// space alone (RFC 5322 §3.2.2).
        #[test]
        fn folded_values_unfold_and_fit(
            name in "[A-Za-z][A-Za-z0-9-]{0,40}",
            words in proptest::collection::vec("[a-zA-Z0-9\t;=,.()<>@-]{0,90}", 0..24),
            gaps in proptest::collection::vec(1usize..4, 24),
            leading_space in any::<bool>(),
        ) {
            let mut raw = String::new();
            for (i, w) in words.iter().enumerate() {
                if i > 0 {
                    raw.push_str(&" ".repeat(gaps[i]));
                }
                raw.push_str(w);
            }
            let value = sanitize_value(&raw);
            let folded = wire_header_value(&name, &value, leading_space);
            let body = if leading_space {
                folded.strip_prefix(' ').expect("the leading space")
            } else {
                folded.as_str()
            };
            prop_assert!(!folded.contains('\r'));
            prop_assert_eq!(body.replace('\n', ""), value.clone());
            for (i, line) in body.split('\n').enumerate() {
                let visible = line.trim_end_matches([' ', '\t']);
                let width = if i == 0 { name.len() + 2 } else { 0 } + visible.len();
                if i > 0 {
                    prop_assert!(line.starts_with(' '), "a fold starts with a space");
                    prop_assert!(
                        !visible.trim_start_matches([' ', '\t']).is_empty(),
                        "line {} of {:?} is white space alone", i, folded
                    );
                }
                if width > 78 {
                    prop_assert!(
                        !visible.trim_start_matches([' ', '\t']).contains(' '),
                        "line {} of {:?} is {} long and holds several words", i, folded, width
                    );
                }
            }
        }
    }
}
