//! The parts of a `multipart/form-data` body (RFC 7578), as a browser's form or `curl -F` sends
//! them: each part opens with `--BOUNDARY`, then headers, a blank line and the bytes, and the
//! last boundary is followed by `--`.

/// One part: the form field's name, the file name when it is a file, and its bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Part<'a> {
    pub name: String,
    pub filename: Option<String>,
    pub data: &'a [u8],
}

/// The boundary of a `Content-Type: multipart/form-data; boundary=...` header.
pub fn boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (key, value) = p.split_once('=')?;
        let value = value.trim().trim_matches('"');
        (key.trim().eq_ignore_ascii_case("boundary") && !value.is_empty())
            .then(|| value.to_string())
    })
}

/// Every part of `body`, or what is wrong with it.
pub fn parts<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
    let delimiter = format!("--{boundary}");
    let mut rest = match find(body, delimiter.as_bytes()) {
        Some(i) => &body[i + delimiter.len()..],
        None => return Err("the body has no multipart boundary".into()),
    };
    let next = format!("\r\n--{boundary}");
    let mut parts = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        rest = rest
            .strip_prefix(b"\r\n")
            .ok_or("a multipart boundary is not followed by a line break")?;
        let end =
            find(rest, next.as_bytes()).ok_or("the body ends inside a part (truncated upload?)")?;
        parts.push(part(&rest[..end])?);
        rest = &rest[end + next.len()..];
    }
}

/// One part's headers and bytes.
fn part(raw: &[u8]) -> Result<Part<'_>, String> {
    let split = find(raw, b"\r\n\r\n").ok_or("a part has no blank line after its headers")?;
    let headers = String::from_utf8_lossy(&raw[..split]);
    let disposition = headers
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case("content-disposition")
                .then_some(value)
        })
        .ok_or("a part has no Content-Disposition header")?;
    let param = |name: &str| {
        disposition.split(';').find_map(|p| {
            let (key, value) = p.split_once('=')?;
            (key.trim() == name).then(|| value.trim().trim_matches('"').to_string())
        })
    };
    Ok(Part {
        name: param("name").ok_or("a part has no name")?,
        filename: param("filename"),
        data: &raw[split + 4..],
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] =
        b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\
Content-Type: image/png\r\n\r\n\x89PNG\r\n--not-it\r\n--XyZ\r\nContent-Disposition: form-data; \
name=\"note\"\r\n\r\nhello\r\n--XyZ--\r\n";

    #[test]
    fn parts_of_a_browser_form() {
        assert_eq!(
            boundary("multipart/form-data; boundary=XyZ").as_deref(),
            Some("XyZ")
        );
        assert_eq!(
            boundary("Multipart/Form-Data; charset=utf-8; boundary=\"XyZ\"").as_deref(),
            Some("XyZ")
        );
        assert_eq!(boundary("application/json"), None);
        let p = parts(BODY, "XyZ").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "image");
        assert_eq!(p[0].filename.as_deref(), Some("a.png"));
        assert_eq!(p[0].data, b"\x89PNG\r\n--not-it");
        assert_eq!((p[1].name.as_str(), p[1].data), ("note", &b"hello"[..]));
    }

    #[test]
    fn broken_bodies_are_refused_with_a_reason() {
        let cut = &BODY[..BODY.len() - 40];
        assert!(parts(cut, "XyZ").unwrap_err().contains("truncated"));
        assert!(parts(b"no boundary here", "XyZ")
            .unwrap_err()
            .contains("no multipart boundary"));
        let headless = b"--XyZ\r\nhello\r\n--XyZ--";
        assert!(parts(headless, "XyZ").unwrap_err().contains("blank line"));
    }
}
