//! OTLP attributes: the key/value pairs of the protobuf messages, and the facts of one
//! sighting as attributes. Keys follow OpenTelemetry's semantic conventions where one exists
//! (`source.address`, `network.transport`, `network.interface.name`); probe's own facts are
//! under `probe.`.

use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value::Value};

use crate::{
    event::{Event, EventBody},
    render::facts,
    timeline::Tuple,
    topology::Topology,
};

/// A list of attributes being built.
#[derive(Default)]
pub struct Attrs(pub Vec<KeyValue>);

impl Attrs {
    fn push(&mut self, key: &str, value: Value) {
        self.0.push(KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        });
    }

    pub fn str(&mut self, key: &str, value: impl Into<String>) {
        self.push(key, Value::StringValue(value.into()));
    }

    pub fn int(&mut self, key: &str, value: impl Into<i64>) {
        self.push(key, Value::IntValue(value.into()));
    }

    /// An unsigned count or id; those past i64 (none in practice) are clamped.
    pub fn uint(&mut self, key: &str, value: u64) {
        self.int(key, i64::try_from(value).unwrap_or(i64::MAX));
    }

    pub fn bool(&mut self, key: &str, value: bool) {
        self.push(key, Value::BoolValue(value));
    }

    pub fn strs(&mut self, key: &str, values: Vec<String>) {
        let values = values
            .into_iter()
            .map(|v| AnyValue {
                value: Some(Value::StringValue(v)),
            })
            .collect();
        self.push(key, Value::ArrayValue(ArrayValue { values }));
    }

    /// A packet's addresses and ports in the semantic conventions' words, and as one line
    /// (`probe.tuple`: `tcp 203.0.113.2:41780 > 203.0.113.1:8080`).
    pub fn tuple(&mut self, t: &Tuple) {
        self.str("probe.tuple", t.to_string());
        self.str("network.transport", t.proto.to_string());
        self.str(
            "network.type",
            if t.src.is_ipv4() { "ipv4" } else { "ipv6" },
        );
        self.str("source.address", t.src.to_string());
        self.str("destination.address", t.dst.to_string());
        if t.sport != 0 || t.dport != 0 {
            self.int("source.port", t.sport);
            self.int("destination.port", t.dport);
        }
    }

    /// What happened at one sighting: its kind and the facts of its mechanism.
    pub fn event(&mut self, e: &Event, topo: &Topology) {
        self.str("probe.place", facts::place(e, topo));
        self.str("probe.what", facts::what(e));
        if let Some(c) = facts::container(e, topo) {
            self.str("probe.container", c);
        }
        match &e.body {
            EventBody::Tc(t) => {
                self.str("probe.kind", "tc");
                self.str("network.interface.name", topo.name(t.ifindex));
                self.str("probe.direction", t.direction.as_str());
            }
            EventBody::Drop(d) => {
                self.str("probe.kind", "drop");
                match &d.reason {
                    Some(r) => self.str("probe.drop.reason", r.clone()),
                    None => self.str("probe.drop.reason", d.reason_code.to_string()),
                }
                self.int("probe.drop.reason_code", d.reason_code);
                if let Some(at) = &d.location_sym {
                    self.str("probe.drop.location", at.clone());
                }
                if d.ifindex != 0 {
                    self.str("network.interface.name", topo.name(d.ifindex));
                }
            }
            EventBody::Fib(f) => {
                self.str("probe.kind", "route");
                self.str(
                    "probe.route.table",
                    f.table_name.clone().unwrap_or_else(|| f.table.to_string()),
                );
                if let Some(dev) = &f.dev {
                    self.str("probe.route.dev", dev.clone());
                }
                if let Some(gw) = f.gateway {
                    self.str("probe.route.gateway", gw.to_string());
                }
                if let Some(err) = &f.error {
                    self.str("probe.route.error", err.clone());
                }
                if let Some(pref) = f.rule_pref {
                    self.int("probe.route.rule_pref", pref);
                }
            }
            EventBody::FibRule(r) => {
                self.str("probe.kind", "route_rule");
                self.int("probe.route.rule_pref", r.pref);
                self.str(
                    "probe.route.table",
                    r.table_name.clone().unwrap_or_else(|| r.table.to_string()),
                );
            }
            EventBody::Rule(r) => {
                self.str("probe.kind", "rule");
                if let Some(h) = r.hook {
                    self.str("probe.hook", h.nft_name());
                }
                self.str(
                    "probe.table",
                    format!("{} {}", r.family.nft_name(), r.table),
                );
                self.str("probe.chain", r.chain.clone());
                self.str("probe.verdict", r.verdict.as_str());
                self.str("probe.decided_by", r.decided_by.as_str());
                if let Some(h) = r.rule_handle {
                    self.uint("probe.rule.handle", h);
                }
                if let Some(text) = &r.rule {
                    self.str("probe.rule", text.clone());
                }
            }
            EventBody::Netfilter(n) => {
                self.str("probe.kind", "netfilter");
                self.str("probe.hook", n.hook.nft_name());
                self.str("probe.verdict", n.verdict.as_str());
                self.uint("probe.netfilter.duration_ns", n.duration_ns);
            }
            EventBody::Chain(c) => {
                self.str("probe.kind", "chain");
                self.str("probe.hook", c.hook.nft_name());
                self.str("probe.table", format!("{} {}", c.engine.as_str(), c.table));
                self.str("probe.chain", c.chain.clone());
                self.str("probe.verdict", c.verdict.as_str());
            }
        }
    }
}
