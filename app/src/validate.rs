//! Request payloads and their validation. Unknown fields are rejected, and every limit is
//! checked before anything reaches the database.

use chrono::{DateTime, SubsecRound, Utc};
use serde::Deserialize;

use crate::db::articles::{ArticlePatch, NewArticle};
use crate::error::FieldError;

pub const MAX_SLUG: usize = 100;
pub const MAX_TITLE: usize = 200;
pub const MAX_SUMMARY: usize = 500;
pub const MAX_BODY: usize = 100_000;
pub const MAX_TAGS: usize = 10;
pub const MAX_TAG: usize = 50;
pub const MAX_SEARCH: usize = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateArticle {
    pub slug: String,
    pub title: String,
    #[serde(default)]
    pub summary: String,
    pub body: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateArticle {
    pub title: Option<String>,
    pub summary: Option<String>,
    pub body: Option<String>,
    pub tags: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishArticle {
    /// When to publish; absent or past means now.
    pub at: Option<DateTime<Utc>>,
}

/// Lowercase ASCII letters and digits in groups joined by single hyphens.
pub fn is_valid_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SLUG
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Tags follow the slug rules, shorter.
pub fn is_valid_tag(s: &str) -> bool {
    s.len() <= MAX_TAG && is_valid_slug(s)
}

/// PostgreSQL rejects NUL in text, and other control characters have no place in a title.
fn has_control(s: &str, allow_newlines: bool) -> bool {
    s.chars()
        .any(|c| c.is_control() && !(allow_newlines && matches!(c, '\n' | '\r' | '\t')))
}

/// Unicode noncharacters: U+FDD0..U+FDEF and the last two code points of every plane.
/// XML 1.0 forbids U+FFFE and U+FFFF outright (one of them breaks the Atom feed for every
/// subscriber) and discourages the rest; none belongs in an article.
pub fn is_noncharacter(c: char) -> bool {
    let n = u32::from(c);
    (0xFDD0..=0xFDEF).contains(&n) || n & 0xFFFE == 0xFFFE
}

/// True for characters XML 1.0 cannot carry at all, even as references: C0 controls other
/// than tab, LF and CR, and U+FFFE/U+FFFF (surrogates cannot occur in a `str`).
pub fn is_xml_forbidden(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{8}' | '\u{B}' | '\u{C}' | '\u{E}'..='\u{1F}' | '\u{FFFE}' | '\u{FFFF}')
}

/// Characters that draw nothing or reorder the text around them: zero-width spaces and
/// marks, bidirectional embeddings, overrides and isolates, invisible operators, fillers
/// that render as blanks, the byte-order mark and the tag characters. In a title they
/// make it look empty, read backwards or spoof another one. ZWJ and ZWNJ are checked
/// apart: emoji sequences and several scripts need them between two visible characters.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E007F}'
    )
}

fn is_joiner(c: char) -> bool {
    matches!(c, '\u{200C}' | '\u{200D}')
}

