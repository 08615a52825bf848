//! Configuration errors that name the file, line and column, and say what to
//! do. Errors are collected so an administrator can fix them all in one pass.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One configuration error: where it is and what is wrong.
#[derive(Clone, Debug)]
pub struct ConfigError {
    /// The file the error is in.
    pub file: PathBuf,
    /// 1-based line and column, when the error points into a file.
    pub position: Option<(usize, usize)>,
    /// What is wrong, lowercase and without a trailing period.
    pub message: String,
    /// What to do about it, printed on its own line after `hint:`.
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// All errors found in one configuration, in file order.
#[derive(Clone, Debug, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Turns byte offsets of one source file into line and column numbers and
/// collects errors against it.
pub struct Diagnostics<'a> {
    file: &'a Path,
    source: &'a str,
    errors: Vec<ConfigError>,
}

impl<'a> Diagnostics<'a> {
    /// Diagnostics for `source`, the text of `file`.
    pub fn new(file: &'a Path, source: &'a str) -> Self {
        Diagnostics {
            file,
            source,
            errors: Vec::new(),
        }
    }

    /// The file the errors are reported against.
    pub fn file(&self) -> &Path {
        self.file
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let before = &self.source[..floor_char_boundary(self.source, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    /// Record an error at the start of `span`.
    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.push(Some(span), message.into(), None);
    }

    pub(crate) fn error_hint(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(Some(span), message.into(), Some(hint.into()));
    }

    /// Record an error, at the start of `span` when there is one, with an optional hint.
    pub fn push(&mut self, span: Option<Range<usize>>, message: String, hint: Option<String>) {
        let position = span.map(|s| self.position(s.start));
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            position,
            message,
            hint,
        });
    }

    pub(crate) fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    pub(crate) fn into_errors(mut self) -> ConfigErrors {
        self.errors
            .sort_by_key(|e| e.position.unwrap_or((usize::MAX, usize::MAX)));
        ConfigErrors(self.errors)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The regex crate's error, reduced to its last line without the `error: `
/// prefix, so it reads well after our own message.
pub(crate) fn regex_error_text(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().last().unwrap_or_default().trim();
    last.strip_prefix("error: ").unwrap_or(last).to_string()
}

/// The closest of `candidates` to `word`, for "did you mean" hints.
pub(crate) fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_in_characters() {
        let src = "a = 1\nbü = 2\n";
        let d = Diagnostics::new(Path::new("x.toml"), src);
        assert_eq!(d.position(0), (1, 1));
        assert_eq!(d.position(6), (2, 1));
        assert_eq!(d.position(src.find('=').unwrap()), (1, 3));
        let second_eq = src.rfind('=').unwrap();
        assert_eq!(d.position(second_eq), (2, 4));
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("tiemout", ["timeout", "kind"]),
            Some("timeout")
        );
        assert_eq!(did_you_mean("zzz", ["timeout", "kind"]), None);
    }
}
