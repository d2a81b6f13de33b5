//! Replies waiting for another attempt after a temporary SMTP failure.
//!
//! Each customer gets their replies in the order they were written, so a
//! reply waits behind an older one to the same address; but a customer
//! whose mailbox answers "try again later" (full, rate-limited, greylisted)
//! must not hold up every other customer's replies. The queue is kept in
//! memory: the replies themselves are durable (`mail_messages` rows in
//! status `pending`, written before the first attempt), and a sender that
//! starts loads them again, due at once.

use std::time::Duration;

use tokio::time::Instant;

/// One reply waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    message_id: i64,
    /// The recipient's address, lower-cased (None until first prepared).
    recipient: Option<String>,
    due: Instant,
    /// The wait after the next temporary failure.
    backoff: Duration,
}

/// The waiting replies, oldest first: one entry per reply `pending` in the
/// database, no more.
#[derive(Debug)]
pub struct Waiting {
    entries: Vec<Entry>,
    /// The wait after a reply's first temporary failure.
    first_backoff: Duration,
}

impl Waiting {
    /// Replies found pending when the sender started (oldest first): due now.
    pub fn load(message_ids: impl IntoIterator<Item = i64>, first_backoff: Duration) -> Self {
        let now = Instant::now();
        Waiting {
            first_backoff,
            entries: message_ids
                .into_iter()
                .map(|message_id| Entry {
                    message_id,
                    recipient: None,
                    due: now,
                    backoff: first_backoff,
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether an older reply to the same recipient is still waiting: this
    /// one must wait behind it.
    pub fn holds(&self, message_id: i64, recipient: &str) -> bool {
        self.entries
            .iter()
            .take_while(|e| e.message_id != message_id)
            .any(|e| e.recipient.as_deref() == Some(recipient))
    }

    /// Queue a reply behind the older ones (or note its recipient if it is
    /// queued already), due after `wait`.
    pub fn push(&mut self, message_id: i64, recipient: &str, wait: Duration, next: Duration) {
        let due = Instant::now() + wait;
        match self.entries.iter_mut().find(|e| e.message_id == message_id) {
            Some(entry) => {
                entry.recipient = Some(recipient.to_string());
                entry.due = due;
                entry.backoff = next;
            }
            None => self.entries.push(Entry {
                message_id,
                recipient: Some(recipient.to_string()),
                due,
                backoff: next,
            }),
        }
    }

    /// The wait to use after this reply's next temporary failure.
    pub fn backoff(&self, message_id: i64) -> Duration {
        self.entries
            .iter()
            .find(|e| e.message_id == message_id)
            .map_or(self.first_backoff, |e| e.backoff)
    }

    /// The reply went out, or failed for good: the next one of its
    /// recipient may go.
    pub fn remove(&mut self, message_id: i64) {
        self.entries.retain(|e| e.message_id != message_id);
    }

    /// The replies to try now, oldest first: due, and the oldest waiting
    /// one of their recipient (a reply not prepared yet counts as its own).
    pub fn due(&self) -> Vec<i64> {
        let now = Instant::now();
        let mut seen: Vec<&str> = Vec::new();
        let mut due = Vec::new();
        for entry in &self.entries {
            if let Some(recipient) = entry.recipient.as_deref() {
                if seen.contains(&recipient) {
                    continue;
                }
                seen.push(recipient);
            }
            if entry.due <= now {
                due.push(entry.message_id);
            }
        }
        due
    }

    /// When the next waiting reply is due (None when none waits).
    pub fn next_due(&self) -> Option<Instant> {
        self.entries.iter().map(|e| e.due).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn a_recipient_waits_behind_its_own_older_reply_only() {
        let mut waiting = Waiting::load([], 50 * MS);
        assert_eq!(
            waiting.backoff(1),
            50 * MS,
            "not waiting yet: the first wait"
        );
        waiting.push(1, "full@example.org", 100 * MS, 200 * MS);
        // A newer reply to the same customer waits; another customer's does not.
        assert!(waiting.holds(2, "full@example.org"));
        assert!(!waiting.holds(3, "other@example.org"));
        waiting.push(2, "full@example.org", Duration::ZERO, 100 * MS);
        assert_eq!(waiting.due(), Vec::<i64>::new(), "2 waits behind 1");
        tokio::time::sleep(110 * MS).await;
        assert_eq!(waiting.due(), vec![1]);
        assert_eq!(waiting.backoff(1), 200 * MS);
        waiting.remove(1);
        assert_eq!(waiting.due(), vec![2]);
        waiting.remove(2);
        assert!(waiting.is_empty() && waiting.next_due().is_none());
    }

    #[tokio::test]
    async fn loaded_replies_are_due_at_once_in_order() {
        let waiting = Waiting::load([7, 8], 10 * MS);
        assert_eq!(waiting.due(), vec![7, 8]);
    }
}
