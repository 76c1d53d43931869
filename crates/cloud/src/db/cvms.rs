//! The `cvms` table: CVM rows, the rules a commit keeps (unique names per
//! user, the operator's [`Limits`]), and status changes, which go only
//! through [`Db::transition`].

use super::apps::{APP_COLUMNS_JOINED, app_row_at};
use super::limits::Limits;
use super::sql::{Conn, Row, SqlError, Value, vals};
use super::{App, Db, DbError, count, now, placeholders, text};
use contract::CvmStatus;

/// A CVM row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cvm {
    /// UUID.
    pub id: String,
    /// Small integer id.
    pub instance_id: i64,
    /// Name.
    pub name: String,
    /// Owner.
    pub user_id: i64,
    /// App.
    pub app_id: String,
    /// Where the CVM is in its life.
    pub status: CvmStatus,
    /// The failure category of the last boot, if it failed.
    pub boot_category: Option<String>,
    /// The last boot's final line, if it failed.
    pub boot_message: Option<String>,
    /// The sealed env, opaque.
    pub encrypted_env: Option<Vec<u8>>,
    /// The env keys the client declared (names only).
    pub env_keys: Vec<String>,
    /// vCPUs.
    pub vcpu: i64,
    /// Memory, MB.
    pub memory: i64,
    /// Disk, GB.
    pub disk_size: i64,
    /// RFC 3339.
    pub created_at: String,
}

/// What a commit asks for: a new CVM row (in `provisioning`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCvm {
    /// Name (validated by the caller; unique among the user's live CVMs).
    pub name: String,
    /// Owner.
    pub user_id: i64,
    /// App.
    pub app_id: String,
    /// The sealed env, opaque.
    pub encrypted_env: Option<Vec<u8>>,
    /// The env keys the client declared (names only).
    pub env_keys: Vec<String>,
    /// vCPUs.
    pub vcpu: i64,
    /// Memory, MB.
    pub memory: i64,
    /// Disk, GB.
    pub disk_size: i64,
}

const CVM_COLUMNS: &str = "id, instance_id, name, user_id, app_id, status, boot_category, boot_message, encrypted_env, env_keys, vcpu, memory, disk_size, created_at";
const CVM_COLUMN_COUNT: usize = 14;

/// Column `i` as a [`CvmStatus`].
pub(super) fn status_at(r: &Row, i: usize) -> Result<CvmStatus, SqlError> {
    r.get::<String>(i)?
        .parse::<CvmStatus>()
        .map_err(|_| SqlError::Decode {
            column: i,
            want: "a CVM status",
        })
}

pub(super) fn cvm_row(r: &Row) -> Result<Cvm, SqlError> {
    let keys: String = r.get(9)?;
    let status = status_at(r, 5)?;
    Ok(Cvm {
        id: r.get(0)?,
        instance_id: r.get(1)?,
        name: r.get(2)?,
        user_id: r.get(3)?,
        app_id: r.get(4)?,
        status,
        boot_category: r.get(6)?,
        boot_message: r.get(7)?,
        encrypted_env: r.get(8)?,
        env_keys: serde_json::from_str(&keys).unwrap_or_default(),
        vcpu: r.get(10)?,
        memory: r.get(11)?,
        disk_size: r.get(12)?,
        created_at: r.get(13)?,
    })
}

fn query_cvms(conn: &mut Conn, clause: &str, args: &[Value]) -> Result<Vec<Cvm>, SqlError> {
    conn.query(
        &format!("SELECT {CVM_COLUMNS} FROM cvms WHERE {clause} ORDER BY instance_id"),
        args,
    )?
    .iter()
    .map(cvm_row)
    .collect()
}

