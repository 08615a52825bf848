//! SPF record syntax (RFC 7208 §4.5, §4.6.1, §5, §6, §7.1, §12): text in,
//! a `Record` or the reason it is invalid out. Pure: no DNS here. A record
//! is parsed whole before it is evaluated, so a syntax error anywhere in it
//! is a `permerror` (§4.6), whatever comes first.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Why a record (or a macro string) is not valid SPF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError(pub String);

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(what: impl Into<String>) -> Result<T, SyntaxError> {
    Err(SyntaxError(what.into()))
}

/// §4.6.2: the result a matching mechanism gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qualifier {
    /// `+`, the default: the host is authorized.
    Pass,
    /// `-`: the host is not authorized.
    Fail,
    /// `~`: probably not authorized; accept but mark.
    Softfail,
    /// `?`: no statement either way.
    Neutral,
}

/// The macro letters of §7.2 (`c`, `r`, `t` only in explanations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Letter {
    /// `s`: the whole sender address.
    Sender,
    /// `l`: the local part of the sender.
    Local,
    /// `o`: the domain of the sender.
    SenderDomain,
    /// `d`: the domain being checked (changes under `include` and `redirect`).
    Domain,
    /// `i`: the client IP, IPv6 as dot-separated nibbles.
    Ip,
    /// `p`: the validated domain name of the client IP (deprecated, §7.3).
    Validated,
    /// `v`: `in-addr` for IPv4, `ip6` for IPv6.
    IpVersion,
    /// `h`: the HELO/EHLO name.
    Helo,
    /// `c`: the client IP in its usual text form (explanations only).
    ClientIp,
    /// `r`: the name of the receiving host (explanations only).
    Receiver,
    /// `t`: the current time in seconds since the epoch (explanations only).
    Timestamp,
}

/// One piece of a macro string (§7.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Text as written (`%%`, `%_`, `%-` already turned into `%`, ` `,
    /// `%20`).
    Literal(String),
    /// A `%{...}` macro to expand.
    Macro {
        /// Which value to expand.
        letter: Letter,
        /// An uppercase letter: URL-escape the value (§7.3).
        escape: bool,
        /// Keep this many right-hand parts (nonzero, §7.3).
        keep: Option<u32>,
        /// An `r`: reverse the parts before keeping the right-hand ones (§7.3).
        reverse: bool,
        /// Characters to split the value at; empty means `.`.
        delimiters: String,
    },
}

/// A parsed macro string: a domain-spec or an explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MacroString(pub Vec<Segment>);

/// Where a macro string stands: explanations may use `c`, `r`, `t` and
/// spaces (§7.1, §6.2).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// A domain-spec of a mechanism or `redirect`.
    DomainSpec,
    /// The `exp` text fetched from DNS, where spaces and `c`, `r`, `t` are allowed.
    Explanation,
    /// The value of a modifier this parser does not know, which is checked but unused.
    UnknownModifier,
}

/// Parses a macro string (§7.1). In a domain-spec and a modifier value
/// every character is visible ASCII; an explanation may also hold spaces.
pub fn parse_macro_string(text: &str, context: Context) -> Result<MacroString, SyntaxError> {
    scan_macro_string(text, context).map(|(m, _)| m)
}

/// The macro string, and whether it ends in a macro-expand (`%{...}`,
/// `%%`, `%_` or `%-`, §7.1), which a domain-spec may end in.
fn scan_macro_string(text: &str, context: Context) -> Result<(MacroString, bool), SyntaxError> {
    let mut ends_in_expand = false;
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let allowed = c.is_ascii_graphic() || (c == ' ' && context == Context::Explanation);
        if !allowed {
            return err(format!("character {c:?} not allowed"));
        }
        ends_in_expand = c == '%';
        if c != '%' {
            literal.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => literal.push('%'),
            Some('_') => literal.push(' '),
            Some('-') => literal.push_str("%20"),
            Some('{') => {
                if !literal.is_empty() {
                    segments.push(Segment::Literal(std::mem::take(&mut literal)));
                }
                let mut body = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => body.push(c),
                        None => return err("unterminated macro"),
                    }
                }
                segments.push(parse_macro(&body, context)?);
            }
            Some(c) => return err(format!("\"%{c}\" is no macro")),
            None => return err("\"%\" at the end"),
        }
    }
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok((MacroString(segments), ends_in_expand))
}

