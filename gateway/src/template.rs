//! `google.api.http` path templates: parsed from an `HttpRule` pattern, matched against raw request
//! paths, ranked when several match the same path, and checked for conflicts.
//!
//! # Grammar
//!
//! ```text
//! Template  = "/" Segments [ Verb ] ;
//! Segments  = Segment { "/" Segment } ;
//! Segment   = "*" | "**" | LITERAL | Variable ;
//! Variable  = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb      = ":" LITERAL ;
//! ```
//!
//! [`PathTemplate::parse`] reads it as follows (as grpc-gateway does where `http.proto` is silent):
//!
//! - A `LITERAL` is one or more RFC 3986 `pchar`s, `[A-Za-z0-9-._~!$&'()*+,;=:@]`, and `%XX`
//!   escapes; anything else (a space, `?`, `#`, non-ASCII text) must be percent-encoded.
//! - A segment that starts with `*` is a wildcard and must be exactly `*` or `**`.
//! - The verb is the text after the **last** `:` of the last segment, outside braces:
//!   `/v1/a:b:c` is the literal `a:b` with the verb `c`. So a literal that ends a template cannot
//!   hold a `:` (write `%3A`); literals elsewhere can.
//! - `{var}` means `{var=*}`; a variable's template contains no variable.
//! - `**` (bare or inside a variable) may only be the last segment, before the verb.
//! - `IDENT` is `[A-Za-z_][A-Za-z0-9_]*`. A field is bound at most once, and no bound field path
//!   is a prefix of another (`{a}` with `{a.b}`), since path variables bind scalar fields.
//! - `/` alone is not a template: the grammar needs at least one segment.
//!
//! Every [`TemplateError`] names the byte offset in the template text where the problem is.
//!
//! # Matching
//!
//! [`PathTemplate::matches`] takes the raw request path: no query string, still percent-encoded.
//!
//! 1. Every `%` in the path must start a `%XX` escape; otherwise nothing matches.
//! 2. If the template has a verb, the text after the path's last `:` is the request's verb: it
//!    must lie in the last segment and equal the template's verb once both are percent-decoded,
//!    and it is cut off (with its `:`) before the segments are matched. If the template has no
//!    verb, a `:` is ordinary text (`/v1/{name}` binds `a:b` from `/v1/a:b`). Clients send a `:`
//!    inside a value as `%3A`, so a value's `:` is never taken for a verb.
//! 3. The rest, after the leading `/`, is split at every `/`; an empty rest (the path `/`) is zero
//!    segments. An empty segment (`//`, a trailing `/`) matches nothing (not `*`, not `**`), so such
//!    a path matches no template.
//! 4. Segments pair up with the template's: a literal matches a segment equal to it once both are
//!    percent-decoded (compared as bytes); `*` matches any one segment; `**` matches all the
//!    remaining segments, zero or more.
//! 5. Each variable is bound to the text it matched, percent-decoded as `http.proto` specifies:
//!    a single-segment variable (`{var}`, `{var=*}`, `{var=literal}`) decodes every `%XX`; a
//!    multi-segment variable (`{var=**}`, `{name=shelves/*/books/*}`) decodes every `%XX` except
//!    `%2F` and `%2f`, which are kept as they are, and its value is its segments joined by `/`.
//!    A value that is not UTF-8 once decoded (`%FF`) means no match.
//!
//! So a path that is not well formed (bad escapes, empty segments, values that are not UTF-8)
//! matches no template: a router answers it as it answers an unknown path.
//!
//! # Precedence and conflicts
//!
//! When several templates match a path, the one with the greatest
//! [`specificity`](PathTemplate::specificity) wins:
//!
//! 1. a template with a verb beats one without (the request's unescaped `:` says it calls a custom
//!    method, e.g. `/v1/{name=tasks/*}:complete` beats `/v1/tasks/{id}` for
//!    `/v1/tasks/1:complete`);
//! 2. then, at the first segment where they differ, a literal beats `*`, which beats the end of a
//!    template, which beats `**` (`/v1/tasks/special` beats `/v1/tasks/{id}`, which beats
//!    `/v1/{name=**}`; `/v1/*` beats `/v1/*/**` for `/v1/x`).
//!
//! Two templates [conflict](PathTemplate::conflicts_with) when they match exactly the same paths:
//! same verb, same number of segments and, segment by segment, the same literal (once decoded) or
//! the same wildcard, whatever the variables are called or where their braces are. Two different
//! templates that match the same path with equal specificity always conflict, so a route table
//! that rejects conflicts (for the same HTTP method) never has to break a tie.
//!
//! ```
//! use protomesh_gateway::template::PathTemplate;
//!
//! let template = PathTemplate::parse("/v1/{name=shelves/*/books/*}:publish")?;
//! let bindings = template.matches("/v1/shelves/s%201/books/b%2F2:publish").unwrap_or_default();
//! assert_eq!(bindings[0].field_path, ["name"]);
//! assert_eq!(bindings[0].value, "shelves/s 1/books/b%2F2");
//! assert_eq!(template.to_string(), "/v1/{name=shelves/*/books/*}:publish");
//! # Ok::<(), protomesh_gateway::template::TemplateError>(())
//! ```

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// A parsed `google.api.http` path template, such as `/v1/{name=shelves/*/books/*}:publish`.
///
/// Two templates are equal when they are written the same way up to `{var}` versus `{var=*}`;
/// `/v1/a` and `/v1/%61` differ but [conflict](PathTemplate::conflicts_with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    /// The segments, with the variables' templates flattened in place.
    segments: Vec<Segment>,
    /// The variables, in order, each over a range of `segments`.
    variables: Vec<Variable>,
    verb: Option<Literal>,
}

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Literal),
    /// `*`: one path segment.
    Wildcard,
    /// `**`: zero or more path segments, always the last segment.
    DeepWildcard,
}

/// Literal text as written in the template, and percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Literal {
    raw: String,
    decoded: Vec<u8>,
}

/// A `{field.path=segments}` variable.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Variable {
    field_path: Vec<String>,
    /// First segment of the variable's template, an index into [`PathTemplate::segments`].
    start: usize,
    /// One past its last segment (always more than `start`).
    end: usize,
    /// More than one segment, or `**`: values keep `%2F` encoded.
    multi_segment: bool,
}

/// A field bound by a matched path: `{task.id}` matching `/tasks/7` gives
/// `field_path: ["task", "id"]`, `value: "7"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The field, one name per level of nesting.
    pub field_path: Vec<String>,
    /// The value, percent-decoded (keeping `%2F` in multi-segment variables).
    pub value: String,
}

