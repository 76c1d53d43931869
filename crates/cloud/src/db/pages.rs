//! Lists that stay fast at 10,000 CVMs: a page of a user's CVMs with their
//! apps and the count of all of them ([`Db::cvm_page_of`]), a chunk after
//! a given `instance_id` for a list that streams ([`Db::cvm_chunk_of`]),
//! the same page in slim rows without the manifest's bytes
//! ([`Db::cvm_summaries_of`]), and the statuses of the CVMs a client names
//! ([`Db::statuses_of`]).
//!
//! Every query is ordered by `instance_id` within one user and leaves out
//! deleted CVMs, as the full list always has. None of them reads the sealed
//! env or its keys: a row of a list is a [`Cvm`] whose `encrypted_env` is
//! `None` and whose `env_keys` are empty. A CVM's app cannot be gone (the
//! `cvms.app_id` foreign key keeps it), so the counts need no join.

use super::apps::{APP_COLUMNS_JOINED, app_row_at};
use super::sql::{Conn, Row, SqlError, Value};
use super::{App, Cvm, Db, DbError, NewCvm, count, now, placeholders, text};
use contract::CvmStatus;

/// What a list may be narrowed to: the filters the official clients send
/// that mean something here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CvmFilter {
    /// A piece of the name, app id, UUID (with or without dashes) or
    /// instance id, matched without regard to case.
    pub search: Option<String>,
    /// Only CVMs in one of these statuses (all, when empty).
    pub statuses: Vec<CvmStatus>,
}

/// One page of rows and how many rows all pages hold.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    /// This page's rows, in `instance_id` order.
    pub rows: Vec<T>,
    /// The rows of every page.
    pub total: usize,
}

/// A CVM with the fields of its app a slim list shows (not the manifest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CvmSummary {
    /// The CVM (no sealed env, no env keys).
    pub cvm: Cvm,
    /// Its app's compose hash.
    pub compose_hash: String,
    /// Its app's env public key, hex.
    pub env_pubkey: String,
}

/// The CVM columns a list reads, in [`list_cvm`]'s order.
const CVM_LIST_COLUMNS: &str = "cvms.id, cvms.instance_id, cvms.name, cvms.user_id, cvms.app_id, cvms.status, cvms.boot_category, cvms.boot_message, cvms.vcpu, cvms.memory, cvms.disk_size, cvms.created_at";
const CVM_LIST_COLUMN_COUNT: usize = 12;

fn list_cvm(r: &Row) -> Result<Cvm, SqlError> {
    let status = super::cvms::status_at(r, 5)?;
    Ok(Cvm {
        id: r.get(0)?,
        instance_id: r.get(1)?,
        name: r.get(2)?,
        user_id: r.get(3)?,
        app_id: r.get(4)?,
        status,
        boot_category: r.get(6)?,
        boot_message: r.get(7)?,
        encrypted_env: None,
        env_keys: Vec::new(),
        vcpu: r.get(8)?,
        memory: r.get(9)?,
        disk_size: r.get(10)?,
        created_at: r.get(11)?,
    })
}

