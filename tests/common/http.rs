//! A small HTTP/1.1 client over a plain socket, for talking to `serve` (including requests no
//! library would send) and to a WebDriver server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A reply: status code and body.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Sends `method path` with `body` (of `content_type`) to `address` and reads the whole reply.
pub fn request(address: &str, method: &str, path: &str, content_type: &str, body: &[u8]) -> Reply {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !content_type.is_empty() {
        head += &format!("Content-Type: {content_type}\r\n");
    }
    head += "\r\n";
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    parse(&exchange(address, &raw, false))
}

/// Sends raw bytes, closes the sending side (a client that hangs up after them), and returns the
/// raw reply (empty if the server closed without one).
pub fn send_raw(address: &str, raw: &[u8]) -> Vec<u8> {
    exchange(address, raw, true)
}

fn exchange(address: &str, raw: &[u8], hang_up: bool) -> Vec<u8> {
    let mut s = TcpStream::connect(address).expect("the server accepts connections");
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    // the server may answer (an error) before reading all of a large body, and close
    let _ = s.write_all(raw);
    if hang_up {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    // read until the reply is complete: servers may keep the connection open despite
    // `Connection: close`
    let mut reply = Vec::new();
    let mut buf = [0u8; 1 << 16];
    while !complete(&reply) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
    reply
}

/// Whether `raw` holds a whole reply: its headers and the body they announce.
fn complete(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let body = &raw[split + 4..];
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    length.is_some_and(|n| body.len() >= n)
}

pub fn get(address: &str, path: &str) -> Reply {
    request(address, "GET", path, "", b"")
}

pub fn post_json(address: &str, path: &str, body: &serde_json::Value) -> Reply {
    request(
        address,
        "POST",
        path,
        "application/json",
        body.to_string().as_bytes(),
    )
}

/// A multipart/form-data body of `(field, file name, bytes)` parts, and its content type.
pub fn multipart(parts: &[(&str, &str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "----fracture-cnn-test-7d3f";
    let mut body = Vec::new();
    for (name, file, data) in parts {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

pub fn post_files(address: &str, path: &str, parts: &[(&str, &str, &[u8])]) -> Reply {
    let (content_type, body) = multipart(parts);
    request(address, "POST", path, &content_type, &body)
}

/// The status and body of a raw HTTP/1.1 reply (with or without chunked encoding).
fn parse(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP reply: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = unchunk(&body);
    }
    Reply { status, body }
}

fn unchunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&raw[..eol])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .expect("a chunk size");
        if size == 0 {
            break;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
    out
}
