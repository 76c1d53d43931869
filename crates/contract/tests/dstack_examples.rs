//! Compose files shaped like dstack's public examples
//! (`Dstack-TEE/dstack-examples`): each is refused by the shared-engine
//! policy and deploys in the container isolation mode, where the sockets,
//! privileges and host paths are the CVM's own. The shapes are the
//! examples', the images and scripts shortened.

use contract::policy::ServiceLimits;
use contract::{ComposeFile, Isolation};

fn container(yaml: &str) -> ComposeFile {
    match ComposeFile::parse_and_check_for(yaml, Isolation::Container) {
        Ok(f) => f,
        Err(e) => panic!("refused in the container mode: {e}\n{yaml}"),
    }
}

fn shared_refuses(yaml: &str) -> String {
    match ComposeFile::parse_and_check(yaml) {
        Ok(_) => panic!("the shared mode allows:\n{yaml}"),
        Err(e) => e.message,
    }
}

/// `launcher/docker-compose.yml`: a service that controls the engine.
#[test]
fn launcher_controls_the_cvms_engine_through_docker_sock() {
    let yaml = "services:\n  launcher:\n    image: kvin/launcher@sha256:7da8216283685c2ba94d2921bb23776cdca1849b1a87bfbde61b5ca13abed128\n    volumes:\n      - /var/run/docker.sock:/var/run/docker.sock\n    restart: always\n";
    assert!(shared_refuses(yaml).contains("docker.sock"));
    let f = container(yaml);
    assert_eq!(f.images.len(), 1);
    let r = f
        .render_in_container(
            &[("launcher".into(), "sha256:abc".into())],
            &[],
            &ServiceLimits::default(),
            &|_| None,
        )
        .unwrap();
    assert!(
        r.yaml.contains("/var/run/docker.sock:/var/run/docker.sock"),
        "{}",
        r.yaml
    );
    assert!(r.files.is_empty());
}

/// `webshell/docker-compose.yaml`: `/` bound, host networking.
#[test]
fn webshell_binds_the_cvms_root_on_its_network() {
    let yaml = "services:\n  ttypd:\n    image: hackinglab/alpine-ttyd-bash:3.2@sha256:ccf936e52a19948b55737ba812ccee1a2ad3d0e8b8b7268fd09595259131e265\n    environment:\n      - HL_USER_USERNAME=root\n      - HL_USER_PASSWORD=${HL_PASSWORD}\n    ports:\n      - 7681:7681\n    volumes:\n      - /:/host\n    network_mode: host\n";
    shared_refuses(yaml);
    container(yaml);
}

/// `k3s/docker-compose.yaml`: privileged, `pid: host`, `/` bound, the
/// guest agent's sockets, named volumes.
#[test]
fn k3s_is_privileged_in_its_cvm() {
    let yaml = r#"services:
  kmod-installer:
    image: kvin/dstack-extra-kmods:0.5.8
    privileged: true
    pid: host
    volumes:
      - /:/host
    restart: "no"
  k3s:
    image: rancher/k3s:v1.31.6-k3s1
    command:
      - server
      - --node-name=${K3S_NODE_NAME:-k3s-node}
      - --tls-san=${DSTACK_APP_ID}-6443s.${DSTACK_GATEWAY_DOMAIN}
    privileged: true
    ports:
      - "6443:6443"
      - "80:80"
      - "8443:443"
    tmpfs:
      - /run
      - /var/run
    volumes:
      - k3s-data:/var/lib/rancher/k3s
    depends_on:
      kmod-installer:
        condition: service_completed_successfully
    restart: unless-stopped
  dstack-ingress:
    image: dstacktee/dstack-ingress:2.3@sha256:527c53523b9226782a11dbd800a3ff55e8a1f0b88e6224e8f7e4db7419769fbe
    ports:
      - "443:443"
    volumes:
      - /var/run/dstack.sock:/var/run/dstack.sock
      - /var/run/tappd.sock:/var/run/tappd.sock
      - cert-data:/etc/letsencrypt
    depends_on:
      - k3s
volumes:
  k3s-data:
  cert-data:
"#;
    assert!(shared_refuses(yaml).contains("privileged"));
    let f = container(yaml);
    assert_eq!(f.images.len(), 3);
    assert_eq!(f.published_ports().len(), 4);
}

/// `tutorial/02-kms-and-signing`: an inline Dockerfile with a heredoc
/// whose lines are JavaScript, built from `node:22-slim`.
#[test]
fn tutorial_inline_build_with_a_heredoc() {
    let yaml = r#"services:
  app:
    build:
      context: .
      dockerfile_inline: |
        FROM node:22-slim
        WORKDIR /app
        RUN npm init -y && npm install @phala/dstack-sdk viem
        RUN cat > index.mjs <<'SCRIPT'
        import { DstackClient } from "@phala/dstack-sdk"
        from = "not an instruction"
        const key = await client.getKey("/oracle", "ethereum")
        SCRIPT
        CMD ["node", "index.mjs"]
    ports:
      - "8080:8080"
    volumes:
      - /var/run/dstack.sock:/var/run/dstack.sock
"#;
    assert!(shared_refuses(yaml).contains("build"));
    let f = container(yaml);
    assert!(f.images.is_empty());
    let bases: Vec<String> = f
        .base_images()
        .iter()
        .map(|b| b.reference.to_string())
        .collect();
    assert_eq!(bases, ["docker.io/library/node:22-slim"]);
    let r = f
        .render_in_container(&[], &[], &ServiceLimits::default(), &|_| None)
        .unwrap();
    // The heredoc's body is a file of the context (the compose folder),
    // which the engine's classic builder copies in and reads.
    assert_eq!(r.files.len(), 2, "{:?}", r.files);
    assert_eq!(r.files[0].path, "build/app/Dockerfile");
    let dockerfile = &r.files[0].content;
    assert!(
        dockerfile.starts_with("FROM node:22-slim\n"),
        "{dockerfile}"
    );
    assert!(
        dockerfile.contains(
            "COPY .berth-heredoc/app-1 /tmp/.berth-heredoc/app-1\nRUN cat > index.mjs < /tmp/.berth-heredoc/app-1\nCMD"
        ),
        "{dockerfile}"
    );
    assert!(!dockerfile.contains("SCRIPT"), "{dockerfile}");
    assert_eq!(r.files[1].path, ".berth-heredoc/app-1");
    assert!(
        r.files[1]
            .content
            .contains("from = \"not an instruction\"\n")
    );
    assert!(
        r.yaml.contains("dockerfile: build/app/Dockerfile"),
        "{}",
        r.yaml
    );
}

