//! `fracture-cnn serve`: a local web page to try a model on X-rays, see what each layer computes,
//! and follow training runs; and the JSON API the page uses (documented in the README).
//!
//! A fixed number of worker threads take requests from the HTTP server (tiny_http) one at a
//! time, so at most `workers` uploads are in memory at once, each at most `max_upload_bytes`
//! and `max_pixels` decoded: memory stays bounded however many clients connect (the others wait
//! in the queue). The model sits behind a mutex and runs one request at a time on the CPU
//! backend, whose threads already use every core. A handler that fails answers a JSON error; one
//! that panics answers 500, and its worker goes on. A connection that stalls is dropped after
//! `timeout`, so stalled clients cannot hold the workers.

mod api;
mod multipart;
mod runs;

use crate::backend::cpu::Cpu;
use crate::checkpoint::{self, CheckpointInfo};
use crate::nn::Model;
use anyhow::{anyhow, Result};
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tiny_http::{Header, Method, Request, Response, Server};

/// How `serve` runs.
pub struct ServeConfig {
    pub model: PathBuf,
    pub runs: PathBuf,
    pub host: String,
    pub port: u16,
    pub workers: usize,
    /// Largest request body, in bytes.
    pub max_upload_bytes: usize,
    /// Largest decoded image, in pixels.
    pub max_pixels: u64,
    /// How long a connection may go without sending (or taking) a byte before it is dropped.
    pub timeout: std::time::Duration,
    /// Average each image's probability over its test-time views, as `predict` does by default.
    pub tta: bool,
}

/// What every request may use: the model, its description, and the limits.
pub struct State {
    /// The model as trained, for explanations: layer by layer as the spec has them.
    model: Mutex<Model<Cpu>>,
    /// The model as `predict` runs it (batch norm folded), for predictions.
    inference: Mutex<Model<Cpu>>,
    info: CheckpointInfo,
    checkpoint: PathBuf,
    runs: PathBuf,
    max_upload_bytes: usize,
    max_pixels: u64,
    tta: bool,
}

impl State {
    pub fn load(cfg: &ServeConfig) -> Result<Self> {
        let (model, info) = checkpoint::load(&Cpu::new(), &cfg.model)?;
        Ok(State {
            inference: Mutex::new(crate::nn::fold::inference_model(&Cpu::new(), &model)?),
            model: Mutex::new(model),
            info,
            checkpoint: cfg.model.clone(),
            runs: cfg.runs.clone(),
            max_upload_bytes: cfg.max_upload_bytes,
            max_pixels: cfg.max_pixels,
            tta: cfg.tta,
        })
    }
    /// The model, even if a request panicked while holding it (a forward pass leaves nothing
    /// half-changed that the next one reads).
    fn model(&self) -> std::sync::MutexGuard<'_, Model<Cpu>> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn inference(&self) -> std::sync::MutexGuard<'_, Model<Cpu>> {
        self.inference.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A request's failure: its HTTP status and what to tell the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

/// A response before it is sent: status, content type, body.
pub struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Reply {
    fn json(value: &serde_json::Value) -> Self {
        Reply {
            status: 200,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
        }
    }
    fn error(e: &ApiError) -> Self {
        Reply {
            status: e.status,
            content_type: "application/json",
            body: serde_json::json!({ "error": e.message })
                .to_string()
                .into_bytes(),
        }
    }
}

/// The page's files, compiled into the binary.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../assets/serve/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/serve/app.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/serve/style.css"),
    ),
];

