//! The `leases` table: what one process at a time may do, across every
//! process on the database. A lease is a row (name, holder, expiry): taken
//! when no row or only an expired one exists, renewed and given back by its
//! holder, and forgotten when its holder dies without giving it back (it
//! expires). Two kinds: an app's update lock (`app:<app id>`, one update at
//! a time per app across API replicas) and the node lease (`node`: the one
//! `berth up` whose node boots this database's CVMs). Portable rows rather
//! than PostgreSQL's session advisory locks, so that SQLite and PostgreSQL
//! behave alike and a lock never pins a pooled connection.

use super::sql::vals;
use super::{Db, DbError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The name of the node lease.
pub const NODE_LEASE: &str = "node";

fn millis_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl Db {
    /// Takes the lease `name` for `holder` for `ttl`, or renews it when
    /// `holder` has it already. `Ok(None)` when taken or renewed;
    /// `Ok(Some(other))` names the holder that has it (and whose lease has
    /// not expired).
    pub async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<String>, DbError> {
        let (name, holder, ttl) = (name.to_owned(), holder.to_owned(), millis(ttl));
        self.write(self.inner.opts.request_patience, move |tx| {
            let now = millis_now();
            tx.execute(
                "DELETE FROM leases WHERE name = ?1 AND expires_at < ?2",
                &vals![&name, now],
            )?;
            let expires = now.saturating_add(ttl);
            let renewed = tx.execute(
                "UPDATE leases SET expires_at = ?3 WHERE name = ?1 AND holder = ?2",
                &vals![&name, &holder, expires],
            )?;
            if renewed == 1 {
                return Ok(None);
            }
            let taken = tx.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
                &vals![&name, &holder, expires],
            )?;
            if taken == 1 {
                return Ok(None);
            }
            let other = tx.query_value::<String>(
                "SELECT holder FROM leases WHERE name = ?1",
                &vals![&name],
            )?;
            Ok(Some(other))
        })
        .await
    }

    /// Gives back the lease `name` if `holder` has it.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), DbError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(self.inner.opts.status_patience, move |tx| {
            tx.execute(
                "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
                &vals![&name, &holder],
            )?;
            Ok(())
        })
        .await
    }

    /// Takes the update lock of `app_id` for `holder` for `ttl`; `false`
    /// when another holder has it (and its lease has not expired).
    pub async fn try_lock_app(
        &self,
        app_id: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, DbError> {
        Ok(self
            .take_lease(&format!("app:{app_id}"), holder, ttl)
            .await?
            .is_none())
    }

    /// Gives back the update lock of `app_id` if `holder` has it.
    pub async fn unlock_app(&self, app_id: &str, holder: &str) -> Result<(), DbError> {
        self.release_lease(&format!("app:{app_id}"), holder).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::NODE_LEASE;
    use std::time::Duration;

    #[tokio::test]
    async fn one_holder_at_a_time_and_a_dead_holders_lease_runs_out() {
        for t in engines() {
            let db = t.open();
            // Another API replica: its own handle on the same database.
            let other = t.open();
            let long = Duration::from_secs(60);
            assert!(db.try_lock_app("app1", "replica-a", long).await.unwrap());
            assert!(
                !other.try_lock_app("app1", "replica-b", long).await.unwrap(),
                "{}",
                t.name()
            );
            // Another app is free; the holder gives back, the other takes.
            assert!(other.try_lock_app("app2", "replica-b", long).await.unwrap());
            other.unlock_app("app1", "replica-b").await.unwrap();
            assert!(
                !other.try_lock_app("app1", "replica-b", long).await.unwrap(),
                "only the holder unlocks"
            );
            db.unlock_app("app1", "replica-a").await.unwrap();
            assert!(
                other
                    .try_lock_app("app1", "replica-b", Duration::from_millis(50))
                    .await
                    .unwrap()
            );
            // replica-b dies holding it: the lease expires.
            tokio::time::sleep(Duration::from_millis(80)).await;
            assert!(
                db.try_lock_app("app1", "replica-a", long).await.unwrap(),
                "{}",
                t.name()
            );
        }
    }

    #[tokio::test]
    async fn a_second_node_on_one_database_is_told_who_runs_it() {
        for t in engines() {
            let (a, b) = (t.open(), t.open());
            let long = Duration::from_secs(60);
            assert_eq!(
                a.take_lease(NODE_LEASE, "host-a pid 1", long)
                    .await
                    .unwrap(),
                None
            );
            assert_eq!(
                b.take_lease(NODE_LEASE, "host-b pid 2", long)
                    .await
                    .unwrap()
                    .as_deref(),
                Some("host-a pid 1")
            );
            // Renewed by its holder, it stays its.
            assert_eq!(
                a.take_lease(NODE_LEASE, "host-a pid 1", long)
                    .await
                    .unwrap(),
                None
            );
            assert_eq!(
                b.take_lease(NODE_LEASE, "host-b pid 2", long)
                    .await
                    .unwrap()
                    .as_deref(),
                Some("host-a pid 1")
            );
            // Its last renewal was short and it renews no more (its
            // `berth up` was killed): once that has run out, b takes it.
            assert_eq!(
                a.take_lease(NODE_LEASE, "host-a pid 1", Duration::from_millis(100))
                    .await
                    .unwrap(),
                None
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(
                b.take_lease(NODE_LEASE, "host-b pid 2", long)
                    .await
                    .unwrap(),
                None,
                "{}",
                t.name()
            );
            assert_eq!(
                a.take_lease(NODE_LEASE, "host-a pid 1", long)
                    .await
                    .unwrap()
                    .as_deref(),
                Some("host-b pid 2")
            );
            b.release_lease(NODE_LEASE, "host-b pid 2").await.unwrap();
            assert_eq!(
                a.take_lease(NODE_LEASE, "host-a pid 1", long)
                    .await
                    .unwrap(),
                None
            );
        }
    }
}
