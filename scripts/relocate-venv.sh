#!/bin/sh
# relocate-venv.sh DESTDIR LIBDIR: a venv made at DESTDIR/LIBDIR names that path in its scripts'
# shebangs, its activate scripts and pyvenv.cfg; rewrite those to LIBDIR, where the staged
# install will live. (Its bin/python links to the base interpreter by absolute path already.)
set -eu
destdir=$1
libdir=$2
grep -rlIF -- "$destdir$libdir" "$destdir$libdir/bin" "$destdir$libdir/pyvenv.cfg" |
while IFS= read -r f; do
    [ -L "$f" ] && continue
    sed -i "s|$destdir$libdir|$libdir|g" "$f"
done
if grep -rqIF -- "$destdir$libdir" "$destdir$libdir/bin"; then
    echo "relocate-venv: $destdir$libdir is still named in $destdir$libdir/bin" >&2
    exit 1
fi
