//! Paths as routes see them. A route must not be slipped past by writing the
//! same path another way (`//admin`, `/%61dmin`, `/a/../admin`), so routes
//! match a *normalised* path, and on segment boundaries (`/api` matches
//! `/api` and `/api/x`, not `/apiary`).
//!
//! Normalising (RFC 3986 §6.2.2): percent-encoded unreserved characters
//! (`A-Z a-z 0-9 - . _ ~`) are decoded and the remaining escapes upper-cased,
//! repeated slashes are collapsed, then dot-segments are removed (§5.2.4; a
//! `..` above the root stays at the root). A malformed escape (`%zz`, `%4`)
//! or an encoded NUL is refused. The request is still forwarded with the path
//! the client sent unless `server.forward_path = "normalized"`.

use std::borrow::Cow;

/// Why a path is refused (400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPath(pub &'static str);

/// The normalised form of `path` (an origin-form path, no query). Borrowed
/// when it is already normal, which is the common case.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, BadPath> {
    if path == "*" {
        // OPTIONS * (asterisk-form) routes as the root.
        return Ok(Cow::Borrowed("/"));
    }
    if !path.starts_with('/') {
        return Err(BadPath("the path does not start with '/'"));
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// Whether `path` needs no work: no `%`, no `//`, no `.` segment.
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    !bytes.contains(&b'%')
        && !path.contains("//")
        && !path
            .split('/')
            .any(|segment| segment == "." || segment == "..")
}

fn decode_unreserved(path: &str) -> Result<String, BadPath> {
    let bytes = path.as_bytes();
    // Bytes, not chars: a raw UTF-8 path must come out as it went in.
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let hex = bytes
            .get(i + 1..i + 3)
            .ok_or(BadPath("the path has a truncated percent-escape"))?;
        let value = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or(BadPath("the path has a malformed percent-escape"))?;
        if value == 0 {
            return Err(BadPath("the path has an encoded NUL"));
        }
        if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
            out.push(value);
        } else {
            out.extend_from_slice(format!("%{value:02X}").as_bytes());
        }
        i += 3;
    }
    // Only ASCII was added to what was valid UTF-8 already.
    String::from_utf8(out).map_err(|_| BadPath("the path is not valid UTF-8"))
}

/// Collapses repeated slashes and removes `.` and `..` segments.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = path.split('/').skip(1).peekable();
    let mut trailing_slash = false;
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        match segment {
            "" => trailing_slash = last,
            "." => trailing_slash = last,
            ".." => {
                segments.pop();
                trailing_slash = last;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    out
}

/// Whether the normalised `path` falls under the route prefix `prefix` (also
/// normalised) on a segment boundary.
pub fn under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> String {
        normalize(p).unwrap().into_owned()
    }

    #[test]
    fn a_normal_path_is_borrowed_unchanged() {
        assert!(matches!(
            normalize("/api/v1/x"),
            Ok(Cow::Borrowed("/api/v1/x"))
        ));
        assert!(matches!(normalize("/a.b/c..d/"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn repeated_slashes_dot_segments_and_unreserved_escapes_are_normalised() {
        assert_eq!(norm("//admin"), "/admin");
        assert_eq!(norm("/%61dmin"), "/admin");
        assert_eq!(norm("/a/../admin"), "/admin");
        assert_eq!(norm("/a/./b/"), "/a/b/");
        assert_eq!(norm("/%2e%2e/admin"), "/admin");
        assert_eq!(norm("/../../x"), "/x");
        assert_eq!(norm("/a/b/.."), "/a/");
        assert_eq!(norm("/."), "/");
    }

    #[test]
    fn reserved_escapes_stay_encoded_in_upper_case() {
        assert_eq!(norm("/a%2fb"), "/a%2Fb");
        assert_eq!(norm("/a%20b"), "/a%20B".replace('B', "b"));
    }

    #[test]
    fn raw_utf8_survives_normalisation() {
        assert_eq!(norm("/é%41//x"), "/éA/x");
    }

    #[test]
    fn malformed_escapes_and_encoded_nul_are_refused() {
        assert!(normalize("/a%zz").is_err());
        assert!(normalize("/a%4").is_err());
        assert!(normalize("/a%00b").is_err());
        assert!(normalize("a").is_err());
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(under("/api", "/api"));
        assert!(under("/api/x", "/api"));
        assert!(!under("/apiary", "/api"));
        assert!(under("/api/x", "/api/"));
        assert!(!under("/api", "/api/"));
        assert!(under("/anything", "/"));
    }
}
