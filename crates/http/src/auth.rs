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

/// Failed logins allowed for one username from one client address before that pair has to
/// wait; each failure beyond doubles the wait, up to [`MAX_BLOCK`].
const FREE_FAILURES: u32 = 5;
const FIRST_BLOCK: Duration = Duration::from_secs(30);
const MAX_BLOCK: Duration = Duration::from_secs(900);
/// A pair's failures are forgotten this long after its last one.
const FORGET_AFTER: Duration = Duration::from_secs(900);
/// Failed logins one client address may make per [`BUDGET_WINDOW`], whatever the usernames,
/// before each of its attempts is slowed down by [`OVER_BUDGET_DELAY`] (not refused: the right
/// password still gets in, so that nobody can lock others out by guessing from their address,
/// which behind a proxy is everyone's).
const ADDRESS_BUDGET: u32 = 50;
const BUDGET_WINDOW: Duration = Duration::from_secs(300);
const OVER_BUDGET_DELAY: Duration = Duration::from_secs(2);
/// Entries kept; beyond it, the oldest entries that block nothing make room, never those that
/// do, so that a flood of fresh names or addresses cannot wash a lockout away.
const CAPACITY: usize = 100_000;

/// What the limiter says about a login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginVerdict {
    Allowed,
    /// Check the password after this pause (the address is over its budget).
    SlowDown(Duration),
    /// Refused until this long from now (this username from this address failed too often).
    Blocked(Duration),
}

#[derive(Debug, Clone, Copy)]
struct PairState {
    failures: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct AddressState {
    failures: u32,
    since: Instant,
}

#[derive(Debug, Default)]
struct LimiterState {
    /// (address, lowercased username) -> failures.
    pairs: HashMap<(String, String), PairState>,
    /// address -> failures in the current budget window.
    addresses: HashMap<String, AddressState>,
}

/// Failed logins, in memory (a restart forgets them, which only gives an attacker a
/// restart's worth of extra tries). A lockout is per (client address, username), so guessing
/// someone's password from one address never locks them out of another; an address that
/// fails a lot is slowed down, never refused the right password.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    state: Mutex<LimiterState>,
}

/// The address a client is counted under: IPv6 clients by their /64, which one host usually
/// has in whole.
fn address_key(ip: Option<IpAddr>) -> String {
    match ip {
        None => "?".to_owned(),
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

impl LoginLimiter {
    /// Whether an attempt may go ahead now.
    pub fn check(&self, ip: Option<IpAddr>, username: &str) -> LoginVerdict {
        self.check_at(ip, username, Instant::now())
    }

    fn check_at(&self, ip: Option<IpAddr>, username: &str, now: Instant) -> LoginVerdict {
        let Ok(state) = self.state.lock() else {
            return LoginVerdict::SlowDown(OVER_BUDGET_DELAY);
        };
        let addr = address_key(ip);
        let pair = (addr.clone(), username.to_lowercase());
        if let Some(until) = state.pairs.get(&pair).and_then(|p| p.blocked_until)
            && until > now
        {
            return LoginVerdict::Blocked(until - now);
        }
        let over_budget = state.addresses.get(&addr).is_some_and(|a| {
            now.duration_since(a.since) < BUDGET_WINDOW && a.failures >= ADDRESS_BUDGET
        });
        if over_budget {
            LoginVerdict::SlowDown(OVER_BUDGET_DELAY)
        } else {
            LoginVerdict::Allowed
        }
    }

    pub fn record_failure(&self, ip: Option<IpAddr>, username: &str) {
        self.record_failure_at(ip, username, Instant::now());
    }

    fn record_failure_at(&self, ip: Option<IpAddr>, username: &str, now: Instant) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let addr = address_key(ip);
        let pair = (addr.clone(), username.to_lowercase());
        make_room(&mut state, now);
        if state.pairs.len() < CAPACITY || state.pairs.contains_key(&pair) {
            let entry = state.pairs.entry(pair).or_insert(PairState {
                failures: 0,
                last: now,
                blocked_until: None,
            });
            if now.duration_since(entry.last) > FORGET_AFTER {
                entry.failures = 0;
            }
            entry.failures = entry.failures.saturating_add(1);
            entry.last = now;
            if entry.failures >= FREE_FAILURES {
                let doublings = (entry.failures - FREE_FAILURES).min(10);
                let block = (FIRST_BLOCK * 2u32.pow(doublings)).min(MAX_BLOCK);
                entry.blocked_until = Some(now + block);
            }
        }
        if state.addresses.len() < CAPACITY || state.addresses.contains_key(&addr) {
            let a = state.addresses.entry(addr).or_insert(AddressState {
                failures: 0,
                since: now,
            });
            if now.duration_since(a.since) >= BUDGET_WINDOW {
                *a = AddressState {
                    failures: 0,
                    since: now,
                };
            }
            a.failures = a.failures.saturating_add(1);
        }
    }

    /// The right password from this address for this username: its failures are forgotten
    /// (the address's budget is not).
    pub fn record_success(&self, ip: Option<IpAddr>, username: &str) {
        if let Ok(mut state) = self.state.lock() {
            state
                .pairs
                .remove(&(address_key(ip), username.to_lowercase()));
        }
    }
}

/// At capacity, drops what no longer counts (old failures, past windows), then the least
/// recently failed pairs that block nothing; a pair that blocks is never dropped.
fn make_room(state: &mut LimiterState, now: Instant) {
    if state.pairs.len() >= CAPACITY {
        state.pairs.retain(|_, p| {
            p.blocked_until.is_some_and(|u| u > now) || now.duration_since(p.last) <= FORGET_AFTER
        });
    }
    if state.pairs.len() >= CAPACITY {
        let mut idle: Vec<((String, String), Instant)> = state
            .pairs
            .iter()
            .filter(|(_, p)| p.blocked_until.is_none_or(|u| u <= now))
            .map(|(k, p)| (k.clone(), p.last))
            .collect();
        idle.sort_by_key(|(_, last)| *last);
        for (k, _) in idle.into_iter().take(CAPACITY / 10) {
            state.pairs.remove(&k);
        }
    }
    if state.addresses.len() >= CAPACITY {
        state
            .addresses
            .retain(|_, a| now.duration_since(a.since) < BUDGET_WINDOW);
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

/// The rule for usernames (`flow users create` and the Users page): 1-64 letters, digits,
/// `_`, `-`, `.` or `@`, so a name is safe in URLs, logs and the audit log as it is.
pub fn check_username(username: &str) -> Result<(), String> {
    let valid = !username.is_empty()
        && username.len() <= 64
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "username `{username}`: use 1-64 letters, digits, `_`, `-`, `.` or `@`"
        ))
    }
}

