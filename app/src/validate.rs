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

fn check_text(
    errors: &mut Vec<FieldError>,
    field: &'static str,
    v: &str,
    max: usize,
    required: bool,
    multiline: bool,
) {
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
        check_text(&mut errors, "title", &self.title, MAX_TITLE, true, false);
        check_text(
            &mut errors,
            "summary",
            &self.summary,
            MAX_SUMMARY,
            false,
            false,
        );
        check_text(&mut errors, "body", &self.body, MAX_BODY, false, true);
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
            check_text(&mut errors, "title", t, MAX_TITLE, true, false);
        }
        if let Some(s) = &self.summary {
            check_text(&mut errors, "summary", s, MAX_SUMMARY, false, false);
        }
        if let Some(b) = &self.body {
            check_text(&mut errors, "body", b, MAX_BODY, false, true);
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
    if has_control(q, false) {
        return Err("q must not contain control characters".into());
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
