# Shortcuts for the commands in README.md and .ci/run; each target is one command you can also type yourself.
.PHONY: bpf bpf-check test ci demo

# Rebuild crates/gpa/bpf/redirect.bpf.o from its C source, byte for byte (commit the result).
bpf:
	scripts/build-bpf.sh

# Fail if the committed eBPF object differs from a rebuild of its source.
bpf-check:
	scripts/build-bpf.sh --check

# The README's test command (as root, so the eBPF and namespace tests run).
test:
	cargo test --workspace

# What CI runs: system packages, fmt, clippy, bpf-check, tests.
ci:
	.ci/run

# The README's main command: the local MSP demo.
demo:
	cargo run --release -p msp-demo
