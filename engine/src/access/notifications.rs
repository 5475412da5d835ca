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

/// `recipient`'s notifications with an id above `after`, oldest first (at
/// most `limit`): what a watcher has not seen yet.
pub fn after(
    conn: &Connection,
    recipient: Address,
    after: i64,
    limit: usize,
) -> Result<Vec<Notification>> {
    install(conn)?;
    let out = conn
        .prepare(
            "SELECT id, recipient, kind, body, created_at, read_at, delivered_at FROM notifications
             WHERE recipient = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?
        .query_map(
            params![format!("{recipient:#x}"), after, limit as i64],
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
/// POSTed to: `http://` only (this build's HTTP client has no TLS stack,
/// so an `https://` URL could never be delivered), and a host that is not
/// loopback, private, link-local or otherwise internal unless
/// `allow_internal` (the operator's own choice at the machine; a server
/// never allows it, so an account cannot make it call into its network).
/// A host name is checked as written; one that resolves to an internal
/// address later is not caught (DNS).
pub fn set_webhook(
    conn: &Connection,
    account: Address,
    url: Option<&str>,
    allow_internal: bool,
) -> Result<()> {
    install(conn)?;
    match url {
        None => {
            conn.execute(
                "DELETE FROM notification_webhooks WHERE account = ?1",
                [format!("{account:#x}")],
            )?;
        }
        Some(url) => {
            check_webhook(url, allow_internal)?;
            conn.execute(
                "INSERT INTO notification_webhooks (account, url, set_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (account) DO UPDATE SET url = excluded.url, set_at = excluded.set_at",
                params![format!("{account:#x}"), url, crate::storage::store::now()],
            )?;
        }
    }
    Ok(())
}

/// Why `url` cannot be a webhook, if it cannot.
fn check_webhook(url: &str, allow_internal: bool) -> Result<()> {
    let parsed =
        url::Url::parse(url).map_err(|e| Error::Invalid(format!("`{url}` is not a URL: {e}")))?;
    match parsed.scheme() {
        "http" => {}
        "https" => {
            return Err(Error::Invalid(format!(
                "`{url}`: this build delivers webhooks over plain http only (its HTTP client has no TLS stack); use an http:// receiver on a trusted network, or a TLS-terminating proxy"
            )));
        }
        other => {
            return Err(Error::Invalid(format!(
                "`{url}`: a webhook must be an http:// URL, not {other}:"
            )));
        }
    }
    let internal = match parsed.host() {
        None => {
            return Err(Error::Invalid(format!("`{url}` has no host")));
        }
        Some(url::Host::Domain(d)) => {
            let d = d.to_ascii_lowercase();
            d == "localhost"
                || d.ends_with(".localhost")
                || d.ends_with(".local")
                || d.ends_with(".internal")
        }
        Some(url::Host::Ipv4(ip)) => {
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.octets()[0] == 100 && (64..128).contains(&ip.octets()[1])
        }
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || (ip.segments()[0] & 0xfe00) == 0xfc00
                || (ip.segments()[0] & 0xffc0) == 0xfe80
                || ip
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_private())
        }
    };
    if internal && !allow_internal {
        return Err(Error::Invalid(format!(
            "`{url}` points at a loopback, private or internal host: a webhook may not, unless the operator allows it at the machine (`cohort notifications webhook URL --allow-internal`)"
        )));
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

#[cfg(test)]
mod tests {
    use super::check_webhook;

    #[test]
    fn webhooks_are_http_to_public_hosts_unless_the_operator_allows_internal_ones() {
        for ok in [
            "http://hooks.example.org/cohort",
            "http://203.0.113.7:8080/x",
        ] {
            check_webhook(ok, false).unwrap();
        }
        for internal in [
            "http://127.0.0.1:9/x",
            "http://localhost/x",
            "http://10.1.2.3/x",
            "http://192.168.0.1/x",
            "http://172.16.5.5/x",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/x",
            "http://[::1]/x",
            "http://[fd00::1]/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://metadata.google.internal/x",
            "http://0.0.0.0/x",
        ] {
            let e = check_webhook(internal, false).unwrap_err().to_string();
            assert!(e.contains("internal"), "{internal}: {e}");
            check_webhook(internal, true).unwrap();
        }
        assert!(
            check_webhook("https://hooks.example.org/x", true)
                .unwrap_err()
                .to_string()
                .contains("TLS")
        );
        assert!(check_webhook("ftp://hooks.example.org/x", true).is_err());
        assert!(check_webhook("not a url", true).is_err());
    }
}
