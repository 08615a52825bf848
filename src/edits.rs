//! The ordered list of changes the engine wants made to one message. The
//! daemon sends it to the MTA at end of message as one batch; the offline
//! `test` command prints it. Everything that reaches a header is validated
//! here, so no input can inject a header line.

use crate::message::Header;
use serde::Serialize;

/// One change to a message, as a milter asks the MTA to make it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Edit {
    /// Append a header at the end of the header block.
    AddHeader {
        /// The header's name, without the colon.
        name: String,
        /// The header's value, as it follows the colon.
        value: String,
    },
    /// Insert a header at a 0-based position (0 is the very top, before the
    /// MTA's own `Received:`).
    InsertHeader {
        /// Where the header goes among the headers, 0-based.
        index: u32,
        /// The header's name, without the colon.
        name: String,
        /// The header's value, as it follows the colon.
        value: String,
    },
    /// Replace the `index`-th (1-based, counted per name) header of this name.
    ChangeHeader {
        /// The name of the header to replace.
        name: String,
        /// Which header of that name, 1-based.
        index: u32,
        /// The new value, as it follows the colon.
        value: String,
    },
    /// Delete the `index`-th (1-based, counted per name) header of this name.
    DeleteHeader {
        /// The name of the header to delete.
        name: String,
        /// Which header of that name, 1-based.
        index: u32,
    },
    /// Add a recipient, with ESMTP parameters when there are any.
    AddRecipient {
        /// The new recipient's address.
        address: String,
        /// ESMTP parameters for its RCPT TO, such as `NOTIFY=NEVER`.
        #[serde(skip_serializing_if = "Option::is_none")]
        args: Option<String>,
    },
    /// Remove a recipient, spelled as the MTA gave it at RCPT TO.
    DeleteRecipient {
        /// The recipient to remove, as the MTA gave it.
        address: String,
    },
    /// Replace the envelope sender, with ESMTP parameters when there are any.
    ChangeSender {
        /// The new envelope sender.
        address: String,
        /// ESMTP parameters for its MAIL FROM, such as `BODY=8BITMIME`.
        #[serde(skip_serializing_if = "Option::is_none")]
        args: Option<String>,
    },
    /// Put the whole message on hold (Postfix hold queue, Sendmail quarantine).
    Quarantine {
        /// Why, as the MTA records it.
        reason: String,
    },
}

impl Edit {
    /// The edit's kind in snake case, as logs and JSON name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Edit::AddHeader { .. } => "add_header",
            Edit::InsertHeader { .. } => "insert_header",
            Edit::ChangeHeader { .. } => "change_header",
            Edit::DeleteHeader { .. } => "delete_header",
            Edit::AddRecipient { .. } => "add_recipient",
            Edit::DeleteRecipient { .. } => "delete_recipient",
            Edit::ChangeSender { .. } => "change_sender",
            Edit::Quarantine { .. } => "quarantine",
        }
    }

    /// True for edits that change who gets the mail or whether it moves on;
    /// dry-run keeps only the others.
    pub fn changes_delivery(&self) -> bool {
        matches!(
            self,
            Edit::AddRecipient { .. }
                | Edit::DeleteRecipient { .. }
                | Edit::ChangeSender { .. }
                | Edit::Quarantine { .. }
        )
    }
}

impl std::fmt::Display for Edit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Edit::AddHeader { name, value } => write!(f, "add header      {name}: {value}"),
            Edit::InsertHeader { index, name, value } => {
                write!(f, "insert header   #{index} {name}: {value}")
            }
            Edit::ChangeHeader { name, index, value } => {
                write!(f, "change header   {name}[{index}]: {value}")
            }
            Edit::DeleteHeader { name, index } => write!(f, "delete header   {name}[{index}]"),
            Edit::AddRecipient { address, args } => {
                write!(f, "add recipient   <{address}>")?;
                args.iter().try_for_each(|a| write!(f, " {a}"))
            }
            Edit::DeleteRecipient { address } => write!(f, "del recipient   <{address}>"),
            Edit::ChangeSender { address, args } => {
                write!(f, "change sender   <{address}>")?;
                args.iter().try_for_each(|a| write!(f, " {a}"))
            }
            Edit::Quarantine { reason } => write!(f, "quarantine      {reason}"),
        }
    }
}

/// A header edit refused because its name is not a field name (RFC 5322
/// §3.6.8); the name is kept as given and shown sanitised.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid header name \"{}\"", sanitize_value(.name))]
pub struct InvalidHeaderName {
    /// The name as given.
    pub name: String,
}