/// The inside of `%{...}`: letter, transformers, delimiters (§7.1).
fn parse_macro(body: &str, context: Context) -> Result<Segment, SyntaxError> {
    let mut chars = body.chars();
    let Some(first) = chars.next() else {
        return err("empty macro");
    };
    let letter = match first.to_ascii_lowercase() {
        's' => Letter::Sender,
        'l' => Letter::Local,
        'o' => Letter::SenderDomain,
        'd' => Letter::Domain,
        'i' => Letter::Ip,
        'p' => Letter::Validated,
        'v' => Letter::IpVersion,
        'h' => Letter::Helo,
        'c' | 'r' | 't' if context == Context::DomainSpec => {
            return err(format!("macro letter {first:?} only in explanations"));
        }
        'c' => Letter::ClientIp,
        'r' => Letter::Receiver,
        't' => Letter::Timestamp,
        _ => return err(format!("unknown macro letter {first:?}")),
    };
    let rest = chars.as_str();
    let digits_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let (digits, rest) = rest.split_at(digits_end);
    let keep = if digits.is_empty() {
        None
    } else {
        // Huge counts mean "all parts" (§7.3); only zero is an error.
        let n = digits.trim_start_matches('0').parse::<u32>().unwrap_or(
            if digits.trim_start_matches('0').is_empty() {
                0
            } else {
                u32::MAX
            },
        );
        if n == 0 {
            return err("macro keeps zero parts");
        }
        Some(n)
    };
    let (reverse, delimiters) = match rest.strip_prefix(['r', 'R']) {
        Some(d) => (true, d),
        None => (false, rest),
    };
    if let Some(bad) = delimiters.chars().find(|c| !".-+,/_=".contains(*c)) {
        return err(format!("{bad:?} is no macro delimiter"));
    }
    Ok(Segment::Macro {
        letter,
        escape: first.is_ascii_uppercase(),
        keep,
        reverse,
        delimiters: delimiters.to_string(),
    })
}

/// §7.1 toplabel: letters, digits and inner hyphens, not all digits.
fn is_toplabel(label: &str) -> bool {
    !label.is_empty()
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
        && !label.bytes().all(|b| b.is_ascii_digit())
}

/// A domain-spec (§7.1): a macro string ending in `.toplabel` (with an
/// optional dot after it) or in a macro.
pub fn parse_domain_spec(text: &str) -> Result<MacroString, SyntaxError> {
    if text.is_empty() {
        return err("empty domain-spec");
    }
    let (spec, ends_in_expand) = scan_macro_string(text, Context::DomainSpec)?;
    if ends_in_expand {
        return Ok(spec);
    }
    let Some(Segment::Literal(last)) = spec.0.last() else {
        return err("domain-spec must end in a top-level label");
    };
    let last = last.strip_suffix('.').unwrap_or(last);
    match last.rsplit_once('.') {
        Some((_, top)) if is_toplabel(top) => Ok(spec),
        _ => err(format!("{text:?} does not end in a valid top-level label")),
    }
}

/// The prefix lengths of `a` and `mx` (§5.6); absent ones compare all bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DualCidr {
    /// The IPv4 prefix length, 32 when absent.
    pub v4: u8,
    /// The IPv6 prefix length, 128 when absent.
    pub v6: u8,
}

