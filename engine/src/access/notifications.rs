//! The notification outbox: what the engine tells an account (an emergency
//! opened on their records, ended, reviewed), kept in `cohort.db` until
//! they read it (CLI, gRPC, the web page) and pushed to the webhook they
//! set, if any. A notification is written in the same transaction as the
//! audit entry of what caused it, so none is lost; a webhook is retried
//! until it answers 2xx, each POST carrying the notification's id
//! (`x-cohort-notification`) so a receiver can drop a repeat.

use cohort_ledger_bridge::alloy::primitives::Address;
use rusqlite::{Connection, params};
use serde::Serialize;

use crate::{Error, Result};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT, recipient TEXT NOT NULL, kind TEXT NOT NULL,
    body TEXT NOT NULL, created_at TEXT NOT NULL, read_at TEXT, delivered_at TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT
);
CREATE INDEX IF NOT EXISTS notifications_recipient ON notifications (recipient, id);
CREATE TABLE IF NOT EXISTS notification_webhooks (
    account TEXT PRIMARY KEY, url TEXT NOT NULL, set_at TEXT NOT NULL
);
";

/// Creates the outbox tables if they are missing.
pub fn install(conn: &Connection) -> Result<()> {
    conn.execute_batch(SCHEMA)?;
    Ok(())
}

/// One notification.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    /// Its id (increasing).
    pub id: i64,
    /// The recipient's address.
    pub recipient: String,
    /// What happened (`emergency.opened`, `emergency.ended`, ...).
    pub kind: String,
    /// The details, as JSON.
    pub body: serde_json::Value,
    /// When it was written.
    pub created_at: String,
    /// When the recipient marked it read.
    pub read_at: Option<String>,
    /// When its webhook took it.
    pub delivered_at: Option<String>,
}

/// Queues a notification to `recipient` (inside the caller's transaction).
pub fn notify(
    conn: &Connection,
    recipient: Address,
    kind: &str,
    body: &serde_json::Value,
) -> Result<i64> {
    install(conn)?;
    conn.execute(
        "INSERT INTO notifications (recipient, kind, body, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![
            format!("{recipient:#x}"),
            kind,
            body.to_string(),
            crate::storage::store::now()
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Notification> {
    let body: String = r.get(3)?;
    Ok(Notification {
        id: r.get(0)?,
        recipient: r.get(1)?,
        kind: r.get(2)?,
        body: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        created_at: r.get(4)?,
        read_at: r.get(5)?,
        delivered_at: r.get(6)?,
    })
}

/// `recipient`'s notifications, newest first (only unread ones if asked).
pub fn list(
    conn: &Connection,
    recipient: Address,
    unread_only: bool,
    limit: usize,
) -> Result<Vec<Notification>> {
    install(conn)?;
    let out = conn
        .prepare(
            "SELECT id, recipient, kind, body, created_at, read_at, delivered_at FROM notifications
             WHERE recipient = ?1 AND (?2 = 0 OR read_at IS NULL) ORDER BY id DESC LIMIT ?3",
        )?
        .query_map(
            params![format!("{recipient:#x}"), unread_only, limit as i64],
            from_row,
        )?
        .collect::<rusqlite::Result<_>>()?;
    Ok(out)
}

/// Marks `recipient`'s notifications up to `up_to` read; returns how many.
pub fn mark_read(conn: &Connection, recipient: Address, up_to: i64) -> Result<usize> {
    install(conn)?;
    Ok(conn.execute(
        "UPDATE notifications SET read_at = ?3 WHERE recipient = ?1 AND id <= ?2 AND read_at IS NULL",
        params![format!("{recipient:#x}"), up_to, crate::storage::store::now()],
    )?)
}

/// Sets (or with `None` clears) the URL `account`'s notifications are
/// POSTed to. Only http and https URLs.
pub fn set_webhook(conn: &Connection, account: Address, url: Option<&str>) -> Result<()> {
    install(conn)?;
    match url {
        None => {
            conn.execute(
                "DELETE FROM notification_webhooks WHERE account = ?1",
                [format!("{account:#x}")],
            )?;
        }
        Some(url) => {
            let parsed = url::Url::parse(url)
                .map_err(|e| Error::Invalid(format!("`{url}` is not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                return Err(Error::Invalid(format!(
                    "`{url}` is not an http(s) URL with a host: a webhook must be one"
                )));
            }
            conn.execute(
                "INSERT INTO notification_webhooks (account, url, set_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (account) DO UPDATE SET url = excluded.url, set_at = excluded.set_at",
                params![format!("{account:#x}"), url, crate::storage::store::now()],
            )?;
        }
    }
    Ok(())
}

/// What one delivery round did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Delivery {
    /// Notifications a webhook took.
    pub delivered: usize,
    /// Notifications whose webhook failed (they are retried next round).
    pub failed: usize,
}

/// POSTs every undelivered notification whose recipient set a webhook, in
/// order; one that fails stays queued (its error kept) for the next round.
pub async fn deliver(conn: &Connection) -> Result<Delivery> {
    install(conn)?;
    let pending: Vec<(Notification, String)> = conn
        .prepare(
            "SELECT n.id, n.recipient, n.kind, n.body, n.created_at, n.read_at, n.delivered_at, w.url
             FROM notifications n JOIN notification_webhooks w ON w.account = n.recipient
             WHERE n.delivered_at IS NULL AND n.attempts < 20 ORDER BY n.id LIMIT 500",
        )?
        .query_map([], |r| Ok((from_row(r)?, r.get(7)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| Error::Invalid(format!("the webhook client: {e}")))?;
    let mut report = Delivery::default();
    for (n, url) in pending {
        let sent = http
            .post(&url)
            .header("x-cohort-notification", n.id.to_string())
            .json(&n)
            .send()
            .await;
        let outcome = match sent {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("the webhook answered {}", r.status())),
            Err(e) => Err(format!("the webhook could not be reached: {e}")),
        };
        match outcome {
            Ok(()) => {
                conn.execute(
                    "UPDATE notifications SET delivered_at = ?2, attempts = attempts + 1, last_error = NULL WHERE id = ?1",
                    params![n.id, crate::storage::store::now()],
                )?;
                report.delivered += 1;
            }
            Err(e) => {
                conn.execute(
                    "UPDATE notifications SET attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
                    params![n.id, e],
                )?;
                report.failed += 1;
            }
        }
    }
    Ok(report)
}