/// `WHERE …` of a user's live CVMs narrowed by `filter`, with its
/// arguments (`?1` is the user).
fn live_of(user_id: i64, filter: &CvmFilter) -> (String, Vec<Value>) {
    // The literal keeps a partial or covering index usable by the planner
    // (a bound parameter would hide the value from it).
    let mut clause = format!(
        "cvms.user_id = ?1 AND cvms.status <> '{}'",
        CvmStatus::Deleted.as_str()
    );
    let mut args = vec![Value::Int(user_id)];
    if let Some(search) = filter.search.as_deref().map(str::trim)
        && !search.is_empty()
    {
        let needle = search.to_ascii_lowercase();
        let pattern = format!("%{}%", like_escaped(&needle));
        let compact = format!("%{}%", like_escaped(&needle.replace('-', "")));
        let n = args.len();
        clause.push_str(&format!(
            " AND (LOWER(cvms.name) LIKE ?{a} ESCAPE '\\' OR LOWER(cvms.app_id) LIKE ?{a} ESCAPE '\\' OR LOWER(cvms.id) LIKE ?{a} ESCAPE '\\' OR REPLACE(LOWER(cvms.id), '-', '') LIKE ?{b} ESCAPE '\\' OR CAST(cvms.instance_id AS TEXT) = ?{c})",
            a = n + 1,
            b = n + 2,
            c = n + 3,
        ));
        args.extend([text(&pattern), text(&compact), text(&needle)]);
    }
    if !filter.statuses.is_empty() {
        clause.push_str(&format!(
            " AND cvms.status IN ({})",
            placeholders(args.len() + 1, filter.statuses.len())
        ));
        args.extend(filter.statuses.iter().map(|s| text(s.as_str())));
    }
    (clause, args)
}

/// `s` with `LIKE`'s wildcards and its escape character escaped by `\`.
fn like_escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// How many of the user's live CVMs match: the user's kept count
/// (`users.live_cvms`, one row) when `filter` narrows nothing, else a
/// count over the partial index.
fn count_live(
    conn: &mut Conn,
    user_id: i64,
    filter: &CvmFilter,
    clause: &str,
    args: &[Value],
) -> Result<usize, SqlError> {
    let unfiltered =
        filter.search.as_deref().is_none_or(|s| s.trim().is_empty()) && filter.statuses.is_empty();
    if unfiltered {
        let kept: Option<i64> = conn
            .query_opt(
                "SELECT live_cvms FROM users WHERE id = ?1",
                &[Value::Int(user_id)],
            )?
            .map(|r| r.get(0))
            .transpose()?;
        return Ok(kept.unwrap_or(0).max(0) as usize);
    }
    count(
        conn,
        &format!("SELECT COUNT(*) FROM cvms WHERE {clause}"),
        args,
    )
}

/// The rows of `clause` with their apps, `limit` of them after `offset`.
fn cvms_with_apps(
    conn: &mut Conn,
    clause: &str,
    args: &[Value],
    limit: usize,
    offset: usize,
) -> Result<Vec<(Cvm, App)>, SqlError> {
    let n = args.len();
    let sql = format!(
        "SELECT {CVM_LIST_COLUMNS}, {APP_COLUMNS_JOINED} FROM {} JOIN apps ON apps.app_id = cvms.app_id ORDER BY cvms.instance_id",
        page_of(clause, n)
    );
    let mut all = args.to_vec();
    all.extend([Value::Int(limit as i64), Value::Int(offset as i64)]);
    conn.query(&sql, &all)?
        .iter()
        .map(|r| Ok((list_cvm(r)?, app_row_at(r, CVM_LIST_COLUMN_COUNT)?)))
        .collect()
}

/// The page of `cvms` rows matching `clause` (its `n` arguments, then the
/// limit and the offset), as a subquery named `cvms`. The offset is taken
/// over instance ids alone — a walk of the partial index of live CVMs that
/// reads no table row on SQLite, nor on PostgreSQL once its visibility map
/// is set (an index-only scan) — and only the page's rows are read, by
/// their unique instance id, and joined with their apps.
fn page_of(clause: &str, n: usize) -> String {
    format!(
        "(SELECT {CVM_LIST_COLUMNS} FROM cvms WHERE cvms.instance_id IN (SELECT cvms.instance_id FROM cvms WHERE {clause} ORDER BY cvms.instance_id LIMIT ?{} OFFSET ?{})) AS cvms",
        n + 1,
        n + 2
    )
}

/// `(page - 1) * page_size`, saturating (a page past the end is empty).
fn offset_of(page: usize, page_size: usize) -> usize {
    page.saturating_sub(1).saturating_mul(page_size)
}

