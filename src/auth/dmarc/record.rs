//! The DMARC policy record (RFC 9989 §4.7, §4.8): one parser from the text
//! of a TXT record to a typed record, and the choice of the one record at a
//! name (§4.10 steps 2 and 6). Pure: no DNS here.
//!
//! Owned here rather than taken from mail-auth 0.13, whose parser refuses a
//! whole record for one bad value (`p=bogus`, `adkim=x`), accepts
//! `v=dmarc1`, and does not tell an absent `p=` from an invalid one, which
//! RFC 9989 §4.10.1 treats differently.

/// A Domain Owner Assessment Policy (`p`, `sp`, `np`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Request {
    /// The domain owner asks for nothing to be done with failing mail.
    None,
    /// Treat failing mail as suspicious, such as by quarantining it.
    Quarantine,
    /// Refuse failing mail.
    Reject,
}

impl Request {
    fn parse(value: &str) -> Option<Request> {
        // ABNF quoted strings are case-insensitive (RFC 5234 §2.3).
        [
            ("none", Request::None),
            ("quarantine", Request::Quarantine),
            ("reject", Request::Reject),
        ]
        .into_iter()
        .find_map(|(name, r)| value.eq_ignore_ascii_case(name).then_some(r))
    }

    /// One step milder: what `t=y` (§4.7) and an unsampled legacy `pct`
    /// (RFC 7489 §6.6.4) apply instead.
    pub fn milder(self) -> Request {
        match self {
            Request::Reject => Request::Quarantine,
            Request::Quarantine | Request::None => Request::None,
        }
    }

    /// The value as written in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            Request::None => "none",
            Request::Quarantine => "quarantine",
            Request::Reject => "reject",
        }
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `adkim` and `aspf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alignment {
    /// `r`, the default: the organizational domains must be the same.
    Relaxed,
    /// `s`: the domains must be identical.
    Strict,
}

/// `psd` (§4.7): whether the record's domain is a Public Suffix Domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Psd {
    /// `psd=y`: the domain is a Public Suffix Domain.
    Yes,
    /// `psd=n`: it is not, and is its own organizational domain.
    No,
    /// `psd=u`, absent or not valid: the tree walk goes on past it.
    Unknown,
}

/// A policy tag as found: the §4.10.1 rule for invalid policies needs to
/// tell "absent" (defaults apply) from "present but not valid".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyTag {
    /// The tag is not in the record.
    Absent,
    /// The tag is there with this valid value.
    Valid(Request),
    /// The tag is there but its value is not one of the three.
    Invalid,
}

/// One DMARC policy record: every tag a receiver acts on, with the
/// defaults of §4.7 where a tag is absent or its value is not valid (§4.8:
/// "syntax errors in the remainder of the record MUST be discarded in
/// favor of default values"). Reporting tags other than `rua` (`ruf`,
/// `fo`, and the historic `rf`, `ri`) are not kept: this daemon does not
/// send reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// `p`: the policy for the domain itself.
    pub p: PolicyTag,
    /// `sp`: the policy for its existing subdomains.
    pub sp: PolicyTag,
    /// `np`: the policy for its subdomains that do not exist.
    pub np: PolicyTag,
    /// DKIM identifier alignment mode.
    pub adkim: Alignment,
    /// SPF identifier alignment mode.
    pub aspf: Alignment,
    /// Whether the domain is a Public Suffix Domain.
    pub psd: Psd,
    /// `t=y` (test mode) is `Some(true)`, `t=n` is `Some(false)`; absent
    /// or not valid is `None`, which means `n` (§4.7) but leaves a legacy
    /// `pct` its say (see the check's module documentation).
    pub test: Option<bool>,
    /// The legacy `pct` of RFC 7489 §6.3 (historic in RFC 9989 §9.3), when
    /// it is a valid 0 to 100.
    pub pct: Option<u8>,
    /// `rua` holds at least one syntactically valid URI (§4.10.1).
    pub valid_rua: bool,
}

/// The policies a usable record asks for, defaults applied (§4.7: `sp`
/// defaults to `p`, `np` to `sp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policies {
    /// For the domain itself.
    pub p: Request,
    /// For its existing subdomains.
    pub sp: Request,
    /// For its subdomains that do not exist.
    pub np: Request,
}

