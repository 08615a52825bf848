//! The one reader of address headers (`From:`, RFC 5322 §3.4, §3.6.2):
//! an `address-list` of mailboxes and groups, with the display names,
//! quoted strings, comments, folding and obsolete routes of §3.4 and §4.4.
//! DMARC's author domain (at prefetch and at evaluation alike), the DNSBL
//! domain lists and `authorize_sender` all read `From:` through it, so a
//! spelling cannot mean one address to one check and another to the next.
//!
//! Each member of the list is a [`Mailbox`] or says why it cannot be read;
//! a caller decides what an unreadable member means for it (DMARC and
//! `authorize_sender` refuse the header, a DNSBL looks up what it could
//! read). Display names are skipped without decoding: no check acts on
//! them.

use thiserror::Error;

/// One mailbox of an address list: its addr-spec as written, without the
/// white space and comments around its parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mailbox {
    addr_spec: String,
    /// Where the `@` between local part and domain is.
    at: usize,
    /// The text of the comments in the member, outer ones first.
    comments: Vec<String>,
}

impl Mailbox {
    /// `local-part@domain`, quoting kept.
    pub fn addr_spec(&self) -> &str {
        &self.addr_spec
    }

    /// The local part as written (a quoted string keeps its quotes).
    pub fn local_part(&self) -> &str {
        &self.addr_spec[..self.at]
    }

    /// The domain as written (a domain literal keeps its brackets).
    pub fn domain(&self) -> &str {
        &self.addr_spec[self.at + 1..]
    }

    /// The comments written in the member (`alice@example.org (CEO)`),
    /// which some readers display beside the address.
    pub fn comments(&self) -> &[String] {
        &self.comments
    }
}

/// Why one member of an address list cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum Unreadable {
    /// A quoted string, comment, domain literal or `<...>` is not closed.
    #[error("a quoted string, comment, domain literal or <...> is not closed")]
    Unterminated,
    /// An address without `@domain`.
    #[error("an address without a domain")]
    NoDomain,
    /// A domain is atoms or a domain literal (RFC 5322 §3.4.1): a quoted
    /// string or white space there (`a@"x y"`, `a@[ 192.0.2.1 ]`) names no
    /// domain DNS could be asked about.
    #[error("a domain with quotes or white space")]
    BadDomain,
    /// An empty `<>`, which names no one.
    #[error("an empty address <>")]
    Empty,
    /// Words beside an address that is not in `<...>` (`Joe joe@example.org`).
    #[error("words beside an address that is not in <...>")]
    PhraseWithoutAngle,
    /// Text after the `<...>` of a member.
    #[error("text after <...>")]
    TextAfterAngle,
    /// More than one `<...>` in one member.
    #[error("several <...> in one member")]
    SeveralAngles,
}

/// One member being read.
#[derive(Default)]
struct Member {
    /// The words outside `<...>`, each without white space or comments.
    words: Vec<String>,
    /// White space or a comment since the last character of a word.
    gap: bool,
    /// The inside of `<...>`, once one was opened.
    angle: Option<String>,
    /// `<...>` was closed.
    closed: bool,
    comments: Vec<String>,
    problem: Option<Unreadable>,
}

impl Member {
    fn push(&mut self, c: char) {
        if self.closed {
            self.problem.get_or_insert(Unreadable::TextAfterAngle);
        }
        match &mut self.angle {
            Some(inside) if !self.closed => inside.push(c),
            _ => {
                match self.words.last_mut() {
                    Some(word) if !self.gap => word.push(c),
                    _ => self.words.push(c.to_string()),
                }
                self.gap = false;
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.words.is_empty() && self.angle.is_none() && self.problem.is_none()
    }

    /// The mailbox this member names, or `None` for an empty member (two
    /// commas in a row, an empty group).
    fn finish(self) -> Option<Result<Mailbox, Unreadable>> {
        if self.is_empty() {
            return None;
        }
        if let Some(problem) = self.problem {
            return Some(Err(problem));
        }
        let addr_spec = match self.angle {
            Some(_) if !self.closed => return Some(Err(Unreadable::Unterminated)),
            Some(inside) if inside.is_empty() => return Some(Err(Unreadable::Empty)),
            Some(inside) => inside,
            // An addr-spec may have white space around its dots and its
            // `@` (obs-local-part, obs-domain); between two words it is a
            // phrase, and a phrase must be followed by `<...>`.
            None => {
                let mut joined = String::new();
                for word in &self.words {
                    let joins = joined.is_empty()
                        || joined.ends_with(['.', '@'])
                        || word.starts_with(['.', '@']);
                    if !joins {
                        return Some(Err(Unreadable::PhraseWithoutAngle));
                    }
                    joined.push_str(word);
                }
                joined
            }
        };
        let Some(at) = last_unquoted_at(&addr_spec) else {
            return Some(Err(Unreadable::NoDomain));
        };
        if at + 1 == addr_spec.len() {
            return Some(Err(Unreadable::NoDomain));
        }
        if addr_spec[at + 1..].contains(['"', ' ', '\t', '\r', '\n']) {
            return Some(Err(Unreadable::BadDomain));
        }
        Some(Ok(Mailbox {
            addr_spec,
            at,
            comments: self.comments,
        }))
    }
}

/// The `@` that ends the local part: the last one outside a quoted string.
fn last_unquoted_at(addr_spec: &str) -> Option<usize> {
    let (mut quoted, mut escaped, mut found) = (false, false, None);
    for (i, c) in addr_spec.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '@' if !quoted => found = Some(i),
            _ => {}
        }
    }
    found
}

