//! The `app_locks` table: one update at a time per app, across every API
//! replica. A lock is a lease row (app id, holder, expiry): taken when no
//! row or only an expired one exists, given back by its holder, and
//! forgotten when its holder dies without giving it back (the lease
//! expires). A portable row rather than PostgreSQL's session advisory
//! locks, so that SQLite and PostgreSQL behave alike and a lock never
//! pins a pooled connection for the length of an update.

use super::sql::vals;
use super::{Db, DbError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn millis_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Db {
    /// Takes the update lock of `app_id` for `holder` for `ttl`; `false`
    /// when another holder has it (and its lease has not expired).
    pub async fn try_lock_app(
        &self,
        app_id: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, DbError> {
        let (app_id, holder) = (app_id.to_owned(), holder.to_owned());
        let ttl = ttl.as_millis().min(i64::MAX as u128) as i64;
        self.write(self.inner.opts.request_patience, move |tx| {
            let now = millis_now();
            tx.execute(
                "DELETE FROM app_locks WHERE app_id = ?1 AND expires_at < ?2",
                &vals![&app_id, now],
            )?;
            let taken = tx.execute(
                "INSERT INTO app_locks (app_id, holder, expires_at) VALUES (?1, ?2, ?3) ON CONFLICT (app_id) DO NOTHING",
                &vals![&app_id, &holder, now.saturating_add(ttl)],
            )?;
            Ok(taken == 1)
        })
        .await
    }

    /// Gives back the update lock of `app_id` if `holder` has it.
    pub async fn unlock_app(&self, app_id: &str, holder: &str) -> Result<(), DbError> {
        let (app_id, holder) = (app_id.to_owned(), holder.to_owned());
        self.write(self.inner.opts.status_patience, move |tx| {
            tx.execute(
                "DELETE FROM app_locks WHERE app_id = ?1 AND holder = ?2",
                &vals![&app_id, &holder],
            )?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
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
}
