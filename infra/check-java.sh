#!/usr/bin/env bash
# Spark 4 needs Java 17 or newer. Say how to get it instead of failing obscurely later.
set -u
if ! command -v java >/dev/null 2>&1; then
  echo "sparkvision: Java was not found; PySpark 4 needs Java 17+." >&2
  echo "  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless" >&2
  echo "  macOS:         brew install openjdk@17" >&2
  echo "  or run everything in the project's Docker image (see docs/docker-standalone.md)." >&2
  exit 1
fi
version=$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
major=${version%%.*}
[ "$major" = "1" ] && major=$(echo "$version" | cut -d. -f2)
if [ "${major:-0}" -lt 17 ] 2>/dev/null; then
  echo "sparkvision: Java $version found, but PySpark 4 needs Java 17+ (set JAVA_HOME to a newer JDK," >&2
  echo "  e.g. sudo apt-get install -y openjdk-17-jre-headless, or use the Docker image)." >&2
  exit 1
fi
exit 0
