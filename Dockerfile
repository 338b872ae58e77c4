# An image to run probe on a host: probe's static binary, and nft for `--rules`.
#
# The context holds a directory rootfs/ with usr/local/bin/probe and usr/sbin/nft with the
# libraries it links; `cargo xtask image` builds probe (x86_64-unknown-linux-musl, the eBPF
# object embedded), packs the build machine's nft, then builds this image. Run it with the
# host's view of the kernel and its network:
#
#   docker run --rm --pid=host --net=host \
#     --cap-add SYS_ADMIN --cap-add NET_ADMIN --cap-add SYSLOG \
#     -v /sys/kernel:/sys/kernel -v /run/probe:/run/probe -v /run/netns:/run/netns \
#     -v /var/run/docker.sock:/var/run/docker.sock probe:latest trace
#
# SYS_ADMIN loads the programs (and enters namespaces), NET_ADMIN attaches to tc and traces
# nftables rules, SYSLOG reads /proc/kallsyms to name drop locations. `--privileged` works too
# where the engine may grant every capability.
#
# /run/probe keeps the ledger of clsact filters on the host, so that a probe killed inside a
# container is still cleaned up by the next probe or `probe cleanup`.
FROM scratch
COPY rootfs/ /
ENTRYPOINT ["/usr/local/bin/probe"]
CMD ["doctor"]