/// A header field name per RFC 5322 §3.6.8: printable ASCII, no colon.
pub fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// Make text safe for a header value or reply: CR, LF and NUL removed (a line
/// break turns into a space), other control characters but TAB dropped.
pub fn sanitize_value(value: &str) -> String {
    // Nearly every value is clean printable ASCII (Authentication-Results,
    // modifiers' own headers): then the result is the trimmed value, one
    // byte scan and one copy instead of decoding and pushing per character.
    if value
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return value.trim().to_string();
    }
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\r' | '\0' => {}
            '\n' => {
                if !out.ends_with(' ') {
                    out.push(' ');
                }
            }
            '\t' => out.push('\t'),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.trim().to_string()
}

/// An edit list under construction. Header edits go through methods that
/// validate names and sanitise values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct EditList {
    edits: Vec<Edit>,
}

impl EditList {
    /// An empty list.
    pub fn new() -> Self {
        EditList::default()
    }

    /// The edits so far, in order.
    pub fn edits(&self) -> &[Edit] {
        &self.edits
    }

    pub(crate) fn into_vec(self) -> Vec<Edit> {
        self.edits
    }

    /// Append an edit as it is (header edits go through the checked methods).
    pub fn push(&mut self, edit: Edit) {
        self.edits.push(edit);
    }

    pub(crate) fn retain(&mut self, f: impl FnMut(&Edit) -> bool) {
        self.edits.retain(f);
    }

    fn checked_name(name: &str) -> Result<String, InvalidHeaderName> {
        if valid_header_name(name) {
            Ok(name.to_string())
        } else {
            Err(InvalidHeaderName {
                name: name.to_string(),
            })
        }
    }

    /// Append a header at the bottom, its value sanitised.
    pub fn add_header(&mut self, name: &str, value: &str) -> Result<(), InvalidHeaderName> {
        let name = Self::checked_name(name)?;
        self.edits.push(Edit::AddHeader {
            name,
            value: sanitize_value(value),
        });
        Ok(())
    }

    /// Insert a header at `index` (0 is the top), its value sanitised.
    pub fn insert_header(
        &mut self,
        index: u32,
        name: &str,
        value: &str,
    ) -> Result<(), InvalidHeaderName> {
        let name = Self::checked_name(name)?;
        self.edits.push(Edit::InsertHeader {
            index,
            name,
            value: sanitize_value(value),
        });
        Ok(())
    }

    /// The header block as it will be once the MTA has applied this list to
    /// `original` (the headers as received), following the milter semantics
    /// of DESIGN §2: `InsertHeader` index 0 is the top and an index past the
    /// end appends; `ChangeHeader` and `DeleteHeader` count 1-based per name
    /// (case-insensitively, 0 meaning the first as Sendmail reads it), among
    /// the headers as they stand after the edits before them; a change with
    /// an index past the last instance appends, and one with an empty value
    /// deletes. Envelope edits leave the headers alone.
    ///
    /// Signers sign this, and tests verify it: it is what gets delivered,
    /// apart from the MTA's own `Received:` that no milter sees.
    pub fn resulting_headers(&self, original: &[Header]) -> Vec<Header> {
        self.model(original)
            .into_iter()
            .map(|h| match h.unchanged {
                Some(received) => received.clone(),
                None => Header::new(h.name, h.value),
            })
            .collect()
    }

    /// The one model of the header block as edited so far, from which every
    /// index is computed: each header borrowed from `original` or from an
    /// edit, and marked with whether the client sent it.
    fn model<'a>(&'a self, original: &'a [Header]) -> Vec<ModelHeader<'a>> {
        let mut headers: Vec<ModelHeader<'a>> = original
            .iter()
            .map(|h| ModelHeader {
                name: h.name(),
                value: h.value(),
                received: true,
                unchanged: Some(h),
            })
            .collect();
        for edit in &self.edits {
            match edit {
                Edit::AddHeader { name, value } => headers.push(ModelHeader::ours(name, value)),
                Edit::InsertHeader { index, name, value } => {
                    let at =
                        usize::try_from(*index).map_or(headers.len(), |i| i.min(headers.len()));
                    headers.insert(at, ModelHeader::ours(name, value));
                }
                Edit::ChangeHeader { name, index, value } => {
                    match nth_named(&headers, name, *index) {
                        Some(at) if value.is_empty() => {
                            headers.remove(at);
                        }
                        Some(at) => {
                            headers[at].value = value;
                            headers[at].unchanged = None;
                        }
                        None if value.is_empty() => {}
                        None => headers.push(ModelHeader::ours(name, value)),
                    }
                }
                Edit::DeleteHeader { name, index } => {
                    if let Some(at) = nth_named(&headers, name, *index) {
                        headers.remove(at);
                    }
                }
                Edit::AddRecipient { .. }
                | Edit::DeleteRecipient { .. }
                | Edit::ChangeSender { .. }
                | Edit::Quarantine { .. } => {}
            }
        }
        headers
    }

