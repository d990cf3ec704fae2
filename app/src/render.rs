//! Server-side rendering: Markdown to sanitized HTML, and the reader's pages and the Atom
//! feed through askama templates (`app/templates/`), which escape every value unless told
//! otherwise (only the sanitized body and the constant style sheet are inserted as they are).
//! Pure functions of their inputs, so they are unit-tested without a server.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::sync::LazyLock;

use askama::Template;
use axum::http::StatusCode;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use pulldown_cmark::{CowStr, Event, HeadingLevel, Options, Parser, Tag, TagEnd, html};
use sha2::{Digest, Sha256};

use crate::db::articles::{Article, Cursor, Rendered};

pub const HTML: &str = "text/html; charset=utf-8";

/// The version of `markdown_to_safe_html`'s output. Bump it whenever the output changes:
/// stored renderings of older versions are then rendered again.
pub const RENDER_VERSION: i32 = 2;

/// What every page needs to know about the site.
#[derive(Debug, Clone, Copy)]
pub struct Site<'a> {
    pub title: &'a str,
    /// `ARTICLES_PUBLIC_URL`, no trailing slash: the base of canonical and feed links.
    pub public_url: &'a str,
}

pub fn render_body(markdown: &str) -> Rendered {
    Rendered {
        html: markdown_to_safe_html(markdown),
        version: RENDER_VERSION,
    }
}

/// The article's body as HTML: the stored rendering, or a new one if it is missing or
/// from an older renderer.
pub fn body_html(a: &Article) -> Cow<'_, str> {
    if a.render_version == RENDER_VERSION {
        Cow::Borrowed(&a.body_html)
    } else {
        Cow::Owned(markdown_to_safe_html(&a.body))
    }
}

fn demote(level: HeadingLevel) -> HeadingLevel {
    match level {
        HeadingLevel::H1 => HeadingLevel::H2,
        HeadingLevel::H2 => HeadingLevel::H3,
        HeadingLevel::H3 => HeadingLevel::H4,
        HeadingLevel::H4 => HeadingLevel::H5,
        _ => HeadingLevel::H6,
    }
}

/// Markdown to HTML with anything unsafe (scripts, event handlers, `javascript:` links,
/// raw iframes, inline styles...) removed by ammonia's allow-list.
///
/// - Headings move one level down: the page's title is its only `<h1>`.
/// - Footnotes are numbered in order of first reference, link both ways, and use ids of
///   the form `fn-N`/`fnref-N` only (the sole ids the sanitizer lets through).
/// - Table column alignment becomes a class (`align-left|center|right`): the policy
///   allows no inline style.
pub fn markdown_to_safe_html(markdown: &str) -> String {
    let options =
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_FOOTNOTES;
    let mut numbers: HashMap<String, usize> = HashMap::new();
    let mut number_of = |label: &str| {
        let next = numbers.len() + 1;
        *numbers.entry(label.to_owned()).or_insert(next)
    };
    let mut referenced: HashSet<usize> = HashSet::new();
    let mut events = Vec::new();
    for event in Parser::new_ext(markdown, options) {
        match event {
            Event::Start(Tag::Heading {
                level,
                id,
                classes,
                attrs,
            }) => events.push(Event::Start(Tag::Heading {
                level: demote(level),
                id,
                classes,
                attrs,
            })),
            Event::End(TagEnd::Heading(level)) => {
                events.push(Event::End(TagEnd::Heading(demote(level))))
            }
            Event::FootnoteReference(label) => {
                let n = number_of(&label);
                // The back link goes to the first reference only: ids must be unique.
                let id = if referenced.insert(n) {
                    format!(" id=\"fnref-{n}\"")
                } else {
                    String::new()
                };
                events.push(Event::Html(CowStr::from(format!(
                    "<sup class=\"fnref\"><a href=\"#fn-{n}\"{id}>{n}</a></sup>"
                ))));
            }
            Event::Start(Tag::FootnoteDefinition(label)) => {
                let n = number_of(&label);
                events.push(Event::Html(CowStr::from(format!(
                    "<div class=\"footnote\" id=\"fn-{n}\"><a class=\"fn-back\" href=\"#fnref-{n}\">{n}.</a>"
                ))));
            }
            Event::End(TagEnd::FootnoteDefinition) => {
                events.push(Event::Html(CowStr::from("</div>")));
            }
            other => events.push(other),
        }
    }
    let mut raw = String::with_capacity(markdown.len() * 3 / 2);
    html::push_html(&mut raw, events.into_iter());
    let raw = raw
        .replace(" style=\"text-align: left\"", " class=\"align-left\"")
        .replace(" style=\"text-align: center\"", " class=\"align-center\"")
        .replace(" style=\"text-align: right\"", " class=\"align-right\"");
    SANITIZER.clean(&raw).to_string()
}

