//! `probe explain`: what a drop reason (or the function that dropped, on kernels without
//! reasons) means, from the knowledge probe's diagnoses use; `--all` for every reason of the
//! running kernel, with those probe has no words for named.

use anyhow::bail;
use probe_pipeline::knowledge::{self, Cause};
use schemars::JsonSchema;
use serde::Serialize;

use crate::{kernel::Kernel, points::drops};

/// One line of `probe explain --json`.
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Explained<'a> {
    #[schemars(schema_with = "line_name")]
    pub schema: &'static str,
    /// The reason or function asked about (or the kernel's reason, with --all).
    pub term: &'a str,
    /// None: probe knows no cause for it.
    pub cause: Option<&'static Cause>,
}

pub const SCHEMA: &str = "probe.explain/1";

fn line_name(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    probe_pipeline::schema::const_name(SCHEMA)
}

/// The JSON Schema of an explain line.
pub fn line_schema() -> schemars::Schema {
    probe_pipeline::schema::line::<Explained>(SCHEMA)
}

/// The cause of a term: a drop-reason name (any case, with or without `SKB_DROP_REASON_`), a
/// cause id, or a kernel function (`ip_error`, `ip_error+0x94`).
pub fn lookup(term: &str) -> Option<&'static Cause> {
    knowledge::by_reason(&term.to_ascii_uppercase())
        .or_else(|| knowledge::all().map(|(c, _)| c).find(|c| c.id == term))
        .or_else(|| knowledge::by_function(term))
}

pub fn run(terms: &[String], all: bool, json: bool) -> anyhow::Result<()> {
    let kernel_terms: Vec<String>;
    let terms: &[String] = if all {
        let kernel = Kernel::read(true);
        let reasons = drops::reasons(&kernel);
        if reasons.is_empty() {
            bail!(
                "cannot read this kernel's drop reasons (neither the skb:kfree_skb tracepoint's \
                 format nor BTF): kernels before 5.17 have none, and probe then explains drops \
                 by the function that freed the packet"
            );
        }
        kernel_terms = reasons
            .names()
            .into_iter()
            // Not reasons: the unspecified one and the enum's end.
            .filter(|n| !matches!(*n, "NOT_SPECIFIED" | "MAX"))
            .map(str::to_owned)
            .collect();
        &kernel_terms
    } else {
        terms
    };
    let explained: Vec<Explained> = terms
        .iter()
        .map(|t| Explained {
            schema: SCHEMA,
            term: t,
            cause: lookup(t),
        })
        .collect();
    let mut out = String::new();
    for e in &explained {
        if json {
            out.push_str(&serde_json::to_string(e)?);
            out.push('\n');
        } else if all {
            let id = e.cause.map_or("(no explanation yet)", |c| c.id);
            out.push_str(&format!("{:<28} {id}\n", e.term));
        } else if let Some(c) = e.cause {
            out.push_str(&render(e.term, c));
        }
    }
    let unknown: Vec<&str> = explained
        .iter()
        .filter(|e| e.cause.is_none())
        .map(|e| e.term)
        .collect();
    if all && !json {
        out.push_str(&format!(
            "\n{} of {} drop reasons of this kernel are explained",
            terms.len() - unknown.len(),
            terms.len()
        ));
        if unknown.is_empty() {
            out.push('\n');
        } else {
            out.push_str(&format!("; not yet: {}\n", unknown.join(", ")));
        }
    }
    print!("{out}");
    if !all && !unknown.is_empty() {
        bail!(
            "no explanation for {}: give a drop reason (NO_SOCKET), a cause id (no-socket) or \
             the function that dropped (ip_error); `probe explain --all` lists this kernel's \
             reasons",
            unknown.join(", ")
        );
    }
    Ok(())
}

fn render(term: &str, c: &Cause) -> String {
    let facts: Vec<String> = c
        .facts
        .iter()
        .map(|f| {
            serde_json::to_value(f)
                .ok()
                .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
                .unwrap_or_default()
        })
        .collect();
    let mut s = format!("{term}: {}\n  what      {}\n", c.id, c.explanation);
    if !facts.is_empty() {
        s.push_str(&format!("  evidence  {}\n", facts.join(", ")));
    }
    s.push_str(&format!("  next      {}\n", c.next));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_are_found_by_reason_id_or_function() {
        assert_eq!(lookup("no_socket").unwrap().id, "no-socket");
        assert_eq!(
            lookup("SKB_DROP_REASON_IP_RPFILTER").unwrap().id,
            "rp-filter"
        );
        assert_eq!(lookup("mtu").unwrap().id, "mtu");
        assert_eq!(lookup("ip_error+0x94").unwrap().id, "no-route");
        assert!(lookup("nothing-like-this").is_none());
        let text = render("NO_SOCKET", lookup("NO_SOCKET").unwrap());
        assert!(text.starts_with("NO_SOCKET: no-socket\n  what "), "{text}");
        assert!(text.contains("evidence  socket, icmp error"), "{text}");
    }
}
