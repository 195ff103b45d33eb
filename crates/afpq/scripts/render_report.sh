#!/bin/sh
# Renders an `afpq report` page with headless Chromium to a PNG, to look at it without a
# desktop: crates/afpq/scripts/render_report.sh DIR/index.html [OUT.png] [HEIGHT]
# Needs chromium (Debian: apt-get install chromium) or CHROMIUM=/path/to/chrome.
set -eu
page=${1:?usage: render_report.sh DIR/index.html [OUT.png] [HEIGHT]}
out=${2:-report.png}
height=${3:-4200}
chromium=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}
if [ -z "$chromium" ]; then
    echo "render_report.sh: no chromium found (apt-get install chromium, or set CHROMIUM)" >&2
    exit 1
fi
case $page in /*) ;; *) page=$(pwd)/$page ;; esac
"$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --screenshot="$out" --window-size=1280,"$height" "file://$page" 2>/dev/null
echo "wrote $out"
