//! Authentication-Results (RFC 8601): the result vocabulary that every
//! method shares ([`Status`]), and the one typed model of a header value
//! ([`AuthResults`], [`ResInfo`], [`Property`]) with its one builder (its
//! `Display`) and its one parser ([`parse`], §2.2). The engine builds our
//! header from the checks' typed results and ARC sealing copies that
//! value; the sanitizer reads the authserv-id of received headers with the
//! same reader, to delete every header that claims to come from us,
//! however the sender spelled the claim.

use crate::address::normalize_domain;
use serde::Serialize;
use std::fmt;

/// The result vocabulary of RFC 8601 §2.7.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The message or sender is what it claims to be; for a non-method
    /// check, nothing wrong was found.
    Pass,
    /// Definitely not authorised or not acceptable; rejected unless an
    /// `on_fail` key says otherwise.
    Fail,
    /// Probably not authorised (SPF `~all`, a DMARC `p=quarantine`), weaker
    /// than `fail`.
    Softfail,
    /// Neither pass nor fail, such as SPF `?all`, a DMARC `p=none` or a DKIM
    /// signature over only part of the body.
    Neutral,
    /// Nothing to evaluate: no record published, no signature present.
    None,
    /// A transient error such as a DNS timeout; a later retry may succeed.
    Temperror,
    /// A permanent error, such as a malformed record, that a retry will not
    /// cure.
    Permerror,
}

impl Status {
    /// Every result, in declaration order (the order `Ord` sorts them in).
    pub const ALL: [Status; 7] = [
        Status::Pass,
        Status::Fail,
        Status::Softfail,
        Status::Neutral,
        Status::None,
        Status::Temperror,
        Status::Permerror,
    ];

    /// The lowercase keyword, as headers write it and as the `on_<result>`
    /// keys name it: `pass`, `softfail`, `temperror`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Softfail => "softfail",
            Status::Neutral => "neutral",
            Status::None => "none",
            Status::Temperror => "temperror",
            Status::Permerror => "permerror",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One Authentication-Results value (RFC 8601 §2.2): who evaluated the
/// message, and what each method found; no results reads `none`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthResults {
    /// The authserv-id: for the headers we write, our host name.
    pub authserv_id: String,
    /// The authres-version after the id (absent means 1).
    pub version: Option<u32>,
    /// Each method's result in order; empty is written as `none`.
    pub results: Vec<ResInfo>,
}

/// One method's result (a `resinfo` of §2.2), such as
/// `dkim=pass header.d=example.org header.s=s1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResInfo {
    /// The method (§2.7), a keyword such as `spf`.
    pub method: String,
    /// The method's version (`dkim/1`).
    pub method_version: Option<u32>,
    /// The result keyword. Ours are [`Status`] words; a received header
    /// may hold others from the registry (`policy`, `hardfail`).
    pub result: String,
    /// A comment after the result: `dmarc=pass (p=reject)`.
    pub comment: Option<String>,
    /// The reasonspec, written quoted.
    pub reason: Option<String>,
    /// The properties after the result and reason, in the order written,
    /// such as `header.d=example.org`.
    pub properties: Vec<Property>,
}

/// One propspec: `smtp.mailfrom=example.org`, perhaps followed by a
/// comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Property {
    /// `smtp`, `header`, `body`, `policy` (§2.3) or another keyword.
    pub ptype: String,
    /// The property within its type: `mailfrom` in `smtp.mailfrom`.
    pub name: String,
    /// The value as meant, without the quoting it is written with.
    pub value: String,
    /// A comment after the value: `policy.iprev=192.0.2.1 (mx.example.org)`.
    pub comment: Option<String>,
}

impl AuthResults {
    /// A value with the given authserv-id and results and no version.
    pub fn new(authserv_id: impl Into<String>, results: Vec<ResInfo>) -> Self {
        AuthResults {
            authserv_id: authserv_id.into(),
            version: None,
            results,
        }
    }
}

