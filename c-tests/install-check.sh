#!/usr/bin/env bash
# Checks an installation of libveloq the way a user meets it (called by `make install-check`).
#
#   install-check.sh DIR CC CXX PKG_CONFIG SONAME REALNAME
#       DIR/shared: a full install (prefix=DIR/shared); DIR/static: the same without
#       libveloq.so*. Builds c-tests/install/consumer.c (and .cpp) with pkg-config and runs
#       it: shared through LD_LIBRARY_PATH, static with `pkg-config --static`.
#   install-check.sh --destdir STAGE PREFIX SONAME REALNAME
#       a `make install DESTDIR=STAGE prefix=PREFIX`: files under STAGE, paths without it.
#   install-check.sh --uninstalled STAGE PREFIX
#       after `make uninstall` with the same DESTDIR and prefix: nothing of ours is left.
#
# Prints `install-check: N passed, N failed`; exits non-zero on a failure.
set -uo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
check() { # check "what" command...
    local what=$1
    shift
    local out
    if out=$("$@" 2>&1); then
        passed=$((passed + 1))
        echo "ok   $what"
    else
        failed=$((failed + 1))
        echo "FAIL $what"
        [[ -n $out ]] && sed 's/^/    /' <<<"$out"
    fi
}
finish() {
    [[ -n ${VELOQ_TEST_TOTALS:-} ]] && echo "$passed $failed" >>"$VELOQ_TEST_TOTALS"
    echo "install-check: $passed passed, $failed failed"
    [[ $failed -eq 0 ]]
    exit
}
is_link_to() { [[ -L $1 && $(readlink "$1") == "$2" ]]; }
needs() { readelf -d "$1" | grep -q "NEEDED.*\[$2\]"; }
not_needs() { ! readelf -d "$1" | grep -q "NEEDED.*libveloq"; }
installed_files() { # prefix-root SONAME REALNAME
    local root=$1 soname=$2 realname=$3
    check "$root/include/veloq.h" test -f "$root/include/veloq.h"
    check "$root/include/veloq.hpp" test -f "$root/include/veloq.hpp"
    check "$root/lib/$realname is the library" test -f "$root/lib/$realname" -a ! -L "$root/lib/$realname"
    check "$root/lib/$soname -> $realname" is_link_to "$root/lib/$soname" "$realname"
    check "$root/lib/libveloq.so -> $soname" is_link_to "$root/lib/libveloq.so" "$soname"
    check "$root/lib/libveloq.a" test -f "$root/lib/libveloq.a"
    check "$root/lib/pkgconfig/veloq.pc" test -f "$root/lib/pkgconfig/veloq.pc"
}

case "${1:-}" in
--destdir)
    stage=$2 prefix=$3 soname=$4 realname=$5
    installed_files "$stage$prefix" "$soname" "$realname"
    check "veloq.pc says prefix=$prefix (no DESTDIR in it)" \
        grep -qx "prefix=$prefix" "$stage$prefix/lib/pkgconfig/veloq.pc"
    check "veloq.pc never names the staging dir" \
        bash -c "! grep -q '$stage' '$stage$prefix/lib/pkgconfig/veloq.pc'"
    finish
    ;;
--uninstalled)
    stage=$2 prefix=$3
    check "uninstall left no file of ours under $stage$prefix" \
        bash -c "[[ -z \$(find '$stage$prefix' \( -type f -o -type l \) -name '*veloq*') ]]"
    finish
    ;;
esac

dir=$1 cc=$2 cxx=$3 pkgconfig=$4 soname=$5 realname=$6
shared=$dir/shared
static=$dir/static
version=${realname#libveloq.so.}
cflags="-std=c11 -Wall -Wextra -Werror -pedantic -O2"

installed_files "$shared" "$soname" "$realname"
check "the installed library's SONAME is $soname" \
    bash -c "readelf -d '$shared/lib/$realname' | grep -q 'Library soname: \[$soname\]'"

export PKG_CONFIG_PATH=$shared/lib/pkgconfig
check "pkg-config --modversion veloq = $version" \
    bash -c "[[ \$($pkgconfig --modversion veloq) == '$version' ]]"
check "pkg-config --cflags --libs veloq" $pkgconfig --cflags --libs veloq
echo "    $($pkgconfig --cflags --libs veloq)"
# shellcheck disable=SC2046 # word splitting of pkg-config's output is intended
check "shared: cc consumer.c \$(pkg-config --cflags --libs veloq)" \
    $cc $cflags c-tests/install/consumer.c -o "$dir/consumer-shared" \
    $($pkgconfig --cflags --libs veloq)
check "shared: the program needs $soname" needs "$dir/consumer-shared" "$soname"
check "shared: runs with LD_LIBRARY_PATH" env LD_LIBRARY_PATH="$shared/lib" "$dir/consumer-shared"
# shellcheck disable=SC2046
check "shared: c++ consumer.cpp (veloq.hpp) \$(pkg-config --cflags --libs veloq)" \
    $cxx -std=c++17 -Wall -Wextra -Werror -pedantic -O2 c-tests/install/consumer.cpp \
    -o "$dir/consumer-cpp" $($pkgconfig --cflags --libs veloq)
check "shared: c++ consumer runs" env LD_LIBRARY_PATH="$shared/lib" "$dir/consumer-cpp"

export PKG_CONFIG_PATH=$static/lib/pkgconfig
echo "    static: $($pkgconfig --static --cflags --libs veloq)"
check "static: the prefix has libveloq.a and no libveloq.so" \
    bash -c "[[ -f '$static/lib/libveloq.a' && -z \$(ls '$static/lib' | grep 'libveloq\.so') ]]"
# shellcheck disable=SC2046
check "static: cc consumer.c \$(pkg-config --static --cflags --libs veloq)" \
    $cc $cflags c-tests/install/consumer.c -o "$dir/consumer-static" \
    $($pkgconfig --static --cflags --libs veloq)
check "static: the program does not need libveloq.so" not_needs "$dir/consumer-static"
check "static: runs" env -u LD_LIBRARY_PATH "$dir/consumer-static"
finish
