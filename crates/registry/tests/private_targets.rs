//! `PrivateTargets::OnlyMapped` against real servers on loopback (Debian's
//! `docker-registry`, testkit's fault proxy and token issuer): a pull reaches
//! a loopback address only at a `host:port` the operator mapped — the
//! registry endpoint, every redirect hop, the token realm and the ECR API.

use contract::SecretValue;
use registry::credentials::EcrLogin;
use registry::{
    Category, CredentialSet, Endpoints, ImageReference, PrivateTargets, PullError, PullOptions,
    Puller, RetryPolicy, no_events,
};
use std::path::Path;
use std::time::Duration;
use testkit::images::{ImageSpec, PushTarget, push_image};
use testkit::{FaultProxy, Listener, Registry, RequestKind, TokenIssuer};

const MAPPED_ONLY: &str = "only for registries the operator mapped";

fn options(store: &Path, mode: PrivateTargets, endpoints: Endpoints) -> PullOptions {
    let mut opts = PullOptions::new(store);
    opts.private_targets = mode;
    opts.endpoints = endpoints;
    opts.retry = RetryPolicy {
        max_attempts: 2,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        budget: Duration::from_secs(5),
    };
    opts
}

fn pull(opts: PullOptions, reference: &str) -> Result<registry::PulledImage, PullError> {
    let reference: ImageReference = reference.parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let puller = Puller::new(opts, no_events())?;
        puller.pull(&reference).await
    })
}

fn mapping(pairs: &[(&str, &str)]) -> Endpoints {
    let mut e = Endpoints::new();
    for (name, url) in pairs {
        e.insert(name, url).unwrap();
    }
    e
}

fn assert_refused(err: &PullError, target: &str) {
    assert_eq!(err.category, Category::Config, "{err:?}");
    assert!(err.message.contains(target), "{}", err.message);
    assert!(err.message.contains(MAPPED_ONLY), "{}", err.message);
}

#[test]
fn unmapped_loopback_registry_is_refused_and_the_mapped_one_pulls() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg);
    push_image(
        &reg.push_target(),
        "lib/app",
        "1",
        &ImageSpec::with_layers(&[20_000]),
    );
    let host = proxy.host_port();
    let reference = format!("{host}/lib/app:1");
    let dir = tempfile::tempdir().unwrap();

    // An image reference naming an unmapped loopback registry: refused
    // before any request reaches it.
    let err = pull(
        options(
            &dir.path().join("a"),
            PrivateTargets::OnlyMapped,
            Endpoints::new(),
        ),
        &reference,
    )
    .unwrap_err();
    assert_refused(&err, &host);
    assert!(err.message.contains("the endpoint of"), "{}", err.message);
    assert!(proxy.requests().is_empty(), "{:?}", proxy.requests());

    // A host name that resolves to loopback is refused the same way, even
    // with the IP address mapped: the mapping is exact.
    let port = proxy.addr().port();
    let err = pull(
        options(
            &dir.path().join("b"),
            PrivateTargets::OnlyMapped,
            mapping(&[(&host, &proxy.base_url())]),
        ),
        &format!("localhost:{port}/lib/app:1"),
    )
    .unwrap_err();
    assert_refused(&err, &format!("localhost:{port}"));
    // So is the metadata address.
    let err = pull(
        options(
            &dir.path().join("c"),
            PrivateTargets::OnlyMapped,
            Endpoints::new(),
        ),
        "169.254.169.254/lib/app:1",
    )
    .unwrap_err();
    assert_refused(&err, "169.254.169.254:443");
    assert!(proxy.requests().is_empty());

    // Mapped by the operator: pulls.
    let pulled = pull(
        options(
            &dir.path().join("d"),
            PrivateTargets::OnlyMapped,
            mapping(&[(&host, &proxy.base_url())]),
        ),
        &reference,
    )
    .unwrap();
    assert_eq!(pulled.layers, 1);
    assert!(!proxy.requests().is_empty());

    // The developer default still pulls from any loopback registry.
    proxy.clear_requests();
    pull(
        options(
            &dir.path().join("e"),
            PrivateTargets::Allow,
            Endpoints::new(),
        ),
        &reference,
    )
    .unwrap();
    assert!(proxy.blob_gets() >= 2);
}