/// A mechanism of §5: what a directive matches the client against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// `all`: matches every client.
    All,
    /// `include:domain`: matches when the domain's record passes.
    Include(MacroString),
    /// `a`: matches an address of the domain (default: the current one).
    A(Option<MacroString>, DualCidr),
    /// `mx`: matches an address of one of the domain's mail exchangers.
    Mx(Option<MacroString>, DualCidr),
    /// `ptr`: matches when a validated name of the client IP is in the domain (deprecated).
    Ptr(Option<MacroString>),
    /// `ip4:network/len`: matches a client in that IPv4 network.
    Ip4(Ipv4Addr, u8),
    /// `ip6:network/len`: matches a client in that IPv6 network.
    Ip6(Ipv6Addr, u8),
    /// `exists:domain`: matches when the expanded name has an A record.
    Exists(MacroString),
}

impl Mechanism {
    /// §4.6.4: the terms that cause DNS queries.
    pub fn queries_dns(&self) -> bool {
        !matches!(
            self,
            Mechanism::All | Mechanism::Ip4(..) | Mechanism::Ip6(..)
        )
    }
}

/// One term of a record that matches (§4.6.1): a qualifier and a mechanism.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directive {
    /// The result when the mechanism matches.
    pub qualifier: Qualifier,
    /// What the client is matched against.
    pub mechanism: Mechanism,
    /// The mechanism as written, without its qualifier (for `mechanism=`
    /// in `Received-SPF`, §9.1).
    pub text: String,
}

/// A parsed SPF record (§4.5): its directives in order and the modifiers that count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// The directives, tried left to right until one matches.
    pub directives: Vec<Directive>,
    /// The `redirect=` domain, used when no directive matches.
    pub redirect: Option<MacroString>,
    /// The `exp=` domain, whose TXT record explains a `fail`.
    pub explanation: Option<MacroString>,
}

/// §4.5: a record starts with "v=spf1" (any case) followed by a space or
/// the end.
pub fn is_spf_record(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 6 && b[..6].eq_ignore_ascii_case(b"v=spf1") && (b.len() == 6 || b[6] == b' ')
}

/// A CIDR length (§5.6): decimal without leading zeros, at most `max`.
fn cidr(digits: &str, max: u8) -> Result<u8, SyntaxError> {
    let valid = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && digits.len() <= 3;
    match digits.parse::<u8>() {
        Ok(n) if valid && n <= max => Ok(n),
        _ => err(format!("invalid prefix length \"/{digits}\"")),
    }
}

/// Splits `/N` and `//M` off the end of an `a` or `mx` argument (§5.6).
fn split_dual_cidr(arg: &str) -> Result<(&str, DualCidr), SyntaxError> {
    let mut rest = arg;
    let mut lengths = DualCidr { v4: 32, v6: 128 };
    let digits_at_end = |s: &str| {
        let start = s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        (start < s.len()).then_some(start)
    };
    if let Some(start) = digits_at_end(rest)
        && rest[..start].ends_with("//")
    {
        lengths.v6 = cidr(&rest[start..], 128)?;
        rest = &rest[..start - 2];
    }
    if let Some(start) = digits_at_end(rest)
        && rest[..start].ends_with('/')
        && !rest[..start].ends_with("//")
    {
        lengths.v4 = cidr(&rest[start..], 32)?;
        rest = &rest[..start - 1];
    }
    Ok((rest, lengths))
}

