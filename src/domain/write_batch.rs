//! Write batches: group commit for the HTTP write path (PATCH a ticket, post
//! a message).
//!
//! A commit that notifies takes NOTIFY's queue lock and holds it through its
//! WAL flush, so such commits run one at a time; under load that turn, not
//! the work, bounds the changes per second (docs/benchmarks.md). So requests
//! are not committed one by one: a dispatcher keeps at most [`SLOTS`]
//! batches running, and the requests that arrive meanwhile wait in a queue
//! and go together, as one `ld_write_batch` call (sql/rules/55_write_batch.sql):
//! one transaction, one turn at the lock, one flush. At a low rate a batch
//! holds one request and nothing waits.
//!
//! Nothing changes for a request but when it commits: each call runs in a
//! subtransaction of its own with every rule of the function it calls, sees
//! the calls before it as committed work, and fails alone. Its answer is
//! sent after the batch commits. What a batch cannot answer as the request
//! would have been answered on its own — an error that is not one of the
//! domain's refusals, a row lock held elsewhere for longer than
//! [`LOCK_WAIT_MS`], a batch that failed as a whole — is run again on its
//! own, after the batch, outside the slots (at most [`ALONE`] at once).
//! Customer messages are never batched: they also lock their customer's
//! row, which the ticket order of a batch does not cover.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::types::ToSql;

use super::messages::{self, NewMessage, Posted};
use super::{drafts, tickets, Agent, DomainError, RawJson};
use crate::db::{Database, DbError};
use crate::metrics::Metrics;

/// Batches running at once, each on a pooled connection. Fewer slots make
/// bigger batches (fewer commits), more slots more parallel work: two keep
/// both cores of the measured machine busy (docs/benchmarks.md).
pub const SLOTS: usize = 2;

/// The most calls one batch carries.
pub const MAX_BATCH: usize = 32;

/// Requests waiting for a batch. When it is full a request waits for room
/// (it holds only its own request's memory meanwhile).
pub const QUEUE: usize = 1024;

/// How long a batched call waits for a row lock before it gives up in the
/// batch and is run again on its own: batches that share a ticket wait for
/// each other for a few milliseconds; a direct writer's long transaction
/// must not hold up the calls batched with the one that waits for it.
pub const LOCK_WAIT_MS: i32 = 250;

/// Calls run on their own at once (each on a pooled connection, possibly
/// waiting for a ticket held elsewhere); more wait for their turn without a
/// connection, so that they cannot take the whole pool from the batches.
pub const ALONE: usize = 8;

/// The HTTP write path's entry: submit a call, get its answer after commit.
#[derive(Clone)]
pub struct WriteBatcher {
    queue: mpsc::Sender<Job>,
    db: Database,
}

/// One request's call, as `ld_write_batch` takes it.
struct Call {
    ticket_id: i64,
    actor: Agent,
    what: What,
}

enum What {
    Patch {
        changes: String,
        if_match: Option<i64>,
    },
    Message(NewMessage),
}

impl Call {
    /// The call's name in `ld_write_batch`'s `p_op`.
    fn op(&self) -> &'static str {
        match self.what {
            What::Patch { .. } => "patch",
            What::Message(_) => "message",
        }
    }

    fn patch(&self) -> Option<(&str, Option<i64>)> {
        match &self.what {
            What::Patch { changes, if_match } => Some((changes, *if_match)),
            What::Message(_) => None,
        }
    }

    fn message(&self) -> Option<&NewMessage> {
        match &self.what {
            What::Message(input) => Some(input),
            What::Patch { .. } => None,
        }
    }
}

/// What a call answers.
enum Answer {
    Ticket(RawJson),
    Posted(Posted),
}

struct Job {
    call: Call,
    reply: oneshot::Sender<Result<Answer, DomainError>>,
}

impl WriteBatcher {
    /// Start the dispatcher: a task on the current Tokio runtime (so this
    /// must be called within one), which ends when the last `WriteBatcher`
    /// is dropped and the queue is empty.
    pub fn start(db: Database, metrics: Arc<Metrics>) -> Self {
        let (queue, requests) = mpsc::channel(QUEUE);
        tokio::spawn(dispatch(db.clone(), metrics, requests));
        WriteBatcher { queue, db }
    }

    /// `ld_patch_ticket`: per-field compare-and-set (`tickets::patch`).
    pub async fn patch(
        &self,
        ticket_id: i64,
        actor: &Agent,
        changes: &str,
        if_match: Option<i64>,
    ) -> Result<RawJson, DomainError> {
        let call = Call {
            ticket_id,
            actor: actor.clone(),
            what: What::Patch {
                changes: changes.to_owned(),
                if_match,
            },
        };
        match self.submit(call).await? {
            Answer::Ticket(ticket) => Ok(ticket),
            Answer::Posted(_) => Err(DomainError::Unexpected("a patch answered a message".into())),
        }
    }

