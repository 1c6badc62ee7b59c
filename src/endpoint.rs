//! Endpoint settings validation: URL, method, headers, payload format. Pure Rust.

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
    fn formats() {
        assert_eq!(Format::parse("rownd").unwrap(), Format::Rownd);
        assert!(Format::parse("xml")
            .unwrap_err()
            .to_string()
            .contains("\"xml\""));
    }
}
