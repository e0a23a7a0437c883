//! `serve` over a real socket: the API gives `predict`'s numbers, refuses every bad upload with
//! a JSON error and its status, never reads outside the runs folder, survives garbage, and
//! answers 24 uploads at once in bounded memory.

mod common;

use common::cli::run;
use common::http::{get, post_files, request, send_raw};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A `serve` process on a free port, stopped when dropped.
struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(more: &[&str]) -> Server {
        let mut child = Command::new(common::cli::BIN)
            .args(["serve", "--port", "0"])
            .args(more)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary runs");
        let stdout = child.stdout.take().unwrap();
        let line = BufReader::new(stdout)
            .lines()
            .next()
            .expect("serve prints where it listens")
            .unwrap();
        let address = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        Server { child, address }
    }
    /// The server's peak resident memory so far, in MiB.
    fn peak_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kib / 1024.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn xrays() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/val");
    let mut files: Vec<PathBuf> = ["fractured", "not_fractured"]
        .iter()
        .flat_map(|c| {
            std::fs::read_dir(root.join(c))
                .unwrap()
                .map(|e| e.unwrap().path())
        })
        .collect();
    files.sort();
    files
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// A PNG of `w × h` noise (it does not compress: about w·h bytes).
fn noise_png(w: u32, h: u32) -> Vec<u8> {
    let img = image::GrayImage::from_fn(w, h, |x, y| {
        image::Luma([((x * 7919 + y * 104_729) ^ (x * y)) as u8])
    });
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png
}