    /// `ld_post_message`: a reply, note or customer message (`messages::post`);
    /// once sent, the author's draft of that kind is deleted.
    pub async fn post_message(
        &self,
        ticket_id: i64,
        actor: &Agent,
        input: NewMessage,
    ) -> Result<Posted, DomainError> {
        let customer = input.kind == "customer";
        let call = Call {
            ticket_id,
            actor: actor.clone(),
            what: What::Message(input),
        };
        let answer = if customer {
            run_alone(&self.db, &call).await?
        } else {
            self.submit(call).await?
        };
        match answer {
            Answer::Posted(posted) => Ok(posted),
            Answer::Ticket(_) => Err(DomainError::Unexpected(
                "a message answered a ticket".into(),
            )),
        }
    }

    async fn submit(&self, call: Call) -> Result<Answer, DomainError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { call, reply })
            .await
            .map_err(|_| unavailable("the write queue is closed"))?;
        answer
            .await
            .map_err(|_| unavailable("the write batch ended without an answer"))?
    }
}

fn unavailable(why: &str) -> DomainError {
    DomainError::Db(DbError::Unavailable(why.into()))
}

/// Take a free slot, then everything queued (up to [`MAX_BATCH`]), and run
/// it as one batch; while every slot is busy, requests gather in the queue.
async fn dispatch(db: Database, metrics: Arc<Metrics>, mut requests: mpsc::Receiver<Job>) {
    let slots = Arc::new(Semaphore::new(SLOTS));
    let alone = Arc::new(Semaphore::new(ALONE));
    loop {
        // (The semaphore is never closed: no error to handle.)
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = requests.recv().await else {
            return;
        };
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let batch = Batch {
            db: db.clone(),
            metrics: metrics.clone(),
            alone: alone.clone(),
        };
        tokio::spawn(batch.run(jobs, slot));
    }
}

/// What a running batch needs besides its calls.
struct Batch {
    db: Database,
    metrics: Arc<Metrics>,
    alone: Arc<Semaphore>,
}

impl Batch {
    /// One batch, then (with its slot given back) the calls to run on their own.
    async fn run(self, jobs: Vec<Job>, slot: OwnedSemaphorePermit) {
        let alone = run_batch(&self.db, &self.metrics, jobs).await;
        drop(slot);
        self.metrics.write_batch_alone.inc_by(alone.len() as u64);
        for job in alone {
            let (db, turns) = (self.db.clone(), self.alone.clone());
            tokio::spawn(async move {
                let Ok(_turn) = turns.acquire_owned().await else {
                    return;
                };
                if job.reply.is_closed() {
                    return;
                }
                let answer = run_alone(&db, &job.call).await;
                let _ = job.reply.send(answer);
            });
        }
    }
}

/// Run `jobs` in one `ld_write_batch` call and answer them; returns the ones
/// to run again on their own.
async fn run_batch(db: &Database, metrics: &Metrics, mut jobs: Vec<Job>) -> Vec<Job> {
    // A request given up before its batch starts (its deadline passed, its
    // client left) is not run: as before batches, when it would still have
    // been waiting for a connection. One that started is kept, as then.
    jobs.retain(|job| !job.reply.is_closed());
    if jobs.is_empty() {
        return jobs;
    }
    metrics.write_batches.inc();
    metrics.write_batch_calls.inc_by(jobs.len() as u64);
    // Ticket order: two batches then take their tickets' row locks in the
    // same order and never wait for each other in a cycle. The sort is
    // stable, so calls on one ticket keep their order of arrival.
    jobs.sort_by_key(|job| job.call.ticket_id);
    let rows = match query(db, &jobs).await {
        Ok(rows) => rows,
        // PostgreSQL refused the statement (an ERROR: the session lives on):
        // the batch rolled back as a whole, nothing of it happened; each
        // call is run on its own. A FATAL one ends the session, maybe after
        // the commit: that is the case below.
        Err(Failed::Statement(e)) if refused_as_a_whole(&e) => {
            tracing::warn!(error = %e, calls = jobs.len(), "a write batch failed; its calls run on their own");
            return jobs;
        }
        // No connection (nothing ran), or no answer (whether it committed
        // is unknown, as for a single request whose connection drops):
        // `503 unavailable` for each, nothing is run again.
        Err(e) => {
            let why = e.to_string();
            for job in jobs {
                let _ = job.reply.send(Err(unavailable(&why)));
            }
            return Vec::new();
        }
    };
    let mut jobs: Vec<Option<Job>> = jobs.into_iter().map(Some).collect();
    let mut alone = Vec::new();
    for row in rows {
        let n: i32 = row.get("n");
        let Some(job) = usize::try_from(n - 1)
            .ok()
            .and_then(|i| jobs.get_mut(i))
            .and_then(Option::take)
        else {
            continue;
        };
        let code: Option<String> = row.get("code");
        let answer = match code {
            None => success(&job.call, row.get("result"), row.get("created")),
            Some(code) => {
                let message: Option<String> = row.get("message");
                let detail: Option<String> = row.get("detail");
                match DomainError::refused(
                    &code,
                    message.as_deref().unwrap_or(""),
                    detail.as_deref(),
                ) {
                    Some(refusal) => Err(refusal),
                    None => {
                        tracing::debug!(code, "a batched call runs again on its own");
                        alone.push(job);
                        continue;
                    }
                }
            }
        };
        let _ = job.reply.send(answer);
    }
    for job in jobs.into_iter().flatten() {
        let _ = job.reply.send(Err(DomainError::Unexpected(
            "no answer for a call in its write batch".into(),
        )));
    }
    alone
}