/// Why a path template is not valid. Positions are byte offsets into the template text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template does not start with `/`.
    #[error("a path template must start with '/'")]
    MissingLeadingSlash,
    /// A segment is empty: `//`, a trailing `/`, `{var=}`, or `/` alone.
    #[error("empty segment at byte {position}")]
    EmptySegment {
        /// Where the segment should start.
        position: usize,
    },
    /// A `{` has no matching `}`.
    #[error("unclosed variable: the '{{' at byte {position} has no matching '}}'")]
    UnclosedVariable {
        /// The `{`.
        position: usize,
    },
    /// A `}` closes no variable.
    #[error("unbalanced '}}' at byte {position}")]
    UnbalancedCloseBrace {
        /// The `}`.
        position: usize,
    },
    /// A variable inside a variable's template.
    #[error("nested variable at byte {position}: a variable's template cannot contain variables")]
    NestedVariable {
        /// The inner `{`.
        position: usize,
    },
    /// `**` followed by more segments.
    #[error("'**' at byte {position} is not the last segment")]
    DeepWildcardNotLast {
        /// The `**`.
        position: usize,
    },
    /// The same field is bound by two variables.
    #[error("field {field_path} is bound twice (again at byte {position})")]
    DuplicateVariable {
        /// The field, dotted.
        field_path: String,
        /// The second variable's `{`.
        position: usize,
    },
    /// One bound field path is a prefix of another: `{a}` with `{a.b}`.
    #[error("fields {first} and {second} are both bound (at byte {position}), but one contains the other")]
    OverlappingVariables {
        /// The field bound first, dotted.
        first: String,
        /// The field bound second, dotted.
        second: String,
        /// The second variable's `{`.
        position: usize,
    },
    /// A field path component is not `[A-Za-z_][A-Za-z0-9_]*`.
    #[error("invalid field name {identifier:?} at byte {position}")]
    InvalidIdentifier {
        /// The text found.
        identifier: String,
        /// Where it starts.
        position: usize,
    },
    /// Nothing after the verb's `:`.
    #[error("empty verb after the ':' at byte {position}")]
    EmptyVerb {
        /// The `:`.
        position: usize,
    },
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-encoding at byte {position}")]
    InvalidPercentEncoding {
        /// The `%`.
        position: usize,
    },
    /// A character that has no place here.
    #[error("unexpected {character:?} at byte {position}: {reason}")]
    UnexpectedCharacter {
        /// The character.
        character: char,
        /// Where it is.
        position: usize,
        /// What was expected instead.
        reason: &'static str,
    },
}

impl PathTemplate {
    /// Parses a template such as `/v1/{name=tasks/*}:complete` (see the [module docs](self) for
    /// the grammar and how ambiguities are read).
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        if !text.starts_with('/') {
            return Err(TemplateError::MissingLeadingSlash);
        }
        let (body_end, verb) = split_verb(text)?;
        let mut parser = Parser {
            text,
            pos: 1,
            end: body_end,
            segments: Vec::new(),
            segment_positions: Vec::new(),
            variables: Vec::new(),
            variable_positions: Vec::new(),
        };
        parser.segments(false)?;
        if let Some(character) = parser.peek() {
            return Err(match character {
                '}' => TemplateError::UnbalancedCloseBrace {
                    position: parser.pos,
                },
                _ => TemplateError::UnexpectedCharacter {
                    character,
                    position: parser.pos,
                    reason: "a variable must be a whole segment",
                },
            });
        }
        parser.finish(verb)
    }

    /// Matches a raw request path (no query string, still percent-encoded) and returns the
    /// variables' values, in the order the variables appear in the template; `None` if the path
    /// does not match, or is not well formed (see the [module docs](self)).
    pub fn matches(&self, path: &str) -> Option<Vec<Binding>> {
        let rest = path.strip_prefix('/')?;
        if !is_valid_percent_encoding(rest) {
            return None;
        }
        let body = match &self.verb {
            None => rest,
            Some(verb) => {
                let (body, raw_verb) = rest.rsplit_once(':')?;
                if raw_verb.contains('/') || decode(raw_verb, false)? != verb.decoded {
                    return None;
                }
                body
            }
        };
        let request: Vec<&str> = if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').collect()
        };
        if request.iter().any(|segment| segment.is_empty()) {
            return None;
        }
        let deep = matches!(self.segments.last(), Some(Segment::DeepWildcard));
        if deep {
            if request.len() + 1 < self.segments.len() {
                return None;
            }
        } else if request.len() != self.segments.len() {
            return None;
        }
        for (segment, raw) in self.segments.iter().zip(&request) {
            if let Segment::Literal(literal) = segment {
                if decode(raw, false)? != literal.decoded {
                    return None;
                }
            }
        }
        self.variables
            .iter()
            .map(|variable| {
                // Only the variable that ends the template can hold the `**`.
                let end = if deep && variable.end == self.segments.len() {
                    request.len()
                } else {
                    variable.end
                };
                let parts = request.get(variable.start..end)?;
                let value = if variable.multi_segment {
                    let decoded = parts
                        .iter()
                        .map(|part| decode(part, true))
                        .collect::<Option<Vec<_>>>()?;
                    decoded.join(&b'/')
                } else {
                    decode(parts.first()?, false)?
                };
                Some(Binding {
                    field_path: variable.field_path.clone(),
                    value: String::from_utf8(value).ok()?,
                })
            })
            .collect()
    }

    /// Whether `self` and `other` match exactly the same paths: same verb, same number of
    /// segments, and at each position the same literal (once percent-decoded) or the same kind of
    /// wildcard, whatever the variables are. The HTTP method is the caller's to compare.
    pub fn conflicts_with(&self, other: &PathTemplate) -> bool {
        let verb = |t: &PathTemplate| t.verb.as_ref().map(|v| v.decoded.clone());
        verb(self) == verb(other)
            && self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|pair| match pair {
                    (Segment::Literal(a), Segment::Literal(b)) => a.decoded == b.decoded,
                    (Segment::Wildcard, Segment::Wildcard)
                    | (Segment::DeepWildcard, Segment::DeepWildcard) => true,
                    _ => false,
                })
    }

    /// This template's rank among templates that match the same path: the greater one wins (see
    /// [`Specificity`]).
    pub fn specificity(&self) -> Specificity {
        Specificity {
            has_verb: self.verb.is_some(),
            ranks: self
                .segments
                .iter()
                .map(|segment| match segment {
                    Segment::Literal(_) => Rank::Literal,
                    Segment::Wildcard => Rank::Wildcard,
                    Segment::DeepWildcard => Rank::DeepWildcard,
                })
                .collect(),
        }
    }

    /// The field paths the template binds, in order: `["task", "id"]` for `{task.id}`.
    pub fn variables(&self) -> impl ExactSizeIterator<Item = &[String]> + '_ {
        self.variables
            .iter()
            .map(|variable| variable.field_path.as_slice())
    }

    /// The verb (`complete` in `/v1/{name=tasks/*}:complete`) as written in the template, still
    /// percent-encoded if it was.
    pub fn verb(&self) -> Option<&str> {
        self.verb.as_ref().map(|verb| verb.raw.as_str())
    }
}