/// One mechanism, its qualifier already taken off.
fn parse_mechanism(term: &str) -> Result<Mechanism, SyntaxError> {
    let name_end = term.find([':', '/']).unwrap_or(term.len());
    let (name, rest) = term.split_at(name_end);
    let name = name.to_ascii_lowercase();
    let target = |rest: &str| -> Result<Option<MacroString>, SyntaxError> {
        match rest.strip_prefix(':') {
            Some(spec) => parse_domain_spec(spec).map(Some),
            None if rest.is_empty() => Ok(None),
            None => err(format!("unexpected {rest:?} after {name}")),
        }
    };
    match name.as_str() {
        "all" if rest.is_empty() => Ok(Mechanism::All),
        "include" => match rest.strip_prefix(':') {
            Some(spec) => Ok(Mechanism::Include(parse_domain_spec(spec)?)),
            None => err("include needs a domain"),
        },
        "exists" => match rest.strip_prefix(':') {
            Some(spec) => Ok(Mechanism::Exists(parse_domain_spec(spec)?)),
            None => err("exists needs a domain"),
        },
        "a" | "mx" => {
            let (spec, lengths) = split_dual_cidr(rest)?;
            let spec = target(spec)?;
            Ok(if name == "a" {
                Mechanism::A(spec, lengths)
            } else {
                Mechanism::Mx(spec, lengths)
            })
        }
        "ptr" => Ok(Mechanism::Ptr(target(rest)?)),
        "ip4" | "ip6" => {
            let Some(arg) = rest.strip_prefix(':') else {
                return err(format!("{name} needs an address"));
            };
            let (addr, len) = match arg.split_once('/') {
                Some((addr, len)) => (addr, Some(len)),
                None => (arg, None),
            };
            if name == "ip4" {
                let Ok(ip) = addr.parse::<Ipv4Addr>() else {
                    return err(format!("invalid IPv4 address {addr:?}"));
                };
                Ok(Mechanism::Ip4(ip, len.map_or(Ok(32), |l| cidr(l, 32))?))
            } else {
                let Ok(ip) = addr.parse::<Ipv6Addr>() else {
                    return err(format!("invalid IPv6 address {addr:?}"));
                };
                Ok(Mechanism::Ip6(ip, len.map_or(Ok(128), |l| cidr(l, 128))?))
            }
        }
        _ => err(format!("unknown mechanism {term:?}")),
    }
}