/// Whether the batch's statement failed with an ERROR, which rolls the
/// batch back and leaves the session (not FATAL or PANIC, nor a lost
/// connection, after which the commit's fate is unknown).
fn refused_as_a_whole(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| db.parsed_severity() == Some(tokio_postgres::error::Severity::Error))
}

/// A successful row's answer, in the shape of the call.
fn success(
    call: &Call,
    result: Option<String>,
    created: Option<bool>,
) -> Result<Answer, DomainError> {
    let result =
        result.ok_or_else(|| DomainError::Unexpected("a batched call answered nothing".into()))?;
    Ok(match call.what {
        What::Patch { .. } => Answer::Ticket(RawJson(result)),
        What::Message(_) => Answer::Posted(Posted {
            created: created.unwrap_or(false),
            message: RawJson(result),
        }),
    })
}

/// The call exactly as a request ran it before batches (and still does
/// when a batch cannot answer it).
async fn run_alone(db: &Database, call: &Call) -> Result<Answer, DomainError> {
    let Call {
        ticket_id,
        actor,
        what,
    } = call;
    match what {
        What::Patch { changes, if_match } => {
            tickets::patch(db, *ticket_id, actor, changes, *if_match)
                .await
                .map(Answer::Ticket)
        }
        What::Message(input) => {
            let posted = messages::post(db, *ticket_id, actor, input).await?;
            if posted.created && input.kind != "customer" {
                // Sent: the author's draft of that kind is done with. The
                // message is stored already, so a failure here is logged,
                // not reported.
                let kind = Some(input.kind.as_str());
                if let Err(e) = drafts::delete(db, *ticket_id, actor.id, kind).await {
                    tracing::warn!(error = %e, ticket_id, "could not delete the sent draft");
                }
            }
            Ok(Answer::Posted(posted))
        }
    }
}

/// Why a batch got no rows: no connection (nothing ran), or its statement
/// failed (refused by PostgreSQL, or the connection lost on the way).
#[derive(Debug, thiserror::Error)]
enum Failed {
    #[error(transparent)]
    Connection(DbError),
    #[error(transparent)]
    Statement(tokio_postgres::Error),
}

/// `ld_write_batch` with one array element per call.
async fn query(db: &Database, jobs: &[Job]) -> Result<Vec<tokio_postgres::Row>, Failed> {
    let calls: Vec<&Call> = jobs.iter().map(|job| &job.call).collect();
    let column = |f: fn(&Call) -> Option<&str>| calls.iter().map(|c| f(c)).collect::<Vec<_>>();
    let op: Vec<&str> = calls.iter().map(|c| c.op()).collect();
    let ticket_id: Vec<i64> = calls.iter().map(|c| c.ticket_id).collect();
    let actor: Vec<i64> = calls.iter().map(|c| c.actor.id).collect();
    let changes = column(|c| c.patch().map(|(changes, _)| changes));
    let if_match: Vec<Option<i64>> = calls
        .iter()
        .map(|c| c.patch().and_then(|(_, m)| m))
        .collect();
    let kind = column(|c| c.message().map(|m| m.kind.as_str()));
    let body = column(|c| c.message().map(|m| m.body.as_str()));
    let seen: Vec<Option<i64>> = calls
        .iter()
        .map(|c| c.message().and_then(|m| m.seen_message_id))
        .collect();
    let client_id = column(|c| c.message().and_then(|m| m.client_id.as_deref()));
    let email = column(|c| {
        c.message()
            .and_then(|m| m.customer.as_ref())
            .map(|c| c.email.as_str())
    });
    let name = column(|c| {
        c.message()
            .and_then(|m| m.customer.as_ref())
            .and_then(|c| c.name.as_deref())
    });
    let client = db.client().await.map_err(Failed::Connection)?;
    let statement = client
        .prepare_cached(
            "SELECT n, result, created, code, message, detail \
             FROM ld_write_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .await
        .map_err(Failed::Statement)?;
    let params: [&(dyn ToSql + Sync); 12] = [
        &op,
        &ticket_id,
        &actor,
        &changes,
        &if_match,
        &kind,
        &body,
        &seen,
        &client_id,
        &email,
        &name,
        &LOCK_WAIT_MS,
    ];
    client
        .query(&statement, &params)
        .await
        .map_err(Failed::Statement)
}