impl FromStr for PathTemplate {
    type Err = TemplateError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// Prints the template back in canonical form: as written, except `{var=*}` becomes `{var}`.
impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut index = 0;
        while let Some(segment) = self.segments.get(index) {
            f.write_str("/")?;
            match self.variables.iter().find(|v| v.start == index) {
                Some(variable) => {
                    write!(f, "{{{}", variable.field_path.join("."))?;
                    let inner = self
                        .segments
                        .get(variable.start..variable.end)
                        .unwrap_or_default();
                    if !matches!(inner, [Segment::Wildcard]) {
                        f.write_str("=")?;
                        for (i, segment) in inner.iter().enumerate() {
                            if i > 0 {
                                f.write_str("/")?;
                            }
                            write!(f, "{segment}")?;
                        }
                    }
                    f.write_str("}")?;
                    index = variable.end.max(index + 1);
                }
                None => {
                    write!(f, "{segment}")?;
                    index += 1;
                }
            }
        }
        if let Some(verb) = &self.verb {
            write!(f, ":{}", verb.raw)?;
        }
        Ok(())
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Segment::Literal(literal) => f.write_str(&literal.raw),
            Segment::Wildcard => f.write_str("*"),
            Segment::DeepWildcard => f.write_str("**"),
        }
    }
}

/// How specific a template is, for choosing among templates that match the same path: the
/// greatest wins. A template with a verb is greater than one without; between two that both have
/// a verb or both have none, the first segment where they differ decides: literal > `*` > end of
/// the template > `**`.
///
/// Equal specificity means the same verb presence and the same kinds of segments; two such
/// templates that both match some path [conflict](PathTemplate::conflicts_with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Specificity {
    has_verb: bool,
    ranks: Vec<Rank>,
}

/// A segment's rank, least specific first. `End` stands for the positions past a template's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    DeepWildcard,
    End,
    Wildcard,
    Literal,
}

impl Ord for Specificity {
    fn cmp(&self, other: &Self) -> Ordering {
        // `ranks` never holds `End`, so padding with it keeps this consistent with `Eq`.
        self.has_verb.cmp(&other.has_verb).then_with(|| {
            let len = self.ranks.len().max(other.ranks.len());
            (0..len)
                .map(|i| {
                    let rank = |ranks: &[Rank]| ranks.get(i).copied().unwrap_or(Rank::End);
                    rank(&self.ranks).cmp(&rank(&other.ranks))
                })
                .find(|ordering| ordering.is_ne())
                .unwrap_or(Ordering::Equal)
        })
    }
}

impl PartialOrd for Specificity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Finds the verb: the text after the last `:` outside braces that no `/` outside braces follows.
/// Returns where the segments end and the verb, if any.
fn split_verb(text: &str) -> Result<(usize, Option<Literal>), TemplateError> {
    let mut depth = 0usize;
    let mut colon = None;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            '/' if depth == 0 => colon = None,
            ':' if depth == 0 => colon = Some(i),
            _ => {}
        }
    }
    let Some(colon) = colon else {
        return Ok((text.len(), None));
    };
    // `:` is one byte, so `colon + 1` is a char boundary.
    let raw = text.get(colon + 1..).unwrap_or_default();
    if raw.is_empty() {
        return Err(TemplateError::EmptyVerb { position: colon });
    }
    Ok((colon, Some(literal(raw, colon + 1)?)))
}

/// Checks a literal's characters (`pchar`s and `%XX` escapes) and decodes it. `offset` is where
/// `raw` starts in the template, for errors.
fn literal(raw: &str, offset: usize) -> Result<Literal, TemplateError> {
    let bytes = raw.as_bytes();
    for (i, c) in raw.char_indices() {
        match c {
            '%' => {
                let hex = |at: usize| bytes.get(at).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return Err(TemplateError::InvalidPercentEncoding {
                        position: offset + i,
                    });
                }
            }
            '}' => {
                return Err(TemplateError::UnbalancedCloseBrace {
                    position: offset + i,
                })
            }
            c if is_pchar(c) => {}
            character => {
                return Err(TemplateError::UnexpectedCharacter {
                    character,
                    position: offset + i,
                    reason: "a literal holds RFC 3986 path characters; percent-encode others",
                })
            }
        }
    }
    let decoded =
        decode(raw, false).ok_or(TemplateError::InvalidPercentEncoding { position: offset })?;
    Ok(Literal {
        raw: raw.to_owned(),
        decoded,
    })
}

/// An RFC 3986 `pchar` other than `%`: unreserved, sub-delims, `:` and `@`.
fn is_pchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@".contains(c)
}

fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_valid_percent_encoding(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || (bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// Percent-decodes `raw`, keeping `%2F`/`%2f` as they are if `keep_encoded_slash`; `None` on a
/// `%` not followed by two hex digits.
fn decode(raw: &str, keep_encoded_slash: bool) -> Option<Vec<u8>> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte == b'%' {
            let escape = bytes.get(i..i + 3)?;
            let high = hex_value(*escape.get(1)?)?;
            let low = hex_value(*escape.get(2)?)?;
            let value = (high << 4) | low;
            if keep_encoded_slash && value == b'/' {
                out.extend_from_slice(escape);
            } else {
                out.push(value);
            }
            i += 3;
        } else {
            out.push(byte);
            i += 1;
        }
    }
    Some(out)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// A recursive-descent parser over `text[pos..end]` (the template without its verb).
struct Parser<'a> {
    text: &'a str,
    pos: usize,
    end: usize,
    segments: Vec<Segment>,
    /// Where each segment starts, for errors found after parsing.
    segment_positions: Vec<usize>,
    variables: Vec<Variable>,
    /// Where each variable's `{` is.
    variable_positions: Vec<usize>,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<char> {
        self.text.get(self.pos..self.end)?.chars().next()
    }

    fn bump(&mut self) {
        if let Some(c) = self.peek() {
            self.pos += c.len_utf8();
        }
    }

    /// Consumes characters up to (not including) the first one `stop` accepts.
    fn take_until(&mut self, stop: impl Fn(char) -> bool) -> &'a str {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if stop(c) {
                break;
            }
            self.pos += c.len_utf8();
        }
        self.text.get(start..self.pos).unwrap_or_default()
    }

    /// `Segments`: stops before anything but a `/` after a segment.
    fn segments(&mut self, in_variable: bool) -> Result<(), TemplateError> {
        loop {
            self.segment(in_variable)?;
            if self.peek() != Some('/') {
                return Ok(());
            }
            self.bump();
        }
    }

    fn segment(&mut self, in_variable: bool) -> Result<(), TemplateError> {
        let start = self.pos;
        match self.peek() {
            None | Some('/') => Err(TemplateError::EmptySegment { position: start }),
            Some('}') if in_variable => Err(TemplateError::EmptySegment { position: start }),
            Some('}') => Err(TemplateError::UnbalancedCloseBrace { position: start }),
            Some('{') if in_variable => Err(TemplateError::NestedVariable { position: start }),
            Some('{') => self.variable(),
            Some(_) => {
                let token = self.take_until(|c| matches!(c, '/' | '{' | '}'));
                let segment = match token {
                    "*" => Segment::Wildcard,
                    "**" => Segment::DeepWildcard,
                    _ if token.starts_with('*') => {
                        let (i, character) = token
                            .char_indices()
                            .find(|&(i, c)| c != '*' || i >= 2)
                            .unwrap_or((0, '*'));
                        return Err(TemplateError::UnexpectedCharacter {
                            character,
                            position: start + i,
                            reason: "a wildcard must be a whole segment, '*' or '**'",
                        });
                    }
                    _ => Segment::Literal(literal(token, start)?),
                };
                self.segments.push(segment);
                self.segment_positions.push(start);
                match self.peek() {
                    Some('{') if in_variable => {
                        Err(TemplateError::NestedVariable { position: self.pos })
                    }
                    Some('{') => Err(TemplateError::UnexpectedCharacter {
                        character: '{',
                        position: self.pos,
                        reason: "a variable must be a whole segment",
                    }),
                    _ => Ok(()),
                }
            }
        }
    }

    /// `Variable`, at its `{`.
    fn variable(&mut self) -> Result<(), TemplateError> {
        let open = self.pos;
        self.bump();
        let mut field_path = Vec::new();
        let first = self.segments.len();
        loop {
            let ident_start = self.pos;
            let ident = self
                .take_until(|c| matches!(c, '.' | '=' | '}' | '{'))
                .to_owned();
            let Some(next) = self.peek() else {
                return Err(TemplateError::UnclosedVariable { position: open });
            };
            if next == '{' {
                return Err(TemplateError::NestedVariable { position: self.pos });
            }
            if !is_identifier(&ident) {
                return Err(TemplateError::InvalidIdentifier {
                    identifier: ident,
                    position: ident_start,
                });
            }
            field_path.push(ident);
            self.bump();
            match next {
                '.' => continue,
                '=' => {
                    self.segments(true)?;
                    match self.peek() {
                        Some('}') => self.bump(),
                        None => return Err(TemplateError::UnclosedVariable { position: open }),
                        Some(character) => {
                            return Err(TemplateError::UnexpectedCharacter {
                                character,
                                position: self.pos,
                                reason: "expected '}'",
                            })
                        }
                    }
                }
                _ => {
                    // `}`: `{var}` is `{var=*}`.
                    self.segments.push(Segment::Wildcard);
                    self.segment_positions.push(open);
                }
            }
            break;
        }
        let end = self.segments.len();
        let multi_segment = end - first > 1
            || self
                .segments
                .get(first..end)
                .unwrap_or_default()
                .contains(&Segment::DeepWildcard);
        self.variables.push(Variable {
            field_path,
            start: first,
            end,
            multi_segment,
        });
        self.variable_positions.push(open);
        Ok(())
    }

    /// Checks what needs the whole template: `**` last, fields bound once.
    fn finish(self, verb: Option<Literal>) -> Result<PathTemplate, TemplateError> {
        let count = self.segments.len();
        for (i, (segment, &position)) in self
            .segments
            .iter()
            .zip(&self.segment_positions)
            .enumerate()
        {
            if *segment == Segment::DeepWildcard && i + 1 != count {
                return Err(TemplateError::DeepWildcardNotLast { position });
            }
        }
        for (i, (later, &position)) in self
            .variables
            .iter()
            .zip(&self.variable_positions)
            .enumerate()
        {
            for earlier in self.variables.iter().take(i) {
                let (a, b) = (&earlier.field_path, &later.field_path);
                if a == b {
                    return Err(TemplateError::DuplicateVariable {
                        field_path: b.join("."),
                        position,
                    });
                }
                if a.starts_with(b) || b.starts_with(a) {
                    return Err(TemplateError::OverlappingVariables {
                        first: a.join("."),
                        second: b.join("."),
                        position,
                    });
                }
            }
        }
        Ok(PathTemplate {
            segments: self.segments,
            variables: self.variables,
            verb,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    use proptest::prelude::*;

    fn parse(text: &str) -> PathTemplate {
        PathTemplate::parse(text).unwrap_or_else(|err| panic!("{text}: {err}"))
    }

    fn fields(template: &PathTemplate) -> Vec<String> {
        template.variables().map(|path| path.join(".")).collect()
    }

    #[test]
    fn template_parses_valid_templates() {
        // (template, canonical form, bound fields, verb)
        let cases: &[(&str, &str, &[&str], Option<&str>)] = &[
            ("/v1", "/v1", &[], None),
            ("/v1/tasks", "/v1/tasks", &[], None),
            ("/*", "/*", &[], None),
            ("/**", "/**", &[], None),
            ("/v1/*/x/**", "/v1/*/x/**", &[], None),
            ("/v1/{id}", "/v1/{id}", &["id"], None),
            ("/v1/{id=*}", "/v1/{id}", &["id"], None),
            ("/v1/{task.id}", "/v1/{task.id}", &["task.id"], None),
            ("/v1/{a.b.c}/{d}", "/v1/{a.b.c}/{d}", &["a.b.c", "d"], None),
            ("/v1/{_x9=**}", "/v1/{_x9=**}", &["_x9"], None),
            (
                "/v1/{name=shelves/*/books/*}",
                "/v1/{name=shelves/*/books/*}",
                &["name"],
                None,
            ),
            ("/v1/{name=x}", "/v1/{name=x}", &["name"], None),
            ("/v1/{name=x/**}", "/v1/{name=x/**}", &["name"], None),
            (
                "/v1/priority:score",
                "/v1/priority:score",
                &[],
                Some("score"),
            ),
            (
                "/v1/{name=tasks/*}:complete",
                "/v1/{name=tasks/*}:complete",
                &["name"],
                Some("complete"),
            ),
            ("/v1/{id}:do-it", "/v1/{id}:do-it", &["id"], Some("do-it")),
            ("/v1/*:x", "/v1/*:x", &[], Some("x")),
            ("/v1/**:x", "/v1/**:x", &[], Some("x")),
            ("/v1/a:b:c", "/v1/a:b:c", &[], Some("c")),
            ("/v1/a:b/c", "/v1/a:b/c", &[], None),
            ("/v1/{name=a:b}", "/v1/{name=a:b}", &["name"], None),
            ("/v1/%61%2Fb", "/v1/%61%2Fb", &[], None),
            ("/v1/a%3Ab", "/v1/a%3Ab", &[], None),
            ("/v1/x:a%20b", "/v1/x:a%20b", &[], Some("a%20b")),
            (
                "/v1/a*b/c=d/@!$&'()+,;~",
                "/v1/a*b/c=d/@!$&'()+,;~",
                &[],
                None,
            ),
        ];
        for &(text, canonical, bound, verb) in cases {
            let template = parse(text);
            assert_eq!(template.to_string(), canonical, "{text}");
            assert_eq!(fields(&template), bound, "{text}");
            assert_eq!(template.verb(), verb, "{text}");
            assert_eq!(parse(canonical), template, "{text}");
            assert_eq!(text.parse::<PathTemplate>().unwrap(), template);
        }
    }

    #[test]
    fn template_rejects_invalid_templates() {
        use TemplateError::*;
        let cases: Vec<(&str, TemplateError)> = vec![
            ("", MissingLeadingSlash),
            ("v1/tasks", MissingLeadingSlash),
            ("/", EmptySegment { position: 1 }),
            ("//", EmptySegment { position: 1 }),
            ("/v1/", EmptySegment { position: 4 }),
            ("/v1//x", EmptySegment { position: 4 }),
            ("/:verb", EmptySegment { position: 1 }),
            ("/v1/{name=}", EmptySegment { position: 10 }),
            ("/v1/{name=a/}", EmptySegment { position: 12 }),
            ("/v1/{name=/a}", EmptySegment { position: 10 }),
            ("/v1/{id", UnclosedVariable { position: 4 }),
            ("/v1/{id=*", UnclosedVariable { position: 4 }),
            ("/v1/{id=a/b", UnclosedVariable { position: 4 }),
            ("/v1/{a/b/c", UnclosedVariable { position: 4 }),
            ("/v1/id}", UnbalancedCloseBrace { position: 6 }),
            ("/v1/}", UnbalancedCloseBrace { position: 4 }),
            ("/v1/{id}}", UnbalancedCloseBrace { position: 8 }),
            ("/v1/x:a}", UnbalancedCloseBrace { position: 7 }),
            ("/v1/{a={b}}", NestedVariable { position: 7 }),
            ("/v1/{a=x/{b}}", NestedVariable { position: 9 }),
            ("/v1/{a=x{b}}", NestedVariable { position: 8 }),
            ("/v1/{a{b}}", NestedVariable { position: 6 }),
            ("/**/x", DeepWildcardNotLast { position: 1 }),
            ("/v1/{a=**}/x", DeepWildcardNotLast { position: 7 }),
            ("/v1/{a=**/x}", DeepWildcardNotLast { position: 7 }),
            ("/**/**", DeepWildcardNotLast { position: 1 }),
            (
                "/v1/{id}/{id}",
                DuplicateVariable {
                    field_path: "id".into(),
                    position: 9,
                },
            ),
            (
                "/{a.b}/{a.b=x/*}",
                DuplicateVariable {
                    field_path: "a.b".into(),
                    position: 7,
                },
            ),
            (
                "/{a}/{a.b}",
                OverlappingVariables {
                    first: "a".into(),
                    second: "a.b".into(),
                    position: 5,
                },
            ),
            (
                "/{a.b.c}/{a}",
                OverlappingVariables {
                    first: "a.b.c".into(),
                    second: "a".into(),
                    position: 9,
                },
            ),
            (
                "/v1/{}",
                InvalidIdentifier {
                    identifier: "".into(),
                    position: 5,
                },
            ),
            (
                "/v1/{1a}",
                InvalidIdentifier {
                    identifier: "1a".into(),
                    position: 5,
                },
            ),
            (
                "/v1/{a.}",
                InvalidIdentifier {
                    identifier: "".into(),
                    position: 7,
                },
            ),
            (
                "/v1/{.a}",
                InvalidIdentifier {
                    identifier: "".into(),
                    position: 5,
                },
            ),
            (
                "/v1/{a-b}",
                InvalidIdentifier {
                    identifier: "a-b".into(),
                    position: 5,
                },
            ),
            (
                "/v1/{a/b}",
                InvalidIdentifier {
                    identifier: "a/b".into(),
                    position: 5,
                },
            ),
            (
                "/v1/{é}",
                InvalidIdentifier {
                    identifier: "é".into(),
                    position: 5,
                },
            ),
            ("/v1/tasks:", EmptyVerb { position: 9 }),
            ("/v1/{id}:", EmptyVerb { position: 8 }),
            ("/v1/a%zz", InvalidPercentEncoding { position: 5 }),
            ("/v1/a%4", InvalidPercentEncoding { position: 5 }),
            ("/v1/x:%g0", InvalidPercentEncoding { position: 6 }),
        ];
        for (text, expected) in cases {
            assert_eq!(PathTemplate::parse(text), Err(expected), "{text}");
        }
        // Characters out of place: (template, character, position).
        let cases = [
            ("/v1/a b", (' ', 5)),
            ("/v1/a?b", ('?', 5)),
            ("/v1/é", ('é', 4)),
            ("/v1/ok/aé", ('é', 8)),
            ("/v1/*x", ('x', 5)),
            ("/v1/***", ('*', 6)),
            ("/v1/{a=*x}", ('x', 8)),
            ("/v1/a{b}", ('{', 5)),
            ("/v1/{a}b", ('b', 7)),
            ("/v1/x:{a}", ('{', 6)),
            ("/v1/{a}:b c", (' ', 9)),
        ];
        for (text, (character, position)) in cases {
            match PathTemplate::parse(text) {
                Err(UnexpectedCharacter {
                    character: c,
                    position: p,
                    ..
                }) => assert_eq!((c, p), (character, position), "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn template_errors_read_well() {
        let err = PathTemplate::parse("/v1/{id").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unclosed variable: the '{' at byte 4 has no matching '}'"
        );
        let err = PathTemplate::parse("/v1/{a-b}").unwrap_err();
        assert_eq!(err.to_string(), "invalid field name \"a-b\" at byte 5");
    }

    fn binding(field: &str, value: &str) -> (String, String) {
        (field.to_owned(), value.to_owned())
    }

    /// Bindings as (dotted field path, value).
    type Bindings = Vec<(String, String)>;

    fn matched(template: &PathTemplate, path: &str) -> Option<Bindings> {
        template.matches(path).map(|bindings| {
            bindings
                .into_iter()
                .map(|b| (b.field_path.join("."), b.value))
                .collect()
        })
    }

    #[test]
    fn template_matches_paths() {
        let none = None;
        let cases: Vec<(&str, &str, Option<Bindings>)> = vec![
            // Literals.
            ("/v1/tasks", "/v1/tasks", Some(vec![])),
            ("/v1/tasks", "/v1/task", none.clone()),
            ("/v1/tasks", "/v1/tasks/", none.clone()),
            ("/v1/tasks", "/v1/tasks/x", none.clone()),
            ("/v1/tasks", "v1/tasks", none.clone()),
            ("/v1/tasks", "/v1//tasks", none.clone()),
            ("/v1/tasks", "/v1/%74asks", Some(vec![])),
            ("/v1/%74asks", "/v1/tasks", Some(vec![])),
            ("/v1/a%2Fb", "/v1/a%2fb", Some(vec![])),
            ("/v1/a%2Fb", "/v1/a/b", none.clone()),
            ("/v1/caf%C3%A9", "/v1/caf%c3%a9", Some(vec![])),
            ("/v1/a:b/c", "/v1/a:b/c", Some(vec![])),
            // `*`.
            ("/v1/*", "/v1/x", Some(vec![])),
            ("/v1/*", "/v1/", none.clone()),
            ("/v1/*", "/v1", none.clone()),
            ("/v1/*", "/v1/x/y", none.clone()),
            ("/v1/*/c", "/v1//c", none.clone()),
            // `**`.
            ("/v1/**", "/v1", Some(vec![])),
            ("/v1/**", "/v1/a/b/c", Some(vec![])),
            ("/v1/**", "/v1/a//c", none.clone()),
            ("/v1/**", "/v1/a/", none.clone()),
            ("/v1/**", "/v2/a", none.clone()),
            ("/**", "/", Some(vec![])),
            ("/**", "/anything/at/all", Some(vec![])),
            // Variables.
            (
                "/v1/tasks/{id}",
                "/v1/tasks/42",
                Some(vec![binding("id", "42")]),
            ),
            (
                "/v1/tasks/{id=*}",
                "/v1/tasks/42",
                Some(vec![binding("id", "42")]),
            ),
            ("/v1/tasks/{id}", "/v1/tasks/", none.clone()),
            ("/v1/tasks/{id}", "/v1/tasks//", none.clone()),
            ("/v1/tasks/{id}", "/v1/tasks/a/b", none.clone()),
            (
                "/v1/{a.b.c}/x/{d}",
                "/v1/1/x/2",
                Some(vec![binding("a.b.c", "1"), binding("d", "2")]),
            ),
            (
                "/v1/{name=shelves/*/books/*}",
                "/v1/shelves/s1/books/b2",
                Some(vec![binding("name", "shelves/s1/books/b2")]),
            ),
            (
                "/v1/{name=shelves/*/books/*}",
                "/v1/%73helves/s1/books/b2",
                Some(vec![binding("name", "shelves/s1/books/b2")]),
            ),
            (
                "/v1/{name=shelves/*/books/*}",
                "/v1/shelves/s1/books",
                none.clone(),
            ),
            (
                "/v1/{name=shelves/*/books/*}",
                "/v1/shelves/s1/b/b2",
                none.clone(),
            ),
            (
                "/v1/{name=shelves/*/books/*}",
                "/v1/shelves/s1/books/b2/x",
                none.clone(),
            ),
            ("/v1/{name=x}", "/v1/x", Some(vec![binding("name", "x")])),
            ("/v1/{name=x}", "/v1/%78", Some(vec![binding("name", "x")])),
            ("/v1/{name=x}", "/v1/y", none.clone()),
            ("/v1/{path=**}", "/v1", Some(vec![binding("path", "")])),
            ("/v1/{path=**}", "/v1/a", Some(vec![binding("path", "a")])),
            (
                "/v1/{path=**}",
                "/v1/a/b/c",
                Some(vec![binding("path", "a/b/c")]),
            ),
            ("/v1/{path=x/**}", "/v1/x", Some(vec![binding("path", "x")])),
            (
                "/v1/{path=x/**}",
                "/v1/x/y/z",
                Some(vec![binding("path", "x/y/z")]),
            ),
            ("/v1/{path=x/**}", "/v1/y/z", none.clone()),
            (
                "/v1/{a}/{b=**}",
                "/v1/1/2/3",
                Some(vec![binding("a", "1"), binding("b", "2/3")]),
            ),
            (
                "/{a=x/*}/{b=*}/**",
                "/x/1/2/3/4",
                Some(vec![binding("a", "x/1"), binding("b", "2")]),
            ),
            // Verbs.
            ("/v1/priority:score", "/v1/priority:score", Some(vec![])),
            ("/v1/priority:score", "/v1/priority", none.clone()),
            ("/v1/priority:score", "/v1/priority:scores", none.clone()),
            ("/v1/priority:score", "/v1/priority%3Ascore", none.clone()),
            ("/v1/priority:score", "/v1/priority:score/x", none.clone()),
            ("/v1/priority:score", "/v1/priority:sc%6Fre", Some(vec![])),
            ("/v1/priority", "/v1/priority:score", none.clone()),
            (
                "/v1/{name=tasks/*}:complete",
                "/v1/tasks/7:complete",
                Some(vec![binding("name", "tasks/7")]),
            ),
            (
                "/v1/{name=tasks/*}:complete",
                "/v1/tasks/7:b:complete",
                Some(vec![binding("name", "tasks/7:b")]),
            ),
            ("/v1/{name=tasks/*}:complete", "/v1/tasks/7", none.clone()),
            (
                "/v1/{name=tasks/*}:complete",
                "/v1/tasks/:complete",
                none.clone(),
            ),
            (
                "/v1/{name=tasks/*}:complete",
                "/v1/tasks/7:complete:complete",
                Some(vec![binding("name", "tasks/7:complete")]),
            ),
            ("/v1/{id}", "/v1/a:b", Some(vec![binding("id", "a:b")])),
            (
                "/v1/{id}:x",
                "/v1/a%3Ab:x",
                Some(vec![binding("id", "a:b")]),
            ),
            ("/v1/{path=**}:x", "/v1:x", Some(vec![binding("path", "")])),
            (
                "/v1/{path=**}:x",
                "/v1/a/b:x",
                Some(vec![binding("path", "a/b")]),
            ),
            ("/v1/{path=**}:x", "/v1/a:x/b", none.clone()),
            ("/**:x", "/:x", Some(vec![])),
            ("/v1/x:a%20b", "/v1/x:a b", Some(vec![])),
            // Percent-decoding: everything in single-segment variables...
            ("/v1/{id}", "/v1/a%20b", Some(vec![binding("id", "a b")])),
            ("/v1/{id}", "/v1/a%2Fb", Some(vec![binding("id", "a/b")])),
            ("/v1/{id}", "/v1/a%2fb", Some(vec![binding("id", "a/b")])),
            ("/v1/{id}", "/v1/%25%2F", Some(vec![binding("id", "%/")])),
            ("/v1/{id}", "/v1/100%25", Some(vec![binding("id", "100%")])),
            (
                "/v1/{id}",
                "/v1/caf%C3%A9",
                Some(vec![binding("id", "café")]),
            ),
            (
                "/v1/{id}",
                "/v1/%E2%9C%93%F0%9F%A6%80",
                Some(vec![binding("id", "✓🦀")]),
            ),
            ("/v1/{id}", "/v1/café", Some(vec![binding("id", "café")])),
            ("/v1/{id}", "/v1/a+b", Some(vec![binding("id", "a+b")])),
            // ...everything but `%2F` in multi-segment ones.
            (
                "/v1/{p=**}",
                "/v1/a%2Fb/c",
                Some(vec![binding("p", "a%2Fb/c")]),
            ),
            (
                "/v1/{p=**}",
                "/v1/a%2fb/c",
                Some(vec![binding("p", "a%2fb/c")]),
            ),
            (
                "/v1/{p=**}",
                "/v1/a%20b/%C3%A9",
                Some(vec![binding("p", "a b/é")]),
            ),
            ("/v1/{p=**}", "/v1/%252F", Some(vec![binding("p", "%2F")])),
            (
                "/v1/{p=x/*}",
                "/v1/x/a%2Fb",
                Some(vec![binding("p", "x/a%2Fb")]),
            ),
            ("/v1/{p=x/*}", "/v1/x%2Fa", none.clone()),
            // Invalid encodings and values that are not UTF-8.
            ("/v1/{id}", "/v1/%zz", none.clone()),
            ("/v1/{id}", "/v1/%4", none.clone()),
            ("/v1/{id}", "/v1/a%", none.clone()),
            ("/v1/{id}", "/v1/%FF", none.clone()),
            ("/v1/{id}", "/v1/%C3", none.clone()),
            ("/v1/{p=**}", "/v1/a/%C3", none.clone()),
            ("/v1/*", "/v1/%zz", none.clone()),
            ("/v1/*", "/v1/%FF", Some(vec![])),
            ("/v1/tasks", "/v1/tasks%", none.clone()),
            ("/v1/x:y", "/v1/x:%y", none.clone()),
            ("/v1/{id}", "/%zz/1", none.clone()),
            ("/v1/{id}", "", none.clone()),
        ];
        for (text, path, expected) in cases {
            let template = parse(text);
            assert_eq!(matched(&template, path), expected, "{text} against {path}");
        }
    }

    #[test]
    fn template_conflicts() {
        let cases = [
            ("/v1/tasks/{id}", "/v1/tasks/{name}", true),
            ("/v1/tasks/{id}", "/v1/tasks/*", true),
            ("/v1/tasks/{id}", "/v1/{a=tasks/*}", true),
            ("/v1/{a=**}", "/v1/**", true),
            ("/v1/tasks", "/v1/%74asks", true),
            ("/v1/{a}:x", "/v1/{b}:x", true),
            ("/v1/{a}:x", "/v1/{b}:%78", true),
            ("/v1/tasks/{id}", "/v1/tasks/special", false),
            ("/v1/tasks/{id}", "/v1/tasks/{id}/x", false),
            ("/v1/tasks/{id}", "/v1/tasks/{id=**}", false),
            ("/v1/{a}:x", "/v1/{a}", false),
            ("/v1/{a}:x", "/v1/{a}:y", false),
            ("/v1/a", "/v1/b", false),
            ("/v1/*", "/v1/*/**", false),
        ];
        for (a, b, conflict) in cases {
            let (a, b) = (parse(a), parse(b));
            assert_eq!(a.conflicts_with(&b), conflict, "{a} vs {b}");
            assert_eq!(b.conflicts_with(&a), conflict, "{b} vs {a}");
            assert!(a.conflicts_with(&a));
        }
    }

    #[test]
    fn template_precedence() {
        // Each template is more specific than the next.
        let ordered = [
            "/v1/tasks/special:x",
            "/v1/tasks/{id}:x",
            "/v1/{name=**}:x",
            "/v1/tasks/special/more",
            "/v1/tasks/special",
            "/v1/tasks/{id}/more",
            "/v1/tasks/{id}",
            "/v1/tasks/{id}/{rest=**}",
            "/v1/tasks/**",
            "/v1/*/special",
            "/v1/{a}/{b}",
            "/v1/{name=**}",
            "/**",
        ];
        let templates: Vec<PathTemplate> = ordered.iter().map(|t| parse(t)).collect();
        for (i, a) in templates.iter().enumerate() {
            for (j, b) in templates.iter().enumerate() {
                assert_eq!(
                    a.specificity().cmp(&b.specificity()),
                    j.cmp(&i),
                    "{a} vs {b}"
                );
            }
        }
        // What a route table does: the most specific matching template wins.
        let winner = |path: &str| {
            templates
                .iter()
                .filter(|t| t.matches(path).is_some())
                .max_by_key(|t| t.specificity())
                .map(ToString::to_string)
        };
        let cases = [
            ("/v1/tasks/special", "/v1/tasks/special"),
            ("/v1/tasks/7", "/v1/tasks/{id}"),
            ("/v1/tasks/7:x", "/v1/tasks/{id}:x"),
            ("/v1/tasks/special:x", "/v1/tasks/special:x"),
            ("/v1/shelves/1:x", "/v1/{name=**}:x"),
            ("/v1/tasks/7/more", "/v1/tasks/{id}/more"),
            ("/v1/tasks/7/other", "/v1/tasks/{id}/{rest=**}"),
            ("/v1/tasks", "/v1/tasks/**"),
            ("/v1/x/special", "/v1/*/special"),
            ("/v1/x/y", "/v1/{a}/{b}"),
            ("/v1/x/y/z", "/v1/{name=**}"),
            ("/v2", "/**"),
        ];
        for (path, expected) in cases {
            assert_eq!(winner(path).as_deref(), Some(expected), "{path}");
        }
        // Equal specificity: same verb presence and same kinds of segments.
        assert_eq!(
            parse("/v1/{a}").specificity(),
            parse("/v1/{b=*}").specificity()
        );
        assert_eq!(parse("/a/*").specificity(), parse("/b/*").specificity());
    }

    // Property tests.

    /// Characters a single-segment value keeps as they are; `/` too in a multi-segment one.
    const SINGLE: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    const MULTI: &AsciiSet = &SINGLE.remove(b'/');

    /// Strings made of the characters templates and paths are made of, to reach deep into the
    /// parser; and arbitrary strings.
    fn template_like() -> impl Strategy<Value = String> {
        let alphabet: Vec<char> = "/{}=*.:%_aZ09-é~?2Ff".chars().collect();
        prop_oneof![
            proptest::collection::vec(proptest::sample::select(alphabet), 0..24)
                .prop_map(String::from_iter),
            any::<String>(),
            any::<String>().prop_map(|s| format!("/{s}")),
        ]
    }

    fn arbitrary_text(min: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<char>(), min..6).prop_map(String::from_iter)
    }

    /// A part of a generated template, with what a request path puts there.
    #[derive(Debug, Clone)]
    enum Part {
        /// A literal: as written in the template and in the path, and decoded.
        Literal(&'static str, &'static str),
        /// `*` with the segment it matches.
        Wildcard(String),
        /// `**` with the segments it matches.
        DeepWildcard(Vec<String>),
    }

    /// A top-level item of a generated template.
    #[derive(Debug, Clone)]
    enum Item {
        Plain(Part),
        /// A variable (named by its index) over parts; `explicit` writes `{v=*}` for `{v}`.
        Variable {
            parts: Vec<Part>,
            explicit: bool,
        },
    }

    fn literal_part() -> impl Strategy<Value = Part> {
        proptest::sample::select(vec![
            ("v1", "v1"),
            ("tasks", "tasks"),
            ("a-b_c.d~e", "a-b_c.d~e"),
            ("x%20y", "x y"),
            ("caf%C3%A9", "café"),
            ("a=b", "a=b"),
        ])
        .prop_map(|(raw, decoded)| Part::Literal(raw, decoded))
    }

    /// A segment value: no `/` (it would make more segments).
    fn segment_value() -> impl Strategy<Value = String> {
        arbitrary_text(1).prop_map(|s| s.replace('/', "-"))
    }

    fn fixed_part() -> impl Strategy<Value = Part> {
        prop_oneof![literal_part(), segment_value().prop_map(Part::Wildcard)]
    }

    fn deep_part() -> impl Strategy<Value = Part> {
        proptest::collection::vec(segment_value(), 0..3).prop_map(Part::DeepWildcard)
    }

    fn item(last: bool) -> BoxedStrategy<Item> {
        let fixed_variable = (proptest::collection::vec(fixed_part(), 1..4), any::<bool>())
            .prop_map(|(parts, explicit)| Item::Variable { parts, explicit });
        if !last {
            return prop_oneof![fixed_part().prop_map(Item::Plain), fixed_variable].boxed();
        }
        let deep_variable = (proptest::collection::vec(fixed_part(), 0..3), deep_part()).prop_map(
            |(mut parts, deep)| {
                parts.push(deep);
                Item::Variable {
                    parts,
                    explicit: true,
                }
            },
        );
        prop_oneof![
            fixed_part().prop_map(Item::Plain),
            fixed_variable,
            deep_part().prop_map(Item::Plain),
            deep_variable,
        ]
        .boxed()
    }

    /// A template, a path it should match, and the bindings expected.
    fn template_and_path() -> impl Strategy<Value = (String, String, Bindings)> {
        let verb =
            proptest::option::of(proptest::sample::select(vec!["complete", "do-it", "x%3Ay"]));
        (
            proptest::collection::vec(item(false), 0..4),
            item(true),
            verb,
        )
            .prop_map(|(mut items, last, verb)| {
                items.push(last);
                let mut template = String::new();
                let mut path_segments: Vec<String> = Vec::new();
                let mut expected = Vec::new();
                for (index, item) in items.iter().enumerate() {
                    match item {
                        Item::Plain(part) => {
                            template.push('/');
                            template.push_str(&part_template(part));
                            path_segments.extend(part_path(part, SINGLE));
                        }
                        Item::Variable { parts, explicit } => {
                            let name = format!("m{index}.f");
                            let multi =
                                parts.len() > 1 || matches!(parts[0], Part::DeepWildcard(_));
                            let set = if multi { MULTI } else { SINGLE };
                            let inner: Vec<String> = parts.iter().map(part_template).collect();
                            if inner == ["*"] && !explicit {
                                template.push_str(&format!("/{{{name}}}"));
                            } else {
                                template.push_str(&format!("/{{{name}={}}}", inner.join("/")));
                            }
                            let mut values = Vec::new();
                            for part in parts {
                                path_segments.extend(part_path(part, set));
                                values.extend(part_values(part));
                            }
                            expected.push((name, values.join("/")));
                        }
                    }
                }
                let mut path = format!("/{}", path_segments.join("/"));
                if let Some(verb) = verb {
                    template.push(':');
                    template.push_str(verb);
                    path.push(':');
                    path.push_str(verb);
                }
                (template, path, expected)
            })
    }

    fn part_template(part: &Part) -> String {
        match part {
            Part::Literal(raw, _) => (*raw).to_owned(),
            Part::Wildcard(_) => "*".to_owned(),
            Part::DeepWildcard(_) => "**".to_owned(),
        }
    }

    /// The path segments a part expands to, values encoded with `set`.
    fn part_path(part: &Part, set: &'static AsciiSet) -> Vec<String> {
        let encode = |value: &str| utf8_percent_encode(value, set).to_string();
        match part {
            Part::Literal(raw, _) => vec![(*raw).to_owned()],
            Part::Wildcard(value) => vec![encode(value)],
            Part::DeepWildcard(values) => values.iter().map(|v| encode(v)).collect(),
        }
    }

    /// The decoded values a part contributes to its variable's value.
    fn part_values(part: &Part) -> Vec<String> {
        match part {
            Part::Literal(_, decoded) => vec![(*decoded).to_owned()],
            Part::Wildcard(value) => vec![value.clone()],
            Part::DeepWildcard(values) => values.clone(),
        }
    }

    fn fixed_templates() -> Vec<PathTemplate> {
        [
            "/v1/tasks",
            "/v1/tasks/{id}",
            "/v1/{name=shelves/*/books/*}",
            "/v1/{a.b}/x/{path=**}",
            "/v1/{name=tasks/*}:complete",
            "/**",
            "/**:x",
            "/*",
        ]
        .iter()
        .map(|t| parse(t))
        .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn template_parse_never_panics(text in template_like()) {
            if let Ok(template) = PathTemplate::parse(&text) {
                // Whatever parses prints back to itself.
                prop_assert_eq!(parse(&template.to_string()), template);
            }
        }

        #[test]
        fn template_matches_never_panics(path in template_like()) {
            for template in fixed_templates() {
                if let Some(bindings) = template.matches(&path) {
                    prop_assert_eq!(bindings.len(), template.variables().len());
                }
            }
        }

        #[test]
        fn template_expanded_values_match_back(
            (text, path, expected) in template_and_path()
        ) {
            let template = parse(&text);
            prop_assert_eq!(matched(&template, &path), Some(expected), "{} against {}", text, path);
        }

        #[test]
        fn template_display_round_trips((text, _path, _expected) in template_and_path()) {
            let template = parse(&text);
            let printed = template.to_string();
            prop_assert_eq!(parse(&printed), template.clone());
            prop_assert_eq!(printed.clone(), parse(&printed).to_string());
            prop_assert!(template.conflicts_with(&parse(&printed)));
        }

        #[test]
        fn template_equal_specificity_and_same_path_means_conflict(
            (a, path, _a_expected) in template_and_path(),
            (b, _b_path, _b_expected) in template_and_path(),
        ) {
            let (a, b) = (parse(&a), parse(&b));
            let order = a.specificity().cmp(&b.specificity());
            prop_assert_eq!(order.reverse(), b.specificity().cmp(&a.specificity()));
            if a.matches(&path).is_some() && b.matches(&path).is_some() {
                prop_assert_eq!(order.is_eq(), a.conflicts_with(&b), "{} vs {} on {}", a, b, path);
            }
        }
    }
}
