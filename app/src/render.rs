//! Server-side rendering: Markdown to sanitized HTML, the reader's pages and the Atom feed.
//! Pure functions of their inputs, so they are unit-tested without a server.

use std::borrow::Cow;
use std::fmt::Write;
use std::sync::LazyLock;

use axum::http::StatusCode;
use base64::Engine;
use sha2::{Digest, Sha256};

use chrono::{DateTime, SecondsFormat, Utc};
use pulldown_cmark::{Options, Parser, html};

use crate::db::articles::{Article, Cursor, Rendered};

/// Markdown to HTML with anything unsafe (scripts, event handlers, `javascript:` links,
/// raw iframes...) removed by ammonia's allow-list.
pub fn markdown_to_safe_html(markdown: &str) -> String {
    let options =
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_FOOTNOTES;
    let mut raw = String::with_capacity(markdown.len() * 3 / 2);
    html::push_html(&mut raw, Parser::new_ext(markdown, options));
    ammonia::clean(&raw)
}

/// The version of `markdown_to_safe_html`'s output. Bump it whenever the output changes:
/// stored renderings of older versions are then rendered again.
pub const RENDER_VERSION: i32 = 1;

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

/// Escapes text for HTML element content and quoted attribute values, and XML likewise.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

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

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem;line-height:1.6;color:#222}\
a{color:#0645ad}header a{color:inherit;text-decoration:none}.meta{color:#666;font-size:.9rem}\
.tag{background:#eee;border-radius:3px;padding:0 .3rem;margin-right:.3rem;font-size:.85rem}\
article img{max-width:100%}pre{overflow-x:auto;background:#f6f6f6;padding:.5rem}";

pub const HTML: &str = "text/html; charset=utf-8";

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

/// What a reader is told for each error status.
fn reader_message(status: StatusCode, detail: &str) -> (String, String) {
    let (title, text) = match status.as_u16() {
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
    };
    (title.to_owned(), text)
}

/// A readable error page for reader paths.
pub fn error_page(site_title: &str, status: StatusCode, detail: &str) -> String {
    let (title, text) = reader_message(status, detail);
    layout(
        site_title,
        &title,
        &format!(
            "<h2>{}</h2><p>{}</p><p><a href=\"/\">Back to the front page</a></p>",
            escape(&title),
            escape(&text)
        ),
    )
}

fn layout(site_title: &str, title: &str, body: &str) -> String {
    let site = escape(site_title);
    let head_title = if title.is_empty() {
        site.clone()
    } else {
        format!("{} · {site}", escape(title))
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{head_title}</title>\
         <link rel=\"alternate\" type=\"application/atom+xml\" title=\"{site}\" href=\"/feed.xml\">\
         <style>{STYLE}</style></head>\
         <body><header><h1><a href=\"/\">{site}</a></h1>\
         <form action=\"/\" method=\"get\"><input type=\"search\" name=\"q\" aria-label=\"Search\" placeholder=\"Search\"></form>\
         </header><main>{body}</main><footer class=\"meta\"><a href=\"/feed.xml\">Feed</a></footer></body></html>\n"
    )
}

fn tags_html(tags: &[String]) -> String {
    tags.iter()
        .map(|t| {
            format!(
                "<a class=\"tag\" href=\"/?tag={}\">{}</a>",
                encode_query_value(t),
                escape(t)
            )
        })
        .collect()
}

/// What the index page shows above its list.
#[derive(Debug, Default)]
pub struct IndexFilter<'a> {
    pub tag: Option<&'a str>,
    pub search: Option<&'a str>,
}

pub fn index_page(
    site_title: &str,
    articles: &[Article],
    next: Option<Cursor>,
    filter: &IndexFilter<'_>,
) -> String {
    let mut body = String::new();
    if let Some(tag) = filter.tag {
        let _ = write!(
            body,
            "<p>Tagged <strong>{}</strong> · <a href=\"/\">all</a></p>",
            escape(tag)
        );
    }
    if let Some(q) = filter.search {
        let _ = write!(
            body,
            "<p>Results for <strong>{}</strong> · <a href=\"/\">all</a></p>",
            escape(q)
        );
    }
    if articles.is_empty() {
        body.push_str("<p>No articles yet.</p>");
    }
    for a in articles {
        let _ = write!(
            body,
            "<article><h2><a href=\"/articles/{slug}\">{title}</a></h2>\
             <p class=\"meta\"><time datetime=\"{iso}\">{date}</time> {tags}</p><p>{summary}</p></article>",
            slug = escape(&a.slug),
            title = escape(&a.title),
            iso = a.published_at.map(rfc3339).unwrap_or_default(),
            date = date(a.published_at),
            tags = tags_html(&a.tags),
            summary = escape(&a.summary),
        );
    }
    if let Some(next) = next {
        let mut href = format!("/?cursor={}", encode_query_value(&next.encode()));
        if let Some(tag) = filter.tag {
            let _ = write!(href, "&tag={}", encode_query_value(tag));
        }
        if let Some(q) = filter.search {
            let _ = write!(href, "&q={}", encode_query_value(q));
        }
        let _ = write!(
            body,
            "<nav><a rel=\"next\" href=\"{}\">Older articles</a></nav>",
            escape(&href)
        );
    }
    layout(site_title, "", &body)
}

pub fn article_page(site_title: &str, a: &Article) -> String {
    let body = format!(
        "<article><h1>{title}</h1><p class=\"meta\"><time datetime=\"{iso}\">{date}</time> {tags}</p>{html}</article>",
        title = escape(&a.title),
        iso = a.published_at.map(rfc3339).unwrap_or_default(),
        date = date(a.published_at),
        tags = tags_html(&a.tags),
        html = body_html(a),
    );
    layout(site_title, &a.title, &body)
}

/// Escapes text for XML and drops what XML 1.0 cannot carry (validation rejects it on
/// write; this keeps older rows from breaking the feed).
fn xml_text(s: &str) -> String {
    if s.chars().any(crate::validate::is_xml_forbidden) {
        let clean: String = s
            .chars()
            .filter(|c| !crate::validate::is_xml_forbidden(*c))
            .collect();
        escape(&clean)
    } else {
        escape(s)
    }
}

/// An Atom 1.0 feed (RFC 4287) of the given articles, newest first.
pub fn atom_feed(site_title: &str, public_url: &str, articles: &[Article]) -> String {
    let updated = articles
        .iter()
        .map(|a| a.updated_at)
        .max()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let base = xml_text(public_url);
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\">\
         <title>{title}</title><id>{base}/</id><updated>{updated}</updated>\
         <link rel=\"self\" type=\"application/atom+xml\" href=\"{base}/feed.xml\"/>\
         <link rel=\"alternate\" type=\"text/html\" href=\"{base}/\"/>\
         <author><name>{title}</name></author>",
        title = xml_text(site_title),
        updated = rfc3339(updated),
    );
    for a in articles {
        let url = format!("{base}/articles/{}", xml_text(&a.slug));
        let _ = write!(
            out,
            "<entry><title>{title}</title><id>{url}</id><link rel=\"alternate\" type=\"text/html\" href=\"{url}\"/>\
             <published>{published}</published><updated>{updated}</updated>",
            title = xml_text(&a.title),
            published = rfc3339(a.published_at.unwrap_or(a.updated_at)),
            updated = rfc3339(a.updated_at),
        );
        for t in &a.tags {
            let _ = write!(out, "<category term=\"{}\"/>", xml_text(t));
        }
        if !a.summary.is_empty() {
            let _ = write!(out, "<summary>{}</summary>", xml_text(&a.summary));
        }
        let _ = write!(
            out,
            "<content type=\"html\">{}</content></entry>",
            xml_text(&body_html(a))
        );
    }
    out.push_str("</feed>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "# Hi\n\n*em* <script>alert(1)</script> <img src=x onerror=alert(1)> [x](javascript:alert(1)) <iframe src=//e></iframe>",
        );
        assert!(html.contains("<h1>Hi</h1>"), "{html}");
        assert!(html.contains("<em>em</em>"), "{html}");
        for bad in ["<script", "onerror", "javascript:", "<iframe"] {
            assert!(!html.contains(bad), "{bad} survived in {html}");
        }
    }

    #[test]
    fn titles_are_escaped_in_pages() {
        let page = article_page("Site <x>", &article("a", "<script>t</script>", "body"));
        assert!(!page.contains("<script>t"), "{page}");
        assert!(page.contains("&lt;script&gt;t&lt;/script&gt;"));
        assert!(page.contains("Site &lt;x&gt;"));
    }

    #[test]
    fn index_links_the_next_page_with_filters() {
        let a = article("first", "First", "b");
        let next = Cursor {
            published_at: a.published_at.expect("published"),
            id: 1,
        };
        let page = index_page(
            "S",
            &[a],
            Some(next),
            &IndexFilter {
                tag: Some("rust"),
                search: Some("a b"),
            },
        );
        assert!(page.contains("href=\"/articles/first\""));
        assert!(
            page.contains("cursor=1700000000000000_1&amp;tag=rust&amp;q=a%20b"),
            "{page}"
        );
    }

    #[test]
    fn atom_feed_escapes_content_and_links_entries() {
        let feed = atom_feed(
            "S&P",
            "https://x.example",
            &[article("a-b", "T", "<script>x</script>\n\n**b**")],
        );
        assert!(feed.starts_with("<?xml"));
        assert!(feed.contains("<title>S&amp;P</title>"));
        assert!(feed.contains("<id>https://x.example/articles/a-b</id>"));
        assert!(feed.contains("&lt;strong&gt;b&lt;/strong&gt;"), "{feed}");
        assert!(!feed.contains("script"), "{feed}");
        assert!(feed.contains("<updated>2023-11-14T22:13:20Z</updated>"));
    }

    #[test]
    fn the_feed_drops_characters_xml_cannot_carry() {
        let feed = atom_feed(
            "S",
            "https://x.example",
            &[article("a", "bad \u{FFFF}\u{1}title", "body \u{FFFE}")],
        );
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