impl ResInfo {
    /// A result of `method` with the `status` keyword, without version,
    /// comment, reason or properties.
    pub fn new(method: &str, status: Status) -> Self {
        ResInfo {
            method: method.to_string(),
            method_version: None,
            result: status.as_str().to_string(),
            comment: None,
            reason: None,
            properties: Vec::new(),
        }
    }

    /// Sets the comment written after the result, replacing any before.
    pub fn with_comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }

    /// Sets the `reason=` text, replacing any before.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Appends a property after those already present.
    pub fn with_property(mut self, property: Property) -> Self {
        self.properties.push(property);
        self
    }

    /// The result as one of our [`Status`] words, however it is cased.
    pub fn status(&self) -> Option<Status> {
        Status::ALL
            .into_iter()
            .find(|s| self.result.eq_ignore_ascii_case(s.as_str()))
    }
}

impl Property {
    /// `ptype.name=value`, without a comment.
    pub fn new(ptype: &str, name: &str, value: impl Into<String>) -> Self {
        Property {
            ptype: ptype.to_string(),
            name: name.to_string(),
            value: value.into(),
            comment: None,
        }
    }

    /// Sets the comment written after the value, replacing any before.
    pub fn with_comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }
}

// The builder: the one writer of Authentication-Results text. What it
// writes is clean (no control characters; comments and quoted strings
// escaped), so it reads back as the same value (`parse(build(x)) == x`).

impl fmt::Display for AuthResults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&pvalue(&self.authserv_id))?;
        if let Some(v) = self.version {
            write!(f, " {v}")?;
        }
        if self.results.is_empty() {
            return f.write_str("; none");
        }
        f.write_str("; ")?;
        Results(&self.results).fmt(f)
    }
}

impl fmt::Display for ResInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Keyword(&self.method).fmt(f)?;
        if let Some(v) = self.method_version {
            write!(f, "/{v}")?;
        }
        write!(f, "={}", Keyword(&self.result))?;
        if let Some(c) = &self.comment {
            write_comment(f, c)?;
        }
        if let Some(r) = &self.reason {
            write!(f, " reason={}", quoted(r))?;
        }
        for p in &self.properties {
            write!(
                f,
                " {}.{}={}",
                Keyword(&p.ptype),
                Keyword(&p.name),
                property_value(p)
            )?;
            if let Some(c) = &p.comment {
                write_comment(f, c)?;
            }
        }
        Ok(())
    }
}

/// Results as they follow the authserv-id: `spf=pass ...; dkim=pass ...`.
pub struct Results<'a>(pub &'a [ResInfo]);

impl fmt::Display for Results<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            r.fmt(f)?;
        }
        Ok(())
    }
}

/// A check's results, serialized as the text they are written as.
pub(crate) fn serialize_results<S: serde::Serializer>(
    results: &Option<Vec<ResInfo>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match results {
        Some(r) => s.serialize_some(&Results(r).to_string()),
        None => s.serialize_none(),
    }
}

/// ` (text)`, with parentheses and backslashes escaped and control
/// characters dropped (RFC 5322 §3.2.2).
fn write_comment(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    f.write_str(" (")?;
    // Runs of plain text are written whole: this runs for every message.
    let mut run = 0;
    for (i, c) in text.char_indices() {
        let escaped = matches!(c, '(' | ')' | '\\');
        if escaped || c.is_control() {
            f.write_str(&text[run..i])?;
            if escaped {
                f.write_str("\\")?;
                run = i;
            } else {
                run = i + c.len_utf8();
            }
        }
    }
    f.write_str(&text[run..])?;
    f.write_str(")")
}

/// A property's value as a `value` of §2.2, except `policy.iprev`: the
/// client's address is written as itself, as §2.7.3 does
/// (`policy.iprev=192.0.2.200`; an IPv6 address is not a token, and the
/// peers that read this header expect it bare). Only there: a HELO name or a
/// `d=` that merely looks like an IPv6 address is client text and is quoted.
fn property_value<'v>(p: &'v Property) -> std::borrow::Cow<'v, str> {
    let iprev = p.ptype.eq_ignore_ascii_case("policy") && p.name.eq_ignore_ascii_case("iprev");
    if iprev && p.value.parse::<std::net::IpAddr>().is_ok() {
        p.value.as_str().into()
    } else {
        pvalue(&p.value).into()
    }
}