/// The members of an address list (the value of a `From:` header), in
/// order; groups are flattened and empty members left out.
pub fn address_list(value: &str) -> Vec<Result<Mailbox, Unreadable>> {
    let mut out = Vec::new();
    let mut member = Member::default();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        let in_angle = member.angle.is_some() && !member.closed;
        match c {
            ' ' | '\t' | '\r' | '\n' => member.gap = true,
            '(' => {
                // A comment, nested ones included; its text is kept.
                let mut text = String::new();
                let mut depth = 1usize;
                while depth > 0 {
                    match chars.next() {
                        None => {
                            member.problem.get_or_insert(Unreadable::Unterminated);
                            break;
                        }
                        Some('\\') => text.extend(chars.next()),
                        Some('(') => {
                            depth += 1;
                            text.push('(');
                        }
                        Some(')') => {
                            depth -= 1;
                            if depth > 0 {
                                text.push(')');
                            }
                        }
                        Some('\r' | '\n') => text.push(' '),
                        Some(c) => text.push(c),
                    }
                }
                member.comments.push(text);
                member.gap = true;
            }
            '"' | '[' => {
                // A quoted string or a domain literal: kept as written,
                // quoted pairs included; folding inside is white space.
                let close = if c == '"' { '"' } else { ']' };
                member.push(c);
                loop {
                    match chars.next() {
                        None => {
                            member.problem.get_or_insert(Unreadable::Unterminated);
                            break;
                        }
                        Some('\\') => {
                            member.push('\\');
                            if let Some(escaped) = chars.next() {
                                member.push(escaped);
                            }
                        }
                        Some('\r' | '\n') => {}
                        Some(c) => {
                            member.push(c);
                            if c == close {
                                break;
                            }
                        }
                    }
                }
            }
            '<' if member.angle.is_some() => {
                member.problem.get_or_insert(Unreadable::SeveralAngles);
            }
            '<' => {
                // The words so far were the display name.
                member.angle = Some(String::new());
            }
            '>' if in_angle => member.closed = true,
            // obs-route (`<@relay,@relay:user@domain>`): the route is no
            // part of the address.
            ':' if in_angle => {
                if let Some(inside) = &mut member.angle {
                    inside.clear();
                }
            }
            ',' if in_angle => member.push(c),
            // A group's display name ends at its colon.
            ':' => {
                if member.angle.is_none() && member.problem.is_none() {
                    member = Member::default();
                } else {
                    member.push(c);
                }
            }
            ',' | ';' => out.extend(std::mem::take(&mut member).finish()),
            c => member.push(c),
        }
    }
    out.extend(member.finish());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn specs(value: &str) -> Vec<Result<String, Unreadable>> {
        address_list(value)
            .into_iter()
            .map(|m| m.map(|m| m.addr_spec().to_string()))
            .collect()
    }

    #[test]
    fn mailboxes_and_name_addrs() {
        assert_eq!(specs("alice@example.org"), [Ok("alice@example.org".into())]);
        assert_eq!(
            specs("\"Smith, A <x@evil.example>\" <a@ok.example>, b@two.example (c@three.example)"),
            [Ok("a@ok.example".into()), Ok("b@two.example".into())]
        );
        assert_eq!(
            specs("Alice\r\n <alice@example.org>"),
            [Ok("alice@example.org".into())]
        );
        let list = address_list("b@two.example (c@three.example) (x)");
        let Some(Ok(b)) = list.first() else {
            panic!("{list:?}")
        };
        assert_eq!(b.comments(), ["c@three.example", "x"]);
        assert_eq!((b.local_part(), b.domain()), ("b", "two.example"));
    }

    #[test]
    fn groups_quotes_literals_and_routes() {
        assert_eq!(
            specs("Team: a@one.example, \"q\"@two.example;"),
            [Ok("a@one.example".into()), Ok("\"q\"@two.example".into())]
        );
        assert!(specs("undisclosed-recipients:;").is_empty());
        assert_eq!(
            specs("someone@[192.0.2.1]"),
            [Ok("someone@[192.0.2.1]".into())]
        );
        assert_eq!(
            specs("<@relay.example,@b.example:user@example.org>"),
            [Ok("user@example.org".into())]
        );
        let list = address_list("\"a@b\"@example.org");
        let Some(Ok(m)) = list.first() else {
            panic!("{list:?}")
        };
        assert_eq!((m.local_part(), m.domain()), ("\"a@b\"", "example.org"));
        // obs-local-part: white space around the dots.
        assert_eq!(
            specs("first . last @ example.org"),
            [Ok("first.last@example.org".into())]
        );
    }

    #[test]
    fn what_cannot_be_read_says_why() {
        assert_eq!(
            specs("no address here"),
            [Err(Unreadable::PhraseWithoutAngle)]
        );
        assert_eq!(
            specs("Alice a@example.org"),
            [Err(Unreadable::PhraseWithoutAngle)]
        );
        assert_eq!(specs("undisclosed"), [Err(Unreadable::NoDomain)]);
        assert_eq!(specs("<>"), [Err(Unreadable::Empty)]);
        assert_eq!(specs("a@"), [Err(Unreadable::NoDomain)]);
        assert_eq!(specs("\"a@example.org"), [Err(Unreadable::Unterminated)]);
        assert_eq!(specs("<a@example.org"), [Err(Unreadable::Unterminated)]);
        assert_eq!(specs("a@example.org (x"), [Err(Unreadable::Unterminated)]);
        assert_eq!(
            specs("<a@ok.example> b@evil.example"),
            [Err(Unreadable::TextAfterAngle)]
        );
        assert_eq!(
            specs("<a@ok.example><b@evil.example>"),
            [Err(Unreadable::SeveralAngles)]
        );
        assert_eq!(specs("a@\"\t\""), [Err(Unreadable::BadDomain)]);
        assert_eq!(specs("<a@[ 192.0.2.1 ]>"), [Err(Unreadable::BadDomain)]);
        // One bad member does not hide the others.
        assert_eq!(
            specs("a@one.example, junk, b@two.example"),
            [
                Ok("a@one.example".into()),
                Err(Unreadable::NoDomain),
                Ok("b@two.example".into())
            ]
        );
    }

    proptest! {
        /// Whatever the value, reading it ends, and every mailbox read has
        /// a local part and a domain that contain no unquoted white space.
        #[test]
        fn any_value_is_read_without_panic(value in "[ -~\\t\\r\\n\\u{80}-\\u{10FFFF}]{0,200}") {
            for m in address_list(&value).into_iter().flatten() {
                prop_assert!(!m.domain().is_empty());
                prop_assert!(!m.domain().contains([' ', '\t', '\r', '\n']));
                prop_assert_eq!(format!("{}@{}", m.local_part(), m.domain()), m.addr_spec());
            }
        }

        /// A plain address, however it is dressed (display name, comment,
        /// folding), reads as itself.
        #[test]
        fn a_dressed_address_reads_as_itself(
            local in "[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){0,2}",
            domain in "[a-z0-9]{1,10}(\\.[a-z]{2,5}){1,2}",
            name in "[A-Za-z ]{0,20}",
            comment in "[A-Za-z@. ]{0,20}",
        ) {
            let address = format!("{local}@{domain}");
            for value in [
                address.clone(),
                format!("{name} <{address}>"),
                format!("\"{name}\"\r\n <{address}> ({comment})"),
                format!("{address} ({comment})"),
            ] {
                let list = address_list(&value);
                prop_assert_eq!(list.len(), 1, "{}", value);
                prop_assert_eq!(list[0].as_ref().map(|m| m.addr_spec()), Ok(address.as_str()), "{}", value);
            }
        }
    }
}
