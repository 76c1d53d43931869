//! Request decoding as dstack's prpc does it: JSON bodies (or the query
//! string of a GET, or a form body), lenient about shapes: missing fields
//! default, unknown fields are ignored, bytes are hex with `0x` accepted.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// A request's body could not be read as the route's arguments.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("the request body is not valid JSON ({0})")]
    Json(String),
    #[error(
        "the request body is neither JSON nor a form; send JSON (content type application/json or `?json`)"
    )]
    NotJson,
}

/// How a request carries its arguments.
pub(crate) struct RequestParts<'a> {
    pub is_get: bool,
    pub query: &'a str,
    pub content_type: &'a str,
    pub body: &'a [u8],
}

/// Decodes a route's arguments.
pub(crate) fn decode<T: DeserializeOwned + Default>(
    req: &RequestParts<'_>,
) -> Result<T, DecodeError> {
    let body = trim_ascii(req.body);
    let json_asked = req.content_type.to_ascii_lowercase().contains("json")
        || req
            .query
            .split('&')
            .any(|p| p == "json" || p.starts_with("json="));
    let value = if req.is_get || (body.is_empty() && !req.query.is_empty() && !json_asked) {
        form_to_json(req.query.as_bytes())
    } else if body.is_empty() {
        return Ok(T::default());
    } else if json_asked || body.first() == Some(&b'{') {
        serde_json::from_slice::<Value>(body).map_err(|e| DecodeError::Json(json_reason(&e)))?
    } else if req
        .content_type
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
        && body.contains(&b'=')
    {
        form_to_json(body)
    } else {
        return Err(DecodeError::NotJson);
    };
    if value.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(value).map_err(|e| DecodeError::Json(json_reason(&e)))
}

/// serde_json's reason, without echoing any of the input.
fn json_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    // serde_json quotes offending values ("invalid type: string \"…\"");
    // keep only the part before any quoted input.
    match text.find(['"', '`']) {
        Some(i) => format!("{}…", text[..i].trim_end()),
        None => text,
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &b[start..end]
}

/// A query string or form body as a JSON object of strings (repeated keys
/// become arrays; `json` is dropped).
fn form_to_json(form: &[u8]) -> Value {
    let mut map = Map::new();
    for (k, v) in form_urlencoded::parse(form) {
        if k == "json" {
            continue;
        }
        let v = Value::String(v.into_owned());
        match map.get_mut(k.as_ref()) {
            Some(Value::Array(items)) => items.push(v),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, v]);
            }
            None => {
                map.insert(k.into_owned(), v);
            }
        }
    }
    Value::Object(map)
}

/// Lowercase hex, `0x` accepted; `null` is empty.
pub(crate) fn hex_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = Option::<String>::deserialize(d)?.unwrap_or_default();
    let text = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(&text);
    hex::decode(text).map_err(|_| serde::de::Error::custom("a bytes field is not hex"))
}

/// A string; `null` is empty.
pub(crate) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// `true`/`false`, or their text (`"true"`, `"1"`, …) from a query string.
pub(crate) fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(b),
        Some(Value::String(s)) => match s.as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" | "" => Ok(false),
            _ => Err(serde::de::Error::custom("a flag is not true or false")),
        },
        Some(Value::Number(n)) => Ok(n.as_u64().unwrap_or(0) != 0),
        Some(_) => Err(serde::de::Error::custom("a flag is not true or false")),
    }
}

/// A list of strings, or one string (a query string's single value).
pub(crate) fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::String(s)) => Ok(vec![s]),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(serde::de::Error::custom(
                    "a list holds something other than text",
                )),
            })
            .collect(),
        Some(_) => Err(serde::de::Error::custom(
            "a list field is not a list of text",
        )),
    }
}

/// An optional unsigned number, or its text.
pub(crate) fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("a time is not an unsigned number")),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom("a time is not an unsigned number")),
        Some(_) => Err(serde::de::Error::custom("a time is not an unsigned number")),
    }
}

/// JSON text with every non-ASCII character escaped (`\uXXXX`): the JS
/// SDK counts bytes as characters.
pub(crate) fn ascii_json(value: &Value) -> String {
    let text = value.to_string();
    if text.is_ascii() {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}
