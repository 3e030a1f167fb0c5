//! The chat page in a real browser: runs `tests/browser/*.test.mjs` (node's test
//! runner driving Debian's chromium through playwright-core) against this build,
//! with a certificate made here for the HTTPS test.
//! `tests/browser/setup.sh` installs what it needs.

use std::path::Path;
use std::process::Command;

#[test]
fn chat_page_in_a_real_browser() {
    if std::env::var_os("COMETHUB_SKIP_BROWSER").is_some() {
        eprintln!("browser tests skipped: COMETHUB_SKIP_BROWSER is set");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir()
            && Path::new("/usr/bin/chromium").exists(),
        "browser tests need chromium and playwright-core: run tests/browser/setup.sh \
         (or set COMETHUB_SKIP_BROWSER=1)"
    );
    // A certificate for the HTTPS test, made here with rcgen.
    let tls = std::env::temp_dir().join(format!("comethub-browser-{}", std::process::id()));
    std::fs::create_dir_all(&tls).expect("temp dir");
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    std::fs::write(tls.join("cert.pem"), made.cert.pem()).expect("cert");
    std::fs::write(tls.join("key.pem"), made.key_pair.serialize_pem()).expect("key");
    let status = Command::new("node")
        .args(["--test", "--test-concurrency=1", "--test-reporter=spec"])
        .current_dir(&dir)
        .env("COMETHUB_BIN", env!("CARGO_BIN_EXE_comethub"))
        .env("COMETHUB_TLS_CERT", tls.join("cert.pem"))
        .env("COMETHUB_TLS_KEY", tls.join("key.pem"))
        .status()
        .expect("run node");
    let _ = std::fs::remove_dir_all(&tls);
    assert!(status.success(), "browser tests failed (output above)");
}