    /// Delete every received header called `name`.
    pub(crate) fn delete_headers_named(&mut self, name: &str, original: &[Header]) {
        self.delete_headers_where(name, original, |_| true);
    }

    /// Delete the received headers called `name` whose value satisfies
    /// `pred`. Indexes count the headers as this list has left them so far
    /// (an earlier insert or delete of the same name shifts them), and the
    /// highest goes first so each stays valid while the MTA applies them.
    /// Headers this list added are never deleted here: a deletion meant for
    /// what the client sent cannot take our own Authentication-Results.
    pub fn delete_headers_where(
        &mut self,
        name: &str,
        original: &[Header],
        pred: impl Fn(&str) -> bool,
    ) {
        let doomed: Vec<(u32, String)> = self
            .model(original)
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .zip(1u32..)
            .filter(|(h, _)| h.received && pred(h.value))
            .map(|(h, index)| (index, h.name.to_string()))
            .collect();
        for (index, name) in doomed.into_iter().rev() {
            self.edits.push(Edit::DeleteHeader { name, index });
        }
    }
}

/// One header in [`EditList::model`].
struct ModelHeader<'a> {
    name: &'a str,
    value: &'a str,
    /// Sent by the client (possibly changed by an edit since), not added.
    received: bool,
    /// The header as received while no edit has changed it: what is
    /// delivered keeps its exact bytes (DKIM signatures depend on them).
    unchanged: Option<&'a Header>,
}

impl<'a> ModelHeader<'a> {
    fn ours(name: &'a str, value: &'a str) -> Self {
        ModelHeader {
            name,
            value,
            received: false,
            unchanged: None,
        }
    }
}

