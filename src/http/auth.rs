//! Bearer-token authentication: the `Agent` extractor, with a token cache
//! and rate limits in front of the database (contract §5a).
//!
//! Why each piece is there:
//! - a **cache** of recent answers, good and bad (5 s), so a working agent's
//!   requests cost no query, and a repeated bad token neither;
//! - a **per-address limit** on requests whose token is not known to be good
//!   (none, unknown, or wrong), checked *before* the lookup: a flood of bad
//!   tokens costs at most that many queries per second per address;
//! - a **semaphore** of lookups: however many addresses flood, at most a few
//!   pool connections ever look tokens up, so good tokens (cached) and the
//!   agents' own queries keep the rest of the pool;
//! - a **per-token limit** on everything a good token sends;
//! - a **held answer** for an address past its budget: its 429 leaves after
//!   `REFUSAL_HOLD`, so a client that floods in a loop sends one request a
//!   second per connection instead of thousands, and the flood stops eating
//!   the CPU the agents need. At most `HELD_MAX` answers wait at once (a
//!   sleeping future each); past that, the 429 leaves at once.
//!
//! Changes to an agent (disabled, token replaced) reach every process by
//! `NOTIFY livedesk_agents`; `forget_agent` drops its cached answers at once.
//! Without that notice (listener down) the 5 s lifetime bounds how long a
//! replaced token keeps working.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;

use super::{errors::ApiError, AppState};
use crate::config::Settings;
use crate::domain::{agents, Agent};

/// How long a cached answer (good or bad token) is trusted.
const CACHE_TTL: Duration = Duration::from_secs(5);
/// How long a token that was good is still known as one: looking it up
/// again then costs a query but not the per-address budget, so a flood of
/// bad tokens from the same address (a proxy, a NAT) cannot lock out agents
/// whose cached answer just expired. Nobody can guess such a token.
const KNOWN_GOOD: Duration = Duration::from_secs(3600);
/// Entries the token cache holds at most; past it, expired ones go, then all.
const CACHE_MAX: usize = 10_000;
/// Token lookups that may run at once (each holds a pool connection).
const CONCURRENT_LOOKUPS: usize = 4;
/// How long a 429 for an address past its budget is held before it leaves.
const REFUSAL_HOLD: Duration = Duration::from_secs(1);
/// Held 429s at most, per process (each costs a timer and a connection).
const HELD_MAX: usize = 4096;
/// Rate-limiter keys kept before idle ones are swept.
const LIMITER_KEYS_MAX: usize = 100_000;

type Digest32 = [u8; 32];

/// The token cache and the rate limits of one process.
pub struct Authenticator {
    cache: Mutex<HashMap<Digest32, Cached>>,
    per_token: DefaultKeyedRateLimiter<Digest32>,
    per_address: DefaultKeyedRateLimiter<IpAddr>,
    lookups: Semaphore,
    held: Semaphore,
    clock: DefaultClock,
    /// Whether changes to agents are being heard (`agent_watch`): only then
    /// may a good answer be served from memory.
    trusted: AtomicBool,
    /// Counts the forgets: a lookup that a forget overtook (a logout or a
    /// disable heard while its query ran) must not cache its answer, which
    /// may be from before the change (found by a review).
    forgets: AtomicU64,
}

#[derive(Clone)]
struct Cached {
    agent: Option<Agent>,
    at: Instant,
}

impl Authenticator {
    /// Limits from the settings (`LIVEDESK_RATE_PER_TOKEN`, …).
    pub fn new(settings: &Settings) -> Self {
        let nonzero = |n: u32| NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
        let per_token = Quota::per_second(nonzero(settings.rate_per_token))
            .allow_burst(nonzero(settings.burst_per_token));
        let per_address = Quota::per_second(nonzero(settings.rate_per_address));
        Authenticator {
            cache: Mutex::new(HashMap::new()),
            per_token: RateLimiter::keyed(per_token),
            per_address: RateLimiter::keyed(per_address),
            lookups: Semaphore::new(CONCURRENT_LOOKUPS),
            held: Semaphore::new(HELD_MAX),
            clock: DefaultClock::default(),
            trusted: AtomicBool::new(false),
            forgets: AtomicU64::new(0),
        }
    }

    /// The agent of `token`, or why not: 401 (no or bad token), 429 (too
    /// many requests from this token, or bad ones from this address).
    pub async fn authenticate(
        &self,
        state: &AppState,
        token: Option<&str>,
        peer: Option<IpAddr>,
    ) -> Result<Agent, ApiError> {
        let Some(token) = token else {
            self.charge_address(peer).await?;
            return Err(ApiError::Unauthorized(
                "Send your API token as `Authorization: Bearer <token>`.",
            ));
        };
        let digest: Digest32 = agents::token_digest(token);
        match self.cached(&digest) {
            Some(Some(agent)) => {
                self.check_token(&digest)?;
                return Ok(agent);
            }
            Some(None) => {
                self.charge_address(peer).await?;
                return Err(invalid_token());
            }
            None => {}
        }
        // Not known: a lookup, paid for from the address's budget, unless
        // this token was good a moment ago.
        if !self.known_good(&digest) {
            self.charge_address(peer).await?;
        }
        let agent = {
            let _permit = self
                .lookups
                .acquire()
                .await
                .map_err(|_| ApiError::Unavailable("shutting down".into()))?;
            // Another request may have looked it up while we waited.
            match self.cached(&digest) {
                Some(cached) => cached,
                None => {
                    let forgets = self.forgets.load(Ordering::SeqCst);
                    let agent = agents::by_token(&state.db, token).await?;
                    if self.forgets.load(Ordering::SeqCst) == forgets {
                        self.remember(digest, agent.clone());
                    }
                    agent
                }
            }
        };
        match agent {
            Some(agent) => {
                self.check_token(&digest)?;
                Ok(agent)
            }
            None => Err(invalid_token()),
        }
    }