/// §12 `name`: a letter, then letters, digits, `-`, `_`, `.`.
fn is_modifier_name(name: &str) -> bool {
    let mut b = name.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Parses a whole record (the text after selection, §4.5).
pub fn parse_record(text: &str) -> Result<Record, SyntaxError> {
    if !is_spf_record(text) {
        return err("not an SPF record");
    }
    // §4.6.1: terms are separated by spaces only; any other character
    // outside visible ASCII (tabs, line ends, NUL, non-ASCII) is an error.
    if let Some(c) = text.chars().find(|c| *c != ' ' && !c.is_ascii_graphic()) {
        return err(format!("character {c:?} not allowed"));
    }
    let mut record = Record::default();
    for term in text[6..].split(' ').filter(|t| !t.is_empty()) {
        // A term whose text before the first "=" is a name is a modifier
        // (§4.6.1); anything else must be a mechanism.
        if let Some((name, value)) = term.split_once('=')
            && is_modifier_name(name)
        {
            match name.to_ascii_lowercase().as_str() {
                "redirect" => {
                    if record.redirect.is_some() {
                        return err("redirect= twice");
                    }
                    record.redirect = Some(parse_domain_spec(value)?);
                }
                "exp" => {
                    if record.explanation.is_some() {
                        return err("exp= twice");
                    }
                    record.explanation = Some(parse_domain_spec(value)?);
                }
                // §6: unknown modifiers are ignored, but their value must
                // still be a valid macro string.
                _ => {
                    parse_macro_string(value, Context::UnknownModifier)?;
                }
            }
            continue;
        }
        let (qualifier, mechanism) = match term.as_bytes()[0] {
            b'+' => (Qualifier::Pass, &term[1..]),
            b'-' => (Qualifier::Fail, &term[1..]),
            b'~' => (Qualifier::Softfail, &term[1..]),
            b'?' => (Qualifier::Neutral, &term[1..]),
            _ => (Qualifier::Pass, term),
        };
        record.directives.push(Directive {
            qualifier,
            mechanism: parse_mechanism(mechanism)?,
            text: mechanism.to_string(),
        });
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Record {
        parse_record(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn bad(text: &str) {
        assert!(parse_record(text).is_err(), "{text} should be invalid");
    }

    #[test]
    fn section_4_5_version_selection() {
        assert!(is_spf_record("v=spf1"));
        assert!(is_spf_record("V=SpF1 -all"));
        assert!(!is_spf_record("v=spf10"));
        assert!(!is_spf_record(" v=spf1"));
        assert!(!is_spf_record("v=spf1\t-all"));
    }

    #[test]
    fn section_5_6_cidr_lengths() {
        assert_eq!(
            ok("v=spf1 a/24//64").directives[0].mechanism,
            Mechanism::A(None, DualCidr { v4: 24, v6: 64 })
        );
        assert_eq!(
            ok("v=spf1 mx//0").directives[0].mechanism,
            Mechanism::Mx(None, DualCidr { v4: 32, v6: 0 })
        );
        for b in [
            "v=spf1 a/33",
            "v=spf1 a//129",
            "v=spf1 a/024",
            "v=spf1 a/24/64",
            "v=spf1 ip4:192.0.2.0/032",
            "v=spf1 ip4:192.0.2.0/24/24",
            "v=spf1 ip4:192.0.2.0//24",
            "v=spf1 ip4:192.0.2.0/",
            "v=spf1 ip6:2001:db8::/129",
            "v=spf1 ptr/0",
            "v=spf1 all/8",
        ] {
            bad(b);
        }
    }

    #[test]
    fn section_7_1_domain_specs() {
        for good in [
            "x.test",
            "x.test.",
            "foo:bar/baz.x.test",
            "%{d}",
            "%{ir}.%{v}._spf.%{d2}",
            "x.xn--zckzah",
            "macro%%percent%_space%-url.x.test",
        ] {
            assert!(parse_domain_spec(good).is_ok(), "{good}");
        }
        for b in [
            "",
            "museum",
            "museum.",
            "abc.123",
            "x.-test",
            "x.test:8080",
            "%{c}.x.test",
            "%{z}",
            "%{d0}",
            "%{d",
            "x%",
            "%x.test",
            "%{d2r|}",
            "a b.test",
        ] {
            assert!(parse_domain_spec(b).is_err(), "{b:?}");
        }
    }

    #[test]
    fn section_7_1_macro_parts() {
        let m = parse_macro_string("%{L2r+-}", Context::DomainSpec).unwrap();
        assert_eq!(
            m.0,
            vec![Segment::Macro {
                letter: Letter::Local,
                escape: true,
                keep: Some(2),
                reverse: true,
                delimiters: "+-".into(),
            }]
        );
        let e = parse_macro_string("%{c} at %{t}: %{r}", Context::Explanation).unwrap();
        assert_eq!(e.0.len(), 5);
        assert!(parse_macro_string("a b", Context::DomainSpec).is_err());
        assert!(parse_macro_string("caf\u{e9}", Context::Explanation).is_err());
    }

    #[test]
    fn section_4_6_1_terms_and_modifiers() {
        let r = ok("v=spf1  moo.cow-far_out=man:dog/cat ip4:192.0.2.1 -all exp=e.x.test ");
        assert_eq!(r.directives.len(), 2);
        assert_eq!(r.directives[1].qualifier, Qualifier::Fail);
        assert!(r.explanation.is_some());
        for b in [
            "v=spf1 moo.cow/far_out=man",
            "v=spf1 1up=foo",
            "v=spf1 =all",
            "v=spf1 foo=%abc",
            "v=spf1 redirect:x.test",
            "v=spf1 redirect=x.test redirect=y.test",
            "v=spf1 exp=x.test exp=y.test",
            "v=spf1 exp=",
            "v=spf1 redirect=",
            "v=spf1 ++all",
            "v=spf1 -",
            "v=spf1 include",
            "v=spf1 include:",
            "v=spf1 exists",
            "v=spf1 ip4",
            "v=spf1 ip4:192.0.2",
            "v=spf1 ip4:192.0.2.01",
            "v=spf1 ip6::2001::db8",
            "v=spf1 a:x.test\rptr",
            "v=spf1 -all\u{0}",
            "v=spf1 \u{80}a",
        ] {
            bad(b);
        }
        // An unknown modifier is kept out of the record, whatever its name.
        assert_eq!(ok("v=spf1 a=b").directives.len(), 0);
    }
}