/// The position in `headers` of the `index`-th (1-based, 0 read as 1)
/// header called `name`, compared case-insensitively.
fn nth_named(headers: &[ModelHeader<'_>], name: &str, index: u32) -> Option<usize> {
    let skip = usize::try_from(index.max(1) - 1).ok()?;
    headers
        .iter()
        .enumerate()
        .filter(|(_, h)| h.name.eq_ignore_ascii_case(name))
        .nth(skip)
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_values_are_trimmed_copies() {
        assert_eq!(sanitize_value("  a\tb c  "), "a\tb c");
        assert_eq!(
            sanitize_value("mx.example.org; spf=pass"),
            "mx.example.org; spf=pass"
        );
        // The slow path, unchanged: CR dropped, LF a space, BEL dropped.
        assert_eq!(sanitize_value(" x\r\n y\u{7}"), "x  y");
    }

    #[test]
    fn values_cannot_inject_headers() {
        let mut list = EditList::new();
        list.add_header("X-Sender", "evil@example.org\r\nBcc: victim@example.org")
            .unwrap();
        match &list.edits()[0] {
            Edit::AddHeader { value, .. } => {
                assert!(!value.contains('\n') && !value.contains('\r'));
                assert_eq!(value, "evil@example.org Bcc: victim@example.org");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(list.add_header("X-Bad:Name", "v").is_err());
        assert_eq!(
            list.insert_header(0, "X-Bad:\r\nName", "v")
                .unwrap_err()
                .to_string(),
            "invalid header name \"X-Bad: Name\""
        );
        assert!(list.add_header("X Bad", "v").is_err());
        assert!(list.add_header("", "v").is_err());
    }

    #[test]
    fn deletes_highest_index_first() {
        let headers = vec![
            Header::new("Received", "a"),
            Header::new("X-Spam", "1"),
            Header::new("x-spam", "2"),
            Header::new("X-SPAM", "3"),
        ];
        let mut list = EditList::new();
        list.delete_headers_named("X-Spam", &headers);
        let indexes: Vec<u32> = list
            .edits()
            .iter()
            .map(|e| match e {
                Edit::DeleteHeader { index, .. } => *index,
                _ => 0,
            })
            .collect();
        assert_eq!(indexes, vec![3, 2, 1]);
    }

    fn h(name: &str, value: &str) -> Header {
        Header::new(name, value)
    }

    fn shown(headers: &[Header]) -> Vec<String> {
        headers
            .iter()
            .map(|h| format!("{}: {}", h.name(), h.value()))
            .collect()
    }

    #[test]
    fn resulting_headers_add_and_insert() {
        let original = vec![h("Received", "r1"), h("From", "a@example.org")];
        let mut list = EditList::new();
        list.add_header("X-Bottom", "b").unwrap();
        list.insert_header(0, "X-Top", "t").unwrap();
        list.insert_header(0, "X-Above", "a").unwrap();
        list.insert_header(2, "X-Third", "3").unwrap();
        // Past the end appends.
        list.insert_header(99, "X-Last", "l").unwrap();
        assert_eq!(
            shown(&list.resulting_headers(&original)),
            [
                "X-Above: a",
                "X-Top: t",
                "X-Third: 3",
                "Received: r1",
                "From: a@example.org",
                "X-Bottom: b",
                "X-Last: l",
            ]
        );
        // The original is left alone.
        assert_eq!(original.len(), 2);
    }

    #[test]
    fn resulting_headers_change_and_delete_count_per_name() {
        let original = vec![
            h("X-Spam", "1"),
            h("Subject", "s"),
            h("x-spam", "2"),
            h("X-SPAM", "3"),
        ];
        let mut list = EditList::new();
        // Highest index first, as delete_headers_named emits them.
        list.delete_headers_where("X-Spam", &original, |v| v != "2");
        assert_eq!(
            shown(&list.resulting_headers(&original)),
            ["Subject: s", "x-spam: 2"]
        );

        let mut list = EditList::new();
        list.push(Edit::ChangeHeader {
            name: "x-spam".into(),
            index: 2,
            value: "two".into(),
        });
        // Index 0 reads as the first instance.
        list.push(Edit::ChangeHeader {
            name: "SUBJECT".into(),
            index: 0,
            value: "new".into(),
        });
        // An empty value deletes; what follows counts without it.
        list.push(Edit::ChangeHeader {
            name: "X-Spam".into(),
            index: 1,
            value: String::new(),
        });
        list.push(Edit::DeleteHeader {
            name: "X-Spam".into(),
            index: 2,
        });
        // Past the last instance: a change appends, a delete does nothing.
        list.push(Edit::ChangeHeader {
            name: "X-New".into(),
            index: 3,
            value: "n".into(),
        });
        list.push(Edit::ChangeHeader {
            name: "X-Gone".into(),
            index: 1,
            value: String::new(),
        });
        list.push(Edit::DeleteHeader {
            name: "Subject".into(),
            index: 2,
        });
        list.push(Edit::AddRecipient {
            address: "b@example.org".into(),
            args: None,
        });
        assert_eq!(
            shown(&list.resulting_headers(&original)),
            ["Subject: new", "x-spam: two", "X-New: n"]
        );
    }

    #[test]
    fn a_second_deletion_counts_what_the_first_left() {
        // Two remove_header modifiers on three instances: the first takes
        // X-Tag[1]; the second, meant for "c", must then name X-Tag[2].
        let original = vec![h("X-Tag", "a"), h("X-Tag", "b"), h("X-Tag", "c")];
        let mut list = EditList::new();
        list.delete_headers_where("X-Tag", &original, |v| v == "a");
        list.delete_headers_where("X-Tag", &original, |v| v == "c");
        assert_eq!(
            list.edits(),
            [
                Edit::DeleteHeader {
                    name: "X-Tag".into(),
                    index: 1
                },
                Edit::DeleteHeader {
                    name: "X-Tag".into(),
                    index: 2
                },
            ]
        );
        assert_eq!(shown(&list.resulting_headers(&original)), ["X-Tag: b"]);
    }

    #[test]
    fn our_own_header_is_counted_and_never_deleted() {
        let original = vec![
            h("Authentication-Results", "mx.example.org; dkim=pass"),
            h("Authentication-Results", "other.example; spf=pass"),
        ];
        let mut list = EditList::new();
        list.delete_headers_where("Authentication-Results", &original, |v| {
            v.starts_with("mx.example.org")
        });
        list.insert_header(0, "Authentication-Results", "mx.example.org; dkim=fail")
            .unwrap();
        // A later deletion of every Authentication-Results the client sent.
        list.delete_headers_named("Authentication-Results", &original);
        assert_eq!(
            shown(&list.resulting_headers(&original)),
            ["Authentication-Results: mx.example.org; dkim=fail"]
        );
    }

    /// An MTA applying edits the way Postfix does (DESIGN §2), written
    /// apart from `EditList::model`: each header is an id; a name index
    /// counts instances of that name from 1 in the list as it stands.
    fn mta_apply(
        original: &[(String, usize)],
        edits: &[Edit],
        next_id: &mut usize,
    ) -> Vec<(String, usize)> {
        let mut list = original.to_vec();
        for edit in edits {
            match edit {
                Edit::InsertHeader { index, name, .. } => {
                    let at = (*index as usize).min(list.len());
                    list.insert(at, (name.clone(), *next_id));
                    *next_id += 1;
                }
                Edit::AddHeader { name, .. } => {
                    list.push((name.clone(), *next_id));
                    *next_id += 1;
                }
                Edit::DeleteHeader { name, index } => {
                    let mut seen = 0;
                    let pos = list.iter().position(|(n, _)| {
                        if n.eq_ignore_ascii_case(name) {
                            seen += 1;
                        }
                        n.eq_ignore_ascii_case(name) && seen == *index
                    });
                    if let Some(pos) = pos {
                        list.remove(pos);
                    }
                }
                other => panic!("not generated: {other:?}"),
            }
        }
        list
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u32, usize),
        Add(usize),
        /// Delete received headers of this name whose id is in the set.
        Delete(usize, Vec<bool>),
    }

    const NAMES: [&str; 3] = ["X-Tag", "x-tag", "Authentication-Results"];

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..8, 0..NAMES.len()).prop_map(|(i, n)| Op::Insert(i, n)),
            (0..NAMES.len()).prop_map(Op::Add),
            (0..NAMES.len(), proptest::collection::vec(any::<bool>(), 8))
                .prop_map(|(n, pick)| Op::Delete(n, pick)),
        ]
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn deletions_reach_exactly_the_headers_they_mean(
            names in proptest::collection::vec(0..NAMES.len(), 0..8),
            ops in proptest::collection::vec(op(), 0..8),
        ) {
            // Header i's value is its id, so a predicate can pick by id.
            let original: Vec<Header> = names
                .iter()
                .enumerate()
                .map(|(id, &n)| h(NAMES[n], &id.to_string()))
                .collect();
            let mut list = EditList::new();
            let mut deleted = vec![false; original.len()];
            for op in &ops {
                match op {
                    Op::Insert(i, n) => list.insert_header(*i, NAMES[*n], "ours").unwrap(),
                    Op::Add(n) => list.add_header(NAMES[*n], "ours").unwrap(),
                    Op::Delete(n, pick) => {
                        let before = list.resulting_headers(&original);
                        list.delete_headers_where(NAMES[*n], &original, |v| {
                            v.parse::<usize>().is_ok_and(|id| pick[id])
                        });
                        // What it meant: the received headers of that name
                        // still there whose id was picked.
                        for hd in &before {
                            if let Ok(id) = hd.value().parse::<usize>()
                                && hd.name().eq_ignore_ascii_case(NAMES[*n])
                                && pick[id]
                            {
                                deleted[id] = true;
                            }
                        }
                    }
                }
            }
            let ids: Vec<(String, usize)> = original
                .iter()
                .enumerate()
                .map(|(id, hd)| (hd.name().to_string(), id))
                .collect();
            let mut next_id = original.len();
            let after = mta_apply(&ids, list.edits(), &mut next_id);
            let received: Vec<usize> = after.iter().map(|(_, id)| *id).filter(|id| *id < original.len()).collect();
            let expected: Vec<usize> = (0..original.len()).filter(|id| !deleted[*id]).collect();
            prop_assert_eq!(received, expected);
            let ours = after.iter().filter(|(_, id)| *id >= original.len()).count();
            let added = ops.iter().filter(|o| !matches!(o, Op::Delete(..))).count();
            prop_assert_eq!(ours, added, "every header we added is delivered");
            // And our own model agrees with the MTA's.
            let model: Vec<String> = list.resulting_headers(&original).into_iter().map(|h| h.name().to_string()).collect();
            let mta: Vec<String> = after.into_iter().map(|(n, _)| n).collect();
            prop_assert_eq!(model, mta);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever a client or a table puts into a value, what reaches a
        /// header is one line without NUL or other control characters but
        /// TAB, trimmed, and sanitising it again changes nothing.
        #[test]
        fn sanitized_values_are_one_clean_line(
            value in "[ \\t\\r\\n\\x00\\x01\\x1b\\x7fa-z;=:ü\u{85}\u{2028}\u{3000}]{0,40}",
        ) {
            let clean = sanitize_value(&value);
            prop_assert!(!clean.contains(|c: char| c.is_control() && c != '\t'), "{:?}", clean);
            prop_assert_eq!(clean.trim(), clean.as_str());
            prop_assert_eq!(sanitize_value(&clean), clean.clone());
            // Text that was clean already is only trimmed.
            if !value.contains(|c: char| c.is_control() && c != '\t') {
                prop_assert_eq!(clean, value.trim());
            }
        }
    }
}