static SANITIZER: LazyLock<ammonia::Builder<'static>> = LazyLock::new(|| {
    let mut b = ammonia::Builder::default();
    b.add_tag_attributes("div", &["id"])
        .add_tag_attributes("a", &["id"])
        .add_allowed_classes("div", &["footnote"])
        .add_allowed_classes("sup", &["fnref"])
        .add_allowed_classes("a", &["fn-back"])
        .add_allowed_classes("th", &["align-left", "align-center", "align-right"])
        .add_allowed_classes("td", &["align-left", "align-center", "align-right"])
        .attribute_filter(|_, attribute, value| {
            if attribute != "id" {
                return Some(value.into());
            }
            // Only footnote ids: anything else could clash with (clobber) the page's own.
            let digits = value
                .strip_prefix("fn-")
                .or_else(|| value.strip_prefix("fnref-"))?;
            (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| value.into())
        });
    b
});

/// Percent-encodes a query-string value.
pub fn encode_query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

fn date(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

const STYLE: &str = "*{box-sizing:border-box}\
body{font-family:system-ui,sans-serif;max-width:42rem;margin:0 auto;padding:1rem;line-height:1.6;color:#222;overflow-wrap:anywhere}\
header.site{display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:center;justify-content:space-between;border-bottom:1px solid #ddd;padding-bottom:.5rem;margin-bottom:1rem}\
.site-title{font-size:1.3rem;font-weight:700;margin:0}header a{color:inherit;text-decoration:none}\
form[role=search]{display:flex;gap:.3rem;flex:1 1 12rem;max-width:20rem}input[type=search]{flex:1;min-width:0;padding:.3rem}\
a{color:#0645ad}.meta{color:#555;font-size:.9rem}.summary{font-size:1.1rem;color:#333}\
.tag{background:#eee;border-radius:3px;padding:0 .3rem;margin-right:.3rem;font-size:.85rem}\
article img{max-width:100%;height:auto}pre{overflow-x:auto;background:#f6f6f6;padding:.5rem}code{overflow-wrap:anywhere}\
table{border-collapse:collapse;display:block;max-width:100%;overflow-x:auto;margin:1rem 0}\
th,td{border:1px solid #ccc;padding:.3rem .6rem}th{background:#f3f3f3}\
.align-left{text-align:left}.align-center{text-align:center}.align-right{text-align:right}\
blockquote{margin:1rem 0;padding:.2rem 1rem;border-left:4px solid #bbb;background:#f8f8f8;color:#444}\
.footnote{font-size:.9rem;border-top:1px solid #ddd;padding-top:.3rem;margin-top:1rem}.footnote p{display:inline}\
.fn-back{margin-right:.4rem}.fnref a{text-decoration:none}\
footer{border-top:1px solid #ddd;margin-top:2rem;padding-top:.5rem;font-size:.9rem}";

/// The Content-Security-Policy of every response. The pages' only style sheet is inline
/// and constant, so its hash allows it (a nonce would defeat cached bodies); there is no
/// script at all.
pub fn content_security_policy() -> &'static str {
    static CSP: LazyLock<String> = LazyLock::new(|| {
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE));
        format!(
            "default-src 'none'; style-src 'sha256-{hash}'; img-src 'self' https:; \
             form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
        )
    });
    &CSP
}

/// The `<head>` of a page.
struct Head {
    title: String,
    og_title: String,
    description: String,
    canonical: String,
    og_type: &'static str,
}

struct TagLink<'a> {
    name: &'a str,
    href: String,
}

fn tag_links(tags: &[String]) -> Vec<TagLink<'_>> {
    tags.iter()
        .map(|t| TagLink {
            name: t,
            href: format!("/?tag={}", encode_query_value(t)),
        })
        .collect()
}

