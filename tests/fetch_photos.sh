#!/usr/bin/env bash
# Unpack the sample photos (dog.jpg, eagle.jpg, ...) and ImageNet label lists that Debian's
# `darknet` package ships, for the test that checks the pretrained weights recognise them.
# Only the package's files are extracted (dpkg -x): nothing is installed. Tests skip without them.
set -eu
dest=${1:-.cache/photos}
[ -f "$dest/dog.jpg" ] && exit 0
command -v apt-get >/dev/null 2>&1 || { echo "no apt-get: the ImageNet photo test will be skipped" >&2; exit 0; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! (cd "$work" && apt-get download darknet >/dev/null 2>&1); then
  apt-get update -qq >/dev/null 2>&1 || true
  (cd "$work" && apt-get download darknet >/dev/null 2>&1) || { echo "could not download darknet: photo test will be skipped" >&2; exit 0; }
fi
dpkg -x "$work"/darknet_*.deb "$work/x"
mkdir -p "$dest"
cp "$work"/x/usr/share/darknet/data/{dog,eagle,giraffe,horses,person,kite,scream}.jpg \
   "$work"/x/usr/share/darknet/data/imagenet.{labels,shortnames}.list "$dest/"
echo "photos unpacked into $dest"
