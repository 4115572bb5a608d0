//! docs/asyncapi.yaml against what the relay really publishes: the relay relays and replays
//! records of the simulator, and every message must carry exactly the AMQP properties the
//! document lists (`x-amqp-properties`, with their fixed values) and exactly the headers its
//! schema requires (the optional ones, `traceparent`, only when tracing is on — it is off
//! here), under a routing key that matches the operation's channel address (the parameters'
//! `enum`s, and the headers their `location`s name), with a body that has every field the
//! payload schema requires, of the documented types. When the code and the document drift, one
//! of these fails and says where.

use crate::helpers::*;
use lapin::message::Delivery;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The document, read as JSON (YAML is a superset: serde_yaml gives a `serde_json::Value`).
fn document() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/asyncapi.yaml");
    let text = std::fs::read_to_string(&path).expect("docs/asyncapi.yaml");
    serde_yaml::from_str(&text).expect("docs/asyncapi.yaml is YAML")
}

/// `v` with every `$ref` (a local JSON pointer, `#/…`) followed.
fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("only local references: {r}"));
        v = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{r} resolves"));
    }
    v
}

fn strings(v: Option<&Value>) -> BTreeSet<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// What the document says of the messages of one operation.
struct Documented {
    address: String,
    /// Per parameter: its `enum` (empty = any one word) and the header its `location` names.
    parameters: BTreeMap<String, (BTreeSet<String>, Option<String>)>,
    /// `x-amqp-properties`: name → schema.
    properties: BTreeMap<String, Value>,
    operation_binding: Value,
    exchange_binding: Value,
    /// The headers schema's properties (resolved) and its `required`.
    headers: BTreeMap<String, Value>,
    required_headers: BTreeSet<String>,
    /// The payload schema's properties (resolved) and its `required`.
    fields: BTreeMap<String, Value>,
    required_fields: BTreeSet<String>,
}