/// `timelock-nts`: a digest-pinned base, `$$` in a config, the older
/// `tappd.sock`.
#[test]
fn timelock_builds_from_a_pinned_base() {
    let yaml = r#"services:
  tapp:
    configs:
      - source: run.sh
        target: run.sh
    volumes:
      - /var/run/tappd.sock:/var/run/tappd.sock
    build:
      context: .
      dockerfile_inline: |
        FROM ubuntu:22.04@sha256:01a3ee0b5e413cefaaffc6abe68c9c37879ae3cced56a8e088b1649e5b269eee
        RUN apt-get update
        RUN apt install -y curl openssl ntpsec-ntpdate
    command: bash run.sh
    platform: linux/amd64
configs:
  run.sh:
    content: |-
      #!/bin/bash
      key=$$(openssl genpkey -algorithm Ed25519)
      echo "$$key" | openssl pkey -pubout
"#;
    shared_refuses(yaml);
    let f = container(yaml);
    let base = f.base_images()[0].clone();
    assert!(base.reference.digest().is_some());
    let r = f
        .render_in_container(
            &[],
            &[(base.written.clone(), "sha256:0123".into())],
            &ServiceLimits::default(),
            &|_| None,
        )
        .unwrap();
    assert!(
        r.files[0].content.starts_with("FROM sha256:0123\n"),
        "{}",
        r.files[0].content
    );
}

/// `prelaunch-script`: a file of the CVM's `/tapp` bound.
#[test]
fn prelaunch_binds_tapp() {
    let yaml = "services:\n  busybox:\n    image: busybox@sha256:f85340bf132ae937d2c2a763b8335c9bab35d6e8293f70f606b9c6178d84f42b\n    command: sh -c \"cat /etc/motd\"\n    volumes:\n      - /tapp/motd:/etc/motd\n    restart: no\n";
    shared_refuses(yaml);
    container(yaml);
}

/// `confidential-ai/inference`: a GPU reservation is refused in every
/// mode, saying there is no GPU.
#[test]
fn inference_asks_for_a_gpu_the_cvm_does_not_have() {
    let yaml = "services:\n  vllm:\n    image: vllm/vllm-openai:latest\n    deploy:\n      resources:\n        reservations:\n          devices:\n            - driver: nvidia\n              count: all\n              capabilities: [gpu]\n  proxy:\n    image: phalanetwork/vllm-proxy:v0.2.18\n    volumes:\n      - /var/run/dstack.sock:/var/run/dstack.sock\n";
    shared_refuses(yaml);
    let e = ComposeFile::parse_and_check_for(yaml, Isolation::Container).unwrap_err();
    assert_eq!(e.service.as_deref(), Some("vllm"));
    assert!(e.message.contains("no GPU"), "{}", e.message);
}

/// `container_name`, which two CVMs may now use at once.
#[test]
fn container_name_is_the_cvms_own() {
    let yaml = "services:\n  web:\n    image: nginx:1.27\n    container_name: web\n";
    assert!(shared_refuses(yaml).contains("container_name"));
    container(yaml);
}

/// `ssh-over-gateway`: an env value interpolated into the inline
/// Dockerfile, privileged, host network, `/` and both sockets bound.
#[test]
fn ssh_server_takes_its_password_from_the_env() {
    let yaml = r#"services:
  ssh-server:
    build:
      context: .
      dockerfile_inline: |
        FROM ubuntu:22.04@sha256:01a3ee0b5e413cefaaffc6abe68c9c37879ae3cced56a8e088b1649e5b269eee
        RUN apt-get update && apt-get install -y openssh-server sudo
        RUN echo 'root:${ROOT_PW:-123456}' | chpasswd
        RUN sed -i 's/#Port 22/Port 1022/' /etc/ssh/sshd_config
        CMD ["/usr/sbin/sshd", "-D"]
    restart: unless-stopped
    privileged: true
    network_mode: host
    volumes:
      - /:/host/
      - /var/run/tappd.sock:/var/run/tappd.sock
      - /var/run/docker.sock:/var/run/docker.sock
  workload:
    image: nginx
"#;
    shared_refuses(yaml);
    let f = container(yaml);
    assert_eq!(f.images.len(), 1);
    assert_eq!(f.base_images().len(), 1);
    let env = |k: &str| (k == "ROOT_PW").then(|| "from-env".to_owned());
    let r = f
        .render_in_container(&[], &[], &ServiceLimits::default(), &env)
        .unwrap();
    assert!(
        r.files[0]
            .content
            .contains("echo 'root:from-env' | chpasswd")
    );
    let r = f
        .render_in_container(&[], &[], &ServiceLimits::default(), &|_| None)
        .unwrap();
    assert!(r.files[0].content.contains("echo 'root:123456' | chpasswd"));
}