/// The first invisible or reordering character of `s`, if any (a joiner counts unless it
/// stands between two visible characters).
pub fn invisible_char(s: &str) -> Option<char> {
    let chars: Vec<char> = s.chars().collect();
    let visible = |c: Option<&char>| {
        c.is_some_and(|c| !c.is_whitespace() && !is_invisible(*c) && !is_joiner(*c))
    };
    chars.iter().enumerate().find_map(|(i, &c)| {
        let bad = is_invisible(c)
            || (is_joiner(c) && !(i > 0 && visible(chars.get(i - 1)) && visible(chars.get(i + 1))));
        bad.then_some(c)
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A title: one line, and every character visible and in reading order.
    Title,
    /// One line of text.
    Line,
    /// Several lines (the Markdown body).
    Multiline,
}

fn check_text(
    errors: &mut Vec<FieldError>,
    field: &'static str,
    v: &str,
    max: usize,
    required: bool,
    kind: Kind,
) {
    let multiline = kind == Kind::Multiline;
    let n = v.chars().count();
    if required && v.trim().is_empty() {
        errors.push(FieldError {
            field,
            message: "must not be empty".into(),
        });
    } else if n > max {
        errors.push(FieldError {
            field,
            message: format!("must be at most {max} characters, got {n}"),
        });
    }
    if has_control(v, multiline) {
        errors.push(FieldError {
            field,
            message: "must not contain control characters".into(),
        });
    }
    if let Some(c) = v.chars().find(|c| is_noncharacter(*c)) {
        errors.push(FieldError {
            field,
            message: format!(
                "must not contain Unicode noncharacters (found U+{:04X})",
                u32::from(c)
            ),
        });
    }
    if kind != Kind::Multiline
        && let Some(c) = invisible_char(v)
    {
        errors.push(FieldError {
            field,
            message: format!(
                "must not contain invisible or text-reordering characters (found U+{:04X})",
                u32::from(c)
            ),
        });
    }
}

fn check_tags(errors: &mut Vec<FieldError>, tags: &[String]) {
    if tags.len() > MAX_TAGS {
        errors.push(FieldError {
            field: "tags",
            message: format!("at most {MAX_TAGS} tags, got {}", tags.len()),
        });
    }
    if let Some(bad) = tags.iter().find(|t| !is_valid_tag(t)) {
        errors.push(FieldError {
            field: "tags",
            message: format!(
                "tag {:?} is invalid: use 1-{MAX_TAG} lowercase letters, digits and single hyphens",
                bad.chars().take(60).collect::<String>()
            ),
        });
    }
}

fn dedup(tags: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for t in tags {
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

impl CreateArticle {
    pub fn validate(self) -> Result<NewArticle, Vec<FieldError>> {
        let mut errors = Vec::new();
        if !is_valid_slug(&self.slug) {
            errors.push(FieldError {
                field: "slug",
                message: format!("use 1-{MAX_SLUG} lowercase letters, digits and single hyphens"),
            });
        }
        check_text(
            &mut errors,
            "title",
            &self.title,
            MAX_TITLE,
            true,
            Kind::Title,
        );
        check_text(
            &mut errors,
            "summary",
            &self.summary,
            MAX_SUMMARY,
            false,
            Kind::Line,
        );
        check_text(
            &mut errors,
            "body",
            &self.body,
            MAX_BODY,
            false,
            Kind::Multiline,
        );
        check_tags(&mut errors, &self.tags);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(NewArticle {
            slug: self.slug,
            title: self.title.trim().to_owned(),
            summary: self.summary.trim().to_owned(),
            body: self.body,
            tags: dedup(self.tags),
        })
    }
}

impl UpdateArticle {
    pub fn validate(self) -> Result<ArticlePatch, Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Some(t) = &self.title {
            check_text(&mut errors, "title", t, MAX_TITLE, true, Kind::Title);
        }
        if let Some(s) = &self.summary {
            check_text(&mut errors, "summary", s, MAX_SUMMARY, false, Kind::Line);
        }
        if let Some(b) = &self.body {
            check_text(&mut errors, "body", b, MAX_BODY, false, Kind::Multiline);
        }
        if let Some(tags) = &self.tags {
            check_tags(&mut errors, tags);
        }
        if self.title.is_none()
            && self.summary.is_none()
            && self.body.is_none()
            && self.tags.is_none()
        {
            errors.push(FieldError {
                field: "body",
                message: "give at least one of title, summary, body, tags".into(),
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ArticlePatch {
            title: self.title.map(|t| t.trim().to_owned()),
            summary: self.summary.map(|s| s.trim().to_owned()),
            body: self.body,
            tags: self.tags.map(dedup),
        })
    }
}

impl PublishArticle {
    /// PostgreSQL keeps microseconds: round here so the job's copy of the time compares
    /// equal to the stored one.
    pub fn at(&self) -> Option<DateTime<Utc>> {
        self.at.map(|t| t.trunc_subsecs(6))
    }
}

/// Validates a search query: bounded length, no control characters.
pub fn check_search(q: &str) -> Result<(), String> {
    if q.chars().count() > MAX_SEARCH {
        return Err(format!("q must be at most {MAX_SEARCH} characters"));
    }
    if has_control(q, false) || q.chars().any(is_noncharacter) {
        return Err("q must not contain control characters or noncharacters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(slug: &str, title: &str) -> CreateArticle {
        CreateArticle {
            slug: slug.into(),
            title: title.into(),
            summary: String::new(),
            body: "b".into(),
            tags: vec![],
        }
    }

    #[test]
    fn slugs() {
        for ok in ["a", "hello-world", "2024-review", &"a".repeat(100)] {
            assert!(is_valid_slug(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a--b",
            "A",
            "a b",
            "a_b",
            "é",
            "a;drop",
            &"a".repeat(101),
            "../x",
        ] {
            assert!(!is_valid_slug(bad), "{bad}");
        }
    }

    #[test]
    fn create_reports_each_bad_field() {
        let mut c = create("Bad Slug", "");
        c.tags = vec!["ok".into(), "Not OK".into()];
        c.summary = "x".repeat(MAX_SUMMARY + 1);
        let errs = c.validate().unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["slug", "title", "summary", "tags"]);
    }

    #[test]
    fn nul_and_control_characters_are_rejected() {
        let errs = create("a", "ti\0tle").validate().unwrap_err();
        assert_eq!(errs[0].field, "title");
        let mut c = create("a", "t");
        c.body = "line\nline\ttab".into();
        assert!(c.validate().is_ok(), "newlines and tabs are fine in a body");
    }

    #[test]
    fn noncharacters_are_rejected_in_every_text_field() {
        for bad in ["a\u{FFFF}b", "\u{FFFE}", "x\u{FDD0}", "\u{10FFFF}"] {
            let errs = create("a", bad).validate().unwrap_err();
            assert_eq!(errs[0].field, "title", "{bad:?}");
            let mut c = create("a", "t");
            c.body = format!("line\n{bad}");
            let errs = c.validate().unwrap_err();
            assert_eq!(errs[0].field, "body", "{bad:?}");
        }
        assert!(is_xml_forbidden('\u{FFFF}') && is_xml_forbidden('\u{1}'));
        assert!(!is_xml_forbidden('\n') && !is_xml_forbidden('é'));
    }

    #[test]
    fn invisible_and_reordering_characters_are_rejected_in_titles() {
        for bad in [
            "\u{200B}",
            "\u{200B}\u{200B}",
            "abc\u{202E}fed",
            "x\u{2066}y\u{2069}",
            "\u{FEFF}Title",
            "\u{3164}",
            "a\u{200D}",
            "\u{200D}a",
            "a \u{200C} b",
            "\u{E0041}tag",
        ] {
            let errs = create("a", bad).validate().unwrap_err();
            assert!(errs.iter().any(|e| e.field == "title"), "{bad:?}");
        }
        // A family emoji is joined by ZWJ; Persian uses ZWNJ inside words.
        for ok in [
            "Family \u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}",
            "\u{0645}\u{06CC}\u{200C}\u{062E}\u{0648}\u{0627}\u{0647}\u{0645}",
            "Caf\u{E9} \u{2764}\u{FE0F}",
        ] {
            assert!(create("a", ok).validate().is_ok(), "{ok:?}");
        }
        for slug in ["a\u{200B}b", "\u{202E}ab"] {
            assert!(!is_valid_slug(slug), "{slug:?}");
        }
    }

    #[test]
    fn sql_shaped_text_is_just_text() {
        let a = create("a", "'; DROP TABLE articles; --")
            .validate()
            .expect("valid");
        assert_eq!(a.title, "'; DROP TABLE articles; --");
    }

    #[test]
    fn empty_update_is_rejected_and_tags_are_deduplicated() {
        let empty = UpdateArticle {
            title: None,
            summary: None,
            body: None,
            tags: None,
        };
        assert!(empty.validate().is_err());
        let p = UpdateArticle {
            title: None,
            summary: None,
            body: None,
            tags: Some(vec!["a".into(), "a".into(), "b".into()]),
        }
        .validate()
        .expect("valid");
        assert_eq!(p.tags, Some(vec!["a".to_string(), "b".to_string()]));
    }

    #[test]
    fn publish_time_is_truncated_to_microseconds() {
        let t = DateTime::from_timestamp(1_700_000_000, 123_456_789).expect("valid");
        let p = PublishArticle { at: Some(t) };
        assert_eq!(p.at().expect("set").timestamp_subsec_nanos(), 123_456_000);
    }
}
