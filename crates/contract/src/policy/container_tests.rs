//! The container isolation mode's rules, one behaviour per test.

use super::super::test_support::*;
use crate::isolation::Isolation;
use crate::policy::{
    ComposeFile, FORBIDDEN_SERVICE_KEYS, MAX_CONTAINERS, MAX_EXPANDED_NODES, MAX_NETWORKS,
    MAX_PUBLISHED_PORTS, ServiceLimits,
};

#[test]
fn what_the_shared_engine_refuses_is_the_cvms_own_here() {
    for line in [
        "privileged: true",
        "cap_add: [ALL]",
        "devices: [\"/dev/fuse:/dev/fuse\"]",
        "security_opt: [\"seccomp:unconfined\", \"apparmor:unconfined\"]",
        "sysctls: {net.ipv4.ip_forward: 1}",
        "volumes: [\"/:/host\"]",
        "volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]",
        "volumes: [\"/tapp:/tapp:ro\"]",
        "volumes:\n  - type: bind\n    source: /etc\n    target: /host-etc",
        "container_name: web",
        "network_mode: host",
        "pid: host",
        "ipc: host",
        "uts: host",
        "cgroup: host",
        "cgroup_parent: mine",
        "runtime: runc",
        "userns_mode: host",
        "ports: [\"10.0.0.5:8080:80\", \"[fe80::1]:9090:90\"]",
        "logging: {driver: syslog}",
        "labels: [\"com.docker.compose.project=x\"]",
        "network_mode: ${MODE}",
        "privileged: ${PRIV}",
        "env_file: .env",
        "env_file: [a.env, {path: sub/b.env, required: false}]",
    ] {
        let yaml = web(line);
        assert!(
            ComposeFile::parse_and_check(&yaml).is_err(),
            "the shared mode allows {line}"
        );
        allowed_in_container(&yaml);
    }
    // Allowed in both modes (the shared one maps the agent socket).
    allowed_in_container(&web("cap_drop: [NET_RAW]"));
    allowed_in_container(&web(
        "volumes: [\"/var/run/dstack.sock:/var/run/dstack.sock\", \"/var/run/tappd.sock:/var/run/tappd.sock\"]",
    ));
    let top = "volumes:\n  v:\n    external: true\n    name: other\nnetworks:\n  n:\n    driver: macvlan\n    ipam: {config: [{subnet: 10.9.0.0/24}]}\nsecrets:\n  s:\n    file: ./s.txt\n";
    allowed_in_container(&format!("{}{top}", web("")));
}

#[test]
fn forbidden_shared_keys_are_allowed_except_gpus() {
    for (key, _, _) in FORBIDDEN_SERVICE_KEYS {
        let yaml = web(&format!("{key}: x"));
        match *key {
            "gpus" => {
                let e = refused_in_container_at(&yaml, "gpus");
                assert!(e.message.contains("no GPU"), "{}", e.message);
            }
            // Reads a file: `x` is inside the folder.
            _ => {
                // `build: x` alone builds: `web` also has an image.
                allowed_in_container(&yaml);
            }
        }
    }
}

#[test]
fn a_service_with_only_build_builds() {
    let yaml = "services:\n  app:\n    build:\n      context: .\n      dockerfile_inline: |\n        FROM node:22-slim\n        RUN npm init -y\n";
    let f = allowed_in_container(yaml);
    assert!(f.images.is_empty());
    assert_eq!(f.builds.len(), 1);
    assert_eq!(f.builds[0].service, "app");
    assert_eq!(f.builds[0].image, None);
    let bases: Vec<String> = f.builds[0]
        .bases
        .iter()
        .map(|b| b.reference.to_string())
        .collect();
    assert_eq!(bases, ["docker.io/library/node:22-slim"]);
    // The shared mode still refuses it, at parse.
    let e = ComposeFile::parse_and_check(yaml).unwrap_err();
    assert!(e.message.contains("only `build:`"), "{}", e.message);
    assert_eq!(f.isolation(), Isolation::Container);
}

