#!/usr/bin/env sh
# Prints the path of a Python 3.13 interpreter (3.12 as a fallback), or fails saying what to install.
for candidate in "${PYTHON:-}" python3.13 /root/.pyenv/versions/3.13*/bin/python3.13 \
                 "$HOME"/.pyenv/versions/3.13*/bin/python3.13 /usr/local/bin/python3.13 /usr/bin/python3.13 \
                 python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12 python3; do
  [ -n "$candidate" ] || continue
  path=$(command -v "$candidate" 2>/dev/null) || continue
  if "$path" -c 'import sys; sys.exit(0 if sys.version_info[:2] in ((3, 13), (3, 12)) else 1)' 2>/dev/null; then
    echo "$path"
    exit 0
  fi
done
echo "switchyard: Python 3.13 (or 3.12) not found; install it (e.g. 'pyenv install 3.13') or set PYTHON=/path/to/python3.13" >&2
exit 1
