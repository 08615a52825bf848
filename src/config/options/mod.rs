//! The options of one check, modifier or table block. A kind reads its keys
//! into a struct of its own with [`Options::parse`] (serde, with
//! `deny_unknown_fields`); the compiler takes the keys every kind shares
//! first, with [`Options::take`]. Every key read is remembered, so unknown
//! keys are named with their line and column and the closest known one.

mod de;
mod types;

use de::{BlockDeserializer, OptionError, Problem, SkipItems};
pub use types::{Interval, OneOrMany, Size};

use super::error::{Diagnostics, did_you_mean};
use serde::de::DeserializeOwned;
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use toml::{Spanned, Value};

pub(crate) type RawOptions = BTreeMap<Spanned<String>, Spanned<Value>>;

/// The keys of one block that a kind reads, with what it has read so far, so that
/// every wrong or unknown key is reported against the block's file.
pub struct Options<'d, 'a> {
    /// What the block is, for messages: `check "spam"`.
    what: String,
    span: Range<usize>,
    entries: RawOptions,
    known: BTreeSet<&'static str>,
    /// Whether `parse` has reported the unknown keys already.
    reported_unknown: bool,
    /// The required keys with an example value each, in the order the
    /// kind declared them (the order their absence is reported in).
    examples: Vec<(&'static str, &'static str)>,
    diag: &'d mut Diagnostics<'a>,
}

impl<'d, 'a> Options<'d, 'a> {
    /// The keys `entries` of the block `what` (such as `check "spam"`) at `span`,
    /// reporting into `diag`.
    pub fn new(
        what: String,
        span: Range<usize>,
        entries: RawOptions,
        diag: &'d mut Diagnostics<'a>,
    ) -> Self {
        Options {
            what,
            span,
            entries,
            known: BTreeSet::new(),
            reported_unknown: false,
            examples: Vec::new(),
            diag,
        }
    }

    /// Say that `key` is required, with an example of its value: before
    /// [`parse`](Self::parse) reads anything, every required key that is
    /// absent is named at the block ("check \"size\" needs `max_size`, such
    /// as \"10M\""), all of them in one run, where serde would stop at the
    /// first. The kind's struct holds the key as a plain (not `Option`) field.
    pub fn required(&mut self, key: &'static str, example: &'static str) -> &mut Self {
        self.examples.push((key, example));
        self
    }

    /// A required key (one given to [`required`](Self::required)) that the
    /// block lacks, already reported by `parse`.
    fn reported_missing(&self, key: &str) -> bool {
        self.examples.iter().any(|(k, _)| *k == key) && self.span_of(key).is_none()
    }

    /// "needs `key`", with the key's example when there is one.
    fn needs(&self, key: &str) -> String {
        match self.examples.iter().find(|(k, _)| *k == key) {
            Some((_, example)) => format!("needs `{key}`, such as {example}"),
            None => format!("needs `{key}`"),
        }
    }

