//! Agents and their API tokens.
//!
//! A token is 32 random bytes shown once as `ldk_<hex>`; the database keeps
//! only its SHA-256 digest and finds the agent by digest equality.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::DomainError;
use crate::db::Database;

/// The acting agent of a request or connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Agent {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub avatar_url: Option<String>,
    pub role: String,
}

impl Agent {
    /// Admins manage field definitions and agents.
    pub fn is_admin(&self) -> bool {
        self.role == "admin"
    }

    /// Service tokens (integrations) may write customer messages.
    pub fn is_service(&self) -> bool {
        self.role == "service"
    }
}

/// A freshly issued token, to print once.
pub struct NewToken(pub String);

const TOKEN_PREFIX: &str = "ldk_";

/// A new random token.
pub fn generate_token() -> NewToken {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    NewToken(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

/// The digest stored for a token. Malformed tokens hash too (and match nothing),
/// so every wrong token costs the same.
pub fn token_hash(token: &str) -> Vec<u8> {
    token_digest(token).to_vec()
}

/// The same digest as a fixed-size key (token cache, open connections).
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The agent holding `token`, if any.
pub async fn by_token(db: &Database, token: &str) -> Result<Option<Agent>, DomainError> {
    let client = db.client().await?;
    // Every request comes here: a cached statement saves a round trip.
    let statement = client
        .prepare_cached("SELECT ld_agent_by_token($1)")
        .await?;
    let row = client.query_one(&statement, &[&token_hash(token)]).await?;
    let json: Option<serde_json::Value> = row.get(0);
    json.map(parse_agent).transpose()
}

/// Create an agent; returns it with its first token.
pub async fn add(
    db: &Database,
    name: &str,
    email: &str,
    role: &str,
) -> Result<(Agent, NewToken), DomainError> {
    let token = generate_token();
    let client = db.client().await?;
    let row = client
        .query_one(
            "SELECT ld_agent_add($1, $2, $3, $4)",
            &[&name, &email, &role, &token_hash(&token.0)],
        )
        .await?;
    Ok((parse_agent(row.get(0))?, token))
}

/// End a token (log out): a login's session, or the agent's own token. Its
/// agent's other tokens go on; false when no token has this digest.
pub async fn end_token(db: &Database, token: &str) -> Result<bool, DomainError> {
    let client = db.client().await?;
    let row = client
        .query_one("SELECT ld_agent_token_end($1)", &[&token_hash(token)])
        .await?;
    Ok(row.get(0))
}

/// Issue a new token for the agent with `email`, valid for `expires_in_days`
/// (or for ever); the old token, and every login's session, stop working on
/// every process.
pub async fn rotate_token(
    db: &Database,
    email: &str,
    expires_in_days: Option<u32>,
) -> Result<(Agent, NewToken), DomainError> {
    let token = generate_token();
    let client = db.client().await?;
    let days = expires_in_days.map(f64::from);
    let row = client
        .query_one(
            "SELECT ld_agent_set_token($1, $2, now() + make_interval(days => $3::float8::int))",
            &[&email, &token_hash(&token.0), &days],
        )
        .await?;
    Ok((parse_agent(row.get(0))?, token))
}

/// Disable (or enable again) the agent with `email`: a disabled agent's
/// tokens answer 401 and its WebSockets close with 4001, on every process.
pub async fn set_disabled(
    db: &Database,
    email: &str,
    disabled: bool,
) -> Result<Agent, DomainError> {
    let client = db.client().await?;
    let row = client
        .query_one("SELECT ld_agent_set_disabled($1, $2)", &[&email, &disabled])
        .await?;
    parse_agent(row.get(0))
}

/// A one-time login link's code (`ldl_<hex>`), valid for `valid_for`:
/// shown once, its digest kept; redeeming it issues the agent a new token.
pub async fn login_link(
    db: &Database,
    agent_id: i64,
    valid_for: std::time::Duration,
) -> Result<NewToken, DomainError> {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let code = format!("ldl_{}", hex::encode(bytes));
    let seconds = valid_for.as_secs_f64();
    let client = db.client().await?;
    client
        .execute(
            "SELECT ld_login_link_add($1, $2, make_interval(secs => $3))",
            &[&agent_id, &token_hash(&code), &seconds],
        )
        .await?;
    Ok(NewToken(code))
}

/// Spend a login link: the agent and the token of a new session (its other
/// tokens go on working).
pub async fn redeem_login_link(
    db: &Database,
    code: &str,
) -> Result<(Agent, NewToken), DomainError> {
    let token = generate_token();
    let client = db.client().await?;
    let row = client
        .query_one(
            "SELECT ld_login_link_redeem($1, $2)",
            &[&token_hash(code), &token_hash(&token.0)],
        )
        .await?;
    Ok((parse_agent(row.get(0))?, token))
}

/// Every agent.
pub async fn list(db: &Database) -> Result<Vec<Agent>, DomainError> {
    let client = db.client().await?;
    let row = client.query_one("SELECT ld_agent_list()", &[]).await?;
    let json: serde_json::Value = row.get(0);
    serde_json::from_value(json).map_err(|e| DomainError::decode("agent row", e))
}

fn parse_agent(json: serde_json::Value) -> Result<Agent, DomainError> {
    serde_json::from_value(json).map_err(|e| DomainError::decode("agent row", e))
}
