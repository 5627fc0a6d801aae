//! Passwords, sessions and CSRF.
//!
//! Passwords are stored as argon2id hashes. A login creates a session row with a fresh random
//! id (so a session id seen before login is never reused) and a CSRF token; the browser gets
//! the id in an HttpOnly, SameSite=Lax cookie signed with the server's secret key. Every
//! state-changing form carries the session's CSRF token. Failed logins are rate limited per
//! client address and per username.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::HttpError;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "flow_session";

/// How long a session lasts without logging in again.
pub const SESSION_TTL: chrono::Duration = chrono::Duration::hours(12);

/// `n` random bytes from the operating system, URL-safe base64.
pub fn random_token(n: usize) -> Result<String, HttpError> {
    let mut bytes = vec![0u8; n];
    getrandom::getrandom(&mut bytes).map_err(|e| HttpError::Internal(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// An argon2id hash of `password` (PHC string format, salt included).
pub fn hash_password(password: &str) -> Result<String, HttpError> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| HttpError::Internal(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| HttpError::Internal(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HttpError::Internal(e.to_string()))
}

/// Whether `password` matches the stored hash.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A hash to verify against when the user does not exist, so that a wrong username takes
/// as long as a wrong password (no user enumeration by timing).
pub fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password("not a password").unwrap_or_default())
}

/// Signs and checks session cookie values with the server's secret key.
#[derive(Clone)]
pub struct CookieSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for CookieSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieSigner(..)") // never print the key
    }
}

impl CookieSigner {
    pub fn new(key: &[u8]) -> Self {
        CookieSigner { key: key.to_vec() }
    }

    fn mac(&self, value: &str) -> Option<Hmac<Sha256>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).ok()?;
        mac.update(value.as_bytes());
        Some(mac)
    }

    /// `value.signature`.
    pub fn sign(&self, value: &str) -> String {
        let sig = self
            .mac(value)
            .map(|m| URL_SAFE_NO_PAD.encode(m.finalize().into_bytes()))
            .unwrap_or_default();
        format!("{value}.{sig}")
    }

    /// The value of a signed cookie, if the signature is right (compared in constant time).
    pub fn verify<'a>(&self, signed: &'a str) -> Option<&'a str> {
        let (value, sig) = signed.rsplit_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        self.mac(value)?.verify_slice(&sig).ok()?;
        Some(value)
    }
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Failed logins allowed per window, per client address and per username.
const MAX_FAILURES: usize = 5;
const WINDOW: Duration = Duration::from_secs(300);

/// Counts failed logins in a sliding window, in memory (a restart forgets them, which only
/// gives an attacker a restart's worth of extra tries).
#[derive(Debug, Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl LoginLimiter {
    fn keys(ip: Option<IpAddr>, username: &str) -> [String; 2] {
        [
            format!(
                "ip:{}",
                ip.map_or_else(|| "?".to_owned(), |i| i.to_string())
            ),
            format!("user:{}", username.to_lowercase()),
        ]
    }

    /// Whether another attempt is allowed now.
    pub fn allowed(&self, ip: Option<IpAddr>, username: &str) -> bool {
        let Ok(mut map) = self.failures.lock() else {
            return false;
        };
        let now = Instant::now();
        Self::keys(ip, username).iter().all(|k| {
            let list = map.entry(k.clone()).or_default();
            list.retain(|t| now.duration_since(*t) < WINDOW);
            list.len() < MAX_FAILURES
        })
    }

    pub fn record_failure(&self, ip: Option<IpAddr>, username: &str) {
        if let Ok(mut map) = self.failures.lock() {
            // Bound memory under a flood of distinct names: forget the oldest state.
            if map.len() > 10_000 {
                map.clear();
            }
            for k in Self::keys(ip, username) {
                map.entry(k).or_default().push(Instant::now());
            }
        }
    }

    pub fn record_success(&self, ip: Option<IpAddr>, username: &str) {
        if let Ok(mut map) = self.failures.lock() {
            for k in Self::keys(ip, username) {
                map.remove(&k);
            }
        }
    }
}

/// A `next=` target that stays on this site: a path starting with a single `/`, no scheme,
/// no host, no backslash tricks. Anything else becomes `/`.
pub fn safe_next(next: Option<&str>) -> String {
    let Some(next) = next else {
        return "/".to_owned();
    };
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.chars().any(char::is_control);
    if ok { next.to_owned() } else { "/".to_owned() }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("S3cret", &h));
        assert!(!verify_password("s3cret", "garbage"));
        assert_ne!(h, hash_password("s3cret").unwrap(), "salted");
    }

    #[test]
    fn cookies_are_signed() {
        let s = CookieSigner::new(b"0123456789abcdef0123456789abcdef");
        let signed = s.sign("abc");
        assert_eq!(s.verify(&signed), Some("abc"));
        assert_eq!(s.verify("abc.AAAA"), None);
        assert_eq!(s.verify(&signed.replace("abc", "abd")), None);
        let other = CookieSigner::new(b"another key, another signature!!");
        assert_eq!(other.verify(&signed), None);
    }

    #[test]
    fn next_stays_on_site() {
        assert_eq!(safe_next(Some("/dags/etl?tab=grid")), "/dags/etl?tab=grid");
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/\\evil.example",
            "javascript:alert(1)",
            "evil",
            "/\nSet-Cookie: x",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn limiter_blocks_after_failures_and_forgets_on_success() {
        let l = LoginLimiter::default();
        let ip = Some(IpAddr::from([127, 0, 0, 1]));
        for _ in 0..MAX_FAILURES {
            assert!(l.allowed(ip, "alice"));
            l.record_failure(ip, "alice");
        }
        assert!(!l.allowed(ip, "alice"));
        assert!(!l.allowed(ip, "bob"), "same address");
        assert!(
            !l.allowed(Some(IpAddr::from([10, 0, 0, 1])), "alice"),
            "same user"
        );
        l.record_success(ip, "alice");
        assert!(l.allowed(ip, "alice"));
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
    }
}
