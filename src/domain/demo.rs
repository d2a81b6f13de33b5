//! The demo data set: a few agents, customers, custom fields and tickets, so
//! two browser windows can play two agents on the first run.

use serde_json::json;

use super::fields::{self, FieldDefinition};
use super::messages::{self, NewMessage};
use super::tickets::{self, CustomerRef, NewTicket};
use super::{agents, DomainError};
use crate::db::Database;

/// Two agents to play a collision, and an admin who manages custom fields.
const AGENTS: [(&str, &str, &str); 3] = [
    ("Alice", "alice@demo.livedesk.local", "agent"),
    ("Bob", "bob@demo.livedesk.local", "agent"),
    ("Carol", "carol@demo.livedesk.local", "admin"),
];

/// Add the demo set (once: a second run changes nothing) and return its
/// agents. Nobody's token is printed or replaced here: log in with a
/// one-time link (`agents::login_link`).
pub async fn load(db: &Database) -> Result<Vec<super::Agent>, DomainError> {
    let existing = agents::list(db).await?;
    let mut demo_agents = Vec::new();
    let mut first_run = true;
    for (name, email, role) in AGENTS {
        let agent = match existing.iter().find(|a| a.email == email) {
            Some(agent) => {
                first_run = false;
                agent.clone()
            }
            None => agents::add(db, name, email, role).await?.0,
        };
        demo_agents.push(agent);
    }
    if first_run {
        let alice = &demo_agents[0];
        for (key, label, kind, options) in [
            ("order_id", "Order", "text", None),
            (
                "plan",
                "Plan",
                "select",
                Some(json!(["free", "pro", "enterprise"])),
            ),
            ("refund_amount", "Refund amount", "number", None),
            ("vip", "VIP", "checkbox", None),
        ] {
            let def = FieldDefinition {
                label: label.into(),
                kind: kind.into(),
                options,
                position: None,
            };
            fields::put(db, key, &def).await?;
        }
        let ticket =
            |subject: Option<&str>, channel: &str, email: &str, name: &str, body: &str| NewTicket {
                subject: subject.map(str::to_owned),
                channel: Some(channel.into()),
                customer: Some(CustomerRef {
                    email: email.into(),
                    name: Some(name.into()),
                }),
                body: Some(body.into()),
            };
        tickets::create(
            db,
            alice,
            &ticket(
                Some("Refund for order #1042"),
                "email",
                "dana@example.com",
                "Dana Customer",
                "Hello, I was charged twice for order #1042. Could you refund one of the charges?",
            ),
        )
        .await?;
        tickets::create(
            db,
            alice,
            &ticket(None, "chat", "eve@example.com", "Eve Visitor", "Hello"),
        )
        .await?;
        let created = tickets::create(
            db,
            alice,
            &ticket(
                Some("Cannot log in after password reset"),
                "email",
                "frank@example.com",
                "Frank User",
                "Since I reset my password yesterday the login page says 'invalid credentials'.",
            ),
        )
        .await?;
        if let Some(id) = serde_json::from_str::<serde_json::Value>(&created.0)
            .ok()
            .and_then(|t| t["id"].as_i64())
        {
            let note = NewMessage {
                kind: "note".into(),
                body: "Looks like the SSO cache again; checking with the platform team.".into(),
                seen_message_id: None,
                client_id: None,
                customer: None,
            };
            messages::post(db, id, alice, &note).await?;
        }
    }
    Ok(demo_agents)
}