#[test]
fn redirect_to_an_unmapped_loopback_host_is_refused() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg);
    push_image(
        &reg.push_target(),
        "lib/app",
        "1",
        &ImageSpec::with_layers(&[20_000]),
    );
    proxy.redirect_blobs(usize::MAX, false);
    let host = proxy.host_port();
    let storage = format!("{}:{}", proxy.redirect_host(), proxy.redirect_addr().port());
    let reference = format!("{host}/lib/app:1");
    let dir = tempfile::tempdir().unwrap();

    let err = pull(
        options(
            &dir.path().join("a"),
            PrivateTargets::OnlyMapped,
            mapping(&[(&host, &proxy.base_url())]),
        ),
        &reference,
    )
    .unwrap_err();
    assert_refused(&err, &storage);
    assert!(err.message.contains("a redirect of"), "{}", err.message);
    // The storage host saw nothing, and the refusal was not retried: one
    // blob GET per blob (config and layer) at most.
    assert!(proxy.storage_requests().is_empty());
    let blob_gets = proxy
        .requests()
        .iter()
        .filter(|r| r.listener == Listener::Proxy && r.kind == RequestKind::Blob)
        .count();
    assert!((1..=2).contains(&blob_gets), "{blob_gets} blob GETs");

    // The operator maps the storage host too: the same pull works.
    let pulled = pull(
        options(
            &dir.path().join("b"),
            PrivateTargets::OnlyMapped,
            mapping(&[
                (&host, &proxy.base_url()),
                (&storage, &proxy.redirect_base_url()),
            ]),
        ),
        &reference,
    )
    .unwrap();
    assert_eq!(pulled.layers, 1);
    assert!(!proxy.storage_requests().is_empty());
}

#[test]
fn token_realm_on_an_unmapped_loopback_host_is_refused() {
    let issuer = TokenIssuer::builder()
        .anonymous(&[("lib/*", &["pull"])])
        .user("pusher", "push-pw", &[("*", &["pull", "push"])])
        .start();
    let reg = Registry::with_token_auth(&issuer);
    push_image(
        &PushTarget::new(&reg.host_port()).with_creds("pusher", "push-pw"),
        "lib/app",
        "1",
        &ImageSpec::with_layers(&[20_000]),
    );
    let host = reg.host_port();
    let reference = format!("{host}/lib/app:1");
    let dir = tempfile::tempdir().unwrap();
    issuer.reset_counters();

    let err = pull(
        options(
            &dir.path().join("a"),
            PrivateTargets::OnlyMapped,
            mapping(&[(&host, &reg.base_url())]),
        ),
        &reference,
    )
    .unwrap_err();
    assert_refused(&err, &issuer.host_port());
    assert!(
        err.message.contains("the token service of"),
        "{}",
        err.message
    );
    assert_eq!(issuer.request_count(), 0);

    let pulled = pull(
        options(
            &dir.path().join("b"),
            PrivateTargets::OnlyMapped,
            mapping(&[
                (&host, &reg.base_url()),
                (&issuer.host_port(), &issuer.realm()),
            ]),
        ),
        &reference,
    )
    .unwrap();
    assert_eq!(pulled.layers, 1);
    assert!(issuer.request_count() > 0);
}

#[test]
fn ecr_api_on_a_loopback_host_needs_the_operator() {
    let reg = Registry::with_htpasswd(&[("AWS", "not-used")]);
    let ecr_host = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
    let dead = testkit::free_port();
    let ecr_api = format!("http://127.0.0.1:{dead}/");
    let creds = CredentialSet {
        docker: None,
        ecr: Some(EcrLogin {
            registry: ecr_host.into(),
            account: "123456789012".into(),
            region: "us-east-1".into(),
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SecretValue::from("secret"),
            session_token: None,
        }),
    };
    let dir = tempfile::tempdir().unwrap();
    let run = |store: &str, operator: bool| {
        let mut opts = options(
            &dir.path().join(store),
            PrivateTargets::OnlyMapped,
            mapping(&[(ecr_host, &reg.base_url())]),
        );
        opts.credentials = creds.clone();
        opts.ecr_endpoint = Some(ecr_api.parse().unwrap());
        opts.ecr_endpoint_mapped = operator;
        pull(opts, &format!("{ecr_host}/lib/app:1")).unwrap_err()
    };
    // From the tenant's env: refused.
    let err = run("a", false);
    assert_refused(&err, &format!("127.0.0.1:{dead}"));
    assert!(err.message.contains("the ECR API of"), "{}", err.message);
    // From the operator: let through (nothing listens there, so it is
    // merely unreachable).
    let err = run("b", true);
    assert_eq!(err.category, Category::Unreachable, "{err:?}");
}