#[test]
fn build_with_image_tags_the_build_and_is_not_pulled() {
    let f = allowed_in_container(
        "services:\n  app:\n    image: ghcr.io/acme/app:dev\n    build: .\n  db:\n    image: postgres:16\n",
    );
    assert_eq!(f.images.len(), 1);
    assert_eq!(f.images[0].service, "db");
    assert_eq!(
        f.builds[0].image.as_ref().unwrap().to_string(),
        "ghcr.io/acme/app:dev"
    );
    assert!(f.builds[0].bases.is_empty());
    let e = in_container("services:\n  web:\n    image: Bad:Ref:x\n    build: .\n").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("image"));
    let e = in_container("services:\n  web:\n    environment: [A=1]\n").unwrap_err();
    assert!(
        e.message.contains("neither `image:` nor `build:`"),
        "{}",
        e.message
    );
}

#[test]
fn build_keys_and_additional_contexts() {
    let yaml = "services:\n  base:\n    image: local/base:1\n    build:\n      context: base\n      dockerfile: Dockerfile.base\n      args: {V: \"1\"}\n      target: prod\n  web:\n    build:\n      dockerfile_inline: |\n        FROM base\n        COPY --from=assets / /assets\n        COPY --from=tools /bin/x /bin/x\n      additional_contexts:\n        base: service:base\n        assets: ./assets\n        tools: docker-image://ghcr.io/acme/tools:2\n        remote: https://github.com/acme/x.git\n";
    let f = allowed_in_container(yaml);
    let web = f.builds.iter().find(|b| b.service == "web").unwrap();
    let bases: Vec<&str> = web.bases.iter().map(|b| b.written.as_str()).collect();
    assert_eq!(bases, ["ghcr.io/acme/tools:2"]);
    assert_eq!(f.base_images().len(), 1);
    // The list form.
    allowed_in_container(
        "services:\n  web:\n    build:\n      context: .\n      additional_contexts: [\"a=./x\", \"b=docker-image://alpine:3\"]\n",
    );
    for (ctx, part) in [
        ("service:nope", "not a service of this file"),
        ("docker-image://Bad:Ref:x", "not an image reference"),
        ("../outside", "outside the app's folder"),
        ("/etc", "outside the app's folder"),
        ("${CTX}", "`$`"),
    ] {
        let e = refused_in_container_at(
            &format!(
                "services:\n  web:\n    build:\n      context: .\n      additional_contexts:\n        x: \"{ctx}\"\n"
            ),
            "build",
        );
        assert!(e.message.contains(part), "{ctx}: {}", e.message);
    }
}

#[test]
fn build_paths_stay_in_the_apps_folder() {
    for build in [
        "build: .",
        "build: ./sub/dir",
        "build: https://github.com/acme/app.git#main",
        "build: {context: sub, dockerfile: docker/Dockerfile}",
        "build: {context: ., dockerfile_inline: \"FROM alpine:3\\n\"}",
    ] {
        allowed_in_container(&web(build));
    }
    for build in [
        "build: ..",
        "build: ../other-cvm",
        "build: /",
        "build: /var/lib/berth",
        "build: ~/x",
        "build: sub/../../x",
        "build: ${CTX}",
        "build: {context: ., dockerfile: ../Dockerfile}",
        "build: {context: ., dockerfile: /etc/passwd}",
        "build: {context: C:\\\\x}",
    ] {
        let e = refused_in_container_at(&web(build), "build");
        assert!(
            e.message.contains("outside the app's folder") || e.message.contains("`$`"),
            "{build}: {}",
            e.message
        );
    }
    let e = refused_in_container_at(
        &web("build: {dockerfile: D, dockerfile_inline: \"FROM a:1\\n\"}"),
        "build",
    );
    assert!(e.message.contains("both"), "{}", e.message);
    refused_in_container_at(&web("build: [x]"), "build");
}

