//! testkit's PostgreSQL: a fresh database per call on the server of
//! `scripts/with-pg.sh` (`make test` runs the tests under it), and a
//! private server a test stops and starts again.

use testkit::pg::{PgServer, fresh_database, query};

#[test]
fn each_fresh_database_is_its_own_and_empty() {
    let a = fresh_database();
    let b = fresh_database();
    assert_ne!(a, b);
    query(
        &a,
        "CREATE TABLE apps (name text); INSERT INTO apps VALUES ('one')",
    )
    .unwrap();
    assert_eq!(query(&a, "SELECT name FROM apps").unwrap(), "one");
    // The other database does not see it.
    let err = query(&b, "SELECT name FROM apps").unwrap_err();
    assert!(err.contains("does not exist"), "{err}");
    // Both are on the same server, each named for itself.
    assert_eq!(
        query(&a, "SELECT current_database()").unwrap(),
        a.rsplit('/').next().unwrap()
    );
}

#[test]
fn a_stopped_server_refuses_and_comes_back_with_its_data() {
    let mut pg = PgServer::start();
    let db = pg.create_database();
    assert!(db.starts_with("postgres://berth_test:"));
    assert!(db.contains(&format!("@127.0.0.1:{}/t_", pg.port())));
    query(
        &db,
        "CREATE TABLE cvms (id int); INSERT INTO cvms VALUES (7)",
    )
    .unwrap();

    // Its password is in no process's arguments.
    let password = db.split(['@', ':']).nth(2).unwrap().to_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(&password),
            "the password is on the command line of process {:?}",
            entry.file_name()
        );
    }

    pg.stop();
    let err = query(&db, "SELECT id FROM cvms").unwrap_err();
    assert!(err.contains("Connection refused"), "{err}");

    pg.start_again();
    assert_eq!(query(&db, "SELECT id FROM cvms").unwrap(), "7");
    assert_eq!(pg.url("postgres").rsplit('/').next(), Some("postgres"));
}

#[test]
fn a_dropped_server_is_gone() {
    let pg = PgServer::start();
    let url = pg.url("postgres");
    assert_eq!(query(&url, "SELECT 1").unwrap(), "1");
    drop(pg);
    let err = query(&url, "SELECT 1").unwrap_err();
    assert!(err.contains("Connection refused"), "{err}");
}
