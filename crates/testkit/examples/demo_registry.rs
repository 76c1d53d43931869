//! `make demo`'s private registry: Debian's docker-registry with a password,
//! holding a small runnable image (busybox), until standard input closes or
//! the process is stopped.
//!
//! Usage: demo_registry USER PASSWORD_FILE REPO:TAG
//! Prints `registry HOST:PORT` and `image HOST:PORT/REPO:TAG@DIGEST`.

use std::io::Read;
use testkit::Registry;
use testkit::images::{ImageSpec, PushTarget, push_image};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, user, pw_file, repo_tag] = &args[..] else {
        eprintln!("usage: demo_registry USER PASSWORD_FILE REPO:TAG");
        std::process::exit(2);
    };
    // The password comes from a file, never from the command line.
    let password = std::fs::read_to_string(pw_file)
        .expect("password file")
        .trim()
        .to_owned();
    let (repo, tag) = repo_tag.split_once(':').expect("REPO:TAG");
    let reg = Registry::with_htpasswd(&[(user, &password)]);
    let host = reg.host_port();
    let pushed = push_image(
        &PushTarget::new(&host).with_creds(user, &password),
        repo,
        tag,
        &ImageSpec::new().busybox(),
    );
    println!("registry {host}");
    println!("image {host}/{repo}:{tag}@{}", pushed.digest);
    // Serve until stdin closes (the demo script holds it open).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(reg);
}
