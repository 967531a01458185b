# libveloq: build, test, install and benchmark the C library.  GNU make.
#
#   make                 cargo build --release: target/release/libveloq.so (SONAME
#                        libveloq.so.MAJOR) and target/release/libveloq.a
#   make demo            build, then run examples/demo.c (1M callbacks, epoll on the cq fd)
#                        and the C echo server under a 3 s loopback load (requests/s)
#   make examples        build the I/O examples into build/examples: echo_server (C),
#                        echo_server_cpp (veloq.hpp), file_copy (host-side veloq_submit)
#   make examples-test   file_copy on real files (compared with cmp), both echo servers
#                        (the C one also with --multishot) driven by c-tests/example_echo.c
#   make test            everything CI runs (tools, Rust checks and tests, header, C/C++
#                        tests, valgrind, install + pkg-config); see the `test` recipe
#   make header          regenerate include/veloq.h with the pinned cbindgen
#   make install         prefix=/usr/local DESTDIR= (GNU conventions); make uninstall
#   make bench           cargo bench core, the C API bench (benches/c), the I/O bench
#                        (make bench-io: benches/io.rs, benches/io/), cargo bench report
#   make clean           build outputs (keeps build/tools); make distclean: all of build/
#
# Every tool is installed by the Makefile itself when missing (`make tools`): Debian
# packages through apt-get, cbindgen $(CBINDGEN_VERSION) through `cargo install --locked`
# into build/tools.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := all
.DELETE_ON_ERROR:
.SUFFIXES:
MAKEFLAGS += --no-builtin-rules
SUBMAKE := $(MAKE) --no-print-directory

# ---------------------------------------------------------------- install locations
prefix ?= /usr/local
exec_prefix ?= $(prefix)
libdir ?= $(exec_prefix)/lib
includedir ?= $(prefix)/include
pkgconfigdir ?= $(libdir)/pkgconfig
DESTDIR ?=
INSTALL ?= install
INSTALL_DATA ?= $(INSTALL) -m 644
INSTALL_LIB ?= $(INSTALL) -m 755

# ---------------------------------------------------------------- tools
CARGO ?= cargo
CC := $(if $(filter default,$(origin CC)),gcc,$(CC))
CXX := $(if $(filter default,$(origin CXX)),g++,$(CXX))
CFLAGS ?= -O2 -g
CXXFLAGS ?= -O2 -g
VALGRIND ?= valgrind
PKG_CONFIG ?= pkg-config
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# The newest cbindgen on crates.io when this was written; bump deliberately, then
# `make header` and commit the header: the drift check compares byte for byte.
CBINDGEN_VERSION := 0.29.4
TOOLS_DIR := $(CURDIR)/build/tools
CBINDGEN := $(TOOLS_DIR)/bin/cbindgen
CBINDGEN_STAMP := $(TOOLS_DIR)/.cbindgen-$(CBINDGEN_VERSION)

