//! `probe doctor` names the backends the running kernel allows, and these follow from the
//! kernel's version and configuration: the expectations below are derived from what the test
//! reads about the kernel, so the same test holds on the host and on every kernel of the VM
//! matrix (`cargo xtask vm`), where PROBE_EXPECT_KERNEL_FUNCTIONS=1 says the kernel is a stock
//! distribution kernel (kprobes, fentry/fexit and BTF all built in).

use std::process::Command;

use probe_lab::{doctor::Doctor, require_root};

/// CONFIG_NAME=y in the running kernel's configuration, when the configuration is readable.
fn kernel_config_has(name: &str) -> Option<bool> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let text = std::fs::read_to_string(format!("/boot/config-{}", release.trim()))
        .ok()
        .or_else(|| {
            let out = Command::new("zcat").arg("/proc/config.gz").output().ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        })?;
    Some(text.lines().any(|l| l == format!("{name}=y")))
}

#[test]
fn backends_follow_the_kernel_version() {
    require_root();
    let doctor = Doctor::run().unwrap();
    let report = &doctor.0;
    let version = doctor.kernel_version().unwrap();
    eprintln!("kernel {} → version {version:?}", report["kernel"]);

    // Ring buffers came with 5.8; probe needs them to trace at all.
    let ringbuf = version >= (5, 8);
    assert_eq!(doctor.feature("ring buffer"), ringbuf, "{report}");
    assert_eq!(report["can_trace"], ringbuf, "{report}");
    assert!(doctor.feature("BTF"), "{report}");

    // tcx links came with 6.6; before, the programs go under a clsact qdisc.
    let tcx = version >= (6, 6);
    assert_eq!(doctor.feature("tcx"), tcx, "{report}");
    assert_eq!(
        doctor.backend("tc on interfaces").as_deref(),
        Some(if tcx { "tcx" } else { "clsact qdisc (netlink)" }),
        "{report}"
    );

    // Tracepoints exist on every kernel probe supports.
    assert_eq!(
        doctor.backend("drops").as_deref(),
        Some("tracepoint skb:kfree_skb")
    );
    let routes = doctor.backend("routing decisions").unwrap_or_default();
    assert!(
        (routes.starts_with("raw tracepoint fib_table_lookup")
            || routes.starts_with("tracepoint fib:fib_table_lookup"))
            && routes.contains("fib6:fib6_table_lookup"),
        "{routes}"
    );

    let stock = std::env::var_os("PROBE_EXPECT_KERNEL_FUNCTIONS").is_some();
    let kprobes = if stock {
        Some(true)
    } else {
        kernel_config_has("CONFIG_KPROBES")
    };
    let hook = doctor.backend("netfilter hook verdicts");
    let rules = doctor.backend("policy routing rules");
    let chains = doctor.backend("table/chain verdicts");
    if stock {
        // x86-64 has had fentry/fexit (BPF trampolines) since 5.5; stock kernels build them in.
        let expected = if version >= (5, 5) {
            "fentry/fexit nf_hook_slow"
        } else {
            "kprobe/kretprobe nf_hook_slow"
        };
        assert_eq!(hook.as_deref(), Some(expected), "{report}");
        assert!(doctor.feature("fentry/fexit") == (version >= (5, 5)));
        // Input routing decisions know their namespace from the decision's own device there.
        assert_eq!(
            routes.contains("fentry/fexit ip_route_input_noref (input namespace)"),
            version >= (5, 5),
            "{routes}"
        );
    } else if !doctor.feature("fentry/fexit") {
        assert!(!routes.contains("ip_route_input_noref"), "{routes}");
    }
    match kprobes {
        Some(true) => {
            assert!(doctor.feature("kprobes"), "{report}");
            assert_eq!(
                rules.as_deref(),
                Some("kprobe/kretprobe fib_rules_lookup"),
                "{report}"
            );
            if stock && version < (5, 11) {
                // nf_tables and x_tables are modules there, and module BTF came with 5.11:
                // without their structures probe attaches nothing rather than empty events.
                assert_eq!(chains, None, "{report}");
            } else {
                let chains = chains.unwrap_or_default();
                assert!(chains.contains("kprobe/kretprobe nft_do_chain"), "{chains}");
                if stock {
                    // The guest loads ip_tables, so legacy iptables is attributed too.
                    assert!(chains.contains("kprobe/kretprobe ipt_do_table"), "{chains}");
                }
            }
        }
        Some(false) => {
            // Without kprobes: the rule still shows through the table in routing decisions,
            // and --rules names netfilter rules through nftables tracing.
            assert!(!doctor.feature("kprobes"), "{report}");
            assert_eq!(rules, None, "{report}");
            assert_eq!(chains, None, "{report}");
            if !doctor.feature("fentry/fexit") {
                assert_eq!(hook, None, "{report}");
            }
        }
        None => {
            eprintln!("note: kernel configuration not readable; kprobe backends not checked")
        }
    }
    assert_eq!(
        doctor.backend("rule verdicts (--rules)").as_deref(),
        Some("nftables trace (NFNLGRP_NFTRACE)")
    );
}