    /// Charge an unauthenticated request (e.g. spending a login link) to its
    /// address's budget: 429 past it.
    pub fn limit_unauthenticated(&self, peer: Option<IpAddr>) -> Result<(), ApiError> {
        self.check_address(peer)
    }

    /// Forget every cached answer about an agent (disabled, enabled, token
    /// replaced), and every "bad token" answer: one of them may be this
    /// agent's token, good again.
    pub fn forget_agent(&self, agent_id: i64) {
        self.forgets.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|_, c| c.agent.as_ref().is_some_and(|a| a.id != agent_id));
        }
    }

    /// Whether cached good answers may be used (changes are being heard).
    pub fn set_trusted(&self, trusted: bool) {
        self.trusted.store(trusted, Ordering::SeqCst);
    }

    /// Forget everything (the notices may have been missed).
    pub fn forget_all(&self) {
        self.forgets.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut cache) = self.cache.lock() {
            cache.clear();
        }
    }

    fn cached(&self, digest: &Digest32) -> Option<Option<Agent>> {
        let cache = self.cache.lock().ok()?;
        let entry = cache.get(digest)?;
        if entry.at.elapsed() >= CACHE_TTL {
            return None;
        }
        // A bad token stays bad for its 5 s; a good one is served from
        // memory only while changes to agents are heard.
        if entry.agent.is_some() && !self.trusted.load(Ordering::SeqCst) {
            return None;
        }
        Some(entry.agent.clone())
    }

    fn known_good(&self, digest: &Digest32) -> bool {
        self.cache.lock().ok().is_some_and(|cache| {
            cache
                .get(digest)
                .is_some_and(|e| e.agent.is_some() && e.at.elapsed() < KNOWN_GOOD)
        })
    }

    fn remember(&self, digest: Digest32, agent: Option<Agent>) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, c| {
                c.at.elapsed()
                    < if c.agent.is_some() {
                        KNOWN_GOOD
                    } else {
                        CACHE_TTL
                    }
            });
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(
            digest,
            Cached {
                agent,
                at: Instant::now(),
            },
        );
    }

    fn check_token(&self, digest: &Digest32) -> Result<(), ApiError> {
        if self.per_token.len() > LIMITER_KEYS_MAX {
            self.per_token.retain_recent();
        }
        self.per_token
            .check_key(digest)
            .map_err(|not_until| ApiError::RateLimited {
                retry_after: not_until.wait_time_from(self.clock.now()),
            })
    }

    /// `check_address`, with the refusal held for `REFUSAL_HOLD` while
    /// fewer than `HELD_MAX` are waiting.
    async fn charge_address(&self, peer: Option<IpAddr>) -> Result<(), ApiError> {
        let refused = self.check_address(peer);
        if refused.is_err() {
            if let Ok(_permit) = self.held.try_acquire() {
                tokio::time::sleep(REFUSAL_HOLD).await;
            }
        }
        refused
    }

    fn check_address(&self, peer: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(peer) = peer else {
            return Ok(());
        };
        if self.per_address.len() > LIMITER_KEYS_MAX {
            self.per_address.retain_recent();
        }
        self.per_address
            .check_key(&peer)
            .map_err(|not_until| ApiError::RateLimited {
                retry_after: not_until.wait_time_from(self.clock.now()),
            })
    }
}

/// The 401 of a missing, unknown or no longer valid token.
pub fn invalid_token() -> ApiError {
    ApiError::Unauthorized("The token is not valid (or its agent is disabled, or it expired).")
}

/// The token of a request: the `Authorization: Bearer` header.
pub fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Resolve a token to its agent, or a 401 (429 past the limits). `peer` is
/// the client's address, for the limit on unauthenticated requests.
pub async fn authenticate(
    state: &AppState,
    token: Option<&str>,
    peer: Option<IpAddr>,
) -> Result<Agent, ApiError> {
    state.auth.authenticate(state, token, peer).await
}

impl FromRequest for Agent {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Agent, ApiError>>>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let token = bearer_token(req).map(str::to_owned);
        let peer = req.peer_addr().map(|a| a.ip());
        Box::pin(async move {
            let state = state.ok_or(ApiError::Unavailable("not configured".into()))?;
            authenticate(&state, token.as_deref(), peer).await
        })
    }
}
