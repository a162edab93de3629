#!/usr/bin/env bash
# Builds crates/gpa/bpf/redirect.bpf.o from redirect.bpf.c, byte for byte reproducibly (DESIGN.md), and checks that
# the structs of shared.h have the sizes the Rust mirror (gpa::redirect::abi) asserts (STYLE rule 20).
#
#   scripts/build-bpf.sh           rebuild the committed object in place
#   scripts/build-bpf.sh --check   rebuild into a temporary file and fail if it differs from the committed one
#
# Needs clang 14, llvm (llvm-strip), libbpf-dev and bpftool (.ci/run installs them).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bpf_dir="$root/crates/gpa/bpf"
abi_rs="$root/crates/gpa/src/redirect/abi.rs"
object="$bpf_dir/redirect.bpf.o"

mode="build"
case "${1:-}" in
  "") ;;
  --check) mode="check" ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

out="$object"
if [[ "$mode" == "check" ]]; then
  out="$(mktemp --suffix=.bpf.o)"
  trap 'rm -f "$out"' EXIT
fi

# Relative source path and a fixed prefix map: no absolute path of this checkout ends up in the object.
(
  cd "$bpf_dir"
  clang -O2 -g -target bpf -mcpu=v3 -Wall -Wextra -Werror \
    -fdebug-prefix-map="$bpf_dir"=. -ffile-prefix-map="$bpf_dir"=. \
    -I/usr/include/x86_64-linux-gnu \
    -c redirect.bpf.c -o "$out"
)
# DWARF is not needed at run time; .BTF (map and global types) and .BTF.ext stay.
llvm-strip -g "$out"

# Every struct asserted in shared.h has the same size in the object's BTF and in abi.rs.
btf="$(bpftool btf dump file "$out" format raw)"
while read -r name size; do
  got="$(grep -E "STRUCT '$name' size=" <<<"$btf" | sed -E 's/.*size=([0-9]+).*/\1/' | head -n1 || true)"
  if [[ "$got" != "$size" ]]; then
    echo "build-bpf: struct $name is ${got:-missing} bytes in the object's BTF, shared.h asserts $size" >&2
    exit 1
  fi
  rust_const="$(tr '[:lower:]' '[:upper:]' <<<"$name")_SIZE"
  if ! grep -qE "pub const ${rust_const}: usize = ${size};" "$abi_rs"; then
    echo "build-bpf: $abi_rs does not declare ${rust_const} = $size for struct $name" >&2
    exit 1
  fi
done < <(sed -nE 's/^_Static_assert\(sizeof\(struct ([a-z_0-9]+)\) == ([0-9]+),.*/\1 \2/p' "$bpf_dir/shared.h")

if [[ "$mode" == "check" ]]; then
  if ! cmp -s "$out" "$object"; then
    echo "build-bpf: $object differs from a rebuild of redirect.bpf.c; run scripts/build-bpf.sh and commit" >&2
    echo "build-bpf: built with $(clang --version | head -n1), libbpf-dev $(dpkg-query -W -f='${Version}' libbpf-dev 2>/dev/null || echo '?')" >&2
    exit 1
  fi
  echo "build-bpf: $object is reproducible"
else
  echo "build-bpf: wrote $object ($(stat -c %s "$object") bytes)"
fi