/// A CVM id as stored (the dashed, lower-case UUID) from any form a client
/// sends it in; `None` when it is no UUID.
fn stored_id(id: &str) -> Option<String> {
    let hex: String = id
        .chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// How many ids one statement of [`Db::statuses_of`] names.
const IDS_PER_STATEMENT: usize = 500;

impl Db {
    /// Page `page` (from 1) of `page_size` of the user's live CVMs that
    /// match `filter`, with their apps, in `instance_id` order, and how many
    /// match in all. A page past the end is empty.
    pub async fn cvm_page_of(
        &self,
        user_id: i64,
        filter: &CvmFilter,
        page: usize,
        page_size: usize,
    ) -> Result<Page<(Cvm, App)>, DbError> {
        let (clause, args) = live_of(user_id, filter);
        let offset = offset_of(page, page_size);
        let filter = filter.clone();
        self.read(move |conn| {
            let total = count_live(conn, user_id, &filter, &clause, &args)?;
            let rows = if offset < total {
                cvms_with_apps(conn, &clause, &args, page_size, offset)?
            } else {
                Vec::new()
            };
            Ok(Page { rows, total })
        })
        .await
    }

    /// Up to `limit` of the user's live CVMs with their apps whose
    /// `instance_id` is greater than `after`, in `instance_id` order: the
    /// chunks of a list that streams (keyset, so a chunk costs the same
    /// wherever it is in the list).
    pub async fn cvm_chunk_of(
        &self,
        user_id: i64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(Cvm, App)>, DbError> {
        let (mut clause, mut args) = live_of(user_id, &CvmFilter::default());
        clause.push_str(&format!(" AND cvms.instance_id > ?{}", args.len() + 1));
        args.push(Value::Int(after));
        self.read(move |conn| Ok(cvms_with_apps(conn, &clause, &args, limit, 0)?))
            .await
    }

    /// [`Db::cvm_page_of`] in slim rows: each CVM with its app's compose
    /// hash and env public key, without the manifest's bytes.
    pub async fn cvm_summaries_of(
        &self,
        user_id: i64,
        filter: &CvmFilter,
        page: usize,
        page_size: usize,
    ) -> Result<Page<CvmSummary>, DbError> {
        let (clause, args) = live_of(user_id, filter);
        let offset = offset_of(page, page_size);
        let filter = filter.clone();
        self.read(move |conn| {
            let total = count_live(conn, user_id, &filter, &clause, &args)?;
            if offset >= total {
                return Ok(Page {
                    rows: Vec::new(),
                    total,
                });
            }
            let n = args.len();
            let sql = format!(
                "SELECT {CVM_LIST_COLUMNS}, apps.compose_hash, apps.env_pubkey FROM {} JOIN apps ON apps.app_id = cvms.app_id ORDER BY cvms.instance_id",
                page_of(&clause, n)
            );
            let mut all = args.clone();
            all.extend([
                Value::Int(page_size as i64),
                Value::Int(offset as i64),
            ]);
            let rows = conn
                .query(&sql, &all)?
                .iter()
                .map(|r| {
                    Ok(CvmSummary {
                        cvm: list_cvm(r)?,
                        compose_hash: r.get(CVM_LIST_COLUMN_COUNT)?,
                        env_pubkey: r.get(CVM_LIST_COLUMN_COUNT + 1)?,
                    })
                })
                .collect::<Result<Vec<_>, SqlError>>()?;
            Ok(Page { rows, total })
        })
        .await
    }

    /// The user's live CVMs among `ids` (UUIDs with or without dashes; other
    /// strings name nothing), found by their primary key, in `instance_id`
    /// order.
    pub async fn statuses_of(&self, user_id: i64, ids: &[String]) -> Result<Vec<Cvm>, DbError> {
        let mut wanted: Vec<String> = ids.iter().filter_map(|i| stored_id(i)).collect();
        wanted.sort();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        self.read(move |conn| {
            let mut out = Vec::new();
            for part in wanted.chunks(IDS_PER_STATEMENT) {
                let (clause, mut args) = live_of(user_id, &CvmFilter::default());
                let sql = format!(
                    "SELECT {CVM_LIST_COLUMNS} FROM cvms WHERE {clause} AND cvms.id IN ({}) ORDER BY cvms.instance_id",
                    placeholders(args.len() + 1, part.len())
                );
                args.extend(part.iter().map(|i| text(i)));
                for row in conn.query(&sql, &args)? {
                    out.push(list_cvm(&row)?);
                }
            }
            out.sort_by_key(|c| c.instance_id);
            Ok(out)
        })
        .await
    }
}

impl Db {
    /// Imports many CVMs at once, each with its app, all `stopped`, in one
    /// transaction and without a commit's checks (names, caps, boots in
    /// flight): for an operator's import and for the benchmarks that need
    /// 10,000 rows (one commit each would take minutes). Returns how many
    /// CVMs it added.
    pub async fn import_stopped_cvms(&self, rows: Vec<(App, NewCvm)>) -> Result<usize, DbError> {
        self.write(self.inner.opts.status_patience, move |tx| {
            let next: i64 =
                tx.query_value("SELECT COALESCE(MAX(instance_id), 0) + 1 FROM cvms", &[])?;
            let ts = now();
            for (i, (app, cvm)) in rows.iter().enumerate() {
                tx.execute(
                    "INSERT INTO apps (app_id, user_id, name, app_compose, compose_hash, env_pubkey, env_pubkey_signature, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (app_id) DO NOTHING",
                    &super::sql::vals![&app.app_id, app.user_id, &app.name, &app.app_compose, &app.compose_hash, &app.env_pubkey, &app.env_pubkey_signature, &ts],
                )?;
                tx.execute(
                    "INSERT INTO cvms (id, instance_id, name, user_id, app_id, status, encrypted_env, env_keys, vcpu, memory, disk_size, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12)",
                    &super::sql::vals![uuid::Uuid::new_v4().to_string(), next + i as i64, &cvm.name, cvm.user_id, &cvm.app_id,
                        CvmStatus::Stopped.as_str(), &cvm.encrypted_env, serde_json::to_string(&cvm.env_keys).expect("json"),
                        cvm.vcpu, cvm.memory, cvm.disk_size, &ts],
                )?;
                super::cvms::count_live_cvms(tx, cvm.user_id, 1)?;
            }
            Ok(rows.len())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_found_in_every_form_a_client_sends() {
        let dashed = "4da92c19-7059-4978-a131-af5f6f87f901";
        assert_eq!(stored_id(dashed).as_deref(), Some(dashed));
        assert_eq!(
            stored_id("4DA92C1970594978A131AF5F6F87F901").as_deref(),
            Some(dashed)
        );
        assert_eq!(stored_id("web-app"), None);
        assert_eq!(stored_id("4da92c19-7059-4978-a131-af5f6f87f90g"), None);
    }

    #[test]
    fn a_search_is_a_literal_piece_of_text() {
        assert_eq!(like_escaped("a_b%c\\d"), "a\\_b\\%c\\\\d");
        let (clause, args) = live_of(
            7,
            &CvmFilter {
                search: Some(" Shop ".into()),
                statuses: vec![CvmStatus::Running, CvmStatus::Stopped],
            },
        );
        assert!(clause.contains("IN (?5, ?6)"), "{clause}");
        assert_eq!(args.len(), 6);
        assert_eq!(args[1], text("%shop%"));
    }

    #[test]
    fn a_page_past_the_end_starts_past_every_row() {
        assert_eq!(offset_of(1, 50), 0);
        assert_eq!(offset_of(3, 50), 100);
        assert_eq!(offset_of(usize::MAX, 100), usize::MAX);
    }
}
