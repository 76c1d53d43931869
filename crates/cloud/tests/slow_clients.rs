//! Audit finding 5: 260 connections with a tenant's key, each sending
//! `POST /cvms/provision` with `Content-Length: 100000` at one byte every
//! 2 s, locked the API, the console and the log URLs. Served here by the
//! real `serve` with the real router, on a loopback port, with the options
//! `berth up` uses by default.

mod support;

use cloud::serve::ServeOptions;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a slow client saw: the answer's bytes (empty: closed without one)
/// and when it came, from the end of the headers.
struct Seen {
    answer: String,
    after: Duration,
}

/// Sends a provision's headers and the body's first byte, says so on
/// `sent`, then one more byte every `every` until the server answers or
/// closes.
async fn slow_client(
    addr: SocketAddr,
    key: String,
    every: Duration,
    sent: tokio::sync::mpsc::Sender<()>,
) -> Seen {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v1/cvms/provision HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let start = Instant::now();
    let _ = sent.send(()).await;
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if w.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let after = loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break start.elapsed(),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    };
    writer.abort();
    Seen {
        answer: String::from_utf8_lossy(&answer).into_owned(),
        after,
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(8))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_bodies_of_one_tenant_leave_the_api_console_and_log_urls_answering() {
    let f = fixture(cloud::db::Limits::default()).await;
    let opts = ServeOptions::default();
    let (addr, _stop) = serve(&f, opts.clone()).await;
    let (alice, mallory) = (f.keys[1].clone(), f.keys[2].clone());

    // 260 slow bodies, more than the server's 256 connections.
    let clients = 260;
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::channel(clients);
    let slow: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(slow_client(
                addr,
                mallory.clone(),
                Duration::from_secs(2),
                sent_tx.clone(),
            ))
        })
        .collect();
    for _ in 0..clients {
        sent_rx.recv().await.unwrap();
    }

    // Every other user, the console and the log URLs still answer at once.
    let base = format!("http://{addr}");
    let http = http();
    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        let t = Instant::now();
        let me = http
            .get(format!("{base}/api/v1/auth/me"))
            .header("x-api-key", &alice)
            .send()
            .await
            .expect("GET /auth/me while one tenant's slow bodies are open");
        assert_eq!(me.status(), 200);
        let console = http
            .get(format!("{base}/"))
            .send()
            .await
            .expect("the console while one tenant's slow bodies are open");
        assert_eq!(console.status(), 200);
        let log = http
            .get(format!(
                "{base}/api/v1/cvms/00000000-0000-0000-0000-000000000000/syslog?token=forged"
            ))
            .send()
            .await
            .expect("a log URL while one tenant's slow bodies are open");
        assert!(log.status().is_client_error(), "{}", log.status());
        slowest = slowest.max(t.elapsed());
    }
    eprintln!(
        "slowest round (auth/me, console, log URL) with {clients} slow bodies open: {slowest:?}"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "the API stalled behind one tenant's slow bodies: {slowest:?}"
    );

    // The tenant had at most their bound of requests in progress; the
    // others were told why, at once, and their connections closed.
    let max = f.state.limits.max_requests_per_user;
    let mut refused = 0;
    for c in slow {
        let seen = tokio::time::timeout(opts.body_timeout + Duration::from_secs(5), c)
            .await
            .expect("a slow body outlived the body timeout")
            .unwrap();
        if seen.answer.starts_with("HTTP/1.1 429") {
            refused += 1;
            assert!(
                seen.answer.contains(&format!(
                    "you have {max} requests in progress, the most one user may have at once (berth up --max-requests-per-user {max})"
                )),
                "{}",
                seen.answer
            );
            assert!(!seen.answer.contains(&mallory), "the answer holds the key");
        } else {
            assert!(seen.answer.starts_with("HTTP/1.1 408"), "{:?}", seen.answer);
            assert!(seen.after < opts.body_timeout + Duration::from_secs(2));
        }
    }
    assert_eq!(refused, clients - max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closes() {
    let f = fixture(cloud::db::Limits::default()).await;
    let opts = ServeOptions {
        body_timeout: Duration::from_secs(2),
        ..ServeOptions::default()
    };
    let (addr, _stop) = serve(&f, opts).await;
    let alice = f.keys[1].clone();
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::channel(1);
    let slow = tokio::spawn(slow_client(
        addr,
        alice.clone(),
        Duration::from_millis(300),
        sent_tx,
    ));
    sent_rx.recv().await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(8), slow)
        .await
        .expect("no answer to a slow body within 8 s")
        .unwrap();
    assert!(seen.answer.starts_with("HTTP/1.1 408"), "{:?}", seen.answer);
    assert!(
        seen.answer
            .contains("the request body did not arrive within 2 s of its headers"),
        "{}",
        seen.answer
    );
    assert!(seen.answer.contains("\"error_code\":\"request_timeout\""));
    assert!(
        seen.after >= Duration::from_secs(2) && seen.after < Duration::from_secs(4),
        "answered after {:?}",
        seen.after
    );
    // A body that arrives in time is served as before.
    let r = http()
        .post(format!("http://{addr}/api/v1/cvms/provision"))
        .header("x-api-key", &alice)
        .json(&serde_json::json!({"name": "in-time", "compose_file": {"docker_compose_file": COMPOSE}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}