#[test]
fn the_api_answers_as_predict_does_and_refuses_bad_uploads() {
    let runs = tempfile::tempdir().unwrap();
    let s = Server::start(&["--runs", runs.path().to_str().unwrap()]);
    let a = s.address.as_str();

    let page = get(a, "/");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<script src=\"/app.js\">"));
    assert_eq!(get(a, "/app.js").status, 200);
    let model = get(a, "/api/model").json();
    assert_eq!(model["input"], serde_json::json!([1, 192, 192]));
    assert_eq!(model["tta"], true, "test-time views by default, as predict");
    assert!(model["layers"].as_array().unwrap().len() > 10);

    // the same numbers as `predict --json`, file by file
    let files: Vec<PathBuf> = xrays().into_iter().step_by(10).collect();
    let bytes: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let names: Vec<String> = files.iter().map(|f| name(f)).collect();
    let parts: Vec<(&str, &str, &[u8])> = names
        .iter()
        .zip(&bytes)
        .map(|(n, b)| ("image", n.as_str(), b.as_slice()))
        .collect();
    let reply = post_files(a, "/api/predict", &parts);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let served = reply.json()["predictions"].as_array().unwrap().clone();
    let mut args = vec!["predict", "--json", "--backend", "cpu"];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    let o = run(&args);
    assert!(o.status.success());
    let printed: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(served.len(), files.len());
    for (s, p) in served.iter().zip(&printed) {
        assert_eq!(s["probability"], p["probability"], "{s} vs {p}");
        assert_eq!(s["label"], p["label"]);
        // where the fracture most likely is, and its boxes, as predict says
        for key in ["where", "boxes", "from"] {
            assert_eq!(s[key], p[key], "{key}: {s} vs {p}");
        }
        assert!(s["where"]["x"].as_f64().is_some(), "{s}");
        assert!(p["file"]
            .as_str()
            .unwrap()
            .ends_with(s["file"].as_str().unwrap()));
    }

    // with --tta false, each image alone, as `predict --tta false` judges it
    let alone = Server::start(&["--runs", runs.path().to_str().unwrap(), "--tta", "false"]);
    assert_eq!(get(&alone.address, "/api/model").json()["tta"], false);
    let reply = post_files(&alone.address, "/api/predict", &parts[..1]);
    let served_alone = reply.json()["predictions"][0]["probability"].clone();
    let o = run(&[
        "predict",
        "--json",
        "--backend",
        "cpu",
        "--tta",
        "false",
        files[0].to_str().unwrap(),
    ]);
    let printed_alone: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    assert_eq!(served_alone, printed_alone["probability"]);
    assert_ne!(served_alone, served[0]["probability"]);
    drop(alone);

    // every refusal: status and a JSON error that says what is wrong
    let xray = &bytes[0];
    let refused = |reply: common::http::Reply, status: u16, says: &str| {
        assert_eq!(reply.status, status, "{}", reply.text());
        let e = reply.json()["error"].as_str().unwrap().to_string();
        assert!(e.contains(says), "{e:?} should say {says:?}");
    };
    refused(
        post_files(
            a,
            "/api/predict",
            &[("image", "notes.txt", b"hello, not an image")],
        ),
        415,
        "notes.txt is not an image",
    );
    refused(
        post_files(
            a,
            "/api/predict",
            &[("image", "cut.jpg", &xray[..xray.len() / 2])],
        ),
        422,
        "cut.jpg is truncated",
    );
    let png = noise_png(64, 64);
    refused(
        post_files(
            a,
            "/api/predict",
            &[("image", "cut.png", &png[..png.len() / 2])],
        ),
        422,
        "cut.png is truncated or damaged",
    );
    refused(
        post_files(a, "/api/predict", &[("photo", "a.jpg", xray)]),
        400,
        "no part named 'image'",
    );
    refused(
        request(a, "POST", "/api/predict", "application/json", b"{}"),
        400,
        "multipart/form-data",
    );
    let (ct, body) = common::http::multipart(&[("image", "a.jpg", xray)]);
    refused(
        request(a, "POST", "/api/predict", &ct, &body[..body.len() - 30]),
        400,
        "truncated upload",
    );
    refused(get(a, "/api/nothing"), 404, "no endpoint /api/nothing");
    refused(
        post_files(a, "/api/layer?index=999", &[("image", "a.jpg", xray)]),
        400,
        "not 999",
    );
    refused(
        post_files(a, "/api/layer?index=x", &[("image", "a.jpg", xray)]),
        400,
        "whole number",
    );
    refused(
        post_files(
            a,
            "/api/dot?layer=2&channel=0&y=0&x=0",
            &[("image", "a.jpg", xray)],
        ),
        400,
        "not a convolution",
    );
    for bad in ["../../etc", "%2Fetc%2Fpasswd", "..%2F..%2Fsrc"] {
        refused(get(a, &format!("/api/run?name={bad}")), 404, "no run named");
    }
    // garbage on the socket, and a client that hangs up mid-body
    send_raw(a, b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n");
    send_raw(
        a,
        b"POST /api/predict HTTP/1.1\r\nContent-Length: 100000\r\n\r\nshort",
    );
    assert_eq!(get(a, "/api/model").status, 200, "the server is still up");

    // a layer's maps and one value taken apart: the dot product adds up to what the layer gave
    let layer = post_files(a, "/api/layer?index=0", &[("image", "a.jpg", xray)]).json();
    assert_eq!(layer["shape"], serde_json::json!([16, 96, 96]));
    assert_eq!(layer["maps"].as_array().unwrap().len(), 16);
    let d = post_files(
        a,
        "/api/dot?layer=0&channel=3&y=40&x=50",
        &[("image", "a.jpg", xray)],
    )
    .json();
    let (sum, value) = (d["sum"].as_f64().unwrap(), d["value"].as_f64().unwrap());
    assert!(
        (sum - value).abs() < 1e-4 * (1.0 + value.abs()),
        "{sum} vs {value}"
    );
    assert_eq!(
        d["channels"][0]["inputs"].as_array().unwrap().len(),
        49,
        "7x7"
    );
    let kinds: Vec<&str> = d["then"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["batchnorm", "relu"]);
}

#[test]
fn the_limits_refuse_large_uploads_in_bytes_and_in_pixels() {
    // 20 kB and 10,000 pixels: the repo's X-rays (2 kB, 160 x 128 = 20,480 px) are over the
    // second, a noise image of 90 x 90 (8,100 px) under it
    let s = Server::start(&["--max-upload-mb", "0.02", "--max-megapixels", "0.01"]);
    let a = s.address.as_str();
    let small = noise_png(90, 90);
    assert_eq!(
        post_files(a, "/api/predict", &[("image", "n.png", &small)]).status,
        200
    );
    let xray = std::fs::read(&xrays()[0]).unwrap();
    let r = post_files(a, "/api/predict", &[("image", "x.jpg", &xray)]);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("x.jpg is 160x128 pixels, more than the limit of 10000"));
    let big = noise_png(200, 200);
    let r = post_files(a, "/api/predict", &[("image", "big.png", &big)]);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("larger than 0.02 MB"));
}