struct Item<'a> {
    slug: &'a str,
    title: &'a str,
    summary: &'a str,
    iso: String,
    date: String,
    tags: Vec<TagLink<'a>>,
}

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage<'a> {
    site: Site<'a>,
    head: Head,
    style: &'static str,
    query: &'a str,
    note: Option<String>,
    empty: String,
    items: Vec<Item<'a>>,
    next_href: Option<String>,
}

#[derive(Template)]
#[template(path = "article.html")]
struct ArticlePage<'a> {
    site: Site<'a>,
    head: Head,
    style: &'static str,
    query: &'a str,
    title: &'a str,
    summary: &'a str,
    iso: String,
    date: String,
    tags: Vec<TagLink<'a>>,
    body: &'a str,
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    site: Site<'a>,
    head: Head,
    style: &'static str,
    query: &'a str,
    heading: String,
    message: String,
    stale_hint: bool,
    problem_type: &'a str,
}

/// What the index page shows above its list.
#[derive(Debug, Default)]
pub struct IndexFilter<'a> {
    pub tag: Option<&'a str>,
    pub search: Option<&'a str>,
}

impl IndexFilter<'_> {
    fn query_string(&self) -> String {
        let mut q = String::new();
        if let Some(tag) = self.tag {
            let _ = write!(q, "&tag={}", encode_query_value(tag));
        }
        if let Some(s) = self.search {
            let _ = write!(q, "&q={}", encode_query_value(s));
        }
        q
    }
}

pub fn index_page(
    site: Site<'_>,
    articles: &[Article],
    next: Option<Cursor>,
    filter: &IndexFilter<'_>,
) -> Result<String, askama::Error> {
    let note = match (filter.tag, filter.search) {
        (Some(t), Some(q)) => Some(format!("Results for “{q}” tagged {t}")),
        (Some(t), None) => Some(format!("Tagged {t}")),
        (None, Some(q)) => Some(format!("Results for “{q}”")),
        (None, None) => None,
    };
    let empty = match (filter.tag, filter.search) {
        (_, Some(q)) => format!("No articles match “{q}”. Try other words."),
        (Some(t), None) => format!("No articles are tagged {t} yet."),
        (None, None) => "No articles yet.".to_owned(),
    };
    let filters = filter.query_string();
    let canonical = match filters.strip_prefix('&') {
        Some(q) => format!("{}/?{q}", site.public_url),
        None => format!("{}/", site.public_url),
    };
    let title = match &note {
        Some(n) => format!("{n} · {}", site.title),
        None => site.title.to_owned(),
    };
    IndexPage {
        site,
        head: Head {
            og_title: title.clone(),
            title,
            description: format!("The latest articles from {}.", site.title),
            canonical,
            og_type: "website",
        },
        style: STYLE,
        query: filter.search.unwrap_or(""),
        note,
        empty,
        items: articles
            .iter()
            .map(|a| Item {
                slug: &a.slug,
                title: &a.title,
                summary: &a.summary,
                iso: a.published_at.map(rfc3339).unwrap_or_default(),
                date: date(a.published_at),
                tags: tag_links(&a.tags),
            })
            .collect(),
        next_href: next.map(|c| format!("/?cursor={}{filters}", encode_query_value(&c.encode()))),
    }
    .render()
}

/// The first `max` characters of `s`, cut at a word boundary.
fn excerpt(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let cut: String = s.chars().take(max).collect();
    let end = cut.rfind(char::is_whitespace).unwrap_or(cut.len());
    format!("{}…", cut[..end].trim_end())
}

/// A description for a page: the summary, or the start of the body's text.
fn describe(a: &Article) -> String {
    if !a.summary.is_empty() {
        return a.summary.clone();
    }
    let text: String = Parser::new(&a.body)
        .filter_map(|e| match e {
            Event::Text(t) | Event::Code(t) => Some(t.to_string()),
            Event::SoftBreak | Event::HardBreak | Event::End(_) => Some(" ".to_owned()),
            _ => None,
        })
        .collect();
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        a.title.clone()
    } else {
        excerpt(&text, 160)
    }
}

pub fn article_page(site: Site<'_>, a: &Article) -> Result<String, askama::Error> {
    let body = body_html(a);
    ArticlePage {
        site,
        head: Head {
            title: format!("{} · {}", a.title, site.title),
            og_title: a.title.clone(),
            description: describe(a),
            canonical: format!("{}/articles/{}", site.public_url, a.slug),
            og_type: "article",
        },
        style: STYLE,
        query: "",
        title: &a.title,
        summary: &a.summary,
        iso: a.published_at.map(rfc3339).unwrap_or_default(),
        date: date(a.published_at),
        tags: tag_links(&a.tags),
        body: &body,
    }
    .render()
}