#[test]
fn files_compose_reads_stay_in_the_apps_folder() {
    allowed_in_container(&web("env_file: [.env, conf/app.env]"));
    allowed_in_container(&web("label_file: labels"));
    for (line, key) in [
        ("env_file: /etc/shadow", "env_file"),
        ("env_file: ../../kms/root.key", "env_file"),
        ("env_file: [ok.env, {path: /root/.env}]", "env_file"),
        ("env_file: ${F}", "env_file"),
        ("label_file: /x", "label_file"),
    ] {
        refused_in_container_at(&web(line), key);
    }
    for top in [
        "secrets:\n  x:\n    file: ../../../../kms/root.key\n",
        "configs:\n  x:\n    file: /etc/hosts\n",
    ] {
        let e = in_container(&format!("{}{top}", web(""))).unwrap_err();
        assert!(e.service.is_none(), "{e:?}");
        assert!(
            e.message.contains("outside the app's folder"),
            "{}",
            e.message
        );
    }
    allowed_in_container(&format!(
        "{}secrets:\n  x:\n    file: ./secret.txt\n",
        web("")
    ));
}

#[test]
fn other_compose_files_are_refused() {
    let e = in_container(&format!("include: [other.yaml]\n{}", web(""))).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("include"));
    assert!(e.message.contains("does not check"), "{}", e.message);
    refused_in_container_at(&web("extends: {service: db, file: other.yaml}"), "extends");
    allowed_in_container(&web("extends: {service: db}"));
}

#[test]
fn gpu_reservations_are_refused_with_the_reason() {
    let e = refused_in_container_at(
        &web(
            "deploy:\n  resources:\n    reservations:\n      devices:\n        - driver: nvidia\n          count: all\n          capabilities: [gpu]",
        ),
        "deploy",
    );
    assert!(e.message.contains("no GPU"), "{}", e.message);
    allowed_in_container(&web(
        "deploy:\n  resources:\n    limits: {cpus: '1', memory: 1G}\n    reservations: {memory: 128M}",
    ));
}

#[test]
fn yaml_tags_size_and_names_are_refused() {
    let e = in_container(&web("command: !reset []")).unwrap_err();
    assert!(e.message.contains("YAML tag"), "{}", e.message);
    let e = in_container("services:\n  \"bad name\":\n    image: a:1\n").unwrap_err();
    assert!(e.message.contains("not valid"), "{}", e.message);
    assert!(in_container("services:\n  web: [a]\n").is_err());
    // An alias bomb is refused before it is built.
    let mut yaml = String::from("x-a: &a [");
    yaml.push_str(&vec!["1"; 1000].join(","));
    yaml.push_str("]\nx-b: &b [");
    yaml.push_str(&vec!["*a"; 200].join(","));
    yaml.push_str("]\n");
    yaml.push_str(&web(""));
    let e = in_container(&yaml).unwrap_err();
    assert!(
        e.message.contains(&MAX_EXPANDED_NODES.to_string()),
        "{}",
        e.message
    );
}

#[test]
fn sizes_hold_in_the_container_mode() {
    let e = refused_in_container_at(&web(&format!("scale: {}", MAX_CONTAINERS + 1)), "scale");
    assert!(e.message.contains("containers"), "{}", e.message);
    refused_in_container_at(&web("deploy: {replicas: 1000}"), "deploy");
    refused_in_container_at(&web("scale: ${N}"), "scale");
    let e = refused_in_container_at(&web("ports: [\"1-30000:1-30000\"]"), "ports");
    assert!(
        e.message.contains(&MAX_PUBLISHED_PORTS.to_string()),
        "{}",
        e.message
    );
    // An env value could make a port a range of thousands.
    let e = refused_in_container_at(&web("ports: [\"${P}:80\"]"), "ports");
    assert!(e.message.contains("`$`"), "{}", e.message);
    refused_in_container_at(&web("ports: [\"not a port\"]"), "ports");
    let nets: String = (0..=MAX_NETWORKS).map(|i| format!("  n{i}:\n")).collect();
    let e = in_container(&format!("{}networks:\n{nets}", web(""))).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("networks"));
}

