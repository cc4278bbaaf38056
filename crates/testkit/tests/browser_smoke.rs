//! Smoke test of the browser stack: `e2e/smoke.mjs` runs in headless Chromium (playwright-core)
//! and writes a screenshot. Needs Chromium and the npm packages of e2e/ (scripts/install-deps.sh),
//! none of the test servers.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serversync_testkit::browser::run_script;

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

#[test]
fn smoke_script_fills_a_form_and_takes_a_screenshot() -> Result<()> {
    let shots = tempfile::tempdir()?;
    let out = run_script(
        Path::new("smoke.mjs"),
        &[("SCREENSHOTS", shots.path().display().to_string())],
        Duration::from_secs(120),
    )?;
    out.ensure_success()?;
    eprintln!(
        "smoke.mjs took {:.1} s:\n{}",
        out.elapsed.as_secs_f64(),
        out.stdout.trim_end()
    );

    let names: Vec<String> = out.steps().into_iter().map(|s| s.name).collect();
    ensure!(
        names
            == [
                "launch chromium",
                "open form",
                "fill and submit",
                "assert greeting",
                "screenshot"
            ],
        "unexpected steps {names:?}"
    );
    let png = shots.path().join("smoke.png");
    let bytes = std::fs::read(&png).with_context(|| format!("reading {}", png.display()))?;
    ensure!(
        bytes.starts_with(PNG_SIGNATURE) && bytes.len() > 1000,
        "{} is not a PNG ({} bytes)",
        png.display(),
        bytes.len()
    );
    Ok(())
}

/// A failed assertion fails the run: the error names the step and what the page showed, and
/// a screenshot of the page is left.
#[test]
fn failed_step_is_reported_with_a_screenshot() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let lib = serversync_testkit::e2e_dir().join("lib.mjs");
    let script = dir.path().join("fail.mjs");
    std::fs::write(
        &script,
        format!(
            "import {{ assertText, step, withBrowser }} from {lib:?};\n\
             await withBrowser(async ({{ page }}) => {{\n\
               await step('open', () => page.goto('data:text/html,<p id=x>Hello world</p>'));\n\
               await step('check', () => assertText(page, '#x', 'hello World', {{ timeout: 500 }}));\n\
             }});\n",
            lib = lib.display().to_string()
        ),
    )?;
    let shots = dir.path().join("shots");
    let out = run_script(
        &script,
        &[("SCREENSHOTS", shots.display().to_string())],
        Duration::from_secs(120),
    )?;
    ensure!(!out.success(), "the script passed:\n{}", out.stdout);
    let message = format!("{:#}", out.ensure_success().expect_err("must fail"));
    ensure!(
        message.contains(r#"step `check` failed: expected #x to contain "hello World" within 500 ms, found "Hello world""#),
        "{message}"
    );
    let png = std::fs::read(shots.join("FAILED-0.png"))?;
    ensure!(png.starts_with(PNG_SIGNATURE), "FAILED-0.png is not a PNG");
    Ok(())
}

/// A script that hangs, ignores SIGTERM and keeps its browser is killed at the timeout, and
/// so is the browser (Playwright starts it in a session of its own).
#[test]
fn timeout_kills_the_script_and_its_browser() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let lib = serversync_testkit::e2e_dir().join("lib.mjs");
    let script = dir.path().join("hang.mjs");
    std::fs::write(
        &script,
        format!(
            "import {{ writeFileSync }} from 'node:fs';\n\
             import {{ launch }} from {lib:?};\n\
             process.on('SIGTERM', () => console.log('ignoring SIGTERM'));\n\
             await launch({{ handleSIGTERM: false, handleSIGINT: false, handleSIGHUP: false }});\n\
             writeFileSync(process.env.SCREENSHOTS + '/tmpdir', process.env.TMPDIR);\n\
             console.log('browser up');\n\
             setInterval(() => {{}}, 1000);\n",
            lib = lib.display().to_string()
        ),
    )?;
    let shots = dir.path().join("shots");
    let started = std::time::Instant::now();
    let err = run_script(
        &script,
        &[("SCREENSHOTS", shots.display().to_string())],
        Duration::from_secs(20),
    )
    .expect_err("a hanging script must time out");
    let elapsed = started.elapsed();
    let message = format!("{err:#}");
    ensure!(message.contains("did not finish within 20s"), "{message}");
    ensure!(
        message.contains("browser up"),
        "the browser never came up:\n{message}"
    );
    ensure!(elapsed < Duration::from_secs(40), "took {elapsed:?}");

    let tmpdir = std::fs::read_to_string(shots.join("tmpdir"))?;
    let left: Vec<String> = std::fs::read_dir("/proc")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline
                .contains(&tmpdir)
                .then(|| format!("{pid}: {cmdline}"))
        })
        .collect();
    ensure!(left.is_empty(), "processes left behind: {left:#?}");
    ensure!(!Path::new(&tmpdir).exists(), "{tmpdir} was not removed");
    Ok(())
}
