//! A serde deserializer over one block's options, so that each kind reads its
//! keys into a struct of its own (`#[derive(Deserialize)]`,
//! `#[serde(deny_unknown_fields)]`) while every error keeps the line and
//! column of the key it is about and reads like the hand-written messages did:
//! "`max_size` in check \"size\" must be a size such as …, found string \"ten\"".
//!
//! toml's own deserializer cannot be used here: the block has already been
//! parsed once into spanned values (the compiler needs `kind` before it knows
//! which struct to read), and a `toml::Value` forgets its spans. This one
//! walks the parsed values, knows which top-level key it is inside, and
//! returns errors that say what is wrong as a phrase the caller places after
//! the key's name.

use serde::de::{self, DeserializeSeed, IntoDeserializer, Unexpected, Visitor};
use std::cell::Cell;
use std::fmt;
use toml::Value;

/// What is wrong with one value, without where it is: the caller knows the
/// key and its span.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Problem {
    /// A phrase that follows the key's name: "must be a string, found …".
    Predicate(String),
    /// A key inside a nested table that the struct does not know.
    UnknownKey {
        key: String,
        expected: &'static [&'static str],
    },
    /// A required key is missing (in a nested table when `path` is not empty).
    Missing(&'static str),
}

/// A [`Problem`] and the path below the top-level key where it was found
/// (`["lists", "0", "zone"]` for `lists[0].zone`), innermost last.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OptionError {
    pub problem: Problem,
    pub path: Vec<String>,
}

impl OptionError {
    fn predicate(text: String) -> Self {
        OptionError {
            problem: Problem::Predicate(text),
            path: Vec::new(),
        }
    }

    fn within(mut self, segment: String) -> Self {
        self.path.insert(0, segment);
        self
    }
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            Problem::Predicate(p) => write!(f, "{p}"),
            Problem::UnknownKey { key, .. } => write!(f, "unknown key `{key}`"),
            Problem::Missing(key) => write!(f, "needs `{key}`"),
        }
    }
}

impl std::error::Error for OptionError {}

impl de::Error for OptionError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        OptionError::predicate(msg.to_string())
    }

    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        OptionError::predicate(format!("must be {}, found {}", plain(exp), Found(unexp)))
    }

    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        OptionError::predicate(format!("must be {}, found {}", plain(exp), Found(unexp)))
    }

    fn invalid_length(len: usize, exp: &dyn de::Expected) -> Self {
        OptionError::predicate(format!("must be {exp}, found a list of {len}"))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let choices: Vec<String> = expected.iter().map(|v| format!("\"{v}\"")).collect();
        OptionError::predicate(format!("must be {}, found \"{variant}\"", one_of(&choices)))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        OptionError {
            problem: Problem::UnknownKey {
                key: field.to_string(),
                expected,
            },
            path: Vec::new(),
        }
    }

    fn missing_field(field: &'static str) -> Self {
        OptionError {
            problem: Problem::Missing(field),
            path: Vec::new(),
        }
    }

    fn duplicate_field(field: &'static str) -> Self {
        OptionError::predicate(format!("names `{field}` twice"))
    }
}

/// What serde expects, in the words of a configuration file: Rust's type
/// names mean nothing to an administrator.
fn plain(exp: &dyn de::Expected) -> String {
    let text = exp.to_string();
    let words = match text.as_str() {
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" | "usize" => "a whole number of 0 or more",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a sequence" => "a list",
        "a map" => "a table",
        _ if text.starts_with("struct ") => "a table",
        _ => return text,
    };
    words.to_string()
}

/// "a", "a or b", "a, b or c".
pub(crate) fn one_of(choices: &[String]) -> String {
    match choices {
        [] => String::new(),
        [only] => only.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// serde's description of a wrong value, in the words of a configuration file.
struct Found<'a>(Unexpected<'a>);

impl fmt::Display for Found<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            // Escaped: the value is whatever the file holds, control
            // characters included, and the message goes to a terminal.
            Unexpected::Str(s) => write!(f, "\"{}\"", s.escape_debug()),
            Unexpected::Signed(i) => write!(f, "{i}"),
            Unexpected::Unsigned(u) => write!(f, "{u}"),
            Unexpected::Float(x) => write!(f, "{x}"),
            Unexpected::Bool(b) => write!(f, "{b}"),
            Unexpected::Seq => write!(f, "a list"),
            Unexpected::Map => write!(f, "a table"),
            ref other => write!(f, "{other}"),
        }
    }
}

/// Deserializes one parsed TOML value. `skip` names items of a list that are
/// read as if they were not there (the caller has reported them already).
pub(crate) struct ValueDeserializer<'v, 's> {
    value: &'v Value,
    skip: &'s [usize],
}

impl<'v> ValueDeserializer<'v, 'static> {
    fn new(value: &'v Value) -> Self {
        ValueDeserializer { value, skip: &[] }
    }
}

