//! What crosses the relay in headers and URLs: hop-by-hop headers stay on their hop, the
//! client's own credentials (its relay token, or a provider key it should not have sent)
//! never go upstream, and the upstream URL is the route's base plus the rest of the path.

use hyper::header::{self, HeaderMap, HeaderName};
use hyper::Uri;

/// Headers that belong to one connection (RFC 9110 §7.6.1), plus the proxy ones.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Every header a vendor reads a key from; the client's are dropped whatever the route's
/// vendor, so neither a relay token nor a stray provider key leaves the host.
const KEY_HEADERS: [HeaderName; 4] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
    HeaderName::from_static("x-goog-api-key"),
];

/// Drops hop-by-hop headers, including those the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// A client's request headers made fit to go upstream (the key is added after).
pub(crate) fn for_upstream(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    for name in &KEY_HEADERS {
        headers.remove(name);
    }
    // The upstream's host comes from its URL; `Expect: 100-continue` is answered by the
    // relay's own server, which reads the body before anything goes upstream.
    headers.remove(header::HOST);
    headers.remove(header::EXPECT);
}

/// The upstream URI: `base` (no trailing slash) + `rest` of the path + the query, with any
/// `key=` parameter left out when `strip_key` (Gemini takes a key there).
pub(crate) fn upstream_uri(
    base: &str,
    rest: &str,
    query: Option<&str>,
    strip_key: bool,
) -> Result<Uri, hyper::http::Error> {
    let mut uri = String::with_capacity(base.len() + rest.len() + query.map_or(0, |q| q.len() + 1));
    uri.push_str(base);
    uri.push_str(rest);
    if let Some(query) = query {
        let mut first = true;
        for pair in query.split('&') {
            let name = pair.split('=').next().unwrap_or("");
            if (strip_key && name == "key") || pair.is_empty() {
                continue;
            }
            uri.push(if first { '?' } else { '&' });
            uri.push_str(pair);
            first = false;
        }
    }
    Ok(Uri::try_from(uri)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn client_credentials_and_hop_by_hop_headers_do_not_go_upstream() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer krr-token"),
            ("x-api-key", "sk-ant-stray"),
            ("api-key", "azure"),
            ("x-goog-api-key", "AIzaStray"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("host", "127.0.0.1"),
            ("content-type", "application/json"),
            ("openai-organization", "org"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        for_upstream(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-type", "openai-organization"]);
    }

    #[test]
    fn the_upstream_uri_is_the_base_plus_the_rest_without_a_key_parameter() {
        let uri = upstream_uri(
            "https://api.openai.com/v1",
            "/chat/completions",
            None,
            false,
        );
        assert_eq!(
            uri.unwrap().to_string(),
            "https://api.openai.com/v1/chat/completions"
        );
        let uri = upstream_uri(
            "https://g.example/v1beta",
            "/models/x:generateContent",
            Some("key=AIzaLeak&alt=sse"),
            true,
        );
        assert_eq!(
            uri.unwrap().to_string(),
            "https://g.example/v1beta/models/x:generateContent?alt=sse"
        );
    }
}
