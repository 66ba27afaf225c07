//! Reads the server's Prometheus `/metrics` page (plain HTTP/1.1 over TCP; the bench
//! needs one GET, not an HTTP client library).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The metrics page's text.
pub(crate) async fn scrape(http: SocketAddr) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(http).await?;
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    Ok(body)
}

/// Sum of every sample of metric `name` (all label sets); 0 if absent.
pub(crate) fn value(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every sample of metric `name`, as (labels, value); labels as `key="value"` pairs.
pub(crate) fn samples(page: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let labels = labels
                .split(',')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.trim().to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect();
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_label_sets_and_ignores_prefixes() {
        let page = "# TYPE a counter\na{x=\"1\"} 2\na{x=\"2\"} 3\nab 100\n";
        assert_eq!(super::value(page, "a"), 5.0);
        assert_eq!(super::value(page, "zz"), 0.0);
    }

    #[test]
    fn samples_carry_their_labels() {
        let page =
            "# TYPE f counter\nf{kind=\"Push\",direction=\"out\"} 81\nf 2\nff{kind=\"x\"} 9\n";
        let s = super::samples(page, "f");
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0].0,
            vec![
                ("kind".to_owned(), "Push".to_owned()),
                ("direction".to_owned(), "out".to_owned())
            ]
        );
        assert_eq!((s[0].1, s[1].1), (81.0, 2.0));
    }
}