# ---------------------------------------------------------------- version
VERSION := $(shell sed -n 's/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n1)
VERSION_PARTS := $(subst ., ,$(VERSION))
VERSION_MAJOR := $(word 1,$(VERSION_PARTS))
VERSION_MINOR := $(word 2,$(VERSION_PARTS))
VERSION_PATCH := $(word 3,$(VERSION_PARTS))
SONAME := libveloq.so.$(VERSION_MAJOR)
REALNAME := libveloq.so.$(VERSION)

# ---------------------------------------------------------------- build tree
RELEASE_DIR := target/release
SO := $(RELEASE_DIR)/libveloq.so
STATICLIB := $(RELEASE_DIR)/libveloq.a
HEADER := include/veloq.h
HPP := bindings/cpp/veloq.hpp
# cbindgen reads src/ffi/ only (a source file, not the crate): see cbindgen.toml.
FFI_ROOT := $(firstword $(wildcard src/ffi/mod.rs src/ffi.rs) src/ffi/mod.rs)
NATIVE_STATIC_LIBS := build/native-static-libs.txt

# The C side can be pointed at another build of the library and header (e.g. while the
# header is not generated yet): make c-tests VELOQ_INCLUDE_DIR=... VELOQ_LIB_DIR=...
VELOQ_INCLUDE_DIR ?= include
VELOQ_LIB_DIR ?= $(RELEASE_DIR)
IN_TREE_LIB := $(if $(filter $(RELEASE_DIR),$(VELOQ_LIB_DIR)),lib,)

WARN := -Wall -Wextra -Werror -pedantic
VERSION_DEFS := -DEXPECT_VERSION_MAJOR=$(VERSION_MAJOR) -DEXPECT_VERSION_MINOR=$(VERSION_MINOR) \
	-DEXPECT_VERSION_PATCH=$(VERSION_PATCH)
C_TEST_FLAGS := -std=c11 $(WARN) $(CFLAGS) -pthread -I$(VELOQ_INCLUDE_DIR) -Ic-tests $(VERSION_DEFS)
CXX_TEST_FLAGS := -std=c++17 $(WARN) $(CXXFLAGS) -pthread -I$(VELOQ_INCLUDE_DIR) -Ibindings/cpp \
	-Ic-tests
LINK_VELOQ := -L$(VELOQ_LIB_DIR) -Wl,-rpath,$(abspath $(VELOQ_LIB_DIR)) -lveloq -pthread

C_TEST_SRCS := $(sort $(wildcard c-tests/test_*.c))
C_TESTS := $(patsubst c-tests/%.c,build/c-tests/%,$(C_TEST_SRCS))
CPP_TEST_SRCS := $(sort $(wildcard c-tests/cpp/*.cpp))
CPP_TEST := build/c-tests/test_cpp
C_TEST_HEADERS := c-tests/check.h c-tests/vtest.h c-tests/vio.h $(VELOQ_INCLUDE_DIR)/veloq.h

# valgrind: scaled-down loads (every case still runs), a longer watchdog.
VALGRIND_FLAGS := -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
	--show-leak-kinds=definite --fair-sched=yes
VALGRIND_SCALE ?= 10
VALGRIND_TIMEOUT ?= 600
# Outer kill limit per test program (seconds), beyond each program's own watchdog.
C_TEST_LIMIT ?= 400

# The C functions of the API contract (shared/API.md): each must be exported.
API_FUNCTIONS := veloq_version veloq_strerror \
	veloq_builder_new veloq_builder_workers veloq_builder_pin_workers \
	veloq_builder_mesh_capacity veloq_builder_ring_entries veloq_builder_budget \
	veloq_builder_free veloq_runtime_build veloq_runtime_new veloq_runtime_workers \
	veloq_runtime_shutdown veloq_runtime_free \
	veloq_spawn veloq_spawn_balanced veloq_spawn_to veloq_ctx_worker veloq_ctx_runtime \
	veloq_cq_new veloq_cq_poll veloq_cq_wait veloq_cq_fd veloq_cq_post veloq_cq_free \
	veloq_read veloq_write veloq_recv veloq_send veloq_accept veloq_connect veloq_close \
	veloq_openat veloq_fsync veloq_timeout veloq_cancel veloq_submit

banner = @printf '\n==> %s\n' "$(1)"

.PHONY: all lib header tools apt-tools bench-tools rust-tools fmt-check clippy cargo-test loom \
	header-check header-compile symbols-check c-tests cpp-tests readme-example valgrind \
	install-check install uninstall demo examples examples-test bench bench-c bench-smoke test \
	clean distclean bench-io bench-io-tools bench-io-bins bench-io-veloq bench-echo-profile

# ================================================================ build

all: lib

# cargo decides what is stale; the .so.MAJOR link lets programs linked against the build
# tree (the tests, the demo) find the library by its SONAME.
lib:
	$(CARGO) build --release
	ln -sf libveloq.so $(RELEASE_DIR)/$(SONAME)

# What a program linking libveloq.a must add (Libs.private of veloq.pc), as rustc reports
# it. Built in its own target dir so the release build's fingerprints stay untouched.
$(NATIVE_STATIC_LIBS): Cargo.toml Cargo.lock
	@mkdir -p $(@D)
	$(CARGO) clean --quiet -p veloq --target-dir target/nsl
	$(CARGO) rustc --quiet --lib --crate-type staticlib --target-dir target/nsl \
		-- --print native-static-libs 2>&1 | sed -n 's/.*native-static-libs: *//p' | tail -n1 > $@.tmp
	@test -s $@.tmp || { echo "rustc printed no native-static-libs"; rm -f $@.tmp; exit 1; }
	mv $@.tmp $@
	@echo "Libs.private: $$(cat $@)"

# ================================================================ tools

tools: apt-tools rust-tools $(CBINDGEN_STAMP)

# Debian packages the tests need; each is installed only when missing.
apt-tools:
	@need=""; \
	command -v $(CC) >/dev/null || need="$$need gcc"; \
	command -v $(CXX) >/dev/null || need="$$need g++"; \
	command -v nm >/dev/null && command -v readelf >/dev/null || need="$$need binutils"; \
	command -v $(VALGRIND) >/dev/null || need="$$need valgrind"; \
	command -v $(PKG_CONFIG) >/dev/null || need="$$need pkg-config"; \
	if [ -n "$$need" ]; then \
		echo "installing:$$need"; \
		$(SUDO) apt-get update -qq; \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$need; \
	fi

# libuv for the C API bench's peer.
bench-tools: apt-tools
	@if ! $(PKG_CONFIG) --exists libuv; then \
		echo "installing: libuv1-dev"; \
		$(SUDO) apt-get update -qq; \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libuv1-dev; \
	fi

# The I/O bench's peers and meters: fio (file reads), perf (system calls per request through
# the raw_syscalls tracepoint), liburing (the minimal io_uring echo server), libuv.
bench-io-tools: bench-tools
	@need=""; \
	command -v fio >/dev/null || need="$$need fio"; \
	command -v perf >/dev/null || need="$$need linux-perf"; \
	$(PKG_CONFIG) --exists liburing || need="$$need liburing-dev"; \
	if [ -n "$$need" ]; then \
		echo "installing:$$need"; \
		$(SUDO) apt-get update -qq; \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$need; \
	fi

rust-tools:
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy

$(CBINDGEN_STAMP):
	@if [ -x $(CBINDGEN) ] && [ "$$($(CBINDGEN) --version)" = "cbindgen $(CBINDGEN_VERSION)" ]; then \
		echo "cbindgen $(CBINDGEN_VERSION) already in $(TOOLS_DIR)"; \
	else \
		$(CARGO) install cbindgen --version $(CBINDGEN_VERSION) --locked --force \
			--root $(TOOLS_DIR); \
	fi
	@touch $@

# ================================================================ header

header: $(CBINDGEN_STAMP)
	$(CBINDGEN) --quiet --config cbindgen.toml --output $(HEADER) $(FFI_ROOT)

# The committed header must be exactly what the pinned cbindgen makes of src/ffi/.
header-check: $(CBINDGEN_STAMP)
	$(call banner,header drift: $(HEADER) vs cbindgen $(CBINDGEN_VERSION) on $(FFI_ROOT))
	@mkdir -p build
	$(CBINDGEN) --quiet --config cbindgen.toml --output build/veloq.h.generated $(FFI_ROOT)
	@if ! diff -u $(HEADER) build/veloq.h.generated; then \
		echo "$(HEADER) is out of date with src/ffi/: run 'make header' and commit it"; \
		exit 1; \
	fi
	@echo "$(HEADER) is up to date"

# The header alone compiles as C99, C11, C++11 and C++17 without a warning; each value
# macro (VELOQ_VERSION_*, VELOQ_E*) compiles on its own; veloq.hpp compiles alone as
# C++17 and C++20.
header-compile:
	$(call banner,header compiles alone)
	@mkdir -p build/header
	@for std in c99 c11; do \
		echo "$(CC) -std=$$std $(WARN) $(VELOQ_INCLUDE_DIR)/veloq.h"; \
		$(CC) -std=$$std $(WARN) -I$(VELOQ_INCLUDE_DIR) -fsyntax-only -x c c-tests/header/header_alone.c; \
	done
	@for std in c++11 c++17; do \
		echo "$(CXX) -std=$$std $(WARN) $(VELOQ_INCLUDE_DIR)/veloq.h"; \
		$(CXX) -std=$$std $(WARN) -I$(VELOQ_INCLUDE_DIR) -fsyntax-only -x c++ c-tests/header/header_alone.c; \
	done
	@{ echo '#include <veloq.h>'; \
	   echo 'const long long veloq_macro_values[] = {0'; \
	   sed -n 's/^#define \(VELOQ_[A-Z0-9_]*\) .*/  , (long long)(\1)/p' $(VELOQ_INCLUDE_DIR)/veloq.h; \
	   echo '};'; } > build/header/macros.c
	@echo "$(CC) -std=c99: every value macro of the header is a constant expression on its own"
	@$(CC) -std=c99 $(WARN) -I$(VELOQ_INCLUDE_DIR) -fsyntax-only build/header/macros.c || { \
		echo "a VELOQ_ macro does not compile on its own (it names something the header"; \
		echo "does not define, e.g. a private Rust const: make that const pub, or spell"; \
		echo "the value out)"; exit 1; }
	@for std in c++17 c++20; do \
		echo "$(CXX) -std=$$std $(WARN) $(HPP)"; \
		$(CXX) -std=$$std $(WARN) -I$(VELOQ_INCLUDE_DIR) -Ibindings/cpp -fsyntax-only -x c++ c-tests/header/hpp_alone.cpp; \
	done

# ================================================================ Rust checks

fmt-check: rust-tools
	$(call banner,cargo fmt --check)
	$(CARGO) fmt --all -- --check

clippy: rust-tools
	$(call banner,cargo clippy --all-targets -- -D warnings)
	$(CARGO) clippy --all-targets -- -D warnings

cargo-test:
	$(call banner,cargo test)
	$(CARGO) test

# loom model tests in their own target dir: --cfg veloq_loom (the crate's own cfg: Tokio and
# other dependencies react to plain `loom`) must not invalidate the normal build.
loom:
	$(call banner,loom model tests)
	RUSTFLAGS="--cfg veloq_loom" $(CARGO) test --release --lib --target-dir target/loom loom

# ================================================================ the shared object

# Exports: veloq_* only, every API function, and the SONAME the installed links expect.
symbols-check: lib
	$(call banner,exported symbols and SONAME of $(SO))
	@bad=$$(nm -D --defined-only $(SO) | awk 'NF >= 3 {print $$3}' | sed 's/@.*//' | grep -v '^veloq_' || true); \
	if [ -n "$$bad" ]; then echo "exported symbols without the veloq_ prefix:"; echo "$$bad"; exit 1; fi
	@have=$$(nm -D --defined-only $(SO) | awk 'NF >= 3 {print $$3}' | sed 's/@.*//'); \
	missing=""; for f in $(API_FUNCTIONS); do \
		grep -qx "$$f" <<<"$$have" || missing="$$missing $$f"; done; \
	if [ -n "$$missing" ]; then echo "API functions not exported:$$missing"; exit 1; fi
	@have=$$(nm -D --defined-only $(SO) | awk 'NF >= 3 {print $$3}' | sed 's/@.*//'); \
	declared=$$(grep -oE '\bveloq_[a-z0-9_]+\(' $(VELOQ_INCLUDE_DIR)/veloq.h | tr -d '(' | sort -u); \
	missing=""; for f in $$declared; do \
		grep -qx "$$f" <<<"$$have" || missing="$$missing $$f"; done; \
	if [ -n "$$missing" ]; then echo "declared in veloq.h but not exported:$$missing"; exit 1; fi
	@soname=$$(readelf -d $(SO) | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p'); \
	if [ "$$soname" != "$(SONAME)" ]; then echo "SONAME is '$$soname', expected $(SONAME)"; exit 1; fi
	@echo "$$(nm -D --defined-only $(SO) | wc -l) exported symbols, all veloq_*; SONAME $(SONAME)"

# ================================================================ C and C++ tests

build/c-tests/%: c-tests/%.c $(C_TEST_HEADERS)
	@mkdir -p $(@D)
	$(CC) $(C_TEST_FLAGS) $< -o $@ $(LINK_VELOQ)

$(CPP_TEST): $(CPP_TEST_SRCS) c-tests/cpp/test_cpp.hpp $(HPP) $(C_TEST_HEADERS)
	@mkdir -p $(@D)
	$(CXX) $(CXX_TEST_FLAGS) $(CPP_TEST_SRCS) -o $@ $(LINK_VELOQ)

# Build every C test and the C++ test against the library, run them, total the cases;
# then the README's C example, which must compile cleanly and print what it says.
c-tests: $(IN_TREE_LIB)
	$(call banner,C and C++ tests against $(VELOQ_LIB_DIR)/libveloq.so)
	@$(SUBMAKE) $(C_TESTS) $(CPP_TEST)
	c-tests/run.sh --label c-tests --limit $(C_TEST_LIMIT) $(C_TESTS) $(CPP_TEST)
	@$(SUBMAKE) readme-example

build/examples/readme.c: README.md
	@mkdir -p $(@D)
	awk '/^```c$$/ {inside = 1; next} /^```$$/ && inside {exit} inside' $< > $@

build/examples/readme: build/examples/readme.c $(VELOQ_INCLUDE_DIR)/veloq.h
	$(CC) -std=c11 $(WARN) $(CFLAGS) -I$(VELOQ_INCLUDE_DIR) $< -o $@ $(LINK_VELOQ)

readme-example: $(IN_TREE_LIB)
	$(call banner,the C example in README.md)
	@$(SUBMAKE) build/examples/readme
	@out=$$(build/examples/readme); echo "$$out"; \
	grep -qx 'sum of squares 0..99 = 328350' <<<"$$out" || { echo "README example: wrong output"; exit 1; }

cpp-tests: $(IN_TREE_LIB)
	@$(SUBMAKE) $(CPP_TEST)
	c-tests/run.sh --label cpp-tests --limit $(C_TEST_LIMIT) $(CPP_TEST)

# Valgrind (3.19) does not know io_uring_enter may block; libveloq notices it runs under
# valgrind and parks its workers in poll(2) instead (src/io/driver.rs).
valgrind: $(IN_TREE_LIB) apt-tools
	$(call banner,C and C++ tests under valgrind (loads / $(VALGRIND_SCALE)))
	@$(SUBMAKE) $(C_TESTS) $(CPP_TEST)
	VELOQ_TEST_SCALE=$(VALGRIND_SCALE) \
		VELOQ_TEST_TIMEOUT=$(VALGRIND_TIMEOUT) c-tests/run.sh --label valgrind \
		--limit $$(( $(VALGRIND_TIMEOUT) + 60 )) --wrap "$(VALGRIND) $(VALGRIND_FLAGS)" \
		$(C_TESTS) $(CPP_TEST)

# Install into temporary prefixes and build programs with pkg-config, as a user would:
# shared (run through LD_LIBRARY_PATH), static (pkg-config --static, no libveloq.so there),
# and a DESTDIR staging install followed by uninstall.
INSTALL_CHECK_DIR := $(CURDIR)/build/install-check
install-check: lib apt-tools
	$(call banner,install + pkg-config)
	rm -rf $(INSTALL_CHECK_DIR)
	@$(SUBMAKE) install prefix=$(INSTALL_CHECK_DIR)/shared >/dev/null
	@$(SUBMAKE) install prefix=$(INSTALL_CHECK_DIR)/static >/dev/null
	rm -f $(INSTALL_CHECK_DIR)/static/lib/libveloq.so*
	c-tests/install-check.sh $(INSTALL_CHECK_DIR) "$(CC)" "$(CXX)" \
		"$(PKG_CONFIG)" $(SONAME) $(REALNAME)
	@$(SUBMAKE) install DESTDIR=$(INSTALL_CHECK_DIR)/stage prefix=/usr >/dev/null
	c-tests/install-check.sh --destdir $(INSTALL_CHECK_DIR)/stage /usr $(SONAME) $(REALNAME)
	@$(SUBMAKE) uninstall DESTDIR=$(INSTALL_CHECK_DIR)/stage prefix=/usr >/dev/null
	c-tests/install-check.sh --uninstalled $(INSTALL_CHECK_DIR)/stage /usr

# ================================================================ test: everything CI runs

TEST_STEPS := tools fmt-check header-check header-compile clippy cargo-test loom all \
	symbols-check c-tests demo examples-test valgrind install-check bench-smoke

test:
	@rm -f build/test-totals
	@mkdir -p build
	@start=$$(date +%s); \
	for step in $(TEST_STEPS); do \
		VELOQ_TEST_TOTALS=$(CURDIR)/build/test-totals $(SUBMAKE) $$step || { \
			echo; echo "make test: step '$$step' FAILED"; exit 1; }; \
	done; \
	passed=$$(awk '{p += $$1} END {print p + 0}' build/test-totals 2>/dev/null || echo 0); \
	echo; echo "make test: all steps passed ($(TEST_STEPS)) in $$(( $$(date +%s) - start ))s"; \
	echo "veloq-c: $$passed passed, 0 failed"

# ================================================================ demo and bench

build/examples/demo: examples/demo.c $(VELOQ_INCLUDE_DIR)/veloq.h
	@mkdir -p $(@D)
	$(CC) -std=c11 $(WARN) $(CFLAGS) -pthread -I$(VELOQ_INCLUDE_DIR) $< -o $@ $(LINK_VELOQ)

demo: $(IN_TREE_LIB)
	@$(SUBMAKE) build/examples/demo build/examples/echo_server $(IO_BENCH_DIR)/loadgen
	build/examples/demo
	examples/echo_demo.sh build/examples/echo_server $(IO_BENCH_DIR)/loadgen

# ---------------------------------------------------------------- I/O examples

EXAMPLES := build/examples/echo_server build/examples/echo_server_cpp build/examples/file_copy

build/examples/echo_server build/examples/file_copy: build/examples/%: examples/%.c \
		$(VELOQ_INCLUDE_DIR)/veloq.h
	@mkdir -p $(@D)
	$(CC) -std=c11 $(WARN) $(CFLAGS) -pthread -I$(VELOQ_INCLUDE_DIR) $< -o $@ $(LINK_VELOQ)

build/examples/echo_server_cpp: examples/echo_server.cpp $(HPP) $(VELOQ_INCLUDE_DIR)/veloq.h
	@mkdir -p $(@D)
	$(CXX) -std=c++17 $(WARN) $(CXXFLAGS) -pthread -I$(VELOQ_INCLUDE_DIR) -Ibindings/cpp $< -o $@ \
		$(LINK_VELOQ)

examples: $(IN_TREE_LIB)
	@$(SUBMAKE) $(EXAMPLES)

# file_copy on real files (odd sizes, empty, larger than its in-flight window) checked
# with cmp; then each echo server run briefly against the client in c-tests/example_echo.c.
COPY_DIR := build/examples/copy-test
examples-test: $(IN_TREE_LIB)
	$(call banner,examples: file_copy + cmp; echo servers against c-tests/example_echo.c)
	@$(SUBMAKE) $(EXAMPLES) build/c-tests/example_echo
	rm -rf $(COPY_DIR) && mkdir -p $(COPY_DIR)
	head -c 13000017 /dev/urandom > $(COPY_DIR)/big.bin
	head -c 4097 /dev/urandom > $(COPY_DIR)/small.bin
	: > $(COPY_DIR)/empty.bin
	@for f in big small empty; do \
		build/examples/file_copy $(COPY_DIR)/$$f.bin $(COPY_DIR)/$$f.copy; \
		cmp $(COPY_DIR)/$$f.bin $(COPY_DIR)/$$f.copy; \
	done
	@! build/examples/file_copy $(COPY_DIR)/missing $(COPY_DIR)/x 2>/dev/null || \
		{ echo "file_copy of a missing file succeeded"; exit 1; }
	rm -rf $(COPY_DIR)
	VELOQ_ECHO_SERVER=build/examples/echo_server c-tests/run.sh --label echo_server \
		--limit $(C_TEST_LIMIT) build/c-tests/example_echo
	VELOQ_ECHO_SERVER=build/examples/echo_server_cpp c-tests/run.sh --label echo_server_cpp \
		--limit $(C_TEST_LIMIT) build/c-tests/example_echo
	VELOQ_ECHO_SERVER=build/examples/echo_server VELOQ_ECHO_SERVER_ARG=--multishot \
		c-tests/run.sh --label echo_server_multishot --limit $(C_TEST_LIMIT) \
		build/c-tests/example_echo

build/bench/capi_bench: benches/c/capi_bench.c $(VELOQ_INCLUDE_DIR)/veloq.h
	@mkdir -p $(@D)
	$(CC) -std=c11 $(WARN) -O2 -g -pthread -I$(VELOQ_INCLUDE_DIR) $$($(PKG_CONFIG) --cflags libuv) \
		$< -o $@ $(LINK_VELOQ) $$($(PKG_CONFIG) --libs libuv)

# The I/O bench's C programs: the load generator and the C echo servers (benches/io/).
IO_BENCH_DIR := build/bench/io
IO_BENCH_BINS := $(IO_BENCH_DIR)/loadgen $(IO_BENCH_DIR)/epoll_echo $(IO_BENCH_DIR)/uring_echo \
	$(IO_BENCH_DIR)/libuv_echo
IO_BENCH_CFLAGS := -std=c11 $(WARN) -O2 -g -pthread

$(IO_BENCH_DIR)/loadgen $(IO_BENCH_DIR)/epoll_echo: $(IO_BENCH_DIR)/%: benches/io/%.c \
		benches/io/server_args.h
	@mkdir -p $(@D)
	$(CC) $(IO_BENCH_CFLAGS) $< -o $@

$(IO_BENCH_DIR)/uring_echo: benches/io/uring_echo.c benches/io/server_args.h
	@mkdir -p $(@D)
	$(CC) $(IO_BENCH_CFLAGS) $$($(PKG_CONFIG) --cflags liburing) $< -o $@ \
		$$($(PKG_CONFIG) --libs liburing)

$(IO_BENCH_DIR)/libuv_echo: benches/io/libuv_echo.c benches/io/server_args.h
	@mkdir -p $(@D)
	$(CC) $(IO_BENCH_CFLAGS) $$($(PKG_CONFIG) --cflags libuv) $< -o $@ $$($(PKG_CONFIG) --libs libuv)

bench-io-bins: bench-io-tools
	@$(SUBMAKE) $(IO_BENCH_BINS)

# veloq's echo servers, whichever exist yet (the bench skips a missing one as "not built"):
# the C one through its make rule, the Rust one as a cargo example.
bench-io-veloq: lib
	@if $(SUBMAKE) -n build/examples/echo_server >/dev/null 2>&1; then \
		$(SUBMAKE) build/examples/echo_server; \
	else echo "bench-io: no make rule for build/examples/echo_server yet (veloq-c not built)"; fi
	@if [ -f examples/echo.rs ] || [ -f examples/echo/main.rs ]; then \
		$(CARGO) build --release --example echo; \
	else echo "bench-io: no examples/echo.rs yet (veloq's Rust echo server not built)"; fi

bench-io: bench-io-bins bench-io-veloq
	$(call banner,cargo bench --bench io: TCP echo / file reads / NOP vs Tokio Monoio libuv fio)
	$(CARGO) bench --bench io

# Where the CPU time goes in one echo scenario, per server (perf record -a during each
# measured window; CPU ns per request by process and part of the work, and the ceiling the
# one load-generator thread sets). A diagnostic beside the bench, not part of it; e.g.
#   make bench-echo-profile PROFILE_ARGS="--conns 500 --depth 16 --rounds 2 veloq tokio"
PROFILE_ARGS ?= --conns 500 --depth 16
bench-echo-profile: bench-io-bins bench-io-veloq
	$(CARGO) bench --bench io -- profile $(PROFILE_ARGS)

# make test builds the benches and runs them tiny, so they cannot rot between `make bench`
# runs. The core one runs every group with counts divided by ten (~25 s); the I/O one (a few
# connections, 200 ms passes, a 16 MiB file) takes ~15 s and checks only that every server
# echoes correctly and every meter reads.
bench-smoke: $(IN_TREE_LIB) bench-tools bench-io-bins bench-io-veloq
	$(call banner,C API bench smoke run (tiny loads; not a measurement))
	@$(SUBMAKE) build/bench/capi_bench
	VELOQ_BENCH_RUNS=1 VELOQ_BENCH_CALLBACKS=20000 VELOQ_BENCH_ROUND_TRIPS=500 \
		build/bench/capi_bench build/bench/smoke.json
	$(call banner,core bench smoke run (tiny loads; not a measurement))
	VELOQ_BENCH_QUICK=1 $(CARGO) bench --bench core -- --out build/bench/core-smoke.json
	$(call banner,I/O bench smoke run (tiny loads; not a measurement))
	VELOQ_BENCH_QUICK=1 $(CARGO) bench --bench io -- --out build/bench/io-smoke.json
	VELOQ_BENCH_QUICK=1 $(CARGO) bench --bench io -- profile --conns 4 --depth 16 veloq tokio

# Twice: workers = cores (the default), and workers = cores - 1, as the docs recommend when a
# host thread submits and reaps (every peer gets the same thread count in both runs).
bench-c: $(IN_TREE_LIB) bench-tools
	$(call banner,C API bench: veloq vs libuv vs pthread pool vs eventfd)
	@$(SUBMAKE) build/bench/capi_bench
	build/bench/capi_bench target/bench/capi.json
	@if [ "$$(nproc)" -gt 1 ]; then \
		echo "--- again with workers = cores - 1 = $$(( $$(nproc) - 1 )) (host thread keeps a core)"; \
		VELOQ_BENCH_WORKERS=$$(( $$(nproc) - 1 )) build/bench/capi_bench target/bench/capi-host-core.json; \
	fi

bench: lib bench-tools
	$(call banner,cargo bench --bench core)
	$(CARGO) bench --bench core
	@$(SUBMAKE) bench-c
	@$(SUBMAKE) bench-io
	$(call banner,cargo bench --bench report)
	$(CARGO) bench --bench report

# ================================================================ install

install: lib $(NATIVE_STATIC_LIBS)
	$(INSTALL) -d $(DESTDIR)$(includedir) $(DESTDIR)$(libdir) $(DESTDIR)$(pkgconfigdir)
	$(INSTALL_DATA) $(HEADER) $(HPP) $(DESTDIR)$(includedir)/
	$(INSTALL_LIB) $(SO) $(DESTDIR)$(libdir)/$(REALNAME)
	ln -sf $(REALNAME) $(DESTDIR)$(libdir)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(libdir)/libveloq.so
	$(INSTALL_DATA) $(STATICLIB) $(DESTDIR)$(libdir)/libveloq.a
	sed -e 's|@prefix@|$(prefix)|g' -e 's|@libdir@|$(libdir)|g' \
		-e 's|@includedir@|$(includedir)|g' -e 's|@VERSION@|$(VERSION)|g' \
		-e "s|@LIBS_PRIVATE@|$$(cat $(NATIVE_STATIC_LIBS))|g" \
		veloq.pc.in > $(DESTDIR)$(pkgconfigdir)/veloq.pc
	chmod 644 $(DESTDIR)$(pkgconfigdir)/veloq.pc

uninstall:
	rm -f $(DESTDIR)$(includedir)/veloq.h $(DESTDIR)$(includedir)/veloq.hpp
	rm -f $(DESTDIR)$(libdir)/libveloq.so $(DESTDIR)$(libdir)/$(SONAME) \
		$(DESTDIR)$(libdir)/$(REALNAME) $(DESTDIR)$(libdir)/libveloq.a
	rm -f $(DESTDIR)$(pkgconfigdir)/veloq.pc

# ================================================================ clean

clean:
	$(CARGO) clean
	rm -rf build/c-tests build/examples build/bench build/header build/install-check \
		build/veloq.h.generated build/test-totals $(NATIVE_STATIC_LIBS)

distclean: clean
	rm -rf build