/// Several occurrences of one tag: the value is not trusted (RFC 6376
/// §3.2, whose tag-list syntax DMARC uses, forbids duplicates).
fn once<T>(slot: &mut Option<Option<T>>, value: Option<T>) {
    *slot = match slot {
        None => Some(value),
        Some(_) => Some(None),
    };
}

impl Record {
    /// Parses the text of one TXT record (its strings already joined, §4.5).
    /// `None` when it is not a DMARC policy record: the first tag must be
    /// `v` with exactly `DMARC1` (§4.7: case-sensitive, and otherwise "the
    /// entire record MUST be ignored"). White space around the whole
    /// record is tolerated.
    pub fn parse(text: &str) -> Option<Record> {
        let wsp: &[char] = &[' ', '\t'];
        let mut tags = text.trim_matches(wsp).split(';');
        let (name, value) = tags.next()?.split_once('=')?;
        if !name.trim_matches(wsp).eq_ignore_ascii_case("v") || value.trim_matches(wsp) != "DMARC1"
        {
            return None;
        }
        let (mut p, mut sp, mut np) = (None, None, None);
        let (mut adkim, mut aspf, mut psd, mut t, mut pct, mut rua) =
            (None, None, None, None, None, None);
        for tag in tags {
            let Some((name, value)) = tag.split_once('=') else {
                continue; // not a tag: ignored (§4.8)
            };
            let name = name.trim_matches(wsp);
            let value = value.trim_matches(wsp);
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphabetic()) {
                continue;
            }
            // dmarc-value: printable ASCII but ';' (which split already took).
            let printable = !value.is_empty() && value.bytes().all(|b| (0x20..=0x7e).contains(&b));
            let value = printable.then_some(value);
            let one_of = |options: &[(&str, char)]| {
                value.and_then(|v| {
                    options
                        .iter()
                        .find_map(|(s, c)| v.eq_ignore_ascii_case(s).then_some(*c))
                })
            };
            match name.to_ascii_lowercase().as_str() {
                "p" => once(&mut p, value.and_then(Request::parse)),
                "sp" => once(&mut sp, value.and_then(Request::parse)),
                "np" => once(&mut np, value.and_then(Request::parse)),
                "adkim" => once(&mut adkim, one_of(&[("r", 'r'), ("s", 's')])),
                "aspf" => once(&mut aspf, one_of(&[("r", 'r'), ("s", 's')])),
                "psd" => once(&mut psd, one_of(&[("y", 'y'), ("n", 'n'), ("u", 'u')])),
                "t" => once(&mut t, one_of(&[("y", 'y'), ("n", 'n')])),
                "pct" => once(
                    &mut pct,
                    value
                        .filter(|v| {
                            (1..=3).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit())
                        })
                        .and_then(|v| v.parse::<u8>().ok())
                        .filter(|n| *n <= 100),
                ),
                "rua" => once(&mut rua, value.map(|v| v.split(',').any(is_report_uri))),
                // Unknown tags MUST be ignored (§4.7), and so are the
                // reporting tags this daemon has no use for.
                _ => {}
            }
        }
        let policy = |tag: Option<Option<Request>>| match tag {
            None => PolicyTag::Absent,
            Some(Some(r)) => PolicyTag::Valid(r),
            Some(None) => PolicyTag::Invalid,
        };
        let alignment = |tag: Option<Option<char>>| match tag {
            Some(Some('s')) => Alignment::Strict,
            _ => Alignment::Relaxed,
        };
        Some(Record {
            p: policy(p),
            sp: policy(sp),
            np: policy(np),
            adkim: alignment(adkim),
            aspf: alignment(aspf),
            psd: match psd {
                Some(Some('y')) => Psd::Yes,
                Some(Some('n')) => Psd::No,
                _ => Psd::Unknown,
            },
            test: match t {
                Some(Some('y')) => Some(true),
                Some(Some('n')) => Some(false),
                _ => None,
            },
            pct: pct.flatten(),
            valid_rua: rua.flatten().unwrap_or(false),
        })
    }

    /// The policies this record asks for, or `None` when it is unusable
    /// (§4.10.1): a `p` that is present but not valid, or an `sp` or `np`
    /// that is not valid, makes the record count as `p=none` if `rua` holds
    /// a valid URI, and otherwise no DMARC processing applies. An absent
    /// `p` is `p=none` (§4.7, the `p` tag).
    pub fn policies(&self) -> Option<Policies> {
        let broken = [self.p, self.sp, self.np].contains(&PolicyTag::Invalid);
        if broken {
            return self.valid_rua.then_some(Policies {
                p: Request::None,
                sp: Request::None,
                np: Request::None,
            });
        }
        let valid = |tag: PolicyTag| match tag {
            PolicyTag::Valid(r) => Some(r),
            PolicyTag::Absent | PolicyTag::Invalid => None,
        };
        let p = valid(self.p).unwrap_or(Request::None);
        let sp = valid(self.sp).unwrap_or(p);
        let np = valid(self.np).unwrap_or(sp);
        Some(Policies { p, sp, np })
    }
}