/// A method, result, ptype or property name: a keyword of §2.2. They are
/// our own constants, but a kind registered from outside the crate can set
/// them, and a `;` or `(` there would change what the header says.
struct Keyword<'a>(&'a str);

impl fmt::Display for Keyword<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keyword = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if self.0.chars().all(keyword) {
            return f.write_str(self.0);
        }
        for c in self.0.chars().filter(|c| keyword(*c)) {
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// A `value` of RFC 8601 §2.2: an RFC 2045 token when `s` is one, else a
/// quoted-string. Control characters are dropped first, so that the choice
/// is made on what is written: a value that becomes a token once they are
/// gone is written as the token, as it will be when it is read and built
/// again (the fuzzer found `"a\0b"` written quoted, then read back as `ab`
/// and written bare).
pub fn pvalue(s: &str) -> String {
    // Bytes, not chars: a non-ASCII byte is no token byte either way, and
    // this runs for every property of every message.
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && !TSPECIALS.as_bytes().contains(&b))
    };
    if token(s) {
        return s.to_string();
    }
    let clean: String = s.chars().filter(|c| !c.is_control()).collect();
    if token(&clean) { clean } else { quoted(&clean) }
}

/// An RFC 5322 quoted-string; control characters are dropped.
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Why a value is not an Authentication-Results value; `at` is a byte
/// offset into the text read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A `(` without its matching `)`.
    #[error("a comment opened at byte {at} never closes")]
    UnterminatedComment {
        /// Where the `(` is.
        at: usize,
    },
    /// A `"` without its closing `"`.
    #[error("a quoted string opened at byte {at} never closes")]
    UnterminatedQuote {
        /// Where the opening `"` is.
        at: usize,
    },
    /// A required part is missing or malformed.
    #[error("expected {expected} at byte {at}")]
    Expected {
        /// The part wanted, in words: `a version number`.
        expected: &'static str,
        /// Where it should have started.
        at: usize,
    },
    /// A version number that does not fit in a `u32`.
    #[error("the number at byte {at} is too large")]
    Number {
        /// Where the digits start.
        at: usize,
    },
    /// A result with two `reason=` parts (§2.2 allows one).
    #[error("a second reason at byte {at}")]
    SecondReason {
        /// Where the second `reason` keyword starts.
        at: usize,
    },
}

/// Reads an Authentication-Results value (RFC 8601 §2.2): CFWS anywhere
/// between the parts (comments nest and hold quoted pairs), the
/// authserv-id and version, then `none` or the results. The first comment
/// after a result or after a property value is kept; other comments are
/// white space. Property values are read leniently (an address such as
/// `user@example.org` or an IPv6 address reads as itself).
pub fn parse(value: &str) -> Result<AuthResults, ParseError> {
    let mut lx = Lexer { s: value, pos: 0 };
    lx.skip_cfws()?;
    let authserv_id = lx.value()?;
    lx.skip_cfws()?;
    let version = if lx.peek().is_some_and(|c| c.is_ascii_digit()) {
        let v = lx.number()?;
        lx.skip_cfws()?;
        Some(v)
    } else {
        None
    };
    lx.expect(';', "\";\"")?;
    lx.skip_cfws()?;
    let mark = lx.pos;
    if lx.keyword_run().eq_ignore_ascii_case("none") {
        lx.skip_cfws()?;
        if lx.peek().is_none() {
            return Ok(AuthResults {
                authserv_id,
                version,
                results: Vec::new(),
            });
        }
    }
    lx.pos = mark;
    Ok(AuthResults {
        authserv_id,
        version,
        results: lx.results()?,
    })
}

/// Reads results as they follow the authserv-id (`spf=pass ...; dkim=...`),
/// without the id: what a check's results are written as.
pub fn parse_results(text: &str) -> Result<Vec<ResInfo>, ParseError> {
    Lexer { s: text, pos: 0 }.results()
}