#[test]
fn dollars_in_inline_dockerfiles() {
    // `$$` and env values (`${NAME}`) as compose interpolates them.
    for inline in [
        "RUN echo $$HOME > /h",
        "RUN echo 'root:${ROOT_PW:-123456}' | chpasswd",
        "RUN echo $SECRET",
    ] {
        allowed_in_container(&web(&format!(
            "build:\n  dockerfile_inline: |\n    FROM alpine:3\n    {inline}\n"
        )));
    }
    // A `$` compose cannot interpolate.
    for inline in ["RUN echo $(date)", "RUN echo ${1}", "RUN echo $ x"] {
        let e = refused_in_container_at(
            &web(&format!(
                "build:\n  dockerfile_inline: |\n    FROM alpine:3\n    {inline}\n"
            )),
            "build",
        );
        assert!(e.message.contains("$$"), "{}", e.message);
    }
    // A base named by an env value is left to the engine.
    let f = allowed_in_container(&web(
        "build:\n  dockerfile_inline: |\n    FROM ${BASE:-alpine:3}\n",
    ));
    assert!(f.base_images().is_empty());
}

#[test]
fn rendering_interpolates_env_values_as_compose_would() {
    let f = allowed_in_container(&web(
        "build:\n  dockerfile_inline: |\n    FROM alpine:3\n    RUN echo 'root:${ROOT_PW:-123456}' $$HOME ${NEEDED:?set NEEDED}\n",
    ));
    let env = |k: &str| match k {
        "ROOT_PW" => Some("s3cret".to_owned()),
        "NEEDED" => Some("yes".to_owned()),
        _ => None,
    };
    let r = f
        .render_in_container(&[], &[], &ServiceLimits::default(), &env)
        .unwrap();
    assert_eq!(
        r.files[0].content,
        "FROM alpine:3\nRUN echo 'root:s3cret' $HOME yes\n"
    );
    // Its text is not printed.
    assert!(!format!("{:?}", r.files).contains("s3cret"));
    let e = f
        .render_in_container(&[], &[], &ServiceLimits::default(), &|_| None)
        .unwrap_err();
    assert!(
        e.message.contains("`NEEDED`") && e.message.contains("set NEEDED"),
        "{}",
        e.message
    );
}

#[test]
fn rendering_writes_inline_dockerfiles_to_files() {
    let yaml = "services:\n  app:\n    build:\n      dockerfile_inline: |\n        FROM ubuntu:22.04@sha256:01a3ee0b5e413cefaaffc6abe68c9c37879ae3cced56a8e088b1649e5b269eee\n        RUN echo $$HOME\n      args: {A: b}\n  sub:\n    image: local/sub:1\n    build:\n      context: ./ctx/deep\n      dockerfile_inline: |\n        FROM app-base\n      additional_contexts:\n        app-base: service:base\n  base:\n    image: local/base:1\n    build: {context: ., dockerfile_inline: \"FROM alpine:3\\n\"}\n  db:\n    image: postgres:16\n    volumes: [\"/var/run/dstack.sock:/var/run/dstack.sock\"]\n    privileged: true\n";
    let f = allowed_in_container(yaml);
    let limits = ServiceLimits {
        cpu_millis: Some(2000),
        memory_bytes: Some(1 << 30),
        pids: Some(100),
        cgroup_parent: Some("berth/cvm".into()),
        log_max_bytes: Some(10 << 20),
        log_max_files: Some(3),
        agent_socket_dir: Some("/host/agent".into()),
    };
    let r = f
        .render_in_container(
            &[("db".into(), "sha256:dbid".into())],
            &[(
                "ubuntu:22.04@sha256:01a3ee0b5e413cefaaffc6abe68c9c37879ae3cced56a8e088b1649e5b269eee"
                    .into(),
                "sha256:ubuntuid".into(),
            )],
            &limits,
            &|_| None,
        )
        .unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&r.yaml).unwrap();
    let svc = |s: &str| doc["services"][s].clone();
    // No per-container limits, no cgroup parent, the agent socket as written.
    for s in ["app", "sub", "base", "db"] {
        for key in ["cpus", "mem_limit", "pids_limit", "cgroup_parent"] {
            assert!(svc(s).get(key).is_none(), "{s}.{key}:\n{}", r.yaml);
        }
        assert_eq!(svc(s)["logging"]["options"]["max-file"], "3", "{}", r.yaml);
    }
    assert_eq!(svc("db")["image"], "sha256:dbid");
    assert_eq!(
        svc("db")["volumes"][0],
        "/var/run/dstack.sock:/var/run/dstack.sock"
    );
    assert!(!r.yaml.contains("dockerfile_inline") && !r.yaml.contains("additional_contexts"));
    // No context: the file's own folder.
    assert_eq!(svc("app")["build"]["context"], "build/app");
    assert_eq!(svc("app")["build"]["dockerfile"], "Dockerfile");
    assert_eq!(svc("app")["build"]["args"]["A"], "b");
    // A context: the file from there.
    assert_eq!(svc("sub")["build"]["context"], "./ctx/deep");
    assert_eq!(
        svc("sub")["build"]["dockerfile"],
        "../../build/sub/Dockerfile"
    );
    assert_eq!(svc("sub")["depends_on"][0], "base");
    assert_eq!(svc("base")["build"]["dockerfile"], "build/base/Dockerfile");
    let file = |p: &str| {
        r.files
            .iter()
            .find(|f| f.path == p)
            .unwrap_or_else(|| panic!("{p}: {:?}", r.files))
            .content
            .clone()
    };
    assert_eq!(
        file("build/app/Dockerfile"),
        "FROM sha256:ubuntuid\nRUN echo $HOME\n"
    );
    assert_eq!(file("build/sub/Dockerfile"), "FROM local/base:1\n");
    assert_eq!(file("build/base/Dockerfile"), "FROM alpine:3\n");
    assert_eq!(r.files.len(), 3);
}

