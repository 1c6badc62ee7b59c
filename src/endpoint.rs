//! Endpoint settings validation: URL, method, headers, payload format, batch size, ordering.
//! Pure Rust.

use crate::error::{Result, WebhookError};
use serde_json::Value;

pub const METHODS: [&str; 3] = ["POST", "PUT", "PATCH"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Rownd,
    Census,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format> {
        match s {
            "rownd" => Ok(Format::Rownd),
            "census" => Ok(Format::Census),
            _ => Err(WebhookError::invalid(format!(
                "unknown format \"{s}\": accepted formats are rownd, census"
            ))),
        }
    }

    pub fn as_sql(self) -> &'static str {
        match self {
            Format::Rownd => "rownd",
            Format::Census => "census",
        }
    }

    /// Records per request when the endpoint does not say (SPEC §2).
    pub fn default_batch_size(self) -> i32 {
        match self {
            Format::Rownd => 1,
            Format::Census => CENSUS_DEFAULT_BATCH_SIZE,
        }
    }

    /// The batch sizes this format accepts, as an inclusive range.
    fn batch_sizes(self) -> (i32, i32) {
        match self {
            Format::Rownd => (1, 1),
            Format::Census => (1, MAX_BATCH_SIZE),
        }
    }
}

/// Whether deliveries of one subscription and key go one at a time, in commit order (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    None,
    Key,
}

impl Ordering {
    pub fn parse(s: &str) -> Result<Ordering> {
        match s {
            "none" => Ok(Ordering::None),
            "key" => Ok(Ordering::Key),
            _ => Err(WebhookError::invalid(format!(
                "unknown ordering \"{s}\": accepted orderings are none, key"
            ))),
        }
    }

    pub fn as_sql(self) -> &'static str {
        match self {
            Ordering::None => "none",
            Ordering::Key => "key",
        }
    }
}

pub const CENSUS_DEFAULT_BATCH_SIZE: i32 = 100;
pub const MAX_BATCH_SIZE: i32 = 1000;

/// The batch size an endpoint gets: the one asked for, if its format accepts it; else the one
/// it has (`current`: its format and batch size before the change), unless its format changes,
/// which resets the batch size to the new format's default.
pub fn resolve_batch_size(
    format: Format,
    requested: Option<i32>,
    current: Option<(Format, i32)>,
) -> Result<i32> {
    let Some(n) = requested else {
        return Ok(match current {
            Some((was, n)) if was == format => n,
            _ => format.default_batch_size(),
        });
    };
    let (low, high) = format.batch_sizes();
    if (low..=high).contains(&n) {
        return Ok(n);
    }
    Err(WebhookError::invalid(match format {
        Format::Rownd => format!(
            "batch_size {n} is not accepted by a rownd endpoint: rownd sends one change per request, so batch_size must be 1 (or NULL)"
        ),
        Format::Census => format!(
            "batch_size {n} is out of range: census endpoints accept {low} to {high} records per request (NULL: {CENSUS_DEFAULT_BATCH_SIZE})"
        ),
    }))
}

/// Headers the extension sets itself; an endpoint may not override them.
const RESERVED_HEADERS: [&str; 10] = [
    "content-type",
    "content-length",
    "user-agent",
    "x-signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "host",
    "transfer-encoding",
    "connection",
];

const MAX_URL_LEN: usize = 2048;
const MAX_HEADERS: usize = 32;
const MAX_HEADER_VALUE_LEN: usize = 4096;

pub fn validate_url(raw: &str) -> Result<String> {
    let bad = |why: &str| WebhookError::invalid(format!("invalid URL \"{raw}\": {why}"));
    if raw.len() > MAX_URL_LEN {
        return Err(WebhookError::invalid(format!(
            "invalid URL: {} characters long, at most {MAX_URL_LEN} are accepted",
            raw.len()
        )));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("URLs may not contain spaces or control characters"));
    }
    let url = url::Url::parse(raw).map_err(|e| {
        bad(&format!(
            "{e}; expected http://host/path or https://host/path"
        ))
    })?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(bad("only http:// and https:// URLs are accepted"));
    }
    if url.host_str().is_none_or(|h| h.is_empty()) {
        return Err(bad("the URL has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "credentials in URLs are not accepted; pass them in headers instead",
        ));
    }
    if url.fragment().is_some() {
        return Err(bad("URL fragments (#...) are not accepted"));
    }
    Ok(raw.to_string())
}

pub fn validate_method(raw: &str) -> Result<String> {
    let upper = raw.to_ascii_uppercase();
    if METHODS.contains(&upper.as_str()) {
        Ok(upper)
    } else {
        Err(WebhookError::invalid(format!(
            "unknown HTTP method \"{raw}\": accepted methods are {}",
            METHODS.join(", ")
        )))
    }
}