    /// `check "spam"`, `modifier "plus"`: the subject of error messages.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// The span of the whole block, for errors about a missing key.
    pub(crate) fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    pub(crate) fn diag(&mut self) -> &mut Diagnostics<'a> {
        self.diag
    }

    /// Report an error at a span: a message, or any error type in its
    /// own words (a resolver that cannot be set up, a key file).
    pub fn error(&mut self, span: Range<usize>, message: impl std::fmt::Display) {
        self.diag.error(span, message.to_string());
    }

    /// Read the keys that are still untaken into `T`, the kind's own
    /// options: a struct with `#[serde(deny_unknown_fields)]`. Keys that `T`
    /// does not name are reported (with the closest one `T` has), and so is
    /// every value that does not fit, at its line and column. `None` when a
    /// value is wrong or a required key is absent; after unknown keys alone,
    /// what was read, so that the kind's own checks still run (the unknown
    /// keys have made the configuration fail already).
    pub fn parse<T: DeserializeOwned>(&mut self) -> Option<T> {
        let fields = de::field_names::<T>();
        let untaken: Vec<Spanned<String>> = self
            .entries
            .keys()
            .filter(|k| !self.known.contains(k.get_ref().as_str()))
            .cloned()
            .collect();
        for key in untaken {
            if !fields.contains(&key.get_ref().as_str()) {
                let message = format!("unknown key `{}` in {}", key.get_ref(), self.what);
                // The keys every kind shares are known here too, and a
                // misspelt `timeout` is as likely as a misspelt own key.
                let candidates = fields.iter().copied().chain(self.known.iter().copied());
                let hint = suggestion(key.get_ref(), candidates);
                self.diag.push(Some(key.span()), message, Some(hint));
            }
        }
        let absent: Vec<&'static str> = self
            .examples
            .iter()
            .map(|(key, _)| *key)
            .filter(|key| self.reported_missing(key))
            .collect();
        for key in &absent {
            let message = format!("{} {}", self.what, self.needs(key));
            self.diag.error(self.span.clone(), message);
        }
        let parsed = self.deserialize::<T>(fields, Partial::Refused);
        // Unknown keys are reported here: `finish` must not repeat them.
        let all: Vec<String> = self.entries.keys().map(|k| k.get_ref().clone()).collect();
        for key in all {
            if let Some(field) = fields.iter().find(|f| **f == key) {
                self.known.insert(field);
            }
        }
        self.reported_unknown = true;
        // An unknown key takes nothing from the keys that were read, so the
        // kind still checks what they mean and every such error is named in
        // the same run; the unknown key has made the configuration fail.
        if absent.is_empty() { parsed } else { None }
    }

    /// Read the keys `T` names (a struct every kind shares, such as a check's
    /// `timeout` and `on_*`), leaving the others to the kind. A wrong value
    /// is reported and left out, so that the rest is still read and checked:
    /// the block's errors are all named in one run.
    pub fn take<T: DeserializeOwned>(&mut self) -> Option<T> {
        let fields = de::field_names::<T>();
        let parsed = self.deserialize::<T>(fields, Partial::Accepted);
        self.known.extend(fields.iter().copied());
        parsed
    }

    /// Deserialize the untaken entries that `fields` names. A wrong value
    /// is reported and the block read again without it, so that every wrong
    /// value of a block is named in one run, as a careful reader would list
    /// them; a key left out that way is not then reported as missing.
    fn deserialize<T: DeserializeOwned>(
        &mut self,
        fields: &'static [&'static str],
        partial: Partial,
    ) -> Option<T> {
        let mut failed: Vec<String> = Vec::new();
        let mut skip = SkipItems::new();
        // Each wrong value costs one more read of the block: a file with
        // thousands of wrong list items must not take minutes to refuse.
        let mut named = 0;
        loop {
            if named == MAX_NAMED_PER_BLOCK {
                let message = format!(
                    "{}: more wrong values than the {MAX_NAMED_PER_BLOCK} named here",
                    self.what
                );
                self.diag.error(self.span.clone(), message);
                return None;
            }
            let failed_at = Cell::new(None);
            let entries: Vec<(&str, &Value)> = self
                .entries
                .iter()
                .map(|(k, v)| (k.get_ref().as_str(), v.get_ref()))
                .filter(|(k, _)| fields.contains(k) && !self.known.contains(k))
                .filter(|(k, _)| !failed.iter().any(|f| f == k))
                .collect();
            let error = match T::deserialize(BlockDeserializer {
                entries,
                failed_at: &failed_at,
                skip: &skip,
            }) {
                Ok(t) if failed.is_empty() && skip.is_empty() => return Some(t),
                Ok(t) if partial == Partial::Accepted => return Some(t),
                Ok(_) => return None,
                Err(e) => e,
            };
            match failed_at.get().map(str::to_string) {
                // A wrong item of a list: named, then the block is read again
                // without it, so that the items after it are read too.
                Some(key) if let Some(index) = item_index(&error) => {
                    let skipped = skip.entry(key.clone()).or_default();
                    if skipped.contains(&index) {
                        failed.push(key);
                    } else {
                        skipped.push(index);
                        self.report(Some(&key), error);
                        named += 1;
                    }
                }
                // An error about the whole list once items were left out
                // ("must not be empty") comes of leaving them out.
                Some(key) if error.path.is_empty() && skip.contains_key(&key) => {
                    failed.push(key);
                }
                Some(key) => {
                    self.report(Some(&key), error);
                    failed.push(key);
                    named += 1;
                }
                None => {
                    let left_out = matches!(&error.problem,
                        Problem::Missing(field)
                            if failed.iter().any(|f| f == field) || self.reported_missing(field));
                    if !left_out {
                        self.report(None, error);
                    }
                    return None;
                }
            }
        }
    }

    /// Place a deserialization error: at the value of the key it is about,
    /// or at the block for a missing key.
    fn report(&mut self, key: Option<&str>, e: OptionError) {
        let what = self.what.clone();
        let Some(key) = key else {
            let message = match e.problem {
                Problem::Missing(field) => format!("{what} {}", self.needs(field)),
                other => format!(
                    "{what}: {}",
                    OptionError {
                        problem: other,
                        path: e.path
                    }
                ),
            };
            self.diag.error(self.span.clone(), message);
            return;
        };
        let span = self.span_of(key).unwrap_or_else(|| self.span.clone());
        let mut path = key.to_string();
        for segment in &e.path {
            if !segment.starts_with('[') {
                path.push('.');
            }
            path.push_str(segment);
        }
        match e.problem {
            Problem::Predicate(p) => self.diag.error(span, format!("`{path}` in {what} {p}")),
            Problem::Missing(field) => self
                .diag
                .error(span, format!("`{path}` in {what} needs `{field}`")),
            Problem::UnknownKey { key, expected } => {
                let hint = suggestion(&key, expected.iter().copied());
                self.diag.push(
                    Some(span),
                    format!("unknown key `{key}` in `{path}` of {what}"),
                    Some(hint),
                );
            }
        }
    }

    /// The span of a key's value.
    pub(crate) fn span_of(&self, key: &str) -> Option<Range<usize>> {
        self.entries
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(_, v)| v.span())
    }

    /// Report that a key's value, read well, still cannot be used:
    /// "`KEY` in WHAT PREDICATE", at the value (or the block when the key is
    /// absent). For checks a kind makes after [`parse`](Self::parse).
    pub fn invalid(&mut self, key: &str, predicate: impl std::fmt::Display) {
        let span = self.span_of(key).unwrap_or_else(|| self.span.clone());
        let message = format!("`{key}` in {} {predicate}", self.what);
        self.diag.error(span, message);
    }

    /// Compile the regular expression (Rust `regex` syntax) read from `key`,
    /// reporting a bad one at the key's value: "invalid regex \"(yes\" in
    /// check \"c\": unclosed group".
    pub fn compile_regex(&mut self, key: &str, pattern: &str) -> Option<regex::Regex> {
        match regex::Regex::new(pattern) {
            Ok(re) => Some(re),
            Err(e) => {
                let detail = super::error::regex_error_text(&e);
                let span = self.span_of(key).unwrap_or_else(|| self.span.clone());
                let msg = format!("invalid regex \"{pattern}\" in {}: {detail}", self.what);
                self.diag.error(span, msg);
                None
            }
        }
    }

    /// Report every key that no accessor asked for, with a suggestion.
    pub fn finish(self) {
        let Options {
            what,
            entries,
            known,
            diag,
            reported_unknown,
            ..
        } = self;
        if reported_unknown {
            return;
        }
        for (key, _) in entries.iter() {
            if known.contains(key.get_ref().as_str()) {
                continue;
            }
            let message = format!("unknown key `{}` in {what}", key.get_ref());
            let hint = suggestion(key.get_ref(), known.iter().copied());
            diag.push(Some(key.span()), message, Some(hint));
        }
    }
}

