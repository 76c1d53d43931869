mod common;

use base64::Engine as _;
use common::curl;
use testkit::images::{self, ImageSpec, PushTarget};
use testkit::{Moto, Registry};

fn get_authorization_token(moto: &Moto, region: &str) -> serde_json::Value {
    let r = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/x-amz-json-1.1",
        "-H",
        "X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken",
        "-H",
        &format!(
            "Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240101/{region}/ecr/aws4_request, SignedHeaders=host;x-amz-date, Signature=00"
        ),
        "-H",
        "X-Amz-Date: 20240101T000000Z",
        "--data",
        "{}",
        &format!("{}/", moto.endpoint()),
    ]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn moto_ecr_token_matches_helper_and_unlocks_registry() {
    let moto = Moto::start();
    let body = get_authorization_token(&moto, "eu-west-1");
    let data = &body["authorizationData"][0];
    let token = data["authorizationToken"].as_str().unwrap();
    let decoded = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(token)
            .unwrap(),
    )
    .unwrap();
    let (user, password) = Moto::ecr_credentials(Moto::DEFAULT_ACCOUNT_ID, "eu-west-1");
    assert_eq!(decoded, format!("{user}:{password}"));
    assert_eq!(password, "123456789012-auth-token");
    assert_eq!(
        data["proxyEndpoint"].as_str().unwrap(),
        format!(
            "https://{}",
            Moto::ecr_registry_host("123456789012", "eu-west-1")
        )
    );
    eprintln!("moto GetAuthorizationToken: {body}");

    // A registry standing in for ECR accepts exactly that login.
    let reg = Registry::with_htpasswd(&[(&user, &password)]);
    let target = PushTarget::new(&reg.host_port()).with_creds(&user, &password);
    images::push_image(&target, "ecr/app", "1", &ImageSpec::with_layers(&[10]));
    assert_eq!(
        curl(&["-u", &decoded, &format!("{}/v2/", reg.base_url())]).status,
        200
    );
}

#[test]
fn moto_with_custom_account() {
    let moto = Moto::start_with_account("111122223333");
    assert_eq!(moto.account_id(), "111122223333");
    let body = get_authorization_token(&moto, "us-east-1");
    let token = body["authorizationData"][0]["authorizationToken"]
        .as_str()
        .unwrap();
    let decoded = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(token)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(decoded, "AWS:111122223333-auth-token");
}
