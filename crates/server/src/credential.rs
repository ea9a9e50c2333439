//! [`Credential`]: what Switchyard proves itself with when a server asks: nothing, a configured
//! password, or a secret learned from clients' own logins (auth_query users, whose password
//! Switchyard never sees).

use std::sync::{Arc, Mutex};
use switchyard_proto::scram::ScramKeys;

/// How a server login authenticates (compared by value, a learned secret by identity).
#[derive(Clone, Default)]
pub enum Credential {
    /// Nothing: only a server that asks for nothing (trust) lets the proxy in.
    #[default]
    None,
    /// A cleartext password from the config.
    Password(String),
    /// The latest secret a client proved for this user (see [`LearnedSecret`]).
    Learned(Arc<LearnedSecret>),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret itself.
        f.write_str(match self {
            Self::None => "Credential::None",
            Self::Password(_) => "Credential::Password(..)",
            Self::Learned(_) => "Credential::Learned(..)",
        })
    }
}

impl From<Option<String>> for Credential {
    fn from(p: Option<String>) -> Self {
        p.map_or(Self::None, Self::Password)
    }
}

impl PartialEq for Credential {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::None, Self::None) => true,
            (Self::Password(a), Self::Password(b)) => a == b,
            (Self::Learned(a), Self::Learned(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// A server secret that only a client's login can reveal: the SCRAM keys its proof carried,
/// or the md5 hash the database stores (which is all md5 needs). Shared by the pools of one
/// user on one cluster; each successful client login replaces it, so a password changed in
/// the database takes effect with the next login.
#[derive(Default)]
pub struct LearnedSecret {
    current: Mutex<Option<ServerSecret>>,
}

/// A secret usable against a server that holds the matching verifier.
#[derive(Clone, PartialEq, Eq)]
pub enum ServerSecret {
    Scram(ScramKeys),
    /// PostgreSQL's stored `md5…` hash.
    Md5(String),
}

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Scram(_) => "ServerSecret::Scram(..)",
            Self::Md5(_) => "ServerSecret::Md5(..)",
        })
    }
}

impl LearnedSecret {
    pub fn set(&self, secret: ServerSecret) {
        *self.lock() = Some(secret);
    }

    pub fn get(&self) -> Option<ServerSecret> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ServerSecret>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }
}
