//! Typed access to the free-form options of one check, modifier or table
//! block. Every key read is remembered, so `finish` can name unknown keys with
//! their line and column and suggest the closest known one.

use super::error::{Diagnostics, did_you_mean};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;
use toml::{Spanned, Value};

pub type RawOptions = BTreeMap<Spanned<String>, Spanned<Value>>;

pub struct Options<'d, 'a> {
    /// What the block is, for messages: `check "spam"`.
    what: String,
    span: Range<usize>,
    entries: RawOptions,
    known: BTreeSet<&'static str>,
    diag: &'d mut Diagnostics<'a>,
}

impl<'d, 'a> Options<'d, 'a> {
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
            diag,
        }
    }

    /// `check "spam"`, `modifier "plus"`: the subject of error messages.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// The span of the whole block, for errors about a missing key.
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    pub fn diag(&mut self) -> &mut Diagnostics<'a> {
        self.diag
    }

    /// Report an error at a span.
    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.diag.error(span, message);
    }

    /// The raw value of a key, marking the key as known.
    pub fn value(&mut self, key: &'static str) -> Option<Spanned<Value>> {
        self.known.insert(key);
        self.entries
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(_, v)| v.clone())
    }

    fn typed<T>(
        &mut self,
        key: &'static str,
        expected: &str,
        get: impl Fn(&Value) -> Option<T>,
    ) -> Option<Spanned<T>> {
        let v = self.value(key)?;
        match get(v.get_ref()) {
            Some(t) => Some(Spanned::new(v.span(), t)),
            None => {
                let msg = format!(
                    "`{key}` in {} must be {expected}, found {}",
                    self.what,
                    v.get_ref().type_str()
                );
                self.diag.error(v.span(), msg);
                None
            }
        }
    }

    pub fn string(&mut self, key: &'static str) -> Option<Spanned<String>> {
        self.typed(key, "a string", |v| v.as_str().map(str::to_string))
    }

    pub fn required_string(&mut self, key: &'static str) -> Option<Spanned<String>> {
        let found = self.entries.iter().any(|(k, _)| k.get_ref() == key);
        if !found {
            self.known.insert(key);
            let msg = format!("{} needs `{key}`", self.what);
            self.diag.error(self.span.clone(), msg);
            return None;
        }
        self.string(key)
    }

    pub fn bool(&mut self, key: &'static str) -> Option<bool> {
        self.typed(key, "true or false", Value::as_bool)
            .map(Spanned::into_inner)
    }

    pub fn integer(&mut self, key: &'static str) -> Option<Spanned<i64>> {
        self.typed(key, "an integer", Value::as_integer)
    }

    /// A non-negative number that may be written as an integer or a float.
    pub fn number(&mut self, key: &'static str) -> Option<Spanned<f64>> {
        self.typed(key, "a number", |v| {
            v.as_float().or_else(|| v.as_integer().map(|i| i as f64))
        })
    }

    /// A size such as `10485760`, `"10M"` or `"512K"` (powers of 1024).
    pub fn size(&mut self, key: &'static str) -> Option<u64> {
        let v = self.value(key)?;
        let parsed = match v.get_ref() {
            Value::Integer(i) if *i >= 0 => Some(*i as u64),
            Value::String(s) => parse_size(s),
            _ => None,
        };
        if parsed.is_none() {
            let msg = format!(
                "`{key}` in {} must be a size such as 10485760, \"512K\", \"10M\" or \"1G\"",
                self.what
            );
            self.diag.error(v.span(), msg);
        }
        parsed
    }

    /// A duration written with units: `"5s"`, `"250ms"`, `"2m"`.
    pub fn duration(&mut self, key: &'static str) -> Option<Duration> {
        let v = self.string(key)?;
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => {
                let msg = format!(
                    "`{key}` in {} must be a duration with units such as \"5s\" or \"250ms\", found \"{}\"",
                    self.what,
                    v.get_ref()
                );
                self.diag.error(v.span(), msg);
                None
            }
        }
    }

    /// A list of strings; a single string is accepted as a list of one.
    pub fn string_list(&mut self, key: &'static str) -> Option<Spanned<Vec<String>>> {
        self.typed(key, "a string or a list of strings", |v| match v {
            Value::String(s) => Some(vec![s.clone()]),
            Value::Array(a) => a.iter().map(|x| x.as_str().map(str::to_string)).collect(),
            _ => None,
        })
    }

    /// A regular expression (Rust `regex` syntax), compiled once here.
    pub fn regex(&mut self, key: &'static str) -> Option<regex::Regex> {
        let v = self.string(key)?;
        match regex::Regex::new(v.get_ref()) {
            Ok(re) => Some(re),
            Err(e) => {
                let detail = super::error::regex_error_text(&e);
                let msg = format!(
                    "invalid regex \"{}\" in {}: {detail}",
                    v.get_ref(),
                    self.what
                );
                self.diag.error(v.span(), msg);
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
            ..
        } = self;
        for (key, _) in entries.iter() {
            if known.contains(key.get_ref().as_str()) {
                continue;
            }
            let message = format!("unknown key `{}` in {what}", key.get_ref());
            let hint = match did_you_mean(key.get_ref(), known.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!(
                    "known keys here: {}",
                    known.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            };
            diag.push(Some(key.span()), message, Some(hint));
        }
    }
}

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
    use super::parse_size;

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