#[test]
fn twenty_four_uploads_at_once_all_get_an_answer_in_bounded_memory() {
    let s = Server::start(&["--workers", "4"]);
    let xray = std::fs::read(&xrays()[0]).unwrap();
    // one warm-up request, then the baseline
    assert_eq!(
        post_files(&s.address, "/api/predict", &[("image", "a.jpg", &xray)]).status,
        200
    );
    let before = s.peak_mib();
    let answers: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..24)
            .map(|i| {
                let (a, x) = (&s.address, &xray);
                scope.spawn(move || {
                    let name = format!("upload-{i}.jpg");
                    let r = post_files(a, "/api/explain", &[("image", &name, x)]);
                    assert_eq!(r.json()["file"], name.as_str());
                    r.status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(answers, vec![200; 24]);
    let after = s.peak_mib();
    assert!(
        after < before + 200.0,
        "peak memory grew from {before:.0} to {after:.0} MiB"
    );
    eprintln!("24 concurrent explanations: peak resident memory {before:.0} -> {after:.0} MiB");
}

#[test]
fn a_stalled_upload_frees_its_worker_after_the_timeout() {
    let s = Server::start(&["--workers", "1", "--timeout", "1"]);
    // announces 100 kB, sends 10 bytes, and then nothing, holding the connection open
    let mut stalled = std::net::TcpStream::connect(&s.address).unwrap();
    let head = "POST /api/predict HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=b\r\n\
                Content-Length: 100000\r\n\r\n--b\r\nxxxx";
    std::io::Write::write_all(&mut stalled, head.as_bytes()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    // the one worker is reading the stalled body; this waits for it to give up
    let (tx, rx) = std::sync::mpsc::channel();
    let address = s.address.clone();
    std::thread::spawn(move || tx.send(get(&address, "/api/model").status));
    let status = rx.recv_timeout(std::time::Duration::from_secs(15));
    assert_eq!(
        status,
        Ok(200),
        "the stalled upload still holds the only worker"
    );
    drop(stalled);
}

#[test]
fn a_dicom_upload_answers_as_predict_does_and_a_damaged_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gray = fracture_cnn::data::image::open(&xrays()[0])
        .unwrap()
        .to_luma8();
    let dcm = dir.path().join("IM0001");
    std::fs::write(&dcm, common::dicom::file_of_gray(&gray)).unwrap();
    let bytes = std::fs::read(&dcm).unwrap();
    let s = Server::start(&["--max-megapixels", "0.03"]);
    let a = s.address.as_str();
    let reply = post_files(a, "/api/predict", &[("image", "IM0001", &bytes)]);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let served = reply.json()["predictions"][0].clone();
    let o = run(&[
        "predict",
        "--json",
        "--backend",
        "cpu",
        dcm.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let printed: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    for key in ["probability", "label", "where", "boxes", "from", "dicom"] {
        assert_eq!(served[key], printed[key], "{key}: {served} vs {printed}");
    }
    assert_eq!(served["dicom"]["modality"], "DX");
    assert!(!reply.text().contains(common::dicom::PATIENT_NAME));
    let explained = post_files(a, "/api/explain", &[("image", "IM0001", &bytes)]);
    assert_eq!(explained.status, 200, "{}", explained.text());
    // cut short: refused with the reason, and the server answers the next request
    let cut = &bytes[..bytes.len() - 100];
    let r = post_files(a, "/api/predict", &[("image", "cut.dcm", cut)]);
    assert_eq!(r.status, 422, "{}", r.text());
    let error = r.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("cut.dcm is a damaged DICOM file"), "{error}");
    // 160 x 128 = 20,480 pixels: over a limit of 10,000, refused before its pixels are decoded
    let small = Server::start(&["--max-megapixels", "0.01"]);
    let r = post_files(
        &small.address,
        "/api/predict",
        &[("image", "IM0001", &bytes)],
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(
        r.text().contains("IM0001 is 160x128 pixels"),
        "{}",
        r.text()
    );
    assert_eq!(
        post_files(a, "/api/predict", &[("image", "IM0001", &bytes)]).status,
        200
    );
}
