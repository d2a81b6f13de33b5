//! WebSockets authenticate once, so a disabled agent, a replaced token or an
//! expired one must be taken away from open connections too (contract §5a:
//! closed with 4001 within 5 s, on every process). Each connection records
//! its agent and its token's digest; on `NOTIFY livedesk_agents` (heard by
//! `http::agent_watch`) and every `SWEEP` anyway (expiry has no notice, a
//! notice may be missed), the tokens of open connections are checked again
//! and the connections whose token no longer works are closed with 4001.
//! The same registry caps the connections one agent may hold.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::hub::ConnId;
use super::Realtime;

/// How often every open connection's token is checked again.
pub const SWEEP: Duration = Duration::from_secs(3);

/// One open connection of an agent.
struct Entry {
    conn: ConnId,
    token: [u8; 32],
    revoked: CancellationToken,
}

/// Open connections by agent.
#[derive(Default)]
pub struct Registry {
    by_agent: Mutex<HashMap<i64, Vec<Entry>>>,
}

impl Registry {
    /// Record a connection; `None` when the agent already holds `max`.
    pub fn open(
        &self,
        agent: i64,
        conn: ConnId,
        token: [u8; 32],
        max: usize,
    ) -> Option<CancellationToken> {
        let mut by_agent = self.by_agent.lock().unwrap_or_else(|e| e.into_inner());
        let entries = by_agent.entry(agent).or_default();
        if entries.len() >= max {
            return None;
        }
        let revoked = CancellationToken::new();
        entries.push(Entry {
            conn,
            token,
            revoked: revoked.clone(),
        });
        Some(revoked)
    }

    /// Forget a closed connection.
    pub fn close(&self, agent: i64, conn: ConnId) {
        let mut by_agent = self.by_agent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entries) = by_agent.get_mut(&agent) {
            entries.retain(|e| e.conn != conn);
            if entries.is_empty() {
                by_agent.remove(&agent);
            }
        }
    }

    /// The distinct token digests open for these agents (all when `None`).
    fn tokens(&self, agent: Option<i64>) -> Vec<[u8; 32]> {
        let by_agent = self.by_agent.lock().unwrap_or_else(|e| e.into_inner());
        let mut tokens: Vec<[u8; 32]> = by_agent
            .iter()
            .filter(|(id, _)| agent.is_none_or(|a| a == **id))
            .flat_map(|(_, entries)| entries.iter().map(|e| e.token))
            .collect();
        tokens.sort_unstable();
        tokens.dedup();
        tokens
    }

    /// Close (4001) every connection holding one of these tokens.
    fn revoke(&self, tokens: &[[u8; 32]]) -> usize {
        let by_agent = self.by_agent.lock().unwrap_or_else(|e| e.into_inner());
        let mut closed = 0;
        for entry in by_agent.values().flatten() {
            if tokens.contains(&entry.token) && !entry.revoked.is_cancelled() {
                entry.revoked.cancel();
                closed += 1;
            }
        }
        closed
    }
}

impl Realtime {
    /// Check again the tokens of an agent's open connections (`None`: of
    /// every connection) and close those that no longer work.
    pub async fn revalidate(&self, agent: Option<i64>) {
        let tokens = self.revocation.tokens(agent);
        if tokens.is_empty() {
            return;
        }
        let digests: Vec<Vec<u8>> = tokens.iter().map(|t| t.to_vec()).collect();
        let Ok(client) = self.db.client().await else {
            return; // unreachable database: the next sweep tries again
        };
        let valid = client
            .query(
                "SELECT t FROM unnest($1::bytea[]) AS t WHERE ld_agent_by_token(t) IS NOT NULL",
                &[&digests],
            )
            .await;
        let Ok(rows) = valid else {
            return;
        };
        let valid: Vec<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
        let gone: Vec<[u8; 32]> = tokens
            .into_iter()
            .filter(|t| !valid.iter().any(|v| v.as_slice() == t.as_slice()))
            .collect();
        let closed = self.revocation.revoke(&gone);
        if closed > 0 {
            tracing::info!(
                closed,
                "closed connections whose token no longer works (4001)"
            );
        }
    }
}

/// Sweep every open connection's token every `SWEEP` until shutdown.
pub async fn sweep(rt: Realtime) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = rt.shutdown.cancelled() => return,
            _ = tick.tick() => rt.revalidate(None).await,
        }
    }
}
