//! Published data never becomes a page on the server's origin: every answer
//! that carries it says `nosniff`, a raw answer runs nothing, and active types
//! (HTML, SVG, XML, scripts, unknown) are served as attachments.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Events, Server};
use hyper::Method;

#[tokio::test]
async fn published_html_is_never_shown_as_a_page() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    for (channel, content_type, attachment) in [
        ("html", "text/html", true),
        ("svg", "image/svg+xml", true),
        ("xhtml", "application/xhtml+xml; charset=utf-8", true),
        ("text", "text/plain; charset=utf-8", false),
        ("png", "image/png", false),
    ] {
        let published = c
            .request(
                Method::POST,
                &format!("/publish?channel={channel}"),
                &[("content-type", content_type)],
                "<script>document.title='owned'</script>",
            )
            .await;
        assert_eq!(published.status, 200);
        let raw = c
            .get(&format!("/subscribe?channel={channel}&since=oldest"))
            .await;
        assert_eq!(raw.status, 200);
        // The publisher's type and bytes are kept, as before.
        assert_eq!(raw.header("content-type"), Some(content_type));
        assert!(raw.text().starts_with("<script>"));
        assert_eq!(raw.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(
            raw.header("content-security-policy"),
            Some("sandbox; default-src 'none'"),
            "{channel}"
        );
        assert_eq!(
            raw.header("content-disposition"),
            attachment.then_some("attachment"),
            "{channel}"
        );
        let json = c
            .get(&format!(
                "/subscribe?channel={channel}&since=oldest&format=json"
            ))
            .await;
        assert_eq!(json.header("x-content-type-options"), Some("nosniff"));
    }
    let events = Events::open(&server, "/events?channel=html&since=oldest", None).await;
    assert_eq!(
        events.headers.get("x-content-type-options").unwrap(),
        "nosniff"
    );
}
