//! Raw HTTP/1.1 responses for tests: [`read_response`] reads one from any reader, framed by
//! its Content-Length, into a [`Resp`].

use std::io::BufRead;

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Resp {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Reads one Content-Length framed response from `reader` (no Content-Length: no body);
/// `head_only` for the answer to a HEAD request, whose Content-Length announces a body that
/// does not follow. A `100 Continue` is returned on its own, without a body. `None` when the
/// connection ends (or a read fails, e.g. times out) before the response is whole, or the
/// status line or a header does not parse; panics on a Content-Length that is not a number.
pub fn read_response(reader: &mut impl BufRead, head_only: bool) -> Option<Resp> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    if status == 100 || head_only {
        return Some(resp);
    }
    let len: usize = resp.header("content-length").map_or(0, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("Content-Length {v:?} is not a length"))
    });
    resp.body = vec![0; len];
    reader.read_exact(&mut resp.body).ok()?;
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_responses_in_turn_by_content_length() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\n\
                    HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhi\
                    HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n\
                    HTTP/1.1 404 Not Found\r\ncontent-length: 7\r\n\r\n{\"a\":1}\
                    HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\ncut";
        let mut r = &raw[..];
        let cont = read_response(&mut r, false).unwrap();
        assert_eq!((cont.status, cont.body.len()), (100, 0));
        let ok = read_response(&mut r, false).unwrap();
        assert_eq!(
            (ok.status, ok.text(), ok.header("x-a")),
            (200, "hi".into(), Some("b"))
        );
        let head = read_response(&mut r, true).unwrap();
        assert_eq!(
            (head.status, head.header("Content-Length")),
            (200, Some("5"))
        );
        assert!(head.body.is_empty());
        assert_eq!(read_response(&mut r, false).unwrap().json()["a"], 1);
        assert!(
            read_response(&mut r, false).is_none(),
            "a cut body is no response"
        );
        assert!(read_response(&mut r, false).is_none(), "end of stream");
    }
}