/// Whether one `rua` entry is a syntactically valid DMARC URI (§4.8): an
/// RFC 3986 URI (scheme, colon, a non-empty rest of URI characters, with
/// `,` and `!` percent-encoded), optionally followed by the obsolete
/// `!size` suffix.
pub fn is_report_uri(entry: &str) -> bool {
    let entry = entry.trim_matches([' ', '\t']);
    let uri = match entry.rsplit_once('!') {
        Some((uri, size)) => {
            let digits = size.trim_end_matches(['k', 'm', 'g', 't', 'K', 'M', 'G', 'T']);
            let unit_len = size.len() - digits.len();
            if digits.is_empty() || unit_len > 1 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return false;
            }
            uri
        }
        None => entry,
    };
    let Some((scheme, rest)) = uri.split_once(':') else {
        return false;
    };
    let mut scheme_bytes = scheme.bytes();
    let scheme_ok = scheme_bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && scheme_bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !scheme_ok || rest.is_empty() {
        return false;
    }
    let bytes = rest.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3);
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return false;
            }
            i += 3;
            continue;
        }
        let allowed = b.is_ascii_alphanumeric() || b"-._~:/?#[]@$&'()*+;=".contains(&b);
        if !allowed {
            return false;
        }
        i += 1;
    }
    true
}