/// How many wrong values of one block are named before the rest are only
/// counted as more: enough for any mistake made by hand, and a bound on the
/// reads of a block (each named value is one more).
const MAX_NAMED_PER_BLOCK: usize = 32;

/// The position of the list item an error is in, when the error is inside
/// an item of a key's list (`lists[2].zone`: 2).
fn item_index(error: &OptionError) -> Option<usize> {
    let first = error.path.first()?;
    first.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// Whether a read that left wrong values out (after reporting them) gives
/// what remains.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Partial {
    Accepted,
    Refused,
}

/// "did you mean `x`?", or the keys there are.
fn suggestion<'k>(key: &str, known: impl Iterator<Item = &'k str> + Clone) -> String {
    match did_you_mean(key, known.clone()) {
        Some(s) => format!("did you mean `{s}`?"),
        None => format!("known keys here: {}", known.collect::<Vec<_>>().join(", ")),
    }
}

/// A byte count such as `1048576`, `"512K"`, `"64MiB"` or `"1G"` (binary units);
/// `None` when it is not one.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 1),
        Some((i, _)) => {
            let mult = match s[i..].trim().to_ascii_uppercase().as_str() {
                "" | "B" => 1,
                "K" | "KB" | "KIB" => 1 << 10,
                "M" | "MB" | "MIB" => 1 << 20,
                "G" | "GB" | "GIB" => 1 << 30,
                _ => return None,
            };
            (&s[..i], mult)
        }
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::path::Path;
    use std::time::Duration;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Example {
        max_size: Size,
        every: Option<Interval>,
        names: Option<OneOrMany>,
        mode: Option<Mode>,
        #[serde(default)]
        lists: Vec<List>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        Strict,
        Relaxed,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct List {
        zone: String,
        weight: Option<f64>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Shared {
        timeout: Option<Interval>,
    }

    /// Parse `text` as the block of `check "c"`, take `Shared`, then parse
    /// `Example`: what came out and every error, as the user would read it.
    fn read(text: &str) -> (Option<Example>, String) {
        let entries: RawOptions = toml::from_str(text).expect("valid TOML");
        let path = Path::new("c.toml");
        let mut diag = Diagnostics::new(path, text);
        let mut options = Options::new("check \"c\"".into(), 0..text.len(), entries, &mut diag);
        let _: Option<Shared> = options.take();
        let parsed = options.parse::<Example>();
        options.finish();
        let errors = if diag.has_errors() {
            diag.into_errors().to_string()
        } else {
            String::new()
        };
        (parsed, errors)
    }

    #[test]
    fn a_block_is_read_into_its_struct() {
        let (parsed, errors) = read(
            "timeout = \"2s\"\nmax_size = \"10M\"\nevery = \"250ms\"\nnames = \"a\"\n\
             mode = \"relaxed\"\nlists = [{ zone = \"z.test\", weight = 2 }]\n",
        );
        assert_eq!(errors, "");
        assert_eq!(
            parsed,
            Some(Example {
                max_size: Size(10 << 20),
                every: Some(Interval(Duration::from_millis(250))),
                names: Some(OneOrMany(vec!["a".into()])),
                mode: Some(Mode::Relaxed),
                lists: vec![List {
                    zone: "z.test".into(),
                    weight: Some(2.0),
                }],
            })
        );
    }

    #[test]
    fn a_wrong_value_is_named_at_its_position_with_what_was_found() {
        let (parsed, errors) = read("max_size = \"ten\"\n");
        assert_eq!(parsed, None);
        assert_eq!(
            errors,
            "c.toml:1:12: `max_size` in check \"c\" must be a size such as 10485760, \
             \"512K\", \"10M\" or \"1G\", found \"ten\""
        );
        let (_, errors) = read("max_size = 1\nevery = 5\n");
        assert_eq!(
            errors,
            "c.toml:2:9: `every` in check \"c\" must be a duration with units such as \
             \"5s\" or \"250ms\", found 5"
        );
    }

    #[test]
    fn every_absent_required_key_is_named_with_its_example() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Signer {
            domain: String,
            selector: String,
            key: String,
        }
        let text = "domain = \"example.org\"\n";
        let entries: RawOptions = toml::from_str(text).expect("valid TOML");
        let mut diag = Diagnostics::new(Path::new("c.toml"), text);
        let mut options = Options::new("modifier \"m\"".into(), 0..text.len(), entries, &mut diag);
        let parsed = options
            .required("domain", "\"example.org\"")
            .required("selector", "\"s1\"")
            .required("key", "\"k.pem\"")
            .parse::<Signer>();
        options.finish();
        assert!(parsed.is_none());
        assert_eq!(
            diag.into_errors().to_string(),
            "c.toml:1:1: modifier \"m\" needs `selector`, such as \"s1\"\n\
             c.toml:1:1: modifier \"m\" needs `key`, such as \"k.pem\""
        );
    }

    #[test]
    fn dates_and_positional_lists_are_not_options() {
        // A TOML date read as text would pass for a header name or a
        // selector; a list would fill a table's fields in order.
        let (_, errors) = read("max_size = 1\nnames = 1979-05-27\n");
        assert_eq!(
            errors,
            "c.toml:2:9: `names` in check \"c\" must be a string or a list of strings, found a date"
        );
        let (_, errors) = read("max_size = 1\nlists = [[\"z.test\", 2]]\n");
        assert_eq!(
            errors,
            "c.toml:2:9: `lists[0]` in check \"c\" must be a table, found a list"
        );
    }

    #[test]
    fn every_wrong_item_of_a_list_is_named() {
        let (parsed, errors) = read(
            "max_size = 1\nlists = [{ zone = 5 }, { zone = \"a\" }, { zone = \"b\", wieght = 1 }, 7]\n",
        );
        assert_eq!(parsed, None);
        let lines: Vec<&str> = errors
            .lines()
            .filter(|l| !l.starts_with("  hint"))
            .collect();
        assert_eq!(
            lines,
            [
                "c.toml:2:9: `lists[0].zone` in check \"c\" must be a string, found 5",
                "c.toml:2:9: unknown key `wieght` in `lists[2]` of check \"c\"",
                "c.toml:2:9: `lists[3]` in check \"c\" must be a table, found 7",
            ],
            "{errors}"
        );
    }

    #[test]
    fn a_block_with_very_many_wrong_items_is_refused_in_bounded_work() {
        let items = vec!["{ zone = 5 }"; 5000].join(", ");
        let (parsed, errors) = read(&format!("max_size = 1\nlists = [{items}]\n"));
        assert_eq!(parsed, None);
        let lines: Vec<&str> = errors.lines().collect();
        assert_eq!(lines.len(), MAX_NAMED_PER_BLOCK + 1, "{errors}");
        assert_eq!(
            lines[0],
            "c.toml:1:1: check \"c\": more wrong values than the 32 named here"
        );
        assert!(lines[32].contains("`lists[31].zone`"), "{errors}");
    }

    #[test]
    fn a_found_value_is_escaped() {
        // A bell or an escape sequence in the file must not reach the
        // terminal that shows the error.
        let (_, errors) = read("max_size = \"1\\u001b[2J\"\n");
        assert!(errors.ends_with(r#"found "1\u{1b}[2J""#), "{errors}");
    }

    #[test]
    fn every_wrong_value_of_a_block_is_named() {
        // The first wrong value must not hide the others, and a required key
        // whose value was wrong is not then called missing.
        let (parsed, errors) = read("max_size = \"ten\"\nevery = 5\nmode = \"x\"\n");
        assert_eq!(parsed, None);
        let lines: Vec<&str> = errors.lines().collect();
        assert_eq!(lines.len(), 3, "{errors}");
        assert!(lines[0].starts_with("c.toml:1:12: `max_size`"), "{errors}");
        assert!(lines[1].starts_with("c.toml:2:9: `every`"), "{errors}");
        assert!(lines[2].starts_with("c.toml:3:8: `mode`"), "{errors}");
        let (_, errors) = read("max_size = 1\nlists = [{ zone = 5 }]\nevery = 5\n");
        assert_eq!(errors.lines().count(), 2, "{errors}");
    }

    #[test]
    fn unknown_keys_are_all_named_with_the_closest_known_one() {
        let (parsed, errors) = read("max_size = 1\ntiemout = \"1s\"\nmax_sise = 2\n");
        // What was read is still given, so that the kind checks what it
        // means in the same run; the errors have failed the file.
        assert_eq!(parsed.map(|p| p.max_size), Some(Size(1)));
        assert_eq!(
            errors,
            "c.toml:2:1: unknown key `tiemout` in check \"c\"\n  hint: did you mean `timeout`?\n\
             c.toml:3:1: unknown key `max_sise` in check \"c\"\n  hint: did you mean `max_size`?"
        );
    }

    #[test]
    fn a_missing_key_is_named_at_the_block() {
        let (_, errors) = read("every = \"1s\"\n");
        assert_eq!(errors, "c.toml:1:1: check \"c\" needs `max_size`");
    }

    #[test]
    fn errors_inside_lists_and_tables_name_the_path() {
        let (_, errors) = read("max_size = 1\nlists = [{ zone = \"a\" }, { zone = 5 }]\n");
        assert_eq!(
            errors,
            "c.toml:2:9: `lists[1].zone` in check \"c\" must be a string, found 5"
        );
        let (_, errors) = read("max_size = 1\nlists = [{ zone = \"a\", wieght = 1 }]\n");
        assert_eq!(
            errors,
            "c.toml:2:9: unknown key `wieght` in `lists[0]` of check \"c\"\n  \
             hint: did you mean `weight`?"
        );
        let (_, errors) = read("max_size = 1\nlists = [{ weight = 1 }]\n");
        assert_eq!(errors, "c.toml:2:9: `lists[0]` in check \"c\" needs `zone`");
    }

    #[test]
    fn a_choice_lists_the_words_it_knows() {
        let (_, errors) = read("max_size = 1\nmode = \"strikt\"\n");
        assert_eq!(
            errors,
            "c.toml:2:8: `mode` in check \"c\" must be \"strict\" or \"relaxed\", found \"strikt\""
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10"), Some(10));
        assert_eq!(parse_size("512K"), Some(512 * 1024));
        assert_eq!(parse_size("10M"), Some(10 << 20));
        assert_eq!(parse_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_size("10X"), None);
    }
}
