//! Where connections come from: a Unix socket beside TCP, stale and live
//! socket files, and listeners passed by systemd (socket activation).
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{STEP, Server, Temp};

/// curl over the Unix socket at `path`: status and body.
async fn curl_unix(path: &Path, target: &str) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "15", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(path)
        .arg(format!("http://localhost{target}"));
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.parse().unwrap_or(0), body.to_owned())
}

#[tokio::test]
async fn a_unix_socket_serves_beside_tcp_and_is_removed_at_the_end() {
    let path = Temp::path("beside", ".sock");
    let listen = format!("unix:{}", path.display());
    let server = Server::start(&["--listen", &listen, "--unix-mode", "600"]);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let waiting = {
        let path = path.to_path_buf();
        tokio::spawn(async move { curl_unix(&path, "/subscribe?channel=u&timeout=10").await })
    };
    server.wait_for_stat("waiting", 1).await;
    server.client().await.publish("u", "from tcp to unix").await;
    assert_eq!(waiting.await.unwrap(), (200, "from tcp to unix".to_owned()));
    let (status, body) = curl_unix(&path, "/channels/u").await;
    assert_eq!(status, 200, "{body}");
    server.terminate();
    let deadline = tokio::time::Instant::now() + STEP;
    while path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "socket file left behind"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced_and_a_live_one_is_left_alone() {
    let path = Temp::path("stale", ".sock");
    // A socket file whose server is gone.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let listen = format!("unix:{}", path.display());
    let server = Server::start(&["--listen", &listen]);
    assert_eq!(
        curl_unix(&path, "/subscribe?channel=s&timeout=0").await.0,
        204
    );
    // A second server on the same path refuses to start, and the first serves on.
    let second = Command::new(env!("CARGO_BIN_EXE_comethub"))
        .args(["--listen", "127.0.0.1:0", "--listen", &listen])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("another server is listening"));
    assert_eq!(
        curl_unix(&path, "/subscribe?channel=s&timeout=0").await.0,
        204
    );
    drop(server);
}

#[tokio::test]
async fn a_listener_passed_by_systemd_is_served_and_listen_is_not_bound() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // As systemd does: the socket as fd 3, LISTEN_FDS=1 and LISTEN_PID this
    // process's own (the shell's, which becomes comethub's on exec).
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"exec 3<&0 0</dev/null; export LISTEN_FDS=1 LISTEN_PID=$$; exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_comethub"))
        // An address this machine does not have: binding it would fail.
        .args(["--listen", "192.0.2.1:80"])
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)));
    let server = Server::spawn(cmd);
    assert_eq!(server.addr.port(), port, "serves the inherited socket");
    let mut c = server.client().await;
    c.publish("activated", "hello").await;
    let resp = c.get("/subscribe?channel=activated&since=oldest").await;
    assert_eq!(resp.text(), "hello");
}

#[tokio::test]
async fn with_publish_on_only_that_listener_takes_publishes() {
    let path = Temp::path("publish", ".sock");
    let listen = format!("unix:{}", path.display());
    let server = Server::start(&["--listen", &listen, "--publish-on", &listen]);
    // The public TCP listener serves subscribers, not publishers.
    let mut c = server.client().await;
    let refused = c.get("/publish?channel=p&message=from-outside").await;
    refused.assert_refused(403);
    let delete = c
        .request(hyper::Method::DELETE, "/publish?channel=p", &[], "")
        .await;
    delete.assert_refused(403);
    let waiting = common::spawn_get(server.addr, "/subscribe?channel=p");
    server.wait_for_stat("waiting", 1).await;
    // The local socket publishes.
    let (status, body) = curl_unix(&path, "/publish?channel=p&message=from-the-app").await;
    assert_eq!(status, 200, "{body}");
    let got = common::join(waiting).await;
    assert_eq!(got.text(), "from-the-app");
    // An address that is not listened on stops the start.
    let out = Command::new(env!("CARGO_BIN_EXE_comethub"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--publish-on",
            "unix:/nowhere.sock",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("names no listener"));
}