#[test]
fn rendering_refuses_what_compose_1_29_cannot_build() {
    for (build, part) in [
        (
            "build:\n  context: .\n  dockerfile_inline: \"FROM x\\n\"\n  additional_contexts: {x: ./assets}",
            "folder or URL",
        ),
        (
            "build:\n  context: .\n  additional_contexts: {x: \"docker-image://alpine:3\"}",
            "Dockerfile of its context",
        ),
        (
            "build:\n  context: https://github.com/a/b.git\n  dockerfile_inline: \"FROM alpine:3\\n\"",
            "URL",
        ),
        (
            "build:\n  dockerfile_inline: \"FROM b\\n\"\n  additional_contexts: {b: \"service:db\"}",
            "no `image:`",
        ),
    ] {
        let yaml = web(build).replace("    image: postgres:16\n", "    build: .\n");
        let f = allowed_in_container(&yaml);
        let e = f
            .render_in_container(&[], &[], &ServiceLimits::default(), &|_| None)
            .unwrap_err();
        assert!(e.message.contains(part), "{part}: {}", e.message);
        assert_eq!(e.service.as_deref(), Some("web"));
    }
}

/// A short `$X` repeated, each a large env value, would have the boot
/// agent (root of the host) build and write gigabytes: refused, and the
/// value is not in the sentence.
#[test]
fn rendering_bounds_what_env_values_add_to_a_dockerfile() {
    let run = "    RUN echo $X$X$X$X$X$X$X$X$X$X\n".repeat(20);
    let f = allowed_in_container(&web(&format!(
        "build:\n  dockerfile_inline: |\n    FROM alpine:3\n{run}"
    )));
    let value = "secret-".repeat(128 << 10 >> 3);
    let env = |k: &str| (k == "X").then(|| value.clone());
    let e = f
        .render_in_container(&[], &[], &ServiceLimits::default(), &env)
        .unwrap_err();
    assert!(e.message.contains("larger than 1 MiB"), "{}", e.message);
    assert!(!e.message.contains("secret-"), "{}", e.message);
    // A small value builds as before.
    let small = |k: &str| (k == "X").then(|| "v".to_owned());
    let r = f
        .render_in_container(&[], &[], &ServiceLimits::default(), &small)
        .unwrap();
    assert!(r.files[0].content.contains("RUN echo vvvvvvvvvv\n"));
}
