//! `--config FILE` (TOML, one key per flag) and `--print-config`: the file
//! sets what flags and the environment leave unset, and what is printed reads
//! back the same.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Server, Temp, comethub};
use hyper::Method;

fn file(name: &str, text: &str) -> Temp {
    let path = Temp::path(name, ".toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn a_config_file_sets_what_flags_and_environment_leave_unset() {
    let config = file(
        "serve",
        r#"
listen = ["127.0.0.1:0"]
max-message = 100
history = 3
publish-token = "from-the-file"
"#,
    );
    let mut cmd = comethub();
    cmd.arg("--config").arg(&config).args(["--history", "5"]);
    cmd.env("COMETHUB_PUBLISH_TOKEN", "from-the-environment");
    let server = Server::spawn(cmd);
    let mut c = server.client().await;
    let publish = |token: &str, body: String| {
        let auth = format!("Bearer {token}");
        (auth, body)
    };
    // The environment's token, not the file's.
    let (auth, body) = publish("from-the-file", "x".into());
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "text/plain"),
    ];
    let refused = c
        .request(Method::POST, "/publish?channel=f", &headers, body)
        .await;
    assert_eq!(refused.status, 401);
    let (auth, _) = publish("from-the-environment", String::new());
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "text/plain"),
    ];
    // The file's max-message.
    let big = c
        .request(
            Method::POST,
            "/publish?channel=f",
            &headers,
            "y".repeat(200),
        )
        .await;
    assert_eq!(big.status, 413);
    for i in 0..7 {
        let resp = c
            .request(
                Method::POST,
                "/publish?channel=f",
                &headers,
                format!("m{i}"),
            )
            .await;
        assert_eq!(resp.status, 200);
    }
    // The flag's history (5), not the file's (3).
    let all = c
        .get("/subscribe?channel=f&since=oldest&format=json")
        .await
        .json();
    assert_eq!(all["messages"].as_array().unwrap().len(), 5);
}

#[test]
fn print_config_reads_back_the_same_and_shows_no_secret() {
    let config = file(
        "print",
        r#"
listen = ["127.0.0.1:9100", "unix:/run/comethub.sock"]
max-memory = "512M"
unix-mode = 600
admin-token = "the-admin-secret"
public-channels = "lobby,news.*"
"#,
    );
    let printed = comethub()
        .arg("--config")
        .arg(&config)
        .args(["--timeout", "20", "--print-config"])
        .output()
        .unwrap();
    assert!(printed.status.success());
    let text = String::from_utf8(printed.stdout).unwrap();
    assert!(
        text.contains(r#"listen = ["127.0.0.1:9100", "unix:/run/comethub.sock"]"#),
        "{text}"
    );
    assert!(text.contains("timeout = 20\n"), "{text}");
    assert!(text.contains(r#"max-memory = "512M""#), "{text}");
    assert!(text.contains("# admin-token = (set, not shown)"), "{text}");
    assert!(!text.contains("the-admin-secret"));
    // What is printed, read back, prints the same (the secret, which it
    // does not carry, given apart).
    let again = file("again", &text);
    let reprinted = comethub()
        .arg("--config")
        .arg(&again)
        .arg("--print-config")
        .env("COMETHUB_ADMIN_TOKEN", "given-apart")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(reprinted.stdout).unwrap(), text);
}

#[test]
fn a_bad_config_file_stops_the_start_with_the_reason() {
    for (text, says) in [
        ("no-such-setting = 1", "no setting `no-such-setting`"),
        ("history = [[1]]", "must be a string, a number"),
        ("history = ", "--config"),
    ] {
        let config = file("bad", text);
        let out = comethub().arg("--config").arg(&config).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{text}"
        );
    }
    let config = file("badvalue", "history = \"many\"");
    let out = comethub().arg("--config").arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("many"));
}

#[test]
fn a_jwt_key_naming_a_file_that_cannot_be_read_stops_the_start() {
    for key in [
        "/etc/comethub/keys/jwt-public.key",
        "keys/jwt-public-key-of-a-long-name",
        "file:jwt-public-key-of-a-long-name",
    ] {
        let out = comethub()
            .args(["--listen", "127.0.0.1:0", "--jwt-key", key])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{key}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("cannot read the key file"),
            "{key}: {stderr}"
        );
    }
    // The token command refuses to sign with a path as the secret, too.
    let out = comethub()
        .args(["token", "--key", "/etc/comethub/keys/jwt-public.key"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--private-key"));
}

#[tokio::test]
async fn an_explicit_secret_may_hold_a_slash() {
    let secret = "c2VjcmV0/c2VjcmV0+c2VjcmV0/c2VjcmV0c2Vj";
    let key = format!("secret:{secret}");
    let server = Server::start(&["--jwt-key", &key, "--subscribe-auth", "token"]);
    let token = common::mint_token(&["--key", &key, "--subscribe", "s"]);
    let resp = server
        .get(&format!("/subscribe?channel=s&timeout=0&token={token}"))
        .await;
    assert_eq!(resp.status, 204);
}

#[test]
fn an_auth_url_with_credentials_is_refused_and_never_printed() {
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--subscribe-auth",
        "webhook",
        "--auth-url",
        "http://app:hunter2@127.0.0.1:9/auth",
    ];
    let printed = comethub()
        .args(args)
        .arg("--print-config")
        .output()
        .unwrap();
    let text = String::from_utf8(printed.stdout).unwrap();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.contains("auth-url = \"http://(not shown)@127.0.0.1:9/auth\""),
        "{text}"
    );
    let out = comethub().args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("credentials in the URL"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
