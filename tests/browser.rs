//! The page of `serve` in a real browser: headless Chromium driven through WebDriver
//! (chromedriver). It uploads X-rays in Try and checks the probabilities shown against
//! `predict --json`, opens a layer's feature maps and the dot-product view in Explain, and a
//! training run in Runs, writing a screenshot of each view to
//! `target/tmp/browser-screenshots/`.
//!
//! Without chromedriver the test is skipped with a note, unless `FRACTURE_REQUIRE_BROWSER=1`
//! (set by CI, which installs Debian's chromium and chromium-driver).

mod common;

use base64::Engine;
use common::cli::{run, train_args};
use common::http::{get, post_json, request};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A child process killed when dropped.
struct Process(Child);
impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A WebDriver session in headless Chromium.
struct Browser {
    driver: String,
    session: String,
    _chromedriver: Process,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let chromedriver = Process(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts"),
        );
        let driver = format!("127.0.0.1:{port}");
        wait_for("chromedriver to listen", || {
            std::net::TcpStream::connect(&driver).is_ok()
        });
        let profile = tempfile::tempdir().unwrap();
        // the flags a closed network needs (see the machine notes): no background connections
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1000",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        }}});
        let reply = post_json(&driver, "/session", &caps).json();
        let session = reply["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {reply}"))
            .to_string();
        Browser {
            driver,
            session,
            _chromedriver: chromedriver,
            _profile: profile,
        }
    }
    fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let reply = if method == "GET" {
            get(&self.driver, &path)
        } else {
            let body = body.to_string();
            request(
                &self.driver,
                method,
                &path,
                "application/json",
                body.as_bytes(),
            )
        };
        let v = reply.json();
        assert_eq!(reply.status, 200, "{method} {path}: {v}");
        v["value"].clone()
    }
    fn open(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url }));
    }
    fn find(&self, css: &str) -> String {
        let v = self.command(
            "POST",
            "/element",
            json!({ "using": "css selector", "value": css }),
        );
        v[ELEMENT].as_str().expect("an element").to_string()
    }
    fn click(&self, css: &str) {
        let id = self.find(css);
        self.command("POST", &format!("/element/{id}/click"), json!({}));
    }
    fn script(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
    }
    /// Waits until `script` returns something truthy, and returns it.
    fn until(&self, what: &str, script: &str) -> Value {
        let mut last = Value::Null;
        wait_for(what, || {
            last = self.script(script);
            !(last.is_null() || last == json!(false) || last == json!(0) || last == json!(""))
        });
        last
    }
    fn screenshot(&self, path: &Path) {
        let png = self.command("GET", "/screenshot", Value::Null);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = request(&self.driver, "DELETE", &path, "", b"");
    }
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `serve` on a free port with the shipped model and `runs`, stopped when dropped.
fn serve(runs: &Path) -> (Process, String) {
    let mut child = Command::new(common::cli::BIN)
        .args(["serve", "--port", "0", "--runs", runs.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let address = line
        .split("http://")
        .nth(1)
        .unwrap()
        .trim_end_matches(|c| c != '/');
    (Process(child), format!("http://{address}"))
}

#[test]
fn the_page_tries_explains_and_shows_runs_in_chromium() {
    if !Path::new(CHROMEDRIVER).exists() {
        assert!(
            std::env::var("FRACTURE_REQUIRE_BROWSER").is_err(),
            "FRACTURE_REQUIRE_BROWSER is set but {CHROMEDRIVER} is missing"
        );
        eprintln!("skipped: no {CHROMEDRIVER} (apt-get install chromium chromium-driver)");
        return;
    }
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    // a small run for the Runs view
    let runs = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let o = run(&train_args(&data, runs.path(), &["--epochs", "3"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (_server, url) = serve(runs.path());
    let browser = Browser::start();
    browser.open(&url);
    browser.until(
        "the model line",
        "const line = document.querySelector('#model-line').textContent; \
         return line.includes('resnet') && line.includes('averaged over 4 views')",
    );

    // Try: two X-rays and a DICOM made of a third, their probabilities as predict --json gives
    let mut xrays: Vec<PathBuf> = ["fractured/IMG0000025.jpg", "not_fractured/IMG0000020.jpg"]
        .iter()
        .map(|f| data.join("val").join(f))
        .collect();
    let third = fracture_cnn::data::image::open(&data.join("val/fractured/IMG0000822.jpg"))
        .unwrap()
        .to_luma8();
    let dcm = runs.path().join("IMG0000822.dcm");
    std::fs::write(&dcm, common::dicom::file_of_gray(&third)).unwrap();
    xrays.push(dcm);
    let paths: Vec<&str> = xrays.iter().map(|p| p.to_str().unwrap()).collect();
    let input = browser.find("#files");
    browser.command(
        "POST",
        &format!("/element/{input}/value"),
        json!({ "text": paths.join("\n") }),
    );
    let shown = browser.until(
        "the three probabilities and heatmaps",
        "const p = [...document.querySelectorAll('.prob')].map(e => e.dataset.probability); \
         const maps = document.querySelectorAll('.card img').length; \
         return p.length == 3 && maps == 6 ? p : null",
    );
    let mut args = vec!["predict", "--json", "--backend", "cpu"];
    args.extend(&paths);
    let o = run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(printed.len(), 3, "predict answers all three");
    for (p, shown) in printed.iter().zip(shown.as_array().unwrap()) {
        assert_eq!(
            p["probability"].to_string(),
            shown.as_str().unwrap(),
            "the page shows predict's probability"
        );
    }
    // and where the fracture most likely is, as predict says, under each heatmap
    let wheres = browser.until(
        "where under each heatmap",
        "const w = [...document.querySelectorAll('.card .where')].map(e => e.textContent); \
         return w.length == 3 ? w : null",
    );
    for (p, shown) in printed.iter().zip(wheres.as_array().unwrap()) {
        let (x, y) = (
            p["where"]["x"].as_f64().unwrap(),
            p["where"]["y"].as_f64().unwrap(),
        );
        let said = format!(
            "x {}, y {} ({})",
            x.round(),
            y.round(),
            p["from"].as_str().unwrap()
        );
        assert!(
            shown.as_str().unwrap().contains(&said),
            "{shown} should say {said}"
        );
    }
    // the DICOM's card says what the file is, never who
    let said = browser.until(
        "the DICOM's line",
        "const d = document.querySelector('.card .dicom'); return d && d.textContent",
    );
    assert_eq!(
        said.as_str().unwrap(),
        "DICOM DX HAND, MONOCHROME2 8-bit, stored range 0..255"
    );
    browser.until(
        "the heatmaps to load",
        "return [...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)",
    );
    browser.screenshot(&shots.join("try.png"));

    // Explain: the first ReLU's maps, then one map's dot product through batch norm and ReLU
    browser.click("nav button[data-view=explain]");
    browser.click("#layers tr[data-index='2']");
    browser.until(
        "the feature maps",
        "return document.querySelectorAll('#maps img').length == 16",
    );
    browser.click("#maps img[data-channel='3']");
    let equation = browser.until(
        "the dot product",
        "const e = document.querySelector('#dot-equation'); return e && e.textContent",
    );
    let equation = equation.as_str().unwrap();
    assert!(equation.contains("+ bias"), "{equation}");
    assert!(
        equation.contains("batch norm") && equation.contains("ReLU"),
        "{equation}"
    );
    browser.until(
        "the histograms",
        "return document.querySelectorAll('#hist-gradients canvas').length > 10",
    );
    browser.script("document.querySelector('#focus').scrollIntoView()");
    browser.screenshot(&shots.join("explain.png"));

    // Runs: the run trained above, its curves
    browser.click("nav button[data-view=runs]");
    browser.until(
        "the run and its curves",
        "return document.querySelectorAll('#run-list tbody tr').length == 1 && \
         document.querySelectorAll('#run-charts polyline').length == 3",
    );
    browser.screenshot(&shots.join("runs.png"));
    eprintln!("screenshots in {}", shots.display());
}
