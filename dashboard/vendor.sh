#!/usr/bin/env bash
# Re-vendors the dashboard's browser libraries: installs the versions pinned in package-lock.json
# with `npm ci` and copies the files the page loads into static/vendor/ (committed; no build step).
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --ignore-scripts
out=static/vendor
rm -rf "$out"
mkdir -p "$out/uplot" "$out/msgpack/utils"
cp node_modules/uplot/dist/uPlot.esm.js node_modules/uplot/dist/uPlot.min.css node_modules/uplot/LICENSE "$out/uplot/"
msg=node_modules/@msgpack/msgpack
cp "$msg"/dist.esm/*.mjs "$out/msgpack/"
cp "$msg"/dist.esm/utils/*.mjs "$out/msgpack/utils/"
cp "$msg/LICENSE" "$out/msgpack/"
# The source maps are not vendored; drop the comments that point at them.
sed -i '/^\/\/# sourceMappingURL=/d' "$out"/msgpack/*.mjs "$out"/msgpack/utils/*.mjs
node -e 'const l=require("./package-lock.json").packages;for(const n of ["uplot","@msgpack/msgpack"])console.log(n, l["node_modules/"+n].version)' > "$out/VERSIONS"
echo "vendored into $out: $(tr '\n' ' ' < "$out/VERSIONS")"