/// What a reader is told for each error status.
fn reader_message(status: StatusCode, detail: &str) -> (&'static str, String) {
    match status.as_u16() {
        400 => (
            "Bad request",
            format!("This address is not valid ({detail})."),
        ),
        401 => (
            "Not authorized",
            "The request carried credentials that are not valid. Reading needs none.".into(),
        ),
        404 => (
            "Page not found",
            "There is no such page or article. It may have moved or been unpublished.".into(),
        ),
        405 => ("Not allowed", "This page cannot be used that way.".into()),
        503 => (
            "Briefly unavailable",
            "The site cannot reach its database just now. Please try again in a moment.".into(),
        ),
        _ => (
            "Something went wrong",
            "The server could not answer this request.".into(),
        ),
    }
}

/// A readable error page for reader paths.
pub fn error_page(
    site: Site<'_>,
    status: StatusCode,
    problem_type: &str,
    path: &str,
    detail: &str,
) -> Result<String, askama::Error> {
    let (heading, message) = reader_message(status, detail);
    ErrorPage {
        site,
        head: Head {
            title: format!("{heading} · {}", site.title),
            og_title: heading.to_owned(),
            description: message.clone(),
            canonical: format!("{}{path}", site.public_url),
            og_type: "website",
        },
        style: STYLE,
        query: "",
        heading: heading.to_owned(),
        message,
        stale_hint: status == StatusCode::SERVICE_UNAVAILABLE,
        problem_type,
    }
    .render()
}

/// Drops what XML 1.0 cannot carry (validation rejects it on write; this keeps older rows
/// from breaking the feed). The template escapes the rest.
fn xml_clean(s: &str) -> String {
    s.chars()
        .filter(|c| !crate::validate::is_xml_forbidden(*c))
        .collect()
}

struct Entry {
    title: String,
    url: String,
    published: String,
    updated: String,
    tags: Vec<String>,
    summary: String,
    content: String,
}

#[derive(Template)]
#[template(path = "feed.xml")]
struct Feed {
    title: String,
    base: String,
    updated: String,
    entries: Vec<Entry>,
}

