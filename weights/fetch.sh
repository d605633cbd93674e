#!/usr/bin/env bash
# Fetch a checkpoint and verify its sha256 before putting it in place.
# usage: fetch.sh [NAME [URL [SHA256]]]   (defaults: yolov5n-0.5.pt, $YOLOV5FACE_WEIGHTS_URL)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
name=${1:-yolov5n-0.5.pt}
url=${2:-${YOLOV5FACE_WEIGHTS_URL:-}}
want=${3:-$(awk -v n="$name" '$2 == n {print $1}' "$here/checksums.sha256")}
dest="$here/$name"
if [ -z "$want" ]; then
  echo "no known sha256 for $name: pass it as the third argument" >&2
  exit 2
fi
verify() { [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$want" ]; }
if [ -f "$dest" ] && verify "$dest"; then
  echo "$dest: present, checksum ok"
  exit 0
fi
tmp=$(mktemp "$here/.fetch.XXXXXX")
trap 'rm -f "$tmp"' EXIT
shared="$here/../../shared/weights/$name"
if [ -z "$url" ] && [ -f "$shared" ]; then
  cp "$shared" "$tmp"
elif [ -n "$url" ]; then
  curl -fL --retry 3 -o "$tmp" "$url"
else
  echo "no URL for $name: set YOLOV5FACE_WEIGHTS_URL (see weights/README.md)" >&2
  exit 2
fi
if ! verify "$tmp"; then
  echo "checksum mismatch for $name (expected $want): download discarded" >&2
  exit 1
fi
mv "$tmp" "$dest"
trap - EXIT
echo "$dest: fetched, checksum ok"