/// What one name's TXT records hold for DMARC (§4.10 steps 2 and 6):
/// records that are not DMARC policy records are discarded, and so are
/// all of them when more than one is left.
pub fn select<S: AsRef<str>>(txt: &[S]) -> Option<Record> {
    let mut found = txt.iter().filter_map(|t| Record::parse(t.as_ref()));
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Record {
        Record::parse(s).unwrap_or_else(|| panic!("a DMARC record: {s:?}"))
    }

    #[test]
    fn s4_7_v_first_and_exactly_dmarc1() {
        assert!(Record::parse("v=DMARC1").is_some());
        assert!(Record::parse("V = DMARC1 ;p=none").is_some());
        assert!(Record::parse("  v=DMARC1; p=none  ").is_some());
        assert!(Record::parse("v=dmarc1; p=none").is_none());
        assert!(Record::parse("v=DMARC10; p=none").is_none());
        assert!(Record::parse("p=none; v=DMARC1").is_none());
        assert!(Record::parse("v=spf1 -all").is_none());
        assert!(Record::parse("").is_none());
        assert!(Record::parse("v=DMARC1 p=none").is_none());
    }

    #[test]
    fn s4_7_defaults() {
        let r = parse("v=DMARC1");
        assert_eq!(
            (r.p, r.sp, r.np),
            (PolicyTag::Absent, PolicyTag::Absent, PolicyTag::Absent)
        );
        assert_eq!((r.adkim, r.aspf), (Alignment::Relaxed, Alignment::Relaxed));
        assert_eq!(
            (r.psd, r.test, r.pct, r.valid_rua),
            (Psd::Unknown, None, None, false)
        );
        assert_eq!(
            r.policies(),
            Some(Policies {
                p: Request::None,
                sp: Request::None,
                np: Request::None
            })
        );
        let r = parse("v=DMARC1; p=reject; sp=quarantine");
        assert_eq!(
            r.policies(),
            Some(Policies {
                p: Request::Reject,
                sp: Request::Quarantine,
                np: Request::Quarantine
            })
        );
    }

    #[test]
    fn s4_7_every_tag() {
        let r = parse(
            "v=DMARC1; p=Reject; sp=none; np=QUARANTINE; adkim=s; aspf=S; psd=y; t=y; pct=25; \
             rua=mailto:a@example.org,mailto:b@example.org!10m; ruf=mailto:f@example.org; fo=1",
        );
        assert_eq!(r.p, PolicyTag::Valid(Request::Reject));
        assert_eq!(r.sp, PolicyTag::Valid(Request::None));
        assert_eq!(r.np, PolicyTag::Valid(Request::Quarantine));
        assert_eq!((r.adkim, r.aspf), (Alignment::Strict, Alignment::Strict));
        assert_eq!(
            (r.psd, r.test, r.pct, r.valid_rua),
            (Psd::Yes, Some(true), Some(25), true)
        );
        assert_eq!(parse("v=DMARC1; psd=n").psd, Psd::No);
        assert_eq!(parse("v=DMARC1; psd=u").psd, Psd::Unknown);
    }

    #[test]
    fn s4_8_bad_values_take_defaults_and_unknown_tags_are_ignored() {
        let r =
            parse("v=DMARC1; p=reject; adkim=x; aspf=; psd=maybe; t=yes; pct=101; x=1; 9=2; junk");
        assert_eq!(r.p, PolicyTag::Valid(Request::Reject));
        assert_eq!((r.adkim, r.aspf), (Alignment::Relaxed, Alignment::Relaxed));
        assert_eq!((r.psd, r.test, r.pct), (Psd::Unknown, None, None));
        assert_eq!(parse("v=DMARC1; t=n").test, Some(false));
        assert_eq!(parse("v=DMARC1; pct=0").pct, Some(0));
        assert_eq!(parse("v=DMARC1; pct=-1").pct, None);
        assert_eq!(parse("v=DMARC1; pct=0100").pct, None);
        // Not printable ASCII.
        assert_eq!(parse("v=DMARC1; p=reject\u{7f}").p, PolicyTag::Invalid);
        assert_eq!(parse("v=DMARC1; p=réject").p, PolicyTag::Invalid);
        // A tag given twice is not trusted.
        assert_eq!(parse("v=DMARC1; p=reject; p=reject").p, PolicyTag::Invalid);
        assert_eq!(
            parse("v=DMARC1; adkim=s; adkim=s").adkim,
            Alignment::Relaxed
        );
    }

    #[test]
    fn s4_10_1_invalid_policies_and_rua() {
        let none = Policies {
            p: Request::None,
            sp: Request::None,
            np: Request::None,
        };
        assert_eq!(
            parse("v=DMARC1; p=bogus; rua=mailto:d@example.org").policies(),
            Some(none)
        );
        assert_eq!(parse("v=DMARC1; p=bogus").policies(), None);
        assert_eq!(
            parse("v=DMARC1; p=bogus; rua=d@example.org").policies(),
            None
        );
        assert_eq!(
            parse("v=DMARC1; p=reject; sp=quarantin; rua=mailto:d@example.org").policies(),
            Some(none)
        );
        assert_eq!(parse("v=DMARC1; p=reject; np=x").policies(), None);
        assert_eq!(
            parse("v=DMARC1; p=; rua=mailto:d@example.org").policies(),
            Some(none)
        );
    }

    #[test]
    fn s4_8_report_uris() {
        for ok in [
            "mailto:dmarc@example.org",
            "mailto:dmarc@example.org!10m",
            "mailto:dmarc@example.org!100",
            "https://example.org/report?x=1",
            "mailto:a%2Cb@example.org",
        ] {
            assert!(is_report_uri(ok), "{ok}");
        }
        for bad in [
            "dmarc@example.org",
            "mailto:",
            ":x",
            "1mailto:x@example.org",
            "mailto:a b@example.org",
            "mailto:x@example.org!",
            "mailto:x@example.org!10mb",
            "mailto:a%2@example.org",
            "mailto:dmarc@exämple.org",
        ] {
            assert!(!is_report_uri(bad), "{bad}");
        }
    }

    #[test]
    fn s4_10_one_record_per_name() {
        assert!(select(&["v=DMARC1; p=reject"]).is_some());
        assert!(select(&["v=spf1 -all", "v=DMARC1; p=reject", "token"]).is_some());
        assert!(select(&["v=DMARC1; p=reject", "v=DMARC1; p=none"]).is_none());
        assert!(select::<&str>(&[]).is_none());
        assert!(select(&["v=dmarc1; p=reject"]).is_none());
    }
}
