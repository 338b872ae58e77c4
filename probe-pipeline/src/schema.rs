//! JSON Schemas of the lines probe writes, generated from the types that write them (so a
//! field renamed in the code is renamed in the schema). The schemas describe what probe
//! serialises: a field skipped when empty is optional, never null, and objects are closed.
//! `probe schema` prints them; docs/schema/ holds the published copies.

use schemars::{
    JsonSchema, Schema, SchemaGenerator,
    generate::{Contract, SchemaSettings},
    transform::RecursiveTransform,
};
use serde_json::Value;

/// The generator every line's schema comes from.
pub fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12()
        .with(|s| s.contract = Contract::Serialize)
        .with_transform(RecursiveTransform(skipped_options_are_never_null))
        .with_transform(RecursiveTransform(ip_addresses))
        .into_generator()
}

/// The schema of one kind of line, titled by its schema name (`probe.timeline/1`).
pub fn line<T: JsonSchema>(name: &str) -> Schema {
    let mut schema = generator().into_root_schema_for::<T>();
    schema.insert("title".to_owned(), name.into());
    schema
}

/// The const `"schema": "probe.X/N"` field every line starts with.
pub fn const_name(name: &str) -> Schema {
    schemars::json_schema!({ "type": "string", "const": name })
}

/// Under the serialising contract a property is optional only when the type skips it, and
/// every optional `Option` here is skipped when `None`: such a property is absent, never
/// null, so null is taken out of its schema. (A required `Option` keeps its null.)
fn skipped_options_are_never_null(schema: &mut Schema) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    let required: Vec<String> = obj
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let Some(Value::Object(props)) = obj.get_mut("properties") else {
        return;
    };
    for (name, prop) in props.iter_mut() {
        if required.contains(name) {
            continue;
        }
        let Value::Object(p) = prop else { continue };
        // `"type": ["string", "null"]`
        if let Some(Value::Array(types)) = p.get_mut("type") {
            types.retain(|t| t != "null");
            if types.len() == 1 {
                let only = types.remove(0);
                p.insert("type".to_owned(), only);
            }
        }
        // `"anyOf": [{"$ref": ...}, {"type": "null"}]`
        if let Some(Value::Array(any)) = p.get("anyOf") {
            let rest: Vec<Value> = any
                .iter()
                .filter(|s| s.get("type").and_then(Value::as_str) != Some("null"))
                .cloned()
                .collect();
            if rest.len() == 1 && rest.len() < any.len() {
                p.remove("anyOf");
                if let Value::Object(inner) = &rest[0] {
                    for (k, v) in inner {
                        p.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
            }
        }
    }
}

/// `IpAddr` is `"format": "ip"`, which no validator knows: an IPv4 or IPv6 address.
fn ip_addresses(schema: &mut Schema) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    if obj.get("format").and_then(Value::as_str) == Some("ip") {
        obj.remove("format");
        obj.insert(
            "anyOf".to_owned(),
            serde_json::json!([{ "format": "ipv4" }, { "format": "ipv6" }]),
        );
    }
}
