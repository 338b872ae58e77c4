//! The JSON Schemas of every kind of line probe writes, one file each in docs/schema/
//! (`probe.timeline.json`, ...), generated from the types that serialise the lines.
//! `probe schema --out DIR` (what `cargo xtask schema` runs) writes them; a test keeps the
//! published copies equal to what the types give now.

use std::{io, path::Path};

use probe_pipeline::render::{events, timeline};
use schemars::Schema;

use crate::cmd;

/// A kind of line: its name (`timeline`), its schema name and how its schema is made.
pub struct Kind {
    pub name: &'static str,
    pub schema_name: &'static str,
    pub schema: fn() -> Schema,
}

/// Every kind of line, in the order the docs list them.
pub const KINDS: [Kind; 6] = [
    Kind {
        name: "timeline",
        schema_name: timeline::SCHEMA,
        schema: timeline::line_schema,
    },
    Kind {
        name: "event",
        schema_name: events::SCHEMA,
        schema: events::line_schema,
    },
    Kind {
        name: "latency",
        schema_name: cmd::latency::SCHEMA,
        schema: cmd::latency::line_schema,
    },
    Kind {
        name: "doctor",
        schema_name: cmd::doctor::SCHEMA,
        schema: cmd::doctor::line_schema,
    },
    Kind {
        name: "explain",
        schema_name: cmd::explain::SCHEMA,
        schema: cmd::explain::line_schema,
    },
    Kind {
        name: "summary",
        schema_name: cmd::SUMMARY_SCHEMA,
        schema: cmd::summary_schema,
    },
];

impl Kind {
    /// By name (`timeline`) or schema name (`probe.timeline/1`).
    pub fn find(name: &str) -> Option<&'static Kind> {
        KINDS
            .iter()
            .find(|k| k.name == name || k.schema_name == name)
    }

    /// `probe.timeline.json`.
    pub fn file_name(&self) -> String {
        format!("probe.{}.json", self.name)
    }

    /// The schema as the published file holds it: pretty JSON and a newline.
    pub fn text(&self) -> String {
        let schema = (self.schema)();
        serde_json::to_string_pretty(&schema).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
            + "\n"
    }
}

/// Writes every schema into `dir`; the files written.
pub fn write_all(dir: &Path) -> io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    KINDS
        .iter()
        .map(|k| {
            let path = dir.join(k.file_name());
            std::fs::write(&path, k.text())?;
            Ok(path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schema")
    }

    /// The published schemas cannot go stale: a changed line type fails here until
    /// `cargo xtask schema` has written them again.
    #[test]
    fn published_schemas_are_what_the_types_give() {
        let dir = published();
        for k in &KINDS {
            let path = dir.join(k.file_name());
            let on_disk = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}; run cargo xtask schema", path.display()));
            assert!(
                on_disk == k.text(),
                "{} differs from what the types give now; run cargo xtask schema",
                path.display()
            );
        }
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut expected: Vec<String> = KINDS.iter().map(Kind::file_name).collect();
        expected.sort();
        assert_eq!(
            files, expected,
            "docs/schema holds a schema of no line kind"
        );
    }

    #[test]
    fn every_line_names_its_schema_as_a_const() {
        for k in &KINDS {
            let schema = (k.schema)();
            assert_eq!(
                schema.get("title").and_then(|t| t.as_str()),
                Some(k.schema_name)
            );
            let field = &schema.get("properties").unwrap()["schema"];
            assert_eq!(field["const"], k.schema_name, "{}", k.name);
            let required = schema.get("required").unwrap().as_array().unwrap();
            assert!(required.iter().any(|r| r == "schema"), "{}", k.name);
        }
    }

    #[test]
    fn kinds_are_found_by_either_name() {
        assert_eq!(
            Kind::find("latency").unwrap().schema_name,
            "probe.latency/2"
        );
        assert_eq!(Kind::find("probe.doctor/1").unwrap().name, "doctor");
        assert!(Kind::find("nope").is_none());
    }
}