/// CVMs matching `clause` (columns prefixed `cvms.`) joined with their
/// apps; CVMs whose app is gone are left out.
pub(super) fn query_cvms_with_apps(
    conn: &mut Conn,
    clause: &str,
    args: &[Value],
) -> Result<Vec<(Cvm, App)>, SqlError> {
    let cvm_columns = CVM_COLUMNS
        .split(", ")
        .map(|c| format!("cvms.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    conn.query(
        &format!(
            "SELECT {cvm_columns}, {APP_COLUMNS_JOINED} FROM cvms JOIN apps ON apps.app_id = cvms.app_id WHERE {clause} ORDER BY cvms.instance_id"
        ),
        args,
    )?
    .iter()
    .map(|r| Ok((cvm_row(r)?, app_row_at(r, CVM_COLUMN_COUNT)?)))
    .collect()
}

impl Db {
    /// Creates a CVM row in `provisioning`, in one transaction with the
    /// rules a commit keeps: its name is not taken among the user's live
    /// CVMs (409) and the user is under `limits.max_cvms_per_user` (403).
    /// How many CVMs are booting is no reason to refuse: the node queues
    /// boots past its slots.
    pub async fn create_cvm(&self, new: NewCvm, limits: Limits) -> Result<Cvm, DbError> {
        let id = uuid::Uuid::new_v4().to_string();
        self.write(self.inner.opts.request_patience, move |tx| {
            let deleted = text(CvmStatus::Deleted.as_str());
            let user = Value::Int(new.user_id);
            let taken = count(
                tx,
                "SELECT COUNT(*) FROM cvms WHERE user_id = ?1 AND name = ?2 AND status <> ?3",
                &[user.clone(), text(&new.name), deleted.clone()],
            )?;
            if taken > 0 {
                return Err(DbError::NameTaken {
                    name: new.name.clone(),
                }
                .into());
            }
            let have = count(
                tx,
                "SELECT COUNT(*) FROM cvms WHERE user_id = ?1 AND status <> ?2",
                &[user, deleted],
            )?;
            if have >= limits.max_cvms_per_user {
                return Err(limits.too_many_cvms(have).into());
            }
            // A provisioned app may have expired since the caller read it.
            if Db::app_on(tx, &new.app_id)?.is_none() {
                return Err(DbError::AppGone.into());
            }
            let instance_id: i64 =
                tx.query_value("SELECT COALESCE(MAX(instance_id), 0) + 1 FROM cvms", &[])?;
            let ts = now();
            tx.execute(
                "INSERT INTO cvms (id, instance_id, name, user_id, app_id, status, encrypted_env, env_keys, vcpu, memory, disk_size, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12)",
                &vals![&id, instance_id, &new.name, new.user_id, &new.app_id, CvmStatus::Provisioning.as_str(), &new.encrypted_env,
                        serde_json::to_string(&new.env_keys).expect("json"), new.vcpu, new.memory, new.disk_size, ts],
            )?;
            count_live_cvms(tx, new.user_id, 1)?;
            query_cvms(tx, "id = ?1", &[text(&id)])?
                .pop()
                .ok_or_else(|| DbError::Internal("the new CVM vanished").into())
        })
        .await
    }

    /// The CVM `id` (uuid).
    pub async fn cvm(&self, id: &str) -> Result<Option<Cvm>, DbError> {
        let id = text(id);
        self.read(move |conn| Ok(query_cvms(conn, "id = ?1", std::slice::from_ref(&id))?.pop()))
            .await
    }

    /// The user's CVMs that are not deleted.
    pub async fn cvms_of(&self, user_id: i64) -> Result<Vec<Cvm>, DbError> {
        self.read(move |conn| {
            Ok(query_cvms(
                conn,
                "user_id = ?1 AND status <> ?2",
                &[Value::Int(user_id), text(CvmStatus::Deleted.as_str())],
            )?)
        })
        .await
    }

    /// The user's live CVMs with their apps, in one query (a list of N
    /// CVMs used to cost N + 1 queries, each a trip through the blocking
    /// pool: 0.6 s for 1,000 CVMs under load).
    pub async fn cvms_with_apps_of(&self, user_id: i64) -> Result<Vec<(Cvm, App)>, DbError> {
        self.read(move |conn| {
            Ok(query_cvms_with_apps(
                conn,
                "cvms.user_id = ?1 AND cvms.status <> ?2",
                &[Value::Int(user_id), text(CvmStatus::Deleted.as_str())],
            )?)
        })
        .await
    }

    /// The user's live CVM named by `id` — its uuid (with or without
    /// dashes), its app id, its name or its instance id, in that order of
    /// preference, the newest first — with its app, in one trip.
    pub async fn find_cvm_of(&self, user_id: i64, id: &str) -> Result<Option<(Cvm, App)>, DbError> {
        let id = id.to_owned();
        self.read(move |conn| {
            let compact = id.replace('-', "").to_ascii_lowercase();
            let app_id = id.strip_prefix("app_").unwrap_or(&id).to_ascii_lowercase();
            let candidates = query_cvms_with_apps(
                conn,
                "cvms.user_id = ?1 AND cvms.status <> ?2 AND (LOWER(REPLACE(cvms.id, '-', '')) = ?3 OR cvms.app_id = ?4 OR cvms.name = ?5 OR CAST(cvms.instance_id AS TEXT) = ?5)",
                &[
                    Value::Int(user_id),
                    text(CvmStatus::Deleted.as_str()),
                    text(&compact),
                    text(&app_id),
                    text(&id),
                ],
            )?;
            let newest = |f: &dyn Fn(&Cvm) -> bool| {
                candidates.iter().rev().find(|(c, _)| f(c)).cloned()
            };
            Ok(newest(&|c| c.id.replace('-', "").eq_ignore_ascii_case(&compact))
                .or_else(|| newest(&|c| c.app_id == app_id))
                .or_else(|| newest(&|c| c.name == id))
                .or_else(|| newest(&|c| c.instance_id.to_string() == id)))
        })
        .await
    }

    /// Every CVM that is not deleted (for the node at start-up).
    pub async fn live_cvms(&self) -> Result<Vec<Cvm>, DbError> {
        self.read(|conn| {
            Ok(query_cvms(
                conn,
                "status <> ?1",
                &[text(CvmStatus::Deleted.as_str())],
            )?)
        })
        .await
    }

    /// How many CVMs are booting (`provisioning` or `starting`), all users.
    pub async fn boots_in_flight(&self) -> Result<usize, DbError> {
        self.read(|conn| Ok(boots_in_flight(conn)?)).await
    }

    /// CVMs committed (`provisioning`) at least `older_than` ago and never
    /// handed to the node since: the API process that committed them died
    /// between its insert and its call to the node (a killed replica). The
    /// node adopts them (`Node::adopt_orphans`).
    pub async fn orphaned_commits(
        &self,
        older_than: std::time::Duration,
    ) -> Result<Vec<Cvm>, DbError> {
        let before = std::time::SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(std::time::UNIX_EPOCH)
            .max(std::time::UNIX_EPOCH);
        let before = humantime::format_rfc3339_seconds(before).to_string();
        self.read(move |conn| {
            Ok(query_cvms(
                conn,
                "status = ?1 AND updated_at < ?2",
                &[text(CvmStatus::Provisioning.as_str()), text(&before)],
            )?)
        })
        .await
    }

    /// Moves the CVM `id` to `to` (with the boot failure, if any) only if
    /// its status is one of `from`, atomically; says whether it did. Retried
    /// while the database is busy, for the status patience (30 s); an
    /// error is returned and logged, never dropped.
    pub async fn transition(
        &self,
        id: &str,
        from: &[CvmStatus],
        to: CvmStatus,
        category: Option<&str>,
        message: Option<&str>,
    ) -> Result<bool, DbError> {
        let mut args = vec![
            text(to.as_str()),
            category.map(text).unwrap_or(Value::Null),
            message.map(text).unwrap_or(Value::Null),
            text(&now()),
            text(id),
        ];
        args.extend(from.iter().map(|s| text(s.as_str())));
        let sql = format!(
            "UPDATE cvms SET status = ?1, boot_category = ?2, boot_message = ?3, updated_at = ?4 WHERE id = ?5 AND status IN ({})",
            placeholders(6, from.len())
        );
        if from.is_empty() {
            return Ok(false);
        }
        let result = self
            .write(self.inner.opts.status_patience, move |tx| {
                // Under the write lock: the status read here is the one
                // the update below replaces.
                let before = tx.query_opt(
                    "SELECT status, user_id FROM cvms WHERE id = ?1",
                    std::slice::from_ref(&args[4]),
                )?;
                let applied = tx.execute(&sql, &args)? == 1;
                if applied && let Some(row) = before {
                    let was_live = row.get::<String>(0)? != CvmStatus::Deleted.as_str();
                    let is_live = to != CvmStatus::Deleted;
                    if was_live != is_live {
                        count_live_cvms(tx, row.get(1)?, if is_live { 1 } else { -1 })?;
                    }
                }
                Ok(applied)
            })
            .await;
        if let Err(e) = &result {
            eprintln!("db: could not record status {to} for CVM {id}: {e}");
        }
        result
    }

    /// Sets a CVM's status (and its boot failure, if any) from any status
    /// but `deleted`, which is final. Says whether it applied (false: the
    /// CVM is deleted or does not exist). See [`Db::transition`].
    pub async fn set_status(
        &self,
        id: &str,
        status: CvmStatus,
        category: Option<&str>,
        message: Option<&str>,
    ) -> Result<bool, DbError> {
        self.transition(id, &CvmStatus::LIVE, status, category, message)
            .await
    }

    /// Replaces a CVM's sealed env and declared keys.
    pub async fn set_env(
        &self,
        id: &str,
        encrypted_env: &[u8],
        env_keys: &[String],
    ) -> Result<(), DbError> {
        let (id, env) = (id.to_owned(), encrypted_env.to_vec());
        let keys = serde_json::to_string(env_keys).expect("json");
        self.write(self.inner.opts.request_patience, move |tx| {
            tx.execute(
                "UPDATE cvms SET encrypted_env = ?1, env_keys = ?2, updated_at = ?3 WHERE id = ?4",
                &vals![&env, &keys, now(), &id],
            )?;
            Ok(())
        })
        .await
    }
}

/// Adds `delta` to the user's count of live CVMs (`users.live_cvms`), in
/// the transaction that adds or deletes one.
pub(super) fn count_live_cvms(tx: &mut Conn, user_id: i64, delta: i64) -> Result<(), SqlError> {
    tx.execute(
        "UPDATE users SET live_cvms = live_cvms + ?1 WHERE id = ?2",
        &vals![delta, user_id],
    )?;
    Ok(())
}

fn boots_in_flight(conn: &mut Conn) -> Result<usize, SqlError> {
    count(
        conn,
        "SELECT COUNT(*) FROM cvms WHERE status IN (?1, ?2)",
        &[
            text(CvmStatus::Provisioning.as_str()),
            text(CvmStatus::Starting.as_str()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_stop_racing_the_end_of_a_boot_is_not_overwritten() {
        for t in engines() {
            let db = t.open();
            let u = db.create_user("u", "k", false).await.unwrap();
            let app = db.upsert_app(&app_of(u.id, 'b')).await.unwrap();
            let cvm = db
                .create_cvm(new_cvm("racer", u.id, &app.app_id), Limits::default())
                .await
                .unwrap();
            let st = CvmStatus::Starting;
            assert!(db.set_status(&cvm.id, st, None, None).await.unwrap());
            // The stop lands first; the boot's end expects `starting` and loses.
            assert!(
                db.set_status(&cvm.id, CvmStatus::Stopped, None, None)
                    .await
                    .unwrap()
            );
            let applied = db
                .transition(&cvm.id, &[st], CvmStatus::Running, None, None)
                .await
                .unwrap();
            assert!(!applied);
            assert_eq!(
                db.cvm(&cvm.id).await.unwrap().unwrap().status,
                CvmStatus::Stopped
            );
            // A boot that ends while still `starting` wins.
            db.set_status(&cvm.id, st, None, None).await.unwrap();
            assert!(
                db.transition(
                    &cvm.id,
                    &[st],
                    CvmStatus::BootFailed,
                    Some("runtime"),
                    Some("BOOT FAILED: runtime")
                )
                .await
                .unwrap()
            );
            let c = db.cvm(&cvm.id).await.unwrap().unwrap();
            assert_eq!(
                (c.status, c.boot_category.as_deref()),
                (CvmStatus::BootFailed, Some("runtime"))
            );
            // `deleted` is final: nothing moves a CVM out of it.
            assert!(
                db.set_status(&cvm.id, CvmStatus::Deleted, None, None)
                    .await
                    .unwrap()
            );
            for s in CvmStatus::ALL {
                assert!(!db.set_status(&cvm.id, s, None, None).await.unwrap(), "{s}");
            }
            assert_eq!(
                db.cvm(&cvm.id).await.unwrap().unwrap().status,
                CvmStatus::Deleted
            );
            assert!(!db.set_status("no-such-cvm", st, None, None).await.unwrap());
            assert!(!db.transition(&cvm.id, &[], st, None, None).await.unwrap());
        }
    }

    #[tokio::test]
    async fn names_are_unique_per_user_and_caps_hold() {
        for t in engines() {
            let db = t.open();
            let a = db.create_user("a", "ka", false).await.unwrap();
            let b = db.create_user("b", "kb", false).await.unwrap();
            let app_a = db.upsert_app(&app_of(a.id, 'a')).await.unwrap();
            let app_b = db.upsert_app(&app_of(b.id, 'b')).await.unwrap();
            let wide = Limits {
                max_cvms_per_user: 50,
                max_boots_in_flight: 50,
                ..Limits::default()
            };
            let first = db
                .create_cvm(new_cvm("same-name", a.id, &app_a.app_id), wide)
                .await
                .unwrap();
            let dup = db
                .create_cvm(new_cvm("same-name", a.id, &app_a.app_id), wide)
                .await
                .unwrap_err();
            assert!(
                matches!(&dup, DbError::NameTaken { name } if name == "same-name"),
                "{dup:?}"
            );
            assert!(dup.to_string().contains("`same-name`"), "{dup}");
            // Another user may use the name; a deleted CVM frees it.
            db.create_cvm(new_cvm("same-name", b.id, &app_b.app_id), wide)
                .await
                .unwrap();
            db.set_status(&first.id, CvmStatus::Deleted, None, None)
                .await
                .unwrap();
            db.create_cvm(new_cvm("same-name", a.id, &app_a.app_id), wide)
                .await
                .unwrap();

            // Per-user cap: a has 1 live CVM.
            let two = Limits {
                max_cvms_per_user: 2,
                max_boots_in_flight: 50,
                ..Limits::default()
            };
            db.create_cvm(new_cvm("second", a.id, &app_a.app_id), two)
                .await
                .unwrap();
            let capped = db
                .create_cvm(new_cvm("third", a.id, &app_a.app_id), two)
                .await
                .unwrap_err();
            assert!(
                matches!(capped, DbError::TooManyCvms { have: 2, max: 2 }),
                "{capped:?}"
            );
            let said = capped.to_string();
            assert!(said.contains("--max-cvms-per-user 2"), "{said}");
            assert!(said.contains("delete a CVM"), "{said}");
            // b is not affected by a's cap.
            db.create_cvm(new_cvm("b-second", b.id, &app_b.app_id), two)
                .await
                .unwrap();

            // Boots in flight are the node's to queue, never a refusal.
            assert_eq!(db.boots_in_flight().await.unwrap(), 4);
            let one = Limits {
                max_cvms_per_user: 50,
                max_boots_in_flight: 1,
                max_boots_per_user: 1,
                ..Limits::default()
            };
            db.create_cvm(new_cvm("b-third", b.id, &app_b.app_id), one)
                .await
                .unwrap();
            assert_eq!(db.boots_in_flight().await.unwrap(), 5);
        }
    }

    /// The kept count of a user's live CVMs (the total of an unfiltered
    /// page) stays what counting the rows gives, through commits, status
    /// changes, deletes (once), and imports.
    #[tokio::test]
    async fn the_kept_count_of_live_cvms_follows_the_rows() {
        use crate::db::pages::CvmFilter;
        for t in engines() {
            let db = t.open();
            let a = db.create_user("a", "ka", false).await.unwrap();
            let b = db.create_user("b", "kb", false).await.unwrap();
            let app = db.upsert_app(&app_of(a.id, 'a')).await.unwrap();
            let name = t.name();
            let total = |user: i64| {
                let db = &db;
                async move {
                    let kept = db
                        .cvm_page_of(user, &CvmFilter::default(), 1, 50)
                        .await
                        .unwrap()
                        .total;
                    assert_eq!(kept, db.cvms_of(user).await.unwrap().len(), "{name}");
                    kept
                }
            };
            let mut ids = Vec::new();
            for n in ["one", "two", "three"] {
                ids.push(
                    db.create_cvm(new_cvm(n, a.id, &app.app_id), Limits::default())
                        .await
                        .unwrap()
                        .id,
                );
            }
            assert_eq!(total(a.id).await, 3);
            assert_eq!(total(b.id).await, 0);
            db.set_status(&ids[0], CvmStatus::Running, None, None)
                .await
                .unwrap();
            db.set_status(&ids[0], CvmStatus::Stopped, None, None)
                .await
                .unwrap();
            assert_eq!(total(a.id).await, 3);
            assert!(
                db.set_status(&ids[1], CvmStatus::Deleted, None, None)
                    .await
                    .unwrap()
            );
            assert!(
                !db.set_status(&ids[1], CvmStatus::Deleted, None, None)
                    .await
                    .unwrap()
            );
            // A write that finds it deleted already changes no count.
            db.transition(
                &ids[1],
                &[CvmStatus::Deleted],
                CvmStatus::Deleted,
                None,
                None,
            )
            .await
            .unwrap();
            assert_eq!(total(a.id).await, 2);
            let imported = (0..4)
                .map(|i| {
                    let mut app = app_of(b.id, 'b');
                    app.app_id = format!("{:0>40}", i);
                    let cvm = new_cvm(&format!("imported-{i}"), b.id, &app.app_id);
                    (app, cvm)
                })
                .collect();
            assert_eq!(db.import_stopped_cvms(imported).await.unwrap(), 4);
            assert_eq!(total(b.id).await, 4);
            assert_eq!(total(a.id).await, 2);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_commits_of_one_name_make_one_cvm() {
        for t in engines() {
            let db = Arc::new(t.open());
            // The node's process has its own handle on the same database.
            let other = Arc::new(t.open());
            let u = db.create_user("u", "k", false).await.unwrap();
            let app = db.upsert_app(&app_of(u.id, 'c')).await.unwrap();
            let mut tasks = Vec::new();
            for i in 0..16 {
                let handle = if i % 2 == 0 {
                    db.clone()
                } else {
                    other.clone()
                };
                let app_id = app.app_id.clone();
                tasks.push(tokio::spawn(async move {
                    handle
                        .create_cvm(new_cvm("contested", u.id, &app_id), Limits::default())
                        .await
                }));
            }
            let mut ok = 0;
            for t in tasks {
                match t.await.unwrap() {
                    Ok(_) => ok += 1,
                    Err(e) => assert!(matches!(e, DbError::NameTaken { .. }), "{e:?}"),
                }
            }
            assert_eq!(ok, 1);
            assert_eq!(db.cvms_of(u.id).await.unwrap().len(), 1);
        }
    }
}

#[cfg(test)]
mod column_tests {
    #[test]
    fn the_join_reads_the_app_where_the_cvm_columns_end() {
        assert_eq!(
            super::CVM_COLUMNS.split(", ").count(),
            super::CVM_COLUMN_COUNT
        );
    }
}