/// An Atom 1.0 feed (RFC 4287) of the given articles, newest first.
pub fn atom_feed(site: Site<'_>, articles: &[Article]) -> Result<String, askama::Error> {
    let updated = articles
        .iter()
        .map(|a| a.updated_at)
        .max()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let base = xml_clean(site.public_url);
    Feed {
        title: xml_clean(site.title),
        updated: rfc3339(updated),
        entries: articles
            .iter()
            .map(|a| Entry {
                title: xml_clean(&a.title),
                url: format!("{base}/articles/{}", a.slug),
                published: rfc3339(a.published_at.unwrap_or(a.updated_at)),
                updated: rfc3339(a.updated_at),
                tags: a.tags.clone(),
                summary: xml_clean(&a.summary),
                content: xml_clean(&body_html(a)),
            })
            .collect(),
        base,
    }
    .render()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: Site<'static> = Site {
        title: "Site <x>",
        public_url: "https://x.example",
    };

    fn article(slug: &str, title: &str, body: &str) -> Article {
        let t = DateTime::from_timestamp(1_700_000_000, 0).expect("valid");
        Article {
            id: 1,
            slug: slug.into(),
            title: title.into(),
            summary: "sum <b>".into(),
            body: body.into(),
            tags: vec!["rust".into()],
            status: "published".into(),
            scheduled_at: None,
            published_at: Some(t),
            created_at: t,
            updated_at: t,
            version: 1,
            body_html: String::new(),
            render_version: 0,
        }
    }

    #[test]
    fn markdown_renders_and_unsafe_html_is_removed() {
        let html = markdown_to_safe_html(
            "# Hi\n\n*em* <script>alert(1)</script> <img src=x onerror=alert(1)> [x](javascript:alert(1)) <iframe src=//e></iframe> <p style=\"color:red\" id=\"main\">s</p>",
        );
        assert!(
            html.contains("<h2>Hi</h2>"),
            "headings start below the title: {html}"
        );
        assert!(html.contains("<em>em</em>"), "{html}");
        for bad in [
            "<script",
            "onerror",
            "javascript:",
            "<iframe",
            "style=",
            "id=\"main\"",
        ] {
            assert!(!html.contains(bad), "{bad} survived in {html}");
        }
    }

    #[test]
    fn footnotes_link_both_ways_and_tables_keep_their_alignment() {
        let html = markdown_to_safe_html(
            "Text[^note] and again[^note].\n\n[^note]: The note.\n\n| a | b |\n|:--|--:|\n| 1 | 2 |\n",
        );
        assert!(html.contains("<a href=\"#fn-1\" id=\"fnref-1\""), "{html}");
        assert_eq!(html.matches("id=\"fnref-1\"").count(), 1, "{html}");
        assert!(html.contains("id=\"fn-1\""), "{html}");
        assert!(html.contains("href=\"#fnref-1\""), "{html}");
        assert!(html.contains("<th class=\"align-left\">a</th>"), "{html}");
        assert!(html.contains("<td class=\"align-right\">2</td>"), "{html}");
    }

    #[test]
    fn titles_are_escaped_in_pages() {
        let page = article_page(SITE, &article("a", "<script>t</script>", "body")).expect("render");
        assert!(!page.contains("<script>t"), "{page}");
        assert!(
            page.contains("&#60;script&#62;t") || page.contains("&lt;script&gt;t"),
            "{page}"
        );
        assert!(!page.contains("Site <x>"), "{page}");
        assert_eq!(page.matches("<h1").count(), 1, "{page}");
        assert!(page.contains("<link rel=\"canonical\" href=\"https://x.example/articles/a\">"));
        assert!(page.contains("property=\"og:title\""));
        assert!(page.contains("name=\"description\""));
    }

    #[test]
    fn the_inline_style_matches_the_policy_hash() {
        let page = article_page(SITE, &article("a", "t", "body")).expect("render");
        let style = page
            .split("<style>")
            .nth(1)
            .and_then(|s| s.split("</style>").next())
            .expect("style");
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(style));
        assert!(content_security_policy().contains(&hash));
    }

    #[test]
    fn index_links_the_next_page_with_filters_and_keeps_the_query() {
        let a = article("first", "First", "b");
        let next = Cursor {
            published_at: a.published_at.expect("published"),
            id: 1,
        };
        let page = index_page(
            SITE,
            &[a],
            Some(next),
            &IndexFilter {
                tag: Some("rust"),
                search: Some("a b"),
            },
        )
        .expect("render");
        assert!(page.contains("href=\"/articles/first\""));
        assert!(
            page.contains("cursor=1700000000000000_1&#38;tag=rust&#38;q=a%20b")
                || page.contains("cursor=1700000000000000_1&amp;tag=rust&amp;q=a%20b"),
            "{page}"
        );
        assert!(page.contains("value=\"a b\""), "{page}");
        let none = index_page(
            SITE,
            &[],
            None,
            &IndexFilter {
                tag: None,
                search: Some("zebra"),
            },
        )
        .expect("render");
        assert!(none.contains("No articles match “zebra”"), "{none}");
        assert!(none.contains("value=\"zebra\""), "{none}");
    }

    #[test]
    fn atom_feed_escapes_content_and_links_entries() {
        let site = Site {
            title: "S&P",
            public_url: "https://x.example",
        };
        let feed =
            atom_feed(site, &[article("a-b", "T", "<script>x</script>\n\n**b**")]).expect("render");
        assert!(feed.starts_with("<?xml"));
        assert!(
            feed.contains("<title>S&#38;P</title>") || feed.contains("<title>S&amp;P</title>"),
            "{feed}"
        );
        assert!(feed.contains("<id>https://x.example/articles/a-b</id>"));
        assert!(
            feed.contains("strong&#62;b") || feed.contains("strong&gt;b"),
            "{feed}"
        );
        assert!(!feed.contains("script"), "{feed}");
        assert!(feed.contains("<updated>2023-11-14T22:13:20Z</updated>"));
    }

    #[test]
    fn the_feed_drops_characters_xml_cannot_carry() {
        let feed = atom_feed(
            SITE,
            &[article("a", "bad \u{FFFF}\u{1}title", "body \u{FFFE}")],
        )
        .expect("render");
        assert!(
            !feed.contains('\u{FFFF}') && !feed.contains('\u{FFFE}') && !feed.contains('\u{1}')
        );
        assert!(feed.contains("<title>bad title</title>"), "{feed}");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode_query_value("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
