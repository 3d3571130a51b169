//! HTTP basic auth against bcrypt hashes (`basic_auth_users` of the web config).
//!
//! bcrypt is slow by design (tens of ms at cost 10), and Prometheus sends the same
//! credentials with every scrape. As exporter-toolkit does, a successful check is remembered
//! under a SHA-256 of user, hash and password, so a later request with the same credentials
//! costs a hash, not a bcrypt; the memory is bounded, and keyed by the stored hash too, so a
//! reloaded config with a new hash never honours the old password. Checks that do need bcrypt
//! run on the blocking pool, a few at a time, so a flood of wrong passwords cannot stall the
//! runtime's two workers (which also drain the ring buffer).

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
};

use axum::http::HeaderValue;
use base64::{engine::general_purpose::STANDARD, Engine as _};
use tokio::sync::Semaphore;

/// Successful checks remembered; past it an arbitrary one is forgotten (and costs one
/// bcrypt the next time).
const REMEMBERED: usize = 256;
/// bcrypt checks run at once; more wait.
const CONCURRENT_CHECKS: usize = 2;

/// What a request's credentials amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// No `Authorization: Basic` header, or one that does not decode to `user:password`.
    NoCredentials,
    /// An unknown user or a wrong password.
    WrongCredentials,
}

pub struct BasicAuth {
    users: BTreeMap<String, String>,
    remembered: Mutex<HashSet<[u8; 32]>>,
    checks: Arc<Semaphore>,
}

impl BasicAuth {
    /// `users` maps names to bcrypt hashes already checked with [`BasicAuth::check_hash`].
    pub fn new(users: BTreeMap<String, String>) -> Self {
        BasicAuth {
            users,
            remembered: Mutex::new(HashSet::new()),
            checks: Arc::new(Semaphore::new(CONCURRENT_CHECKS)),
        }
    }

    /// Whether `hash` is a bcrypt hash (`$2a$`, `$2b$`, `$2x$` or `$2y$`, cost, 53 characters
    /// of salt and hash), so that a typo is refused at start rather than locking everyone out.
    pub fn check_hash(hash: &str) -> Result<(), String> {
        let how = "make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`";
        let parts = hash
            .parse::<bcrypt::HashParts>()
            .map_err(|e| format!("not a bcrypt hash ({e}); {how}"))?;
        // bcrypt's own bounds: a cost outside them could never match.
        if !(4..=31).contains(&parts.get_cost()) {
            return Err(format!(
                "not a bcrypt hash (cost {} is not in 4..=31); {how}",
                parts.get_cost()
            ));
        }
        Ok(())
    }

    pub async fn check(&self, authorization: Option<&HeaderValue>) -> Verdict {
        let Some((user, password)) = authorization.and_then(credentials) else {
            return Verdict::NoCredentials;
        };
        // An unknown user is checked against a real user's hash anyway and then refused, so
        // that the answer takes as long as for a known one and does not reveal which exist.
        let (known, hash) = match self.users.get(&user) {
            Some(hash) => (true, hash.clone()),
            None => match self.users.values().next() {
                Some(hash) => (false, hash.clone()),
                None => return Verdict::WrongCredentials,
            },
        };
        let key = cache_key(&user, &hash, &password);
        if known && self.lock().contains(&key) {
            return Verdict::Allowed;
        }
        let Ok(_permit) = self.checks.clone().acquire_owned().await else {
            return Verdict::WrongCredentials;
        };
        let matched = tokio::task::spawn_blocking(move || {
            bcrypt::verify(password.as_bytes(), &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if !(known && matched) {
            return Verdict::WrongCredentials;
        }
        let mut remembered = self.lock();
        if remembered.len() >= REMEMBERED {
            if let Some(old) = remembered.iter().next().copied() {
                remembered.remove(&old);
            }
        }
        remembered.insert(key);
        Verdict::Allowed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.remembered.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `Basic base64(user:password)` → (user, password). The password may contain `:`.
fn credentials(header: &HeaderValue) -> Option<(String, String)> {
    let value = header.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Length-prefixed fields, so that no two different (user, hash, password) triples hash the
/// same bytes.
fn cache_key(user: &str, hash: &str, password: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for field in [user, hash, password] {
        ctx.update(&(field.len() as u64).to_le_bytes());
        ctx.update(field.as_bytes());
    }
    ctx.finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(userpass: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(userpass))).unwrap()
    }

    fn auth() -> BasicAuth {
        let hash = bcrypt::hash("s3cret:with:colons", 4).unwrap();
        BasicAuth::new(BTreeMap::from([("alice".to_string(), hash)]))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn right_password_only() {
        let a = auth();
        let right = basic("alice:s3cret:with:colons");
        assert_eq!(a.check(Some(&right)).await, Verdict::Allowed);
        // The second time from the memory of the first.
        assert_eq!(a.lock().len(), 1);
        assert_eq!(a.check(Some(&right)).await, Verdict::Allowed);
        for wrong in ["alice:s3cret", "bob:s3cret:with:colons", "alice:", ":"] {
            assert_eq!(
                a.check(Some(&basic(wrong))).await,
                Verdict::WrongCredentials,
                "{wrong}"
            );
        }
        assert_eq!(a.lock().len(), 1, "failures are not remembered");
        for missing in [
            None,
            Some(HeaderValue::from_static("Bearer abc")),
            Some(HeaderValue::from_static("Basic !!!")),
            Some(basic("no-colon")),
        ] {
            assert_eq!(
                a.check(missing.as_ref()).await,
                Verdict::NoCredentials,
                "{missing:?}"
            );
        }
        let lower = HeaderValue::from_str(&format!(
            "basic {}",
            STANDARD.encode("alice:s3cret:with:colons")
        ))
        .unwrap();
        assert_eq!(a.check(Some(&lower)).await, Verdict::Allowed);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_new_hash_forgets_the_old_password() {
        let a = auth();
        a.check(Some(&basic("alice:s3cret:with:colons"))).await;
        let old_key = *a.lock().iter().next().unwrap();
        let b = BasicAuth::new(BTreeMap::from([(
            "alice".to_string(),
            bcrypt::hash("other", 4).unwrap(),
        )]));
        b.lock().insert(old_key);
        assert_eq!(
            b.check(Some(&basic("alice:s3cret:with:colons"))).await,
            Verdict::WrongCredentials
        );
    }

    #[test]
    fn hashes_are_checked() {
        let good = bcrypt::hash("x", 4).unwrap();
        assert!(BasicAuth::check_hash(&good).is_ok());
        let cost_99 = good.replacen("$04$", "$99$", 1);
        for bad in ["secret", "$2b$04$short", "", "$1$abc$def", &cost_99] {
            assert!(BasicAuth::check_hash(bad).is_err(), "{bad}");
        }
    }
}
