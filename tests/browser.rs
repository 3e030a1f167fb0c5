//! The chat page in a real browser: runs `tests/browser/*.test.mjs` (node's test
//! runner driving Debian's chromium through playwright-core) against this build.
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
    let status = Command::new("node")
        .args(["--test", "--test-concurrency=1", "--test-reporter=spec"])
        .current_dir(&dir)
        .env("COMETHUB_BIN", env!("CARGO_BIN_EXE_comethub"))
        .status()
        .expect("run node");
    assert!(status.success(), "browser tests failed (output above)");
}