/// Starts the server and serves until the process ends; `ready` is called with the address it
/// listens on.
pub fn serve(cfg: &ServeConfig, ready: impl FnOnce(&str)) -> Result<()> {
    let state = Arc::new(State::load(cfg)?);
    let listener = std::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
        .map_err(|e| anyhow!("cannot listen on {}:{}: {e}", cfg.host, cfg.port))?;
    set_timeouts(&listener, cfg.timeout)?;
    let server = Server::from_listener(listener, None)
        .map_err(|e| anyhow!("cannot serve on {}:{}: {e}", cfg.host, cfg.port))?;
    let address = match server.server_addr() {
        tiny_http::ListenAddr::IP(a) => a.to_string(),
        other => format!("{other:?}"),
    };
    ready(&address);
    let server = Arc::new(server);
    let workers: Vec<_> = (0..cfg.workers.max(1))
        .map(|_| {
            let (server, state) = (Arc::clone(&server), Arc::clone(&state));
            std::thread::spawn(move || {
                while let Ok(request) = server.recv() {
                    answer(&state, request);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

/// Gives every connection the listener accepts a read and a write timeout, so that a client that
/// announces a body and then stalls frees its worker after `timeout` instead of holding it for
/// ever. tiny_http sets none and hands out no sockets; Linux copies these options from the
/// listening socket to each accepted one.
fn set_timeouts(listener: &std::net::TcpListener, timeout: std::time::Duration) -> Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    for option in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: the descriptor is the listener's own, open for the call; `tv` is a valid
        // timeval and the length passed is its size.
        let rc = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(anyhow!(
                "cannot set the socket timeout: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Handles one request and sends its reply (a panic becomes a 500).
fn answer(state: &State, mut request: Request) {
    let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        route(state, &mut request).unwrap_or_else(|e| Reply::error(&e))
    }))
    .unwrap_or_else(|_| Reply::error(&ApiError::new(500, "internal error")));
    let header = Header::from_bytes("Content-Type", reply.content_type).expect("ASCII header");
    let response = Response::from_data(reply.body)
        .with_status_code(reply.status)
        .with_header(header);
    // a client that went away is no concern of the server's
    let _ = request.respond(response);
}

fn route(state: &State, request: &mut Request) -> Result<Reply, ApiError> {
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let method = request.method().clone();
    match (method, path) {
        (Method::Get, _) if ASSETS.iter().any(|a| a.0 == path) => {
            let (_, content_type, text) = ASSETS.iter().find(|a| a.0 == path).expect("found");
            Ok(Reply {
                status: 200,
                content_type,
                body: text.as_bytes().to_vec(),
            })
        }
        (Method::Get, "/api/model") => Ok(Reply::json(&api::model(state))),
        (Method::Get, "/api/runs") => Ok(Reply::json(&runs::list(&state.runs))),
        (Method::Get, "/api/run") => {
            runs::detail(&state.runs, &param(query, "name")?).map(|v| Reply::json(&v))
        }
        (Method::Post, "/api/predict") => {
            api::predict(state, &body(state, request)?).map(|v| Reply::json(&v))
        }
        (Method::Post, "/api/explain") => {
            api::explain(state, &body(state, request)?).map(|v| Reply::json(&v))
        }
        (Method::Post, "/api/layer") => {
            let layer = number(query, "index")?;
            api::layer(state, &body(state, request)?, layer).map(|v| Reply::json(&v))
        }
        (Method::Post, "/api/dot") => {
            let at = api::DotAt {
                layer: number(query, "layer")?,
                channel: number(query, "channel")?,
                y: number(query, "y")?,
                x: number(query, "x")?,
            };
            api::dot(state, &body(state, request)?, at).map(|v| Reply::json(&v))
        }
        (_, p) if p.starts_with("/api/") => Err(ApiError::new(404, format!("no endpoint {p}"))),
        _ => Err(ApiError::new(404, format!("no page {path}"))),
    }
}

/// The value of `key` in a query string (no decoding beyond `+` and `%XX`).
fn param(query: &str, key: &str) -> Result<String, ApiError> {
    query
        .split('&')
        .find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| percent_decode(v))
        })
        .ok_or_else(|| ApiError::new(400, format!("the query has no {key}")))
}

fn number(query: &str, key: &str) -> Result<usize, ApiError> {
    let v = param(query, key)?;
    v.parse()
        .map_err(|_| ApiError::new(400, format!("{key} must be a whole number, got '{v}'")))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |j: usize| {
            bytes
                .get(j..j + 2)
                .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())
        };
        match (bytes[i], hex(i + 1)) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A multipart request's body with its boundary, read up to the upload limit.
pub struct Body {
    bytes: Vec<u8>,
    boundary: String,
}

fn body(state: &State, request: &mut Request) -> Result<Body, ApiError> {
    let limit = state.max_upload_bytes;
    let too_large = || {
        ApiError::new(
            413,
            format!("the upload is larger than {} MB", limit as f64 / 1e6),
        )
    };
    if request.body_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let content_type = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Content-Type"))
        .map(|h| h.value.as_str().to_string())
        .unwrap_or_default();
    let boundary = multipart::boundary(&content_type).ok_or_else(|| {
        ApiError::new(
            400,
            "send the images as multipart/form-data, each in a part named 'image'",
        )
    })?;
    let mut bytes = Vec::new();
    request
        .as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ApiError::new(400, format!("cannot read the upload: {e}")))?;
    if bytes.len() > limit {
        return Err(too_large());
    }
    Ok(Body { bytes, boundary })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        assert_eq!(param("a=1&name=cv%2Ffold-1", "name").unwrap(), "cv/fold-1");
        assert_eq!(number("index=12", "index").unwrap(), 12);
        assert_eq!(number("index=x", "index").unwrap_err().status, 400);
        assert_eq!(param("", "name").unwrap_err().status, 400);
    }
}
