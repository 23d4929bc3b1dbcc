//! The dashboard's authentication: the cluster's token, shown once in the URL the node prints
//! (`/?token=T`), traded for a cookie; or `Authorization: Bearer T` for scrapers and curl.
//!
//! The cookie holds a digest of the token, not the token, and is named after the port (cookies
//! do not tell ports apart, and two dashboards on one host have different tokens). Every
//! comparison is in constant time.

use sha2::{Digest, Sha256};

/// Equal in time independent of where they differ (the digests have the same length).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter().zip(y.iter()).fold(0u8, |acc, (p, q)| acc | (p ^ q)) == 0
}

/// The cookie's value for `token`.
pub fn cookie_value(token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"volley-dashboard-cookie\0");
    h.update(token.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The cookie's name for a dashboard on `port`.
pub fn cookie_name(port: u16) -> String {
    format!("volley_dashboard_{port}")
}

/// The `Set-Cookie` header that logs a browser in.
pub fn set_cookie(port: u16, token: &str) -> String {
    format!(
        "{}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000",
        cookie_name(port),
        cookie_value(token)
    )
}

/// Whether a request with these `Authorization` and `Cookie` headers carries the token.
pub fn authorized(token: &str, port: u16, authorization: Option<&str>, cookies: &[&str]) -> bool {
    if let Some(bearer) = authorization.and_then(|a| a.strip_prefix("Bearer ")) {
        return ct_eq(bearer.trim().as_bytes(), token.as_bytes());
    }
    let name = cookie_name(port);
    let want = cookie_value(token);
    cookies.iter().flat_map(|h| h.split(';')).any(|c| match c.trim().split_once('=') {
        Some((n, v)) if n == name => ct_eq(v.as_bytes(), want.as_bytes()),
        _ => false,
    })
}