impl Documented {
    fn of(doc: &Value, operation: &str) -> Documented {
        let op = resolve(doc, &doc["operations"][operation]);
        assert_eq!(op["action"], "send", "{operation}: the relay sends");
        let channel = resolve(doc, &op["channel"]);
        let messages = op["messages"].as_array().expect("operation messages");
        assert_eq!(messages.len(), 1, "{operation}: one message");
        let message = resolve(doc, &messages[0]);
        let parameters = channel["parameters"]
            .as_object()
            .map(|ps| {
                ps.iter()
                    .map(|(name, p)| {
                        let p = resolve(doc, p);
                        let location = p["location"].as_str().map(|l| {
                            l.strip_prefix("$message.header#/")
                                .unwrap_or_else(|| panic!("{name}: a header location: {l}"))
                                .to_string()
                        });
                        (name.clone(), (strings(p.get("enum")), location))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let object = |schema: &Value| -> (BTreeMap<String, Value>, BTreeSet<String>) {
            let schema = resolve(doc, schema);
            let props = schema["properties"]
                .as_object()
                .map(|ps| {
                    ps.iter()
                        .map(|(k, v)| (k.clone(), resolve(doc, v).clone()))
                        .collect()
                })
                .unwrap_or_default();
            (props, strings(schema.get("required")))
        };
        let (headers, required_headers) = object(&message["headers"]);
        let (fields, required_fields) = object(&message["payload"]);
        Documented {
            address: channel["address"].as_str().expect("address").to_string(),
            parameters,
            properties: message["x-amqp-properties"]
                .as_object()
                .expect("x-amqp-properties")
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            operation_binding: resolve(doc, &op["bindings"])["amqp"].clone(),
            exchange_binding: resolve(doc, &channel["bindings"])["amqp"]["exchange"].clone(),
            headers,
            required_headers,
            fields,
            required_fields,
        }
    }

    /// Every way `d` departs from the document.
    fn problems(&self, d: &Delivery) -> Vec<String> {
        let mut out = Vec::new();
        let rk = d.routing_key.as_str();
        let mut problem = |what: String| out.push(what);

        // AMQP properties: exactly those documented, with their fixed values and types.
        let set = properties_set(&d.properties);
        let names: BTreeSet<&String> = set.keys().collect();
        let documented: BTreeSet<&String> = self.properties.keys().collect();
        if names != documented {
            problem(format!(
                "properties set {names:?}, documented (x-amqp-properties) {documented:?}"
            ));
        }
        for (name, schema) in &self.properties {
            if let Some(value) = set.get(name) {
                for p in check(schema, value) {
                    problem(format!("property {name}: {p}"));
                }
            }
        }
        let binding = &self.operation_binding;
        if binding["deliveryMode"] != json!(d.properties.delivery_mode()) {
            problem(format!(
                "delivery_mode {:?}, the operation binding says {}",
                d.properties.delivery_mode(),
                binding["deliveryMode"]
            ));
        }
        if binding["timestamp"] != json!(d.properties.timestamp().is_some()) {
            problem(format!(
                "timestamp {:?}, the operation binding says {}",
                d.properties.timestamp(),
                binding["timestamp"]
            ));
        }

        // Headers: every one documented, every required one set, each of its schema.
        let headers = headers_of(&d.properties);
        let set: BTreeSet<String> = headers.keys().cloned().collect();
        let undocumented: Vec<_> = set
            .iter()
            .filter(|h| !self.headers.contains_key(*h))
            .collect();
        if !undocumented.is_empty() {
            problem(format!("headers not in the document: {undocumented:?}"));
        }
        let missing: Vec<_> = self.required_headers.difference(&set).collect();
        if !missing.is_empty() {
            problem(format!("required headers missing: {missing:?}"));
        }
        // Tracing is off: the optional headers (traceparent) must be absent, so that a header
        // the relay always sets cannot hide as optional in the document.
        let optional: Vec<_> = set
            .difference(&self.required_headers)
            .filter(|h| self.headers.contains_key(*h))
            .collect();
        if !optional.is_empty() {
            problem(format!(
                "headers documented as optional are set with tracing off: {optional:?}"
            ));
        }
        for (name, value) in &headers {
            match (value, self.headers.get(name)) {
                (Some(text), Some(schema)) => {
                    for p in check(schema, &json!(text)) {
                        problem(format!("header {name}: {p}"));
                    }
                }
                (None, _) => problem(format!("header {name} is not a string")),
                _ => {}
            }
        }

        // Routing key: the channel address, parameters as documented.
        match match_address(&self.address, &self.parameters, rk) {
            None => problem(format!("does not match the address {}", self.address)),
            Some(values) => {
                for (param, value) in values {
                    let header = self.parameters[&param].1.as_ref();
                    if let Some(h) = header {
                        let in_header = headers.get(h).cloned().flatten();
                        if in_header.as_deref() != Some(value.as_str()) {
                            problem(format!(
                                "parameter {param} = {value:?}, its location header {h} = {in_header:?}"
                            ));
                        }
                    }
                }
            }
        }

        // Payload: the required fields, each documented field of its documented type.
        match serde_json::from_slice::<Value>(&d.data) {
            Ok(Value::Object(record)) => {
                for f in &self.required_fields {
                    if !record.contains_key(f) {
                        problem(format!("payload lacks the required {f}"));
                    }
                }
                for (f, schema) in &self.fields {
                    if let Some(value) = record.get(f) {
                        for p in check(schema, value) {
                            problem(format!("payload {f}: {p}"));
                        }
                    }
                }
            }
            other => problem(format!("the body is not a JSON object: {other:?}")),
        }
        out
    }
}

/// The AMQP basic properties set on a message (all but `headers`), by their AMQP names.
fn properties_set(p: &BasicProperties) -> BTreeMap<String, Value> {
    let text = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| json!(s.as_str()));
    [
        ("content_type", text(p.content_type())),
        ("content_encoding", text(p.content_encoding())),
        ("delivery_mode", p.delivery_mode().map(|v| json!(v))),
        ("priority", p.priority().map(|v| json!(v))),
        ("correlation_id", text(p.correlation_id())),
        ("reply_to", text(p.reply_to())),
        ("expiration", text(p.expiration())),
        ("message_id", text(p.message_id())),
        ("timestamp", p.timestamp().map(|v| json!(v))),
        ("type", text(p.kind())),
        ("user_id", text(p.user_id())),
        ("app_id", text(p.app_id())),
        ("cluster_id", text(p.cluster_id())),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_string(), v?)))
    .collect()
}

/// Each header: its text when it is an AMQP long string (what the document's `type: string`
/// means on the wire), else `None`.
fn headers_of(p: &BasicProperties) -> BTreeMap<String, Option<String>> {
    p.headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .map(|(k, v)| {
                    let text = match v {
                        AMQPValue::LongString(s) => {
                            Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                        }
                        _ => None,
                    };
                    (k.as_str().to_string(), text)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The parts of a schema the document uses on these values: `type` (one or a list), `const`,
/// `enum`, `maxLength`.
fn check(schema: &Value, value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let is = |t: &str| match t {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        other => panic!("a type the check does not know: {other}"),
    };
    if !types.is_empty() && !types.iter().any(|t| is(t)) {
        out.push(format!("{value} is not of type {types:?}"));
    }
    if let Some(c) = schema.get("const") {
        if c != value {
            out.push(format!("{value}, documented const {c}"));
        }
    }
    if let Some(Value::Array(e)) = schema.get("enum") {
        if !e.contains(value) {
            out.push(format!("{value} is not one of {e:?}"));
        }
    }
    if let (Some(max), Some(s)) = (schema["maxLength"].as_u64(), value.as_str()) {
        if s.chars().count() as u64 > max {
            out.push(format!("longer than maxLength {max}"));
        }
    }
    out
}

/// Matches a routing key against an address like `{a}.{b}`: a parameter with an `enum` takes
/// one of its values (content types hold dots), one without takes one word (no dot). The
/// parameters' values when it matches.
fn match_address(
    address: &str,
    parameters: &BTreeMap<String, (BTreeSet<String>, Option<String>)>,
    key: &str,
) -> Option<BTreeMap<String, String>> {
    let Some(start) = address.find('{') else {
        return (address == key).then(BTreeMap::new);
    };
    let literal = &address[..start];
    let rest_key = key.strip_prefix(literal)?;
    let end = start + address[start..].find('}')?;
    let name = &address[start + 1..end];
    let rest_address = &address[end + 1..];
    let (values, _) = parameters
        .get(name)
        .unwrap_or_else(|| panic!("parameter {name} of {address} is documented"));
    let candidates: Vec<usize> = if values.is_empty() {
        let word = rest_key.find('.').unwrap_or(rest_key.len());
        (1..=word).collect()
    } else {
        values
            .iter()
            .filter(|v| rest_key.starts_with(v.as_str()))
            .map(|v| v.len())
            .collect()
    };
    candidates.into_iter().rev().find_map(|len| {
        let mut found = match_address(rest_address, parameters, &rest_key[len..])?;
        found.insert(name.to_string(), rest_key[..len].to_string());
        Some(found)
    })
}

/// Asserts that every delivery matches `operation`, listing each distinct problem once with
/// how many messages have it and one of their routing keys.
fn assert_documented(doc: &Value, operation: &str, deliveries: &[Delivery]) {
    assert!(!deliveries.is_empty(), "{operation}: messages to compare");
    let documented = Documented::of(doc, operation);
    let mut problems: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for d in deliveries {
        for p in documented.problems(d) {
            problems
                .entry(p)
                .or_insert((0, d.routing_key.to_string()))
                .0 += 1;
        }
    }
    let report: Vec<String> = problems
        .iter()
        .map(|(p, (n, rk))| format!("- {p} ({n} of {} messages, e.g. {rk})", deliveries.len()))
        .collect();
    assert!(
        report.is_empty(),
        "{operation}: the messages differ from docs/asyncapi.yaml (fix the relay or the \
         document):\n{}",
        report.join("\n")
    );
}

const WAIT: Duration = Duration::from_secs(30);
const LINGER: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_records_are_published_as_docs_asyncapi_describes() {
    let doc = document();
    let relay = Relay::start(&[TENANT_A, TENANT_B]).await;
    let p = &relay.pipeline;
    let mut want = BTreeSet::new();
    for (tenant, content_type) in o365_sim::CONTENT_TYPES
        .iter()
        .map(|ct| (TENANT_A, *ct))
        .chain([(TENANT_B, "Audit.Exchange")])
    {
        for b in p.sim.publish(tenant, content_type, 1, Some(4)).await {
            want.extend(b.record_ids);
        }
    }
    let deliveries = p.sink.drain(want.len(), WAIT, LINGER).await;
    let got: BTreeSet<String> = deliveries.iter().map(sink::message_id).collect();
    assert_eq!(got, want, "every record relayed once");
    assert_documented(&doc, "relayAuditRecord", &deliveries);

    // The exchange as the channel binding documents it: declaring it so again is accepted
    // (RabbitMQ refuses a declaration that differs from the existing exchange's).
    let exchange = &Documented::of(&doc, "relayAuditRecord").exchange_binding;
    assert_eq!(exchange["type"], "topic");
    let ch = p.sink.connection().create_channel().await.unwrap();
    ch.exchange_declare(
        p.names.exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: exchange["durable"] == true,
            auto_delete: exchange["autoDelete"] == true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("the exchange is declared as docs/asyncapi.yaml says");
    assert_eq!(
        exchange["name"], "o365.audit",
        "the documented name is the default of O365_AMQP_EXCHANGE"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_records_are_published_as_docs_asyncapi_describes() {
    let doc = document();
    let relay = Relay::start(&[TENANT_A]).await;
    let p = &relay.pipeline;
    let mut want = BTreeSet::new();
    for content_type in ["Audit.Exchange", "Audit.SharePoint"] {
        for b in p.sim.publish(TENANT_A, content_type, 1, Some(3)).await {
            want.extend(b.record_ids);
        }
    }
    let live = p.sink.drain(want.len(), WAIT, LINGER).await;
    assert_eq!(live.len(), want.len(), "relayed live first");

    let prefix = format!("contract-{}", p.names.id);
    for (args, operation) in [
        (
            vec!["--routing-prefix", prefix.as_str()],
            "replayAuditRecordUnderPrefix",
        ),
        (vec![], "replayAuditRecord"),
    ] {
        let mut command = vec!["replay", "--tenant", TENANT_A, "--since", "1h"];
        command.extend(args);
        let out = relay.command(&command);
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let replayed = p.sink.drain(want.len(), WAIT, LINGER).await;
        let got: BTreeSet<String> = replayed.iter().map(sink::message_id).collect();
        assert_eq!(got, want, "{operation}: every record again");
        assert_eq!(replayed.len(), want.len(), "{operation}: once each");
        assert_documented(&doc, operation, &replayed);
    }
    relay.stop().await;
}

#[test]
fn the_address_matcher_reads_enums_with_dots_and_one_word_parameters() {
    let params: BTreeMap<String, (BTreeSet<String>, Option<String>)> = [
        ("p", (BTreeSet::new(), None)),
        (
            "ct",
            (
                ["Audit.Exchange", "DLP.All"]
                    .map(String::from)
                    .into_iter()
                    .collect(),
                None,
            ),
        ),
        ("t", (BTreeSet::new(), None)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let m = match_address("{p}.{ct}.{t}", &params, "pre.Audit.Exchange.abc").unwrap();
    assert_eq!(
        (m["p"].as_str(), m["ct"].as_str(), m["t"].as_str()),
        ("pre", "Audit.Exchange", "abc")
    );
    assert!(match_address("{ct}.{t}", &params, "Audit.Exchange.abc").is_some());
    assert!(match_address("{ct}.{t}", &params, "Audit.General.abc").is_none());
    assert!(match_address("{ct}.{t}", &params, "Audit.Exchange.a.b").is_none());
    assert!(match_address("{ct}.{t}", &params, "pre.Audit.Exchange.abc").is_none());
    assert!(match_address("{p}.{ct}.{t}", &params, "Audit.Exchange.abc").is_none());
}