impl<'de> IntoDeserializer<'de, OptionError> for ValueDeserializer<'_, '_> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for ValueDeserializer<'_, '_> {
    type Error = OptionError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, OptionError> {
        match self.value {
            Value::String(s) => visitor.visit_str(s),
            Value::Integer(i) => visitor.visit_i64(*i),
            Value::Float(x) => visitor.visit_f64(*x),
            Value::Boolean(b) => visitor.visit_bool(*b),
            // Dates are no option's type, and read as text they would pass
            // for a header name or a selector: refuse them.
            Value::Datetime(_) => Err(de::Error::invalid_type(unexpected(self.value), &visitor)),
            Value::Array(items) => visitor.visit_seq(Items {
                items: items.iter().enumerate(),
                skip: self.skip,
            }),
            Value::Table(table) => visitor.visit_map(Entries {
                entries: table.iter().map(|(k, v)| (k.as_str(), v)),
                current: None,
                failed_at: None,
                skip: None,
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, OptionError> {
        // A key that is present has a value: TOML has no null.
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, OptionError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, OptionError> {
        match self.value {
            // A table, never a list of its values in field order (serde's
            // derive would accept `[["zone", "ip"]]` for `[{ zone, type }]`).
            Value::Table(_) => self.deserialize_any(visitor),
            other => Err(de::Error::invalid_type(unexpected(other), &visitor)),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, OptionError> {
        match self.value {
            // Options name their choices with plain words.
            Value::String(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            other => Err(de::Error::invalid_type(unexpected(other), &visitor)),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map
        identifier ignored_any
    }
}

fn unexpected(v: &Value) -> Unexpected<'_> {
    match v {
        Value::String(s) => Unexpected::Str(s),
        Value::Integer(i) => Unexpected::Signed(*i),
        Value::Float(x) => Unexpected::Float(*x),
        Value::Boolean(b) => Unexpected::Bool(*b),
        Value::Datetime(_) => Unexpected::Other("a date"),
        Value::Array(_) => Unexpected::Seq,
        Value::Table(_) => Unexpected::Map,
    }
}

/// The items of a list; an error names the item's position.
struct Items<'v, 's> {
    items: std::iter::Enumerate<std::slice::Iter<'v, Value>>,
    skip: &'s [usize],
}

impl<'de> de::SeqAccess<'de> for Items<'_, '_> {
    type Error = OptionError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, OptionError> {
        let skip = self.skip;
        let Some((index, item)) = self.items.find(|(i, _)| !skip.contains(i)) else {
            return Ok(None);
        };
        seed.deserialize(ValueDeserializer::new(item))
            .map(Some)
            .map_err(|e| e.within(format!("[{index}]")))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// The top level of a block: the entries not yet taken. serde's error cannot
/// carry a span, so the key whose value was being read when an error came up
/// is left in `failed_at` for the caller to place the message.
pub(crate) struct BlockDeserializer<'v, 'f> {
    pub entries: Vec<(&'v str, &'v Value)>,
    pub failed_at: &'f Cell<Option<&'v str>>,
    /// Per key, the items of its list to read as if absent.
    pub skip: &'f SkipItems,
}

/// Per top-level key, the positions of list items already reported as
/// wrong: the block is read again without them, so that each wrong item of
/// `lists` or `keys` is named, not only the first.
pub(crate) type SkipItems = std::collections::BTreeMap<String, Vec<usize>>;

impl<'de> de::Deserializer<'de> for BlockDeserializer<'_, '_> {
    type Error = OptionError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, OptionError> {
        visitor.visit_map(Entries {
            entries: self.entries.into_iter(),
            current: None,
            failed_at: Some(self.failed_at),
            skip: Some(self.skip),
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// The entries of a table: of a nested one, where an error names the
/// entry's key in its path, or of the block itself, where the key being read
/// is left in `failed_at` for the caller (which knows the key's span).
struct Entries<'v, 'f, I> {
    entries: I,
    current: Option<(&'v str, &'v Value)>,
    failed_at: Option<&'f Cell<Option<&'v str>>>,
    skip: Option<&'f SkipItems>,
}

impl<'de, 'v, I: Iterator<Item = (&'v str, &'v Value)>> de::MapAccess<'de> for Entries<'v, '_, I> {
    type Error = OptionError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, OptionError> {
        let next = self.entries.next();
        if let Some(failed_at) = self.failed_at {
            // Past the last key, what fails is the block (a missing key).
            failed_at.set(next.map(|(key, _)| key));
        }
        let Some((key, value)) = next else {
            return Ok(None);
        };
        self.current = Some((key, value));
        let key_de: de::value::StrDeserializer<'_, OptionError> = key.into_deserializer();
        seed.deserialize(key_de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, OptionError> {
        let Some((key, value)) = self.current.take() else {
            return Err(de::Error::custom("a value without its key"));
        };
        let skip = self
            .skip
            .and_then(|skip| skip.get(key))
            .map_or(&[][..], Vec::as_slice);
        let read = seed.deserialize(ValueDeserializer { value, skip });
        match self.failed_at {
            Some(failed_at) => {
                failed_at.set(Some(key));
                read
            }
            None => read.map_err(|e| e.within(key.to_string())),
        }
    }
}

/// The names of a struct's fields, as its `Deserialize` implementation gives
/// them to `deserialize_struct`: what a block may contain, known before any
/// value is read, so unknown keys are reported all together with a
/// suggestion, and a partial read takes only its own keys.
pub(crate) fn field_names<'de, T: de::Deserialize<'de>>() -> &'static [&'static str] {
    struct Probe<'f>(&'f mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("probed"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}