/// The password policy (`flow users create` and the Users page): at least 8 characters.
pub fn check_password(password: &str) -> Result<(), String> {
    if password.chars().count() < 8 {
        return Err("the password must be at least 8 characters long".to_owned());
    }
    Ok(())
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
    fn limiter_blocks_a_pair_not_the_user_or_the_address() {
        let l = LoginLimiter::default();
        let t0 = Instant::now();
        let ip = Some(IpAddr::from([127, 0, 0, 1]));
        for _ in 0..FREE_FAILURES {
            assert_eq!(l.check_at(ip, "alice", t0), LoginVerdict::Allowed);
            l.record_failure_at(ip, "alice", t0);
        }
        // This address may not guess alice's password for a while...
        assert_eq!(
            l.check_at(ip, "Alice", t0),
            LoginVerdict::Blocked(FIRST_BLOCK)
        );
        // ...but alice from elsewhere, and others from here, are not locked out.
        assert_eq!(
            l.check_at(Some(IpAddr::from([10, 0, 0, 1])), "alice", t0),
            LoginVerdict::Allowed
        );
        assert_eq!(l.check_at(ip, "bob", t0), LoginVerdict::Allowed);
        // The wait doubles with each further failure, up to the cap.
        let later = t0 + FIRST_BLOCK;
        assert_eq!(l.check_at(ip, "alice", later), LoginVerdict::Allowed);
        l.record_failure_at(ip, "alice", later);
        assert_eq!(
            l.check_at(ip, "alice", later),
            LoginVerdict::Blocked(FIRST_BLOCK * 2)
        );
        l.record_success(ip, "alice");
        assert_eq!(l.check_at(ip, "alice", later), LoginVerdict::Allowed);
    }

    #[test]
    fn an_address_over_its_budget_is_slowed_not_locked_out() {
        let l = LoginLimiter::default();
        let t0 = Instant::now();
        let ip = Some(IpAddr::from([192, 168, 0, 9]));
        for i in 0..ADDRESS_BUDGET {
            l.record_failure_at(ip, &format!("user{i}"), t0);
        }
        assert_eq!(
            l.check_at(ip, "carol", t0),
            LoginVerdict::SlowDown(OVER_BUDGET_DELAY)
        );
        assert_eq!(
            l.check_at(ip, "carol", t0 + BUDGET_WINDOW),
            LoginVerdict::Allowed
        );
        // IPv6 clients count by their /64.
        let a = Some("2001:db8:1:2::1".parse().unwrap());
        let b = Some("2001:db8:1:2:ffff::7".parse().unwrap());
        assert_eq!(address_key(a), address_key(b));
    }

    #[test]
    fn a_flood_of_names_cannot_wash_a_lockout_away() {
        let l = LoginLimiter::default();
        let t0 = Instant::now();
        let ip = Some(IpAddr::from([127, 0, 0, 1]));
        for _ in 0..FREE_FAILURES {
            l.record_failure_at(ip, "alice", t0);
        }
        for i in 0..(CAPACITY + 10) {
            let flood = Some(IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]));
            l.record_failure_at(flood, &format!("n{i}"), t0);
        }
        assert!(matches!(
            l.check_at(ip, "alice", t0),
            LoginVerdict::Blocked(_)
        ));
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
    }
}
