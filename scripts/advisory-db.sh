#!/usr/bin/env bash
# Lays out the RustSec advisory database snapshot (../shared/rustsec-advisory-db, or
# $ADVISORY_DB_SNAPSHOT) where cargo-deny finds it offline: deny.toml's db-path
# (target/advisory-dbs) plus the directory name cargo-deny derives from the default database URL.
# cargo-deny opens it as a git repository and reads HEAD's commit date for its staleness check, so
# the copy becomes a repository with one commit (and a .git/HEAD) dated the day the snapshot was
# taken (from its SNAPSHOT file), not today: `maximum-db-staleness` in deny.toml then measures the
# snapshot's real age. Safe to run again: an unchanged snapshot is not copied twice.
#
#   scripts/advisory-db.sh && cargo deny --offline check advisories
#
# Against the live database instead (where GitHub is reachable): see docs/operations.md
# ("Dependency advisories").
set -euo pipefail
cd "$(dirname "$0")/.."

snapshot=${ADVISORY_DB_SNAPSHOT:-../shared/rustsec-advisory-db}
# The name cargo-deny 0.20 gives the clone of https://github.com/rustsec/advisory-db.
dest=target/advisory-dbs/advisory-db-3157b0e258782691

if [ ! -d "$snapshot/crates" ]; then
  echo "advisory-db: no RustSec snapshot at $snapshot (set ADVISORY_DB_SNAPSHOT)" >&2
  exit 1
fi
# "Snapshot of the RustSec advisory database (CC0-1.0), commit <sha> of YYYY-MM-DD."
taken=$(sed -n 's/.* of \([0-9]\{4\}-[0-9]\{2\}-[0-9]\{2\}\)\..*/\1/p' "$snapshot/SNAPSHOT" 2>/dev/null | head -n 1)
if [ -z "$taken" ]; then
  echo "advisory-db: $snapshot/SNAPSHOT does not say when the snapshot was taken (\"... of YYYY-MM-DD.\")" >&2
  exit 1
fi
stamp="$(cd "$snapshot" && pwd): $(head -n 1 "$snapshot/SNAPSHOT")"

if [ -f "$dest.stamp" ] && [ "$(cat "$dest.stamp")" = "$stamp" ] \
  && git -C "$dest" rev-parse --verify -q HEAD >/dev/null; then
  echo "advisory-db: $dest is the snapshot of $taken"
  exit 0
fi

rm -rf "$dest" "$dest.stamp"
mkdir -p "$(dirname "$dest")"
cp -r "$snapshot" "$dest"
chmod -R u+w "$dest" # the shared copy has no write bits
export GIT_AUTHOR_DATE="${taken}T00:00:00Z" GIT_COMMITTER_DATE="${taken}T00:00:00Z"
git -C "$dest" init -q -b main
git -C "$dest" add -A
git -C "$dest" -c user.name=advisory-db -c user.email=advisory-db@localhost \
  -c commit.gpgsign=false commit -q -m "RustSec advisory database snapshot of $taken"
# cargo-deny takes the later of HEAD's commit date and the mtime of .git/HEAD (or FETCH_HEAD).
touch -d "${taken}T00:00:00Z" "$dest/.git/HEAD"
# Written last, beside the copy: an interrupted run leaves no stamp and starts over.
echo "$stamp" >"$dest.stamp"
echo "advisory-db: $dest holds the snapshot of $taken ($(find "$dest/crates" -name '*.md' | wc -l) advisories)"
