//! The reader's pages and the feed.

use reqwest::header::CONTENT_TYPE;

use crate::harness::{TestServer, fresh_database};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_article_page_and_feed() {
    let db = fresh_database().await;
    let srv = TestServer::start(&db, &[("ARTICLES_SITE_TITLE", "The <Daily>")]).await;
    srv.create(
        "first-post",
        "First <post>",
        "Some **bold** text.\n\n<script>alert('x')</script>\n\n[link](javascript:alert(1))",
        &["news"],
    )
    .await;
    srv.publish("first-post").await;
    srv.create("secret-draft", "Secret draft", "not yet", &[])
        .await;

    let res = srv.get("/").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
    let html = res.text().await.expect("html");
    assert!(html.contains("The &#60;Daily&#62;"), "{html}");
    assert!(!html.contains("The <Daily>"), "{html}");
    assert!(html.contains("href=\"/articles/first-post\""));
    assert!(html.contains("First &#60;post&#62;"));
    assert!(!html.contains("secret-draft"), "drafts are not listed");

    let html = srv
        .get("/articles/first-post")
        .await
        .text()
        .await
        .expect("html");
    assert!(html.contains("<strong>bold</strong>"), "{html}");
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(!html.contains("javascript:"), "{html}");

    for path in [
        "/articles/secret-draft",
        "/articles/no-such",
        "/articles/Bad%20Slug",
    ] {
        let res = srv.get(path).await;
        assert_eq!(res.status(), 404, "{path}");
        assert_eq!(res.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
    }

    let tagged = srv.get("/?tag=news").await.text().await.expect("html");
    assert!(tagged.contains("first-post"));
    let searched = srv.get("/?q=bold").await.text().await.expect("html");
    assert!(searched.contains("first-post"));
    let none = srv.get("/?q=absent").await.text().await.expect("html");
    assert!(!none.contains("first-post"));

    let res = srv.get("/feed.xml").await;
    assert_eq!(
        res.headers()[CONTENT_TYPE],
        "application/atom+xml; charset=utf-8"
    );
    let xml = res.text().await.expect("xml");
    assert!(xml.contains("<feed xmlns=\"http://www.w3.org/2005/Atom\">"));
    assert!(
        xml.contains("<id>http://test.example/articles/first-post</id>"),
        "{xml}"
    );
    assert!(!xml.contains("secret-draft"));
    assert!(!xml.contains("<script"), "{xml}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_paginates_with_an_older_link() {
    let db = fresh_database().await;
    let srv = TestServer::start(&db, &[]).await;
    for i in 0..22 {
        srv.create(&format!("p-{i}"), &format!("P{i}"), "b", &[])
            .await;
        srv.publish(&format!("p-{i}")).await;
    }
    let html = srv.get("/").await.text().await.expect("html");
    assert!(html.contains("/articles/p-21") && html.contains("/articles/p-2\""));
    assert!(
        !html.contains("/articles/p-1\""),
        "21 and 20 spill to page two"
    );
    let start =
        html.find("rel=\"next\" href=\"").expect("next link") + "rel=\"next\" href=\"".len();
    let href = &html[start..start + html[start..].find('"').expect("end")];
    let page2 = srv
        .get(&href.replace("&amp;", "&"))
        .await
        .text()
        .await
        .expect("html");
    assert!(page2.contains("/articles/p-1\"") && page2.contains("/articles/p-0\""));
    assert!(!page2.contains("rel=\"next\""));
    srv.stop().await;
}