/// Headers must be a JSON object of string values with valid HTTP names and values.
pub fn validate_headers(headers: &Value) -> Result<Vec<(String, String)>> {
    let Value::Object(map) = headers else {
        return Err(WebhookError::invalid(format!(
            "headers must be a JSON object of strings, like {{\"Authorization\": \"Bearer x\"}}; got {headers}"
        )));
    };
    if map.len() > MAX_HEADERS {
        return Err(WebhookError::invalid(format!(
            "{} headers given; at most {MAX_HEADERS} are accepted",
            map.len()
        )));
    }
    let mut out = Vec::with_capacity(map.len());
    for (name, value) in map {
        let Value::String(value) = value else {
            return Err(WebhookError::invalid(format!(
                "header \"{name}\" must have a string value; got {value}"
            )));
        };
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(WebhookError::invalid(format!(
                "invalid header name \"{name}\": names are HTTP tokens (letters, digits and !#$%&'*+-.^_`|~)"
            )));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(WebhookError::invalid(format!(
                "header \"{name}\" is set by webhook itself and cannot be overridden"
            )));
        }
        if value.len() > MAX_HEADER_VALUE_LEN {
            return Err(WebhookError::invalid(format!(
                "header \"{name}\" has a value of {} bytes; at most {MAX_HEADER_VALUE_LEN} are accepted",
                value.len()
            )));
        }
        if value.chars().any(|c| c.is_control() && c != '\t')
            || http::HeaderValue::from_str(value).is_err()
        {
            return Err(WebhookError::invalid(format!(
                "invalid value for header \"{name}\": {value:?} contains control characters (CR, LF, NUL, ...)"
            )));
        }
        out.push((name.clone(), value.clone()));
    }
    Ok(out)
}

pub fn validate_name(raw: &str) -> Result<String> {
    if raw.trim().is_empty() {
        return Err(WebhookError::invalid("endpoint name must not be empty"));
    }
    if raw.len() > 63 {
        return Err(WebhookError::invalid(format!(
            "endpoint name \"{raw}\" is {} bytes long; at most 63 are accepted",
            raw.len()
        )));
    }
    if raw.chars().any(|c| c.is_control()) {
        return Err(WebhookError::invalid(format!(
            "endpoint name {raw:?} contains control characters"
        )));
    }
    Ok(raw.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls() {
        assert!(validate_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(validate_url("https://example.com/a?b=c").is_ok());
        for bad in [
            "ftp://example.com/",
            "http://",
            "example.com",
            "http://user:pw@example.com/",
            "http://exa mple.com/",
            "http://example.com/\r\nX: y",
            "",
        ] {
            let err = validate_url(bad).unwrap_err().to_string();
            assert!(err.contains("invalid URL"), "{bad}: {err}");
        }
    }

    #[test]
    fn methods() {
        assert_eq!(validate_method("post").unwrap(), "POST");
        let err = validate_method("FETCH").unwrap_err().to_string();
        assert!(err.contains("\"FETCH\"") && err.contains("POST, PUT, PATCH"));
    }

    #[test]
    fn headers() {
        assert_eq!(
            validate_headers(&json!({"Authorization": "Bearer x"})).unwrap(),
            vec![("Authorization".to_string(), "Bearer x".to_string())]
        );
        assert!(validate_headers(&json!([1])).is_err());
        assert!(validate_headers(&json!({"A": 1})).is_err());
        assert!(validate_headers(&json!({"Bad Name": "x"})).is_err());
        assert!(validate_headers(&json!({"X-A": "x\r\nInjected: 1"})).is_err());
        assert!(validate_headers(&json!({"X-Signature": "forged"})).is_err());
        assert!(validate_headers(&json!({"webhook-id": "forged"})).is_err());
    }

    #[test]
    fn batch_sizes() {
        use Format::*;
        assert_eq!(resolve_batch_size(Census, None, None).unwrap(), 100);
        assert_eq!(resolve_batch_size(Rownd, None, None).unwrap(), 1);
        assert_eq!(resolve_batch_size(Census, Some(1000), None).unwrap(), 1000);
        assert_eq!(resolve_batch_size(Census, Some(1), None).unwrap(), 1);
        assert_eq!(resolve_batch_size(Rownd, Some(1), None).unwrap(), 1);
        // Unchanged format keeps its size; a switch resets it; an explicit size wins.
        assert_eq!(
            resolve_batch_size(Census, None, Some((Census, 7))).unwrap(),
            7
        );
        assert_eq!(
            resolve_batch_size(Rownd, None, Some((Census, 7))).unwrap(),
            1
        );
        assert_eq!(
            resolve_batch_size(Census, None, Some((Rownd, 1))).unwrap(),
            100
        );
        assert_eq!(
            resolve_batch_size(Census, Some(5), Some((Rownd, 1))).unwrap(),
            5
        );
        for (format, bad, accepted) in [
            (Census, 0, "1 to 1000"),
            (Census, 1001, "1 to 1000"),
            (Census, -3, "1 to 1000"),
            (Rownd, 2, "must be 1"),
            (Rownd, 0, "must be 1"),
        ] {
            let err = resolve_batch_size(format, Some(bad), None).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(&format!("batch_size {bad} ")) && text.contains(accepted),
                "{text}"
            );
            assert!(matches!(err, WebhookError::InvalidValue(_)));
        }
    }

    #[test]
    fn formats() {
        assert_eq!(Format::parse("rownd").unwrap(), Format::Rownd);
        for o in [Ordering::None, Ordering::Key] {
            assert_eq!(Ordering::parse(o.as_sql()).unwrap(), o);
        }
        assert!(Ordering::parse("fifo")
            .unwrap_err()
            .to_string()
            .contains("\"fifo\": accepted orderings are none, key"));
        assert!(Format::parse("xml")
            .unwrap_err()
            .to_string()
            .contains("\"xml\""));
    }
}
