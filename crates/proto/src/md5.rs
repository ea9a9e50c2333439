//! PostgreSQL's md5 password scheme: `"md5" + md5hex(md5hex(password + user) + salt)`.

use md5::{Digest, Md5};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The stored form PostgreSQL keeps in pg_authid: `"md5" + md5hex(password + user)`.
pub fn stored_hash(user: &str, password: &str) -> String {
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(user.as_bytes());
    format!("md5{}", hex(&h.finalize()))
}

/// The response to an md5 challenge, from the stored form (with its `md5` prefix).
pub fn response_from_stored(stored: &str, salt: [u8; 4]) -> String {
    let inner = stored.strip_prefix("md5").unwrap_or(stored);
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    format!("md5{}", hex(&h.finalize()))
}

/// The response to an md5 challenge, from the cleartext password.
pub fn response(user: &str, password: &str, salt: [u8; 4]) -> String {
    response_from_stored(&stored_hash(user, password), salt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        // SELECT 'md5' || md5('secret' || 'alice') in PostgreSQL.
        assert_eq!(
            stored_hash("alice", "secret"),
            "md54a0a68b43b6cd5cf266fa02f196e2371"
        );
        assert_eq!(
            response("u", "p", [1, 2, 3, 4]),
            response_from_stored(&stored_hash("u", "p"), [1, 2, 3, 4])
        );
        assert_ne!(
            response("u", "p", [1, 2, 3, 4]),
            response("u", "p", [1, 2, 3, 5])
        );
    }
}