/// The authserv-id an Authentication-Results value starts with: after
/// optional CFWS (white space, folding and comments, which nest and may
/// hold quoted pairs), a `value` of RFC 2045 §5.1, that is a token or a
/// quoted string, whose quoted pairs stand for their character. `None` when
/// the value does not start that way. The rest of the value is not read:
/// the sanitizer must recognise our id in headers that are otherwise
/// malformed.
pub fn authserv_id(value: &str) -> Option<String> {
    let mut lx = Lexer { s: value, pos: 0 };
    lx.skip_cfws().ok()?;
    lx.value().ok()
}

/// RFC 2045 §5.1: the characters a token cannot hold.
const TSPECIALS: &str = "()<>@,;:\\\"/[]?=";

/// A cursor over the text; every step moves by whole characters, so no
/// slice falls inside one.
struct Lexer<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.pos..)?.chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn expect(&mut self, c: char, expected: &'static str) -> Result<(), ParseError> {
        if self.peek() == Some(c) {
            self.bump();
            Ok(())
        } else {
            Err(ParseError::Expected {
                expected,
                at: self.pos,
            })
        }
    }

    /// The longest run of characters that `keep` accepts.
    fn run(&mut self, keep: impl Fn(char) -> bool) -> &'a str {
        let s: &'a str = self.s;
        let start = self.pos;
        while self.peek().is_some_and(&keep) {
            self.bump();
        }
        s.get(start..self.pos).unwrap_or_default()
    }

    fn skip_cfws(&mut self) -> Result<(), ParseError> {
        self.cfws(&mut None)
    }

    /// White space, folding and comments; the text of the first comment
    /// goes to `first` if it is empty.
    fn cfws(&mut self, first: &mut Option<String>) -> Result<(), ParseError> {
        loop {
            self.run(char::is_whitespace);
            if self.peek() != Some('(') {
                return Ok(());
            }
            let at = self.pos;
            self.bump();
            let unterminated = ParseError::UnterminatedComment { at };
            let mut depth = 1usize;
            let mut text = String::new();
            loop {
                match self.bump().ok_or_else(|| unterminated.clone())? {
                    '\\' => match self.bump().ok_or_else(|| unterminated.clone())? {
                        '\r' | '\n' => {}
                        c => text.push(c),
                    },
                    '(' => {
                        depth += 1;
                        text.push('(');
                    }
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                        text.push(')');
                    }
                    // Folding is white space; the break itself is no text.
                    '\r' | '\n' => {}
                    c => text.push(c),
                }
            }
            if first.is_none() {
                *first = Some(text);
            }
        }
    }

    /// A quoted-string, at its opening quote: what it stands for.
    fn quoted(&mut self) -> Result<String, ParseError> {
        let at = self.pos;
        let unterminated = ParseError::UnterminatedQuote { at };
        self.bump();
        let mut out = String::new();
        loop {
            match self.bump().ok_or_else(|| unterminated.clone())? {
                '"' => return Ok(out),
                // A fold right after the backslash is unfolded before the
                // pair is read (RFC 5322 §2.2.3): the break is no part of
                // the value, and no value holds a line break.
                '\\' => match self.bump().ok_or_else(|| unterminated.clone())? {
                    '\r' | '\n' => {}
                    c => out.push(c),
                },
                // Folding inside a quoted string is white space.
                '\r' | '\n' => {}
                c => out.push(c),
            }
        }
    }

    /// A `value` of RFC 2045 §5.1: a token or a quoted-string.
    fn value(&mut self) -> Result<String, ParseError> {
        if self.peek() == Some('"') {
            return self.quoted();
        }
        let at = self.pos;
        let token = self.run(|c| !(c.is_whitespace() || c.is_control() || TSPECIALS.contains(c)));
        if token.is_empty() {
            return Err(ParseError::Expected {
                expected: "a token or a quoted string",
                at,
            });
        }
        Ok(token.to_string())
    }

    /// A property's value: a `value`, an address whose local part may be
    /// quoted (kept as written), or anything up to white space, a comment
    /// or the next `;` (IPv6 addresses, base64 that is not quoted).
    fn pvalue(&mut self) -> Result<String, ParseError> {
        let at = self.pos;
        let raw = |c: char| !(c.is_whitespace() || c.is_control() || "();\"".contains(c));
        if self.peek() == Some('"') {
            let meant = self.quoted()?;
            if self.peek() != Some('@') {
                return Ok(meant);
            }
            self.run(raw);
            return Ok(self.s.get(at..self.pos).unwrap_or_default().to_string());
        }
        let value = self.run(raw);
        if value.is_empty() {
            return Err(ParseError::Expected {
                expected: "a property value",
                at,
            });
        }
        Ok(value.to_string())
    }

    /// An ldh-str (§2.2 `Keyword`), possibly empty; `_` is accepted too,
    /// as some writers use it.
    fn keyword_run(&mut self) -> &'a str {
        self.run(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    }

    fn keyword(&mut self, expected: &'static str) -> Result<String, ParseError> {
        let at = self.pos;
        match self.keyword_run() {
            "" => Err(ParseError::Expected { expected, at }),
            k => Ok(k.to_string()),
        }
    }

    fn number(&mut self) -> Result<u32, ParseError> {
        let at = self.pos;
        let digits = self.run(|c| c.is_ascii_digit());
        if digits.is_empty() {
            return Err(ParseError::Expected {
                expected: "a version number",
                at,
            });
        }
        digits.parse().map_err(|_| ParseError::Number { at })
    }

    /// `resinfo *(";" resinfo)` to the end of the text.
    fn results(&mut self) -> Result<Vec<ResInfo>, ParseError> {
        let mut out = Vec::new();
        loop {
            out.push(self.resinfo()?);
            if self.peek().is_none() {
                return Ok(out);
            }
            self.expect(';', "\";\"")?;
        }
    }

    /// One resinfo, up to the end or the next `;`.
    fn resinfo(&mut self) -> Result<ResInfo, ParseError> {
        self.skip_cfws()?;
        let method = self.keyword("a method")?;
        self.skip_cfws()?;
        let method_version = if self.peek() == Some('/') {
            self.bump();
            self.skip_cfws()?;
            let v = self.number()?;
            self.skip_cfws()?;
            Some(v)
        } else {
            None
        };
        self.expect('=', "\"=\" after the method")?;
        self.skip_cfws()?;
        let result = self.keyword("a result")?;
        let mut comment = None;
        self.cfws(&mut comment)?;
        let mut info = ResInfo {
            method,
            method_version,
            result,
            comment,
            reason: None,
            properties: Vec::new(),
        };
        loop {
            if matches!(self.peek(), None | Some(';')) {
                return Ok(info);
            }
            let at = self.pos;
            let word = self.keyword("a reason or a property")?;
            self.skip_cfws()?;
            if self.peek() == Some('=') && word.eq_ignore_ascii_case("reason") {
                if info.reason.is_some() {
                    return Err(ParseError::SecondReason { at });
                }
                self.bump();
                self.skip_cfws()?;
                info.reason = Some(self.value()?);
                self.cfws(&mut info.comment)?;
                continue;
            }
            self.expect('.', "\".\" after the property type")?;
            self.skip_cfws()?;
            let name = self.keyword("a property name")?;
            self.skip_cfws()?;
            self.expect('=', "\"=\" after the property")?;
            self.skip_cfws()?;
            let value = self.pvalue()?;
            let mut comment = None;
            self.cfws(&mut comment)?;
            info.properties.push(Property {
                ptype: word,
                name,
                value,
                comment,
            });
        }
    }
}

/// Whether an Authentication-Results value claims `ours` as its authserv-id:
/// compared case-insensitively, and as domains where both are (a U-label
/// and its A-label are one name; a trailing dot changes nothing).
pub fn claims(value: &str, ours: &str) -> bool {
    let Some(id) = authserv_id(value) else {
        return false;
    };
    if id.eq_ignore_ascii_case(ours) {
        return true;
    }
    match (normalize_domain(&id), normalize_domain(ours)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
